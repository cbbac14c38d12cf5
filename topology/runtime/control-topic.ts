import { randomBytes } from 'node:crypto';
import { Partitioners, type Consumer, type Kafka } from 'kafkajs';
import { FabricError, messageOf } from '../errors.js';
import type { AvroSerde } from '../../schemas/serde.js';
import type { Logger } from './log.js';
import { partitionEnds, readToEnd, whenPastEnds } from './topic-reader.js';

export type ControlListener<T> = (key: string, value: T | undefined, previous: T | undefined) => void;

export interface ControlTopicOptions<T> {
  /** Physical topic name. */
  readonly topic: string;
  /** Prefix of the throwaway consumer group (physical). */
  readonly groupPrefix: string;
  /** Decodes and checks one record; throws when the record is not a valid T for its key. */
  decode(key: string, value: Buffer): T;
  /** Decodes a whole batch's schemas ahead (the serde's prefetch). */
  prefetch?(values: readonly (Buffer | null)[]): Promise<void>;
  /** What the records are, for log lines. */
  readonly what: string;
  /**
   * Whether a decoded record replaces the one held for its key (default: always, the latest wins). A
   * record a racing writer based on an older state can be refused here.
   */
  supersedes?(next: T, current: T): boolean;
}

/**
 * Follows a compacted control topic (`_fabric.models`, `_fabric.rules`, ...) from its beginning for as
 * long as the process runs: the latest record per key is that key's state and a tombstone deletes it.
 * Every instance has its own reader in a group of its own that commits nothing (each reads
 * everything), deleted on close; read_committed, so an aborted control-plane write is never seen.
 * Records that do not decode are skipped with one warning per key, never fatal.
 */
export class ControlTopic<T> {
  private readonly entries = new Map<string, T>();
  private readonly listeners = new Set<ControlListener<T>>();
  private consumer: Consumer | null = null;
  private groupId = '';
  private caughtUp: Promise<void> | null = null;
  private readonly undecodable = new Set<string>();

  constructor(private readonly kafka: Kafka, private readonly log: Logger, private readonly options: ControlTopicOptions<T>) {}

  /** Starts following; resolves once every record present at the start has been applied (bounded). */
  start(timeoutMs = 30_000): Promise<void> {
    this.caughtUp ??= this.follow(timeoutMs);
    return this.caughtUp;
  }

  private async follow(timeoutMs: number): Promise<void> {
    const { topic } = this.options;
    const remaining = await partitionEnds(this.kafka, topic);
    this.groupId = `${this.options.groupPrefix}-${randomBytes(6).toString('hex')}`;
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
        await this.options.prefetch?.(batch.messages.map((m) => m.value));
        for (const m of batch.messages) this.apply(m.key?.toString() ?? null, m.value);
      },
    });
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([
      ready,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new FabricError('FABRIC_KAFKA_UNAVAILABLE', `${this.options.what}: reading ${topic} to its end took longer than ${timeoutMs} ms`)), timeoutMs);
      }),
    ]).finally(() => clearTimeout(timer));
  }

  /** Reads the topic once to its end (tools: no follower left behind). */
  async readOnce(timeoutMs = 15_000): Promise<void> {
    const records = await readToEnd(this.kafka, this.options.topic, { groupPrefix: this.options.groupPrefix, timeoutMs });
    await this.options.prefetch?.(records.map((r) => r.value));
    for (const r of records) this.apply(r.key, r.value);
  }

  /** Applies one record (also used by tests and one-shot readers). */
  apply(key: string | null, value: Buffer | null): void {
    if (key === null) return;
    const previous = this.entries.get(key);
    if (value === null) {
      this.entries.delete(key);
      if (previous !== undefined) this.notify(key, undefined, previous);
      return;
    }
    let decoded: T;
    try {
      decoded = this.options.decode(key, value);
    } catch (err) {
      if (!this.undecodable.has(key) && this.undecodable.size < 10) this.log.warn({ key, err: messageOf(err) }, `skipping a record of ${this.options.topic} that is not a valid ${this.options.what} (another format, or a newer schema)`);
      this.undecodable.add(key);
      return;
    }
    if (previous !== undefined && this.options.supersedes && !this.options.supersedes(decoded, previous)) return;
    this.entries.set(key, decoded);
    this.notify(key, decoded, previous);
  }

  private notify(key: string, value: T | undefined, previous: T | undefined): void {
    for (const listener of this.listeners) {
      try {
        listener(key, value, previous);
      } catch (err) {
        this.log.error({ err: messageOf(err), topic: this.options.topic }, 'control topic listener failed');
      }
    }
  }

  onChange(listener: ControlListener<T>): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  get(key: string): T | undefined {
    return this.entries.get(key);
  }

  values(): T[] {
    return [...this.entries.values()];
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

/**
 * A compare-and-set over control topics: `decide` reads the state and returns the records to write, and
 * they are written in one transaction under a transactional id that names what is guarded (one model's
 * experiments, say). Initialising that id fences any writer that took it before and waits until its
 * transaction completed, so `decide` reads every change an earlier writer committed; a writer that takes
 * it while `decide` runs fences this one, whose write then fails with FABRIC_CONTROL_CONFLICT (nothing
 * written). Two changes guarded by one id therefore never both pass a check the other would have failed.
 */
export async function writeControlTopicsExclusively<T>(kafka: Kafka, transactionalId: string, decide: () => Promise<{ batches: readonly { topic: string; messages: readonly { key: string; value: Buffer | null }[] }[]; result: T }>): Promise<T> {
  const producer = kafka.producer({ transactionalId, idempotent: true, maxInFlightRequests: 1, createPartitioner: Partitioners.DefaultPartitioner });
  await producer.connect();
  try {
    const tx = await producer.transaction();
    let decided: Awaited<ReturnType<typeof decide>>;
    try {
      decided = await decide();
    } catch (err) {
      await tx.abort().catch(() => undefined);
      throw err;
    }
    try {
      const topicMessages = decided.batches.filter((b) => b.messages.length > 0).map((b) => ({ topic: b.topic, messages: [...b.messages] }));
      if (topicMessages.length > 0) await tx.sendBatch({ acks: -1, topicMessages });
      await tx.commit();
    } catch (err) {
      await tx.abort().catch(() => undefined);
      const fenced = /fenc|epoch/i.test(`${messageOf(err)} ${(err as { type?: string }).type ?? ''}`);
      if (fenced) throw new FabricError('FABRIC_CONTROL_CONFLICT', `another writer of ${transactionalId} wrote at the same moment; nothing was written: read the state again and retry`, { cause: err });
      throw new FabricError('FABRIC_KAFKA_UNAVAILABLE', `writing ${decided.batches.map((b) => b.topic).join(', ')}: ${messageOf(err)}`, { cause: err });
    }
    return decided.result;
  } finally {
    await producer.disconnect().catch(() => undefined);
  }
}

/**
 * What every control-plane registry (models, rules, experiments) is made of: a ControlTopic of Avro
 * records whose key names the record (a record under another key is skipped as undecodable), and the
 * follower's life cycle. Subclasses add the queries their readers need.
 */
export abstract class AvroControlFollower<T> {
  protected readonly topic: ControlTopic<T>;

  constructor(kafka: Kafka, serde: AvroSerde, log: Logger, options: { topic: string; groupPrefix: string; what: string; keyOf(value: T): string; supersedes?(next: T, current: T): boolean }) {
    const { keyOf, what } = options;
    this.topic = new ControlTopic<T>(kafka, log, {
      topic: options.topic,
      groupPrefix: options.groupPrefix,
      what,
      prefetch: (values) => serde.prefetch(values),
      ...(options.supersedes ? { supersedes: options.supersedes } : {}),
      decode(key, value) {
        const decoded = serde.decode<T>(value);
        let own: string | undefined;
        try {
          own = keyOf(decoded);
        } catch {
          own = undefined;
        }
        if (typeof own !== 'string' || own !== key) throw new Error(`record key ${key} does not name the ${what} it holds (${own ?? 'none'})`);
        return decoded;
      },
    });
  }

  /** Starts following; resolves once every record present at the start has been applied (bounded). */
  start(timeoutMs?: number): Promise<void> {
    return this.topic.start(timeoutMs);
  }

  /** Reads the topic once to its end (tools: no follower left behind). */
  readOnce(): Promise<void> {
    return this.topic.readOnce();
  }

  /** Applies one record of the topic (also used by tests and one-shot readers). */
  apply(key: string | null, value: Buffer | null): void {
    this.topic.apply(key, value);
  }

  close(): Promise<void> {
    return this.topic.close();
  }
}

/**
 * Writes control records in one Kafka transaction: readers (read_committed) see all of them or none.
 * A transactional id of its own per write: the transaction makes one change atomic, and two writers
 * (two operators, or fabric instances registering the demo models at once) must not fence each other.
 */
export async function writeControlRecords(kafka: Kafka, topic: string, transactionalPrefix: string, messages: readonly { key: string; value: Buffer | null }[]): Promise<void> {
  await writeControlTopics(kafka, transactionalPrefix, [{ topic, messages }]);
}

/**
 * Writes records to several topics in one Kafka transaction: a change that spans topics (an experiment
 * that concludes by promoting its treatment, with its alert) is seen whole or not at all.
 */
export async function writeControlTopics(kafka: Kafka, transactionalPrefix: string, batches: readonly { topic: string; messages: readonly { key: string; value: Buffer | null }[] }[]): Promise<void> {
  const topics = batches.map((b) => b.topic).join(', ');
  const producer = kafka.producer({ transactionalId: `${transactionalPrefix}-${randomBytes(6).toString('hex')}`, idempotent: true, maxInFlightRequests: 1, createPartitioner: Partitioners.DefaultPartitioner });
  await producer.connect();
  try {
    const tx = await producer.transaction();
    try {
      await tx.sendBatch({ acks: -1, topicMessages: batches.filter((b) => b.messages.length > 0).map((b) => ({ topic: b.topic, messages: [...b.messages] })) });
      await tx.commit();
    } catch (err) {
      await tx.abort().catch(() => undefined);
      throw new FabricError('FABRIC_KAFKA_UNAVAILABLE', `writing ${topics}: ${messageOf(err)}`, { cause: err });
    }
  } finally {
    await producer.disconnect().catch(() => undefined);
  }
}
