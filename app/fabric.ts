import { Redis } from 'ioredis';
import type { Kafka } from 'kafkajs';
import { AvroSerde } from '../schemas/serde.js';
import { loadAvroSchema } from '../schemas/catalog.js';
import { prefixed, type FabricConfig } from '../topology/config.js';
import { FabricError, messageOf } from '../topology/errors.js';
import { applyTopology } from '../topology/apply.js';
import { createKafka } from '../topology/runtime/kafka.js';
import type { Logger } from '../topology/runtime/log.js';
import { Metrics } from '../topology/runtime/metrics.js';
import { BatchingProducer } from '../topology/runtime/producer.js';
import { ProcessorRunner, type ChainLink, type ProcessorStatus, type StreamDeps } from '../topology/runtime/stream.js';
import { RedisStateStore } from '../topology/runtime/state-store.js';
import { HealthMonitor } from '../topology/runtime/health.js';
import { createClickHouse, type ClickHouseClient } from '../topology/runtime/clickhouse.js';
import { fabricTopology, type FabricResources } from './fabric-topology.js';
import { OnlinePredictor } from '../serving/predict.js';
import type { AvroWriter } from '../schemas/serde.js';
import type { EntityMetadata, Experiment, PerformanceMetric, Prediction, Recommendation } from '../schemas/types.generated.js';
import { MetadataService } from '../gateways/metadata.js';
import { DEMO_MODELS, batchingOptions, ensureDemoModels, ensureDemoRules, experimentsAdmin, modelStore, recordLoadStatus, registryAdmin, servingEngine, unloadableVersions, verifier } from './serving.js';
import { FEATURE_GROUPS } from '../topology/features/groups.js';
import { LiveModels } from '../serving/models/live.js';
import { RuleRegistry, RulesAdmin } from '../serving/rules/registry.js';
import { FrequencyCaps } from '../serving/rules/caps.js';
import { MetadataStore } from '../serving/metadata/store.js';
import { ExperimentRegistry } from '../serving/experiments/registry.js';
import { RedisExperimentLatency } from '../serving/experiments/latency.js';
import { ExperimentJudge } from '../serving/experiments/judge.js';
import { TASKS } from '../serving/models/tasks.js';
import { ModelRegistry } from '../serving/registry/registry.js';
import { registryReferences, startDriftClock } from './monitoring.js';
import { PerformanceMonitor } from '../processors/monitor/performance.js';
import { publishStatus } from './processor-status.js';
import { Gateway } from '../gateways/server.js';
import { IngestService, type BoundStream } from '../gateways/ingest/ingest.js';
import { ApiKeys } from '../gateways/ingest/auth.js';

export interface FabricOptions {
  /** Processors to run (default: all in the topology). A processor chained in another's task runs with its whole chain. */
  readonly processors?: readonly string[];
  readonly gateway?: boolean;
  /** Create topics, register schemas and apply the ClickHouse DDL first (default true). */
  readonly apply?: boolean;
}

export interface FabricHandle {
  readonly gatewayPort: number | null;
  readonly metrics: Metrics;
  /** Model versions serving in this process (name -> version), empty when no processor or gateway needs one. */
  models(): Record<string, string>;
  /** Every running processor chain's state. */
  processors(): ProcessorStatus[];
  /** Settles when a processor gave up (restart budget spent): the process should exit non-zero. */
  readonly fatal: Promise<Error>;
  stop(): Promise<void>;
}

/**
 * The composition root: owns every resource it opens (Kafka clients, producers, Redis, ClickHouse,
 * model workers, gateway) and closes them in reverse order: gateway first (drains in-flight events),
 * then processors (finish their batch, flush, commit), then producers, then the stores.
 */
export async function startFabric(config: FabricConfig, log: Logger, options: FabricOptions = {}): Promise<FabricHandle> {
  const topology = fabricTopology();
  const metrics = new Metrics();
  const closers: { name: string; close: () => Promise<unknown> }[] = [];
  const stop = async (): Promise<void> => {
    for (const { name, close } of closers.splice(0).reverse()) {
      await close().catch((err: unknown) => log.error({ err: messageOf(err), component: name }, 'close failed'));
    }
  };
  let onFatal!: (err: Error) => void;
  const fatal = new Promise<Error>((resolve) => (onFatal = resolve));
  try {
    const kafka: Kafka = createKafka(config, log, 'fabric');
    const serde = new AvroSerde({ url: config.registryUrl });
    const health = new HealthMonitor(kafka, config.registryUrl, log.child({ component: 'health' }));
    closers.push({ name: 'health', close: () => health.close() });
    if (options.apply ?? true) {
      const report = await applyTopology(topology, config, kafka, serde);
      log.info({ created: report.topicsCreated.length, subjects: report.subjects.length, clickhouse: report.clickhouseStatements }, 'topology applied');
      for (const notice of report.notices) log.warn(notice);
    }
    // The gateway's and the control plane's producer; every processor task has its own transactional one.
    const producer = new BatchingProducer(kafka, { lingerMs: config.producerLingerMs, batchSize: config.producerBatchSize, maxRequestBytes: config.producerMaxRequestBytes, maxQueued: config.producerMaxQueued, ackTimeoutMs: config.kafkaAckTimeoutMs }, log.child({ component: 'producer' }), metrics);
    closers.push({ name: 'producer', close: () => producer.close() });
    // Wait briefly: the producer keeps reconnecting in the background, and the gateway must listen
    // (and say not-ready) rather than wait out kafkajs' connect retries when Kafka is down.
    const kafkaUp = await Promise.race([producer.start(), new Promise<boolean>((r) => setTimeout(() => r(false), 2000).unref())]);
    if (!kafkaUp) log.warn({ brokers: config.kafkaBrokers }, 'Kafka is not reachable yet; the gateway answers 503 until it is');
    await health.start();

    // Resources processors borrow, each opened on first use and closed by this root.
    let redis: Promise<Redis> | null = null;
    let clickhouse: ClickHouseClient | null = null;
    // The serving side: one engine, registry follower and set of live models per process, shared by
    // every scoring processor and the gateway's predict endpoint.
    const store = modelStore(config);
    let live: Promise<LiveModels> | null = null;
    let engine: ReturnType<typeof servingEngine> | null = null;
    let modelRegistry: Promise<ModelRegistry> | null = null;
    const registryFollower = (): Promise<ModelRegistry> => {
      modelRegistry ??= (async () => {
        const registry = new ModelRegistry(kafka, serde, config, log.child({ component: 'registry' }));
        closers.push({ name: 'registry', close: () => registry.close() });
        await registry.start();
        return registry;
      })();
      return modelRegistry;
    };
    const liveModels = (): Promise<LiveModels> => {
      live ??= (async () => {
        const registry = await registryFollower();
        const e = servingEngine(config, metrics, log.child({ component: 'serving' }));
        closers.push({ name: 'serving engine', close: () => e.close() });
        await e.start();
        engine = e;
        const r = await resources.redis();
        const lm = new LiveModels({ registry, store, engine: e, tasks: TASKS, groups: FEATURE_GROUPS, log: log.child({ component: 'models' }), metrics, batching: batchingOptions(config), onStatus: recordLoadStatus(r, config, log) });
        closers.push({ name: 'live models', close: async () => lm.close() });
        return lm;
      })();
      return live;
    };
    let experiments: Promise<ExperimentRegistry> | null = null;
    let latency: Promise<RedisExperimentLatency> | null = null;
    let rules: Promise<RuleRegistry> | null = null;

    let caps: Promise<FrequencyCaps> | null = null;
    let metadataStore: Promise<MetadataStore> | null = null;
    const resources: FabricResources = {
      config,
      metrics,
      redis() {
        redis ??= (async () => {
          const r = new Redis(config.redisUrl, { maxRetriesPerRequest: 5, enableOfflineQueue: true, lazyConnect: true });
          // ioredis reconnects by itself; commands failing meanwhile make batches retry. Say so once per outage.
          let down = false;
          r.on('error', (err: Error) => {
            if (!down) log.warn({ err: err.message }, 'Redis unreachable; reconnecting');
            down = true;
          });
          r.on('ready', () => {
            if (down) log.info('Redis reachable again');
            down = false;
          });
          closers.push({ name: 'redis', close: () => r.quit() });
          await r.connect();
          return r;
        })();
        return redis;
      },
      clickhouse() {
        if (!clickhouse) {
          const ch = createClickHouse(config);
          closers.push({ name: 'clickhouse', close: () => ch.close() });
          clickhouse = ch;
        }
        return clickhouse;
      },
      async references(model) {
        return registryReferences(await registryFollower(), model, log.child({ component: 'drift-references', model }));
      },
      async models(follow) {
        const lm = await liveModels();
        await lm.follow(follow);
        return lm;
      },
      engineState: () => engine?.state ?? 'starting',
      rules() {
        rules ??= (async () => {
          const registry = new RuleRegistry(kafka, serde, config, log.child({ component: 'rules' }));
          closers.push({ name: 'rules', close: () => registry.close() });
          await registry.start();
          return registry;
        })();
        return rules;
      },
      caps() {
        caps ??= resources.redis().then((r) => new FrequencyCaps(r, config.redisKeyPrefix, { graceMs: Math.max(config.featuresLatenessSec * 1000, 3_600_000) }));
        return caps;
      },
      metadata() {
        metadataStore ??= resources.redis().then((r) => new MetadataStore(r, config.redisKeyPrefix));
        return metadataStore;
      },
      experiments() {
        experiments ??= (async () => {
          const registry = new ExperimentRegistry(kafka, serde, config, log.child({ component: 'experiments' }));
          closers.push({ name: 'experiments', close: () => registry.close() });
          // A running experiment's treatment and shadow are loaded (and pinned) as soon as it is seen, so
          // neither the first stream batch nor the first predict request under it waits for a load.
          const preload = (e: Experiment | undefined): void => {
            if (e?.state !== 'running') return;
            void liveModels().then((lm) => {
              for (const version of [e.treatment, e.shadow]) {
                if (version === null) continue;
                try {
                  lm.requireVersion(e.model, version);
                } catch {
                  // Loading now (or refused: reported by the load status, and the judge acts on it).
                }
              }
            });
          };
          registry.onChange((e) => preload(e));
          await registry.start();
          for (const e of registry.list()) preload(e);
          return registry;
        })();
        return experiments;
      },
      latency() {
        latency ??= resources.redis().then((r) => new RedisExperimentLatency(r, config.redisKeyPrefix, (err) => log.warn({ err: err.message }, 'experiment latency not recorded')));
        return latency;
      },
    };

    // A processor chained in another's task runs as part of its head's chain.
    const heads = new Set<string>();
    for (const name of options.processors ?? topology.processors.map((p) => p.name)) {
      let def = topology.processor(name);
      while (def.after !== undefined) def = topology.processor(def.after);
      heads.add(def.name);
    }
    if ((options.apply ?? true) && kafkaUp) {
      // npm start: the demo models are registered and promoted unless an operator already chose versions.
      await ensureDemoModels(registryAdmin({ kafka, serde, config, log, store, verify: verifier(config, store) }), config, log);
      await ensureDemoRules(new RulesAdmin({ kafka, serde, config, log }), config, log);
    }
    const runners: ProcessorRunner[] = [];
    if (heads.size > 0) {
      const stateStore = new RedisStateStore(await resources.redis(), config.redisKeyPrefix);
      const deps: StreamDeps = {
        kafka, serde, topology, config, log, metrics, stateStore,
        onFatal: (name, err) => {
          log.fatal({ processor: name, err: messageOf(err) }, 'processor failed for good');
          onFatal(err);
        },
      };
      for (const head of heads) {
        const links: ChainLink[] = [];
        try {
          for (const def of topology.chain(head)) {
            if (!def.create) throw new FabricError('FABRIC_CONFIG_INVALID', `processor ${def.name} has no logic bound to its node`);
            links.push({ def, logic: await def.create(resources) });
          }
        } catch (err) {
          // Until a runner owns them, the links built so far (a model worker, a sink) are ours to close.
          for (const { logic } of links.reverse()) await logic.close?.().catch(() => undefined);
          throw err;
        }
        const runner = new ProcessorRunner(links, deps);
        runners.push(runner);
        closers.push({ name: `processor ${head}`, close: () => runner.stop() });
      }
      await Promise.all(runners.map((r) => r.start()));
    }
    if (runners.length > 0) {
      // The experiment judge: in every instance that runs processors, deciding in one at a time (a lease).
      const lm = await liveModels();
      const judge = new ExperimentJudge({
        experiments: await resources.experiments(),
        production: (model) => lm.production(model),
        admin: experimentsAdmin({ kafka, serde, config, log, store }),
        registry: registryAdmin({ kafka, serde, config, log, store, verify: verifier(config, store) }),
        clickhouse: resources.clickhouse(),
        database: config.clickhouseDatabase,
        latency: await resources.latency(),
        redis: await resources.redis(),
        keyPrefix: config.redisKeyPrefix,
        intervalMs: config.experimentsIntervalSec * 1000,
        windowMs: config.experimentsWindowSec * 1000,
        log: log.child({ component: 'experiments-judge' }),
        metrics,
        unloadable: unloadableVersions(await resources.redis(), config),
      });
      judge.start();
      closers.push({ name: 'experiments judge', close: () => judge.close() });
    }
    if (runners.length > 0) {
      // Model performance with delayed labels, from the ledger: in every instance that runs processors, one at a time (a lease).
      const registry = await registryFollower();
      const topic = prefixed(config, 'performance.metrics');
      const writer = await serde.writer<PerformanceMetric>(`${topic}-value`, loadAvroSchema('performance_metric'));
      const performance = new PerformanceMonitor({
        clickhouse: resources.clickhouse(),
        database: config.clickhouseDatabase,
        redis: await resources.redis(),
        keyPrefix: config.redisKeyPrefix,
        models: [{ model: 'fraud', stream: 'transactions', kind: 'decision' }, { model: 'recs', stream: 'interactions', kind: 'ranking' }],
        thresholds: (model, version) => registry.get(model, version)?.thresholds ?? {},
        windowMs: config.performanceWindowSec * 1000,
        horizonMs: config.outcomeHorizonSec * 1000,
        graceMs: config.performanceGraceSec * 1000,
        lookbackMs: Math.max(86_400_000, 2 * config.outcomeHorizonSec * 1000),
        intervalMs: config.performanceIntervalSec * 1000,
        publish: (metrics) => producer.send(metrics.map((m) => ({ topic, key: `${m.model}/${m.version}/${m.arm}`, value: writer.encode(m) }))),
        log: log.child({ component: 'performance' }),
      });
      performance.start();
      closers.push({ name: 'performance monitor', close: () => performance.close() });
    }
    if ([...heads].some((h) => topology.chain(h).some((d) => d.name === 'drift-merge' || d.name === 'drift-merge-recs'))) {
      // Time for the drift merge when no predictions flow: windows of stopped traffic close on its idle timeout.
      const stopClock = await startDriftClock({ producer, serde, config, log: log.child({ component: 'drift-clock' }), intervalMs: Math.min(5_000, Math.max(250, (config.driftIdleSec * 1000) / 4)) });
      closers.push({ name: 'drift clock', close: stopClock });
    }
    const processors = (): ProcessorStatus[] => runners.map((r) => r.status());
    if (runners.length > 0) {
      const stopPublishing = publishStatus(await resources.redis(), config.redisKeyPrefix, processors);
      closers.push({ name: 'status', close: stopPublishing });
    }

    let gatewayPort: number | null = null;
    if (options.gateway ?? true) {
      const streams = new Map<string, BoundStream>();
      for (const s of topology.streams) {
        const physicalTopic = prefixed(config, s.topic);
        streams.set(s.name, { def: s, physicalTopic, writer: await serde.writer(`${physicalTopic}-value`, loadAvroSchema(s.schema)) });
      }
      const ingest = new IngestService(streams, producer, { maxInFlight: config.gatewayMaxInFlight, maxClockSkewMs: config.maxClockSkewSec * 1000 }, metrics);
      const readiness = () => {
        const { kafka: kafkaOk, registry } = health.reachability;
        const states = processors();
        const processorsOk = states.every((p) => p.state === 'running' || p.state === 'paused');
        return { ready: kafkaOk && producer.isReady && registry && processorsOk, checks: { kafka: kafkaOk && producer.isReady, registry, processors: processorsOk }, details: { processors: states } };
      };
      // POST /v1/predict: the same live models as the scoring processors of this process.
      let predictor: OnlinePredictor | undefined;
      if (kafkaUp) {
        const lm = await liveModels();
        for (const name of DEMO_MODELS) await lm.follow(name).catch((err: unknown) => log.warn({ model: name, err: messageOf(err) }, 'model not served by predict yet'));
        const writers = new Map<string, Promise<AvroWriter<Prediction | Recommendation>>>();
        predictor = new OnlinePredictor({
          models: lm,
          experiments: await resources.experiments(),
          rules: await resources.rules(),
          caps: await resources.caps(),
          metadata: await resources.metadata(),
          redis: await resources.redis(),
          keyPrefix: config.redisKeyPrefix,
          timeoutMs: config.predictTimeoutMs,
          cacheTtlSec: config.predictCacheTtlSec,
          metrics,
          emit(topic, key, prediction) {
            const physical = prefixed(config, topic);
            let writer = writers.get(physical);
            if (!writer) {
              writer = serde.writer<Prediction | Recommendation>(`${physical}-value`, loadAvroSchema(topology.topic(topic).schema ?? 'prediction'));
              writers.set(physical, writer);
            }
            void writer
              .then((w) => producer.send([{ topic: physical, key, value: w.encode(prediction) }]))
              .catch((err: unknown) => log.warn({ topic, err: messageOf(err) }, 'online prediction not written to Kafka'));
          },
        });
      }
      // The metadata webhook writes to _fabric.metadata (acks=all) and reads the store.
      let metadata: MetadataService | undefined;
      if (kafkaUp) {
        const physical = prefixed(config, '_fabric.metadata');
        const writer = await serde.writer<EntityMetadata>(`${physical}-value`, loadAvroSchema('metadata'));
        metadata = new MetadataService({ sink: { send: (key, value) => producer.send([{ topic: physical, key, value }]) }, writer, store: await resources.metadata() });
      }
      const gateway = new Gateway(
        { ingest, apiKeys: new ApiKeys(config.gatewayApiKeys), metrics, log: log.child({ component: 'gateway' }), readiness, ...(predictor ? { predictor } : {}), ...(metadata ? { metadata } : {}) },
        { host: config.gatewayHost, port: config.gatewayPort, maxBodyBytes: config.gatewayMaxBodyBytes },
      );
      gatewayPort = await gateway.listen();
      // Registered last so it closes first: no new events while processors drain.
      closers.push({ name: 'gateway', close: () => gateway.close() });
      log.info({ port: gatewayPort }, 'gateway listening');
    }
    const models = (): Record<string, string> => {
      const out: Record<string, string> = {};
      for (const [, h] of engine?.loaded ?? []) out[h.name] = out[h.name] ? `${out[h.name]},${h.version}` : h.version;
      return out;
    };
    return { gatewayPort, metrics, models, processors, fatal, stop };
  } catch (err) {
    await stop();
    throw err;
  }
}
