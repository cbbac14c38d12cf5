import { randomBytes } from 'node:crypto';
import type { Consumer, Kafka } from 'kafkajs';
import type { ModelVersion } from '../../schemas/types.generated.js';
import { loadAvroSchema } from '../../schemas/catalog.js';
import type { AvroSerde } from '../../schemas/serde.js';
import { prefixed, type FabricConfig } from '../../topology/config.js';
import { FabricError, messageOf } from '../../topology/errors.js';
import { partitionEnds, whenPastEnds } from '../../topology/runtime/topic-reader.js';
import type { Logger } from '../../topology/runtime/log.js';
import { entryKey } from './entry.js';

export const MODELS_TOPIC = '_fabric.models';

export type RegistryListener = (entry: ModelVersion, previous: ModelVersion | undefined) => void;

/**
 * Follows the compacted `_fabric.models` topic from its beginning, for as long as the process runs:
 * the latest record per `name@version` is that version's state (tombstones delete). Every processor
 * and gateway instance has one, so a promotion written by `fabric models promote` reaches all of
 * them within a fetch (no restart). Records that do not decode (another format, a newer schema the
 * process cannot read) are skipped with a warning, never fatal.
 *
 * The consumer is in a group of its own that commits nothing (every instance reads everything) and
 * is deleted on close.
 */
export class ModelRegistry {
  private readonly entries = new Map<string, ModelVersion>();
  private readonly listeners = new Set<RegistryListener>();
  private consumer: Consumer | null = null;
  private groupId = '';
  private caughtUp: Promise<void> | null = null;
  /** Keys already warned about: a compacted topic replays the same old record on every read. */
  private readonly undecodable = new Set<string>();

  constructor(
    private readonly kafka: Kafka,
    private readonly serde: AvroSerde,
    private readonly config: Pick<FabricConfig, 'topicPrefix'>,
    private readonly log: Logger,
  ) {}

  /** Starts following; resolves once every record present at the start has been read (bounded). */
  async start(timeoutMs = 30_000): Promise<void> {
    if (this.caughtUp) return this.caughtUp;
    this.caughtUp = this.follow(timeoutMs);
    return this.caughtUp;
  }

  private async follow(timeoutMs: number): Promise<void> {
    const topic = prefixed(this.config, MODELS_TOPIC);
    const remaining = await partitionEnds(this.kafka, topic);
    this.groupId = prefixed(this.config, `fabric.registry-${randomBytes(6).toString('hex')}`);
    const consumer = this.kafka.consumer({ groupId: this.groupId, readUncommitted: false, maxWaitTimeInMs: 250 });
    this.consumer = consumer;
    await consumer.connect();
    await consumer.subscribe({ topic, fromBeginning: true });
    let done!: () => void;
    const ready = new Promise<void>((resolve) => (done = resolve));
    whenPastEnds(consumer, remaining, () => done());
    await consumer.run({
      autoCommit: false,
      eachBatch: async ({ batch }) => {
        await this.serde.prefetch(batch.messages.map((m) => m.value));
        for (const m of batch.messages) this.apply(m.key?.toString() ?? null, m.value);
      },
    });
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([
      ready,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new FabricError('FABRIC_KAFKA_UNAVAILABLE', `model registry: reading ${topic} to its end took longer than ${timeoutMs} ms`)), timeoutMs);
      }),
    ]).finally(() => clearTimeout(timer));
  }

  /** Applies one record of the topic (also used by tests and one-shot readers). */
  apply(key: string | null, value: Buffer | null): void {
    if (key === null) return;
    if (value === null) {
      const previous = this.entries.get(key);
      this.entries.delete(key);
      if (previous) this.log.info({ model: key }, 'model version deleted from the registry');
      return;
    }
    let entry: ModelVersion;
    try {
      entry = this.serde.decode<ModelVersion>(value);
      if (typeof entry?.name !== 'string' || entryKey(entry.name, entry.version) !== key) throw new Error(`record key ${key} does not name ${entry?.name}@${entry?.version}`);
    } catch (err) {
      if (!this.undecodable.has(key) && this.undecodable.size < 10) this.log.warn({ key, err: messageOf(err) }, 'skipping a _fabric.models record that is not a model version (a registration from before the registry, or a newer schema)');
      this.undecodable.add(key);
      return;
    }
    const previous = this.entries.get(key);
    this.entries.set(key, entry);
    for (const listener of this.listeners) {
      try {
        listener(entry, previous);
      } catch (err) {
        this.log.error({ err: messageOf(err) }, 'registry listener failed');
      }
    }
  }

  onChange(listener: RegistryListener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  get(name: string, version: string): ModelVersion | undefined {
    return this.entries.get(entryKey(name, version));
  }

  /** The version in production (at most one per model: promotion archives the previous one). */
  production(name: string): ModelVersion | undefined {
    return productionOf([...this.entries.values()], name);
  }

  list(): ModelVersion[] {
    return sortEntries([...this.entries.values()]);
  }

  async close(): Promise<void> {
    const consumer = this.consumer;
    this.consumer = null;
    if (!consumer) return;
    await consumer.disconnect().catch(() => undefined);
    const admin = this.kafka.admin();
    await admin.connect().then(() => admin.deleteGroups([this.groupId])).catch(() => undefined);
    await admin.disconnect().catch(() => undefined);
  }
}

/** If two versions claim production (a write raced), the one promoted last wins. */
export function productionOf(entries: readonly ModelVersion[], name: string): ModelVersion | undefined {
  let best: ModelVersion | undefined;
  const promotedAt = (e: ModelVersion): number => Math.max(0, ...e.stage_history.filter((c) => c.to === 'production').map((c) => c.at));
  for (const e of entries) if (e.name === name && e.stage === 'production' && (!best || promotedAt(e) > promotedAt(best))) best = e;
  return best;
}

export function sortEntries(entries: ModelVersion[]): ModelVersion[] {
  return entries.sort((a, b) => a.name.localeCompare(b.name) || a.registered_at - b.registered_at || a.version.localeCompare(b.version));
}

/** Subject of the registry records' schema. */
export function modelsSubject(config: Pick<FabricConfig, 'topicPrefix'>): string {
  return `${prefixed(config, MODELS_TOPIC)}-value`;
}

export const MODEL_VERSION_SCHEMA = () => loadAvroSchema('model_version');
