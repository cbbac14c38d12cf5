import { hostname } from 'node:os';
import { isAbsolute } from 'node:path';
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import type { Redis } from 'ioredis';
import type { Kafka } from 'kafkajs';
import type { AvroSerde } from '../schemas/serde.js';
import type { ModelVersion } from '../schemas/types.generated.js';
import type { FabricConfig } from '../topology/config.js';
import { FEATURE_GROUPS } from '../topology/features/groups.js';
import type { Logger } from '../topology/runtime/log.js';
import type { Metrics } from '../topology/runtime/metrics.js';
import { messageOf } from '../topology/errors.js';
import { packagePath } from '../topology/paths.js';
import { ServingEngine } from '../serving/engine/engine.js';
import type { LoadStatus } from '../serving/models/live.js';
import { TASKS } from '../serving/models/tasks.js';
import { RegistryAdmin } from '../serving/registry/admin.js';
import { productionOf } from '../serving/registry/registry.js';
import { LocalModelStore, type ModelStore } from '../serving/registry/store.js';
import { RulesAdmin } from '../serving/rules/registry.js';
import { ExperimentsAdmin } from '../serving/experiments/registry.js';
import { outputKindOf } from '../serving/rules/engine.js';
import { parseRuleSet } from '../serving/rules/spec.js';

/** The demo models `npm start` registers (and promotes when no version of them is in production). */
export const DEMO_MODELS = ['fraud', 'recs'] as const;

export function modelStore(config: Pick<FabricConfig, 'modelStoreDir'>): ModelStore {
  return new LocalModelStore(isAbsolute(config.modelStoreDir) ? config.modelStoreDir : packagePath(config.modelStoreDir));
}

export function servingEngine(config: FabricConfig, metrics?: Metrics, log?: Logger): ServingEngine {
  return new ServingEngine({
    ...(config.servingWorkers > 0 ? { workers: config.servingWorkers } : {}),
    ...(config.scoringThreads > 0 ? { threads: config.scoringThreads } : {}),
    isolation: config.servingIsolation,
    provider: config.scoringProvider,
    gpu: config.gpu,
    timeoutMs: config.scoringTimeoutMs,
    ...(metrics ? { metrics } : {}),
    ...(log ? { onStateChange: (state, cause) => log.info({ state, cause: cause?.message }, 'serving engine state') } : {}),
  });
}

export function batchingOptions(config: FabricConfig): { maxBatch: number; maxQueueDelayMs: number; concurrency?: number } {
  return { maxBatch: config.servingMaxBatch, maxQueueDelayMs: config.servingMaxQueueDelayMs, ...(config.servingConcurrency > 0 ? { concurrency: config.servingConcurrency } : {}) };
}

export function registryAdmin(deps: { kafka: Kafka; serde: AvroSerde; config: FabricConfig; log: Logger; store?: ModelStore; verify?: (entry: ModelVersion) => Promise<void> }): RegistryAdmin {
  return new RegistryAdmin({ kafka: deps.kafka, serde: deps.serde, config: deps.config, store: deps.store ?? modelStore(deps.config), tasks: TASKS, groups: FEATURE_GROUPS, log: deps.log, ...(deps.verify ? { verify: deps.verify } : {}) });
}

/**
 * Loads an entry's artifact in a throwaway one-worker engine: registration and promotion refuse a
 * model whose session cannot be created or whose inputs differ from its signature, before any
 * serving instance tries it.
 */
export function verifier(config: FabricConfig, store: ModelStore): (entry: ModelVersion) => Promise<void> {
  return async (entry) => {
    const engine = new ServingEngine({ workers: 1, threads: 1, provider: config.scoringProvider, gpu: config.gpu, timeoutMs: config.scoringTimeoutMs, maxRestarts: 0 });
    try {
      await engine.start();
      const fetched = await store.fetch(entry.artifact);
      await engine.load({ name: entry.name, version: entry.version, ...(fetched.path !== undefined ? { path: fetched.path } : { bytes: fetched.bytes }), inputName: entry.signature.input_name, outputName: entry.signature.output_name, positiveClassIndex: entry.signature.positive_class_index, inputs: entry.signature.inputs.map((i) => i.name) });
    } finally {
      await engine.close();
    }
  };
}

/**
 * Registers the demo models from FABRIC_MODELS_DIR when the registry lacks their version, and
 * promotes each to production when none of its versions is there (an operator's promotion is never undone).
 */
export async function ensureDemoModels(admin: RegistryAdmin, config: FabricConfig, log: Logger): Promise<void> {
  for (const name of DEMO_MODELS) {
    const dir = packagePath(`${config.modelsDir}/${name}`);
    if (!existsSync(`${dir}/model.json`)) continue;
    const { entry, created, entries } = await admin.register({ artifact: dir, registeredBy: 'fabric start' });
    if (created) log.info({ model: name, version: entry.version }, 'demo model registered');
    if (!productionOf(entries, name)) {
      await admin.promote(name, entry.version, 'production', 'fabric start', 'demo model: nothing of it was in production', entries);
      log.info({ model: name, version: entry.version }, 'demo model promoted to production');
    }
  }
  // Instances starting together may each register a demo version: a registration that lands after
  // another's promotion rewrites that version as not promoted (on a compacted topic the last record of a
  // key is what stays). Read the topic itself (not this admin's own writes) and promote again if so.
  for (let attempt = 0; attempt < 5; attempt++) {
    const onTopic = await admin.entries({ ownWrites: false });
    const lost = DEMO_MODELS.filter((name) => existsSync(packagePath(`${config.modelsDir}/${name}/model.json`)) && onTopic.some((e) => e.name === name) && !productionOf(onTopic, name));
    if (lost.length === 0) return;
    for (const name of lost) {
      const latest = onTopic.filter((e) => e.name === name).at(-1)!;
      await admin.promote(name, latest.version, 'production', 'fabric start', 'demo model: a concurrent registration overwrote its promotion', onTopic);
      log.warn({ model: name, version: latest.version }, 'demo model promoted again (a concurrent registration had overwritten it)');
    }
    await new Promise((resolve) => setTimeout(resolve, 200 * (attempt + 1)));
  }
}

/**
 * npm start: each demo model gets its demo rules (`rules.yaml` beside its artifact) unless a rule set
 * was already set for it (an operator's rules are never overwritten).
 */
export async function ensureDemoRules(admin: RulesAdmin, config: FabricConfig, log: Logger): Promise<void> {
  const registry = await admin.read();
  for (const name of DEMO_MODELS) {
    const file = packagePath(`${config.modelsDir}/${name}/rules.yaml`);
    if (!existsSync(file) || registry.versions(name).length > 0) continue;
    const task = JSON.parse(await readFile(packagePath(`${config.modelsDir}/${name}/model.json`), 'utf8')) as { task?: string };
    const { spec } = RulesAdmin.validate(parseRuleSet(await readFile(file, 'utf8'), file), name, outputKindOf(task.task ?? name), file);
    const { version } = await admin.set(spec, { by: 'fabric start', comment: 'demo rules', registry });
    log.info({ model: name, version: version.version }, 'demo rules set');
  }
}

export function experimentsAdmin(deps: { kafka: Kafka; serde: AvroSerde; config: FabricConfig; log: Logger; store?: ModelStore }): ExperimentsAdmin {
  const store = deps.store ?? modelStore(deps.config);
  return new ExperimentsAdmin({ kafka: deps.kafka, serde: deps.serde, config: deps.config, log: deps.log, registry: registryAdmin({ ...deps, store }), verify: verifier(deps.config, store) });
}

/**
 * Whether some instance of the fleet failed to load a version for its content (FABRIC_MODEL_INVALID, as
 * recorded by recordLoadStatus, since `since`, and not loaded there after): the judge interrupts an
 * experiment whose treatment cannot serve.
 */
export function unloadableVersions(redis: Redis, config: Pick<FabricConfig, 'redisKeyPrefix'>): (model: string, version: string, since: number) => Promise<string | undefined> {
  return async (model, version, since) => {
    const all = await redis.hgetall(loadStatusKey(config));
    for (const [field, raw] of Object.entries(all)) {
      if (!field.startsWith(`${model}@${version}|`)) continue;
      const status = JSON.parse(raw) as LoadStatus & { instance: string };
      // Reports from before `since` (the experiment's start) may be from instances long gone.
      if (status.state === 'failed' && status.code === 'FABRIC_MODEL_INVALID' && status.at >= since) return `${status.error ?? 'refused'} (on ${status.instance})`;
    }
    return undefined;
  };
}

/** Where each instance records its model loads (`models list` shows failures per version). */
export function loadStatusKey(config: Pick<FabricConfig, 'redisKeyPrefix'>): string {
  return `${config.redisKeyPrefix}models:loads`;
}

export function recordLoadStatus(redis: Redis, config: Pick<FabricConfig, 'redisKeyPrefix'>, log: Logger): (status: LoadStatus) => void {
  const instance = `${hostname()}:${process.pid}`;
  return (status) => {
    void redis.hset(loadStatusKey(config), `${status.model}@${status.version}|${instance}`, JSON.stringify({ ...status, instance })).catch((err: unknown) => log.warn({ err: messageOf(err) }, 'could not record a model load status'));
  };
}

