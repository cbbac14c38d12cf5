import { existsSync } from 'node:fs';
import { readFile, stat } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import type { Kafka } from 'kafkajs';
import type { ModelStage, ModelVersion } from '../../schemas/types.generated.js';
import type { AvroSerde } from '../../schemas/serde.js';
import { prefixed, type FabricConfig } from '../../topology/config.js';
import { FabricError, messageOf } from '../../topology/errors.js';
import type { FeatureGroup } from '../../topology/features/definition.js';
import { writeControlRecords } from '../../topology/runtime/control-topic.js';
import type { Logger } from '../../topology/runtime/log.js';
import { entryFor, entryKey, parseManifest, validateSignature, withStage, type Manifest, type RegisterOptions, type TaskInputs } from './entry.js';
import { MODELS_TOPIC, MODEL_VERSION_SCHEMA, ModelRegistry, modelsSubject, productionOf, sortEntries } from './registry.js';
import type { ModelStore } from './store.js';

export interface RegistryAdminDeps {
  readonly kafka: Kafka;
  readonly serde: AvroSerde;
  readonly config: Pick<FabricConfig, 'topicPrefix'>;
  readonly store: ModelStore;
  readonly tasks: readonly TaskInputs[];
  readonly groups: readonly FeatureGroup[];
  readonly log: Logger;
  /** Loads the artifact in an ONNX session and checks it against the signature (the serving engine's load). */
  verify?(entry: ModelVersion): Promise<void>;
}

export interface RegisterRequest extends Omit<RegisterOptions, 'now' | 'registeredBy' | 'metrics' | 'reference'> {
  /** A model file or a folder holding one .onnx file (and its external data). */
  readonly artifact: string;
  /** model.json; default: model.json in the folder, or beside the file. */
  readonly manifest?: string;
  /** Metrics / reference profile files (JSON) replacing the manifest's. */
  readonly metricsFile?: string;
  readonly referenceFile?: string;
  readonly registeredBy: string;
}

const STAGES: readonly ModelStage[] = ['none', 'staging', 'production', 'archived'];

/**
 * The registry's write side (`fabric models register|promote`, and `npm start` for the demo models):
 * artifacts into the content-addressed store, entries onto `_fabric.models` in one Kafka transaction
 * per change (a promotion to production archives the previous production version atomically).
 */
export class RegistryAdmin {
  /**
   * Entries this admin wrote: read-your-writes. A committed transaction's markers reach the partition
   * asynchronously, so a read_committed read right after a write may not show it yet.
   */
  private readonly written = new Map<string, ModelVersion>();

  constructor(private readonly deps: RegistryAdminDeps) {}

  /** Every entry now on the topic (latest per name@version), with this admin's own writes unless `ownWrites` is false. */
  async entries(options: { ownWrites?: boolean } = {}): Promise<ModelVersion[]> {
    const registry = new ModelRegistry(this.deps.kafka, this.deps.serde, this.deps.config, this.deps.log);
    await registry.readOnce();
    const byKey = new Map(registry.list().map((e) => [entryKey(e.name, e.version), e]));
    for (const [key, mine] of options.ownWrites === false ? [] : this.written) {
      const seen = byKey.get(key);
      if (!seen || seen.stage_history.length < mine.stage_history.length) byKey.set(key, mine);
    }
    return sortEntries([...byKey.values()]);
  }

  /** Registers a version; `entries` is the registry as it stands after (one read of the topic per call). */
  async register(request: RegisterRequest): Promise<{ entry: ModelVersion; created: boolean; entries: ModelVersion[] }> {
    const st = await stat(request.artifact).catch((err: Error) => {
      throw new FabricError('FABRIC_MODEL_INVALID', `artifact ${request.artifact}: ${err.message}`, { cause: err });
    });
    const manifestPath = request.manifest ?? (st.isDirectory() ? join(request.artifact, 'model.json') : join(dirname(request.artifact), 'model.json'));
    const known = await this.entries();
    const manifest = request.manifest || existsSync(manifestPath) ? parseManifest(await readJson(manifestPath, 'manifest'), manifestPath) : inheritedManifest(request, st.isDirectory(), known);
    const metrics = request.metricsFile ? await readJson(request.metricsFile, 'metrics') : undefined;
    const reference = request.referenceFile ? await readJson(request.referenceFile, 'reference profile') : undefined;
    const ref = await this.deps.store.put(request.artifact);
    if (manifest.sha256 && manifest.sha256 !== ref.sha256) throw new FabricError('FABRIC_MODEL_INVALID', `artifact ${request.artifact}: sha256 ${ref.sha256} does not match the manifest's ${manifest.sha256}`);
    const entry = entryFor(manifest, ref, { ...request, metrics, reference, now: Date.now() });
    if (entry.signature.inputs.map((i) => i.name).join(',') !== manifest.inputs.join(',')) {
      throw new FabricError('FABRIC_MODEL_INVALID', `model ${entry.name}@${entry.version}: the signature's inputs differ from the manifest's input order`);
    }
    validateSignature(entry, this.deps.tasks, this.deps.groups);
    const existing = known.find((e) => e.name === entry.name && e.version === entry.version);
    if (existing) {
      if (existing.artifact.sha256 !== entry.artifact.sha256) throw new FabricError('FABRIC_REGISTRY_CONFLICT', `model ${entry.name}@${entry.version} is already registered with artifact ${existing.artifact.sha256}; register new bytes under a new version`);
      return { entry: existing, created: false, entries: known };
    }
    await this.deps.verify?.(entry);
    await this.write([entry]);
    return { entry, created: true, entries: sortEntries([...known, entry]) };
  }

  /**
   * Moves a version to a stage. To production: the previous production version goes to archived in
   * the same transaction. Archived versions can be promoted again (a rollback).
   */
  async promote(name: string, version: string, to: ModelStage, by: string, reason = '', known?: readonly ModelVersion[]): Promise<ModelVersion[]> {
    if (!STAGES.includes(to) || to === 'none') throw new FabricError('FABRIC_CLI_USAGE', `stage ${JSON.stringify(to)} is not staging, production or archived`);
    const entries = known ?? (await this.entries());
    const entry = entries.find((e) => e.name === name && e.version === version);
    if (!entry) {
      const known = entries.filter((e) => e.name === name).map((e) => e.version);
      throw new FabricError('FABRIC_MODEL_UNKNOWN', `model ${name}@${version} is not registered${known.length ? ` (versions: ${known.join(', ')})` : entries.length ? ` (models: ${[...new Set(entries.map((e) => e.name))].join(', ')})` : ''}`);
    }
    if (entry.stage === to) return [entry];
    const changes = await this.planPromotion(entry, to, by, reason, entries);
    await this.write(changes);
    return changes;
  }

  /**
   * The records a stage change writes (the version moved, and the production version it replaces
   * archived), after the load check for a promotion to production; written by `promote`, or by a caller
   * that writes them in a transaction of its own with other records (`recordsOf`, then `remember`).
   */
  async planPromotion(entry: ModelVersion, to: ModelStage, by: string, reason: string, entries: readonly ModelVersion[]): Promise<ModelVersion[]> {
    const now = Date.now();
    const changes = [withStage(entry, to, by, now, reason)];
    if (to === 'production') {
      await this.deps.verify?.(entry);
      const current = productionOf(entries, entry.name);
      if (current && current.version !== entry.version) changes.push(withStage(current, 'archived', by, now, `replaced by ${entry.version}${reason ? `: ${reason}` : ''}`));
    }
    return changes;
  }

  /** Writes entries in one transaction: readers (read_committed) see all of them or none. */
  async write(entries: readonly ModelVersion[]): Promise<void> {
    const { topic, messages } = await this.recordsOf(entries);
    await writeControlRecords(this.deps.kafka, topic, prefixed(this.deps.config, 'fabric.registry-admin'), messages);
    this.remember(entries);
  }

  /** The registry records of entries, for a transaction that writes them with others. */
  async recordsOf(entries: readonly ModelVersion[]): Promise<{ topic: string; messages: { key: string; value: Buffer }[] }> {
    const writer = await this.deps.serde.writer<ModelVersion>(modelsSubject(this.deps.config), MODEL_VERSION_SCHEMA());
    return { topic: prefixed(this.deps.config, MODELS_TOPIC), messages: entries.map((e) => ({ key: entryKey(e.name, e.version), value: writer.encode(e) })) };
  }

  /** Entries written (by this admin or a transaction of its caller): read-your-writes. */
  remember(entries: readonly ModelVersion[]): void {
    for (const e of entries) this.written.set(entryKey(e.name, e.version), e);
  }
}

export { sortEntries };

/**
 * No manifest beside the artifact: a new version of a registered model inherits the signature,
 * task, output, thresholds, parameters, owner and reference profile of its production version (else
 * its latest); the load check then proves the new file takes the same inputs.
 */
function inheritedManifest(request: RegisterRequest, folder: boolean, known: readonly ModelVersion[]): Manifest {
  const name = request.name;
  const mine = name ? known.filter((e) => e.name === name) : [];
  const base = productionOf(mine, name ?? '') ?? mine.at(-1);
  if (!name || !request.version || !base) throw new FabricError('FABRIC_MODEL_INVALID', `artifact ${request.artifact}: no model.json ${folder ? 'in the folder' : 'beside the file'} and no --manifest${name ? `, and model ${name} has no registered version to inherit a signature from` : ''}`);
  const reference = JSON.parse(base.reference_json || '{}') as Record<string, unknown>;
  return parseManifest({
    name, version: request.version, task: base.task, file: folder ? 'model.onnx' : basename(request.artifact),
    inputs: base.signature.inputs.map((i) => i.name), input_name: base.signature.input_name, output_name: base.signature.output_name,
    positive_class_index: base.signature.positive_class_index, thresholds: base.thresholds,
    ...(base.params.top_k ? { top_k: Number(base.params.top_k) } : {}), ...(base.params.max_candidates ? { max_candidates: Number(base.params.max_candidates) } : {}),
    owner: base.owner, description: `inherited from ${base.name}@${base.version} (no manifest given)`,
    signature: { inputs: base.signature.inputs.map((i) => ({ name: i.name, type: i.type, source: i.source, ...(i.group ? { group: i.group } : {}), missing: i.missing === 'default' ? { policy: 'default', value: i.default_value } : { policy: 'fallback' } })), output: { kind: base.signature.output_kind, positive_class_index: base.signature.positive_class_index, meaning: base.signature.output_meaning } },
    reference,
  }, `signature inherited from ${base.name}@${base.version}`);
}

async function readJson(path: string, what: string): Promise<unknown> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    throw new FabricError('FABRIC_MODEL_INVALID', `${what} ${path}: ${messageOf(err)}`, { cause: err });
  }
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new FabricError('FABRIC_MODEL_INVALID', `${what} ${path} is not JSON: ${messageOf(err)}`, { cause: err });
  }
}
