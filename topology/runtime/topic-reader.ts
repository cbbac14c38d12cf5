import { randomBytes } from 'node:crypto';
import type { Consumer, IHeaders, Kafka, KafkaMessage } from 'kafkajs';

/** A record as the reading tools see it: raw bytes, headers as strings. */
export interface ReadRecord {
  readonly partition: number;
  readonly offset: string;
  readonly key: string | null;
  readonly value: Buffer | null;
  /** Kafka record timestamp, epoch ms. */
  readonly timestamp: number;
  readonly headers: Record<string, string>;
}

function toReadRecord(partition: number, message: KafkaMessage): ReadRecord {
  return { partition, offset: message.offset, key: message.key?.toString() ?? null, value: message.value, timestamp: Number(message.timestamp), headers: headerStrings(message.headers) };
}

function headerStrings(headers: IHeaders | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(headers ?? {})) out[k] = Array.isArray(v) ? v.map(String).join(',') : String(v ?? '');
  return out;
}

/**
 * Runs `read` with a consumer in a throwaway group that commits nothing and is deleted afterwards,
 * so tools and tests reading topics leave no groups behind on the broker.
 */
async function withThrowawayConsumer<T>(kafka: Kafka, groupPrefix: string, read: (consumer: Consumer) => Promise<T>): Promise<T> {
  const groupId = `${groupPrefix}-${randomBytes(6).toString('hex')}`;
  // read_committed (kafkajs' default, stated here because every fabric reader relies on it).
  const consumer = kafka.consumer({ groupId, readUncommitted: false });
  await consumer.connect();
  try {
    return await read(consumer);
  } finally {
    await consumer.disconnect().catch(() => undefined);
    const admin = kafka.admin();
    await admin.connect().then(() => admin.deleteGroups([groupId])).catch(() => undefined);
    await admin.disconnect().catch(() => undefined);
  }
}

/** The end offset of every partition of `topic` that holds records now (empty partitions left out). */
export async function partitionEnds(kafka: Kafka, topic: string): Promise<Map<number, bigint>> {
  const admin = kafka.admin();
  await admin.connect();
  let ends: { partition: number; high: string; low: string }[];
  try {
    ends = await admin.fetchTopicOffsets(topic);
  } finally {
    await admin.disconnect();
  }
  return new Map(ends.filter((e) => BigInt(e.high) > BigInt(e.low)).map((e) => [e.partition, BigInt(e.high)]));
}

/**
 * Calls `done` once the consumer has passed every end in `remaining` (which it empties). A transactional
 * topic ends with commit or abort markers, and a tail of aborted records is filtered out before
 * eachBatch: such a batch never reaches eachBatch, but END_BATCH_PROCESS reports its end.
 */
export function whenPastEnds(consumer: Consumer, remaining: Map<number, bigint>, done: () => void): void {
  if (remaining.size === 0) return done();
  consumer.on(consumer.events.END_BATCH_PROCESS, (e) => {
    const end = remaining.get(e.payload.partition);
    if (end !== undefined && BigInt(e.payload.lastOffset) + 1n >= end) remaining.delete(e.payload.partition);
    if (remaining.size === 0) done();
  });
}

/** Every record of `topic` (physical name, all partitions) from the beginning to its end as of the call. */
export async function readToEnd(kafka: Kafka, topic: string, options: { groupPrefix: string; timeoutMs?: number }): Promise<ReadRecord[]> {
  const remaining = await partitionEnds(kafka, topic);
  const records: ReadRecord[] = [];
  if (remaining.size === 0) return records;
  const timeoutMs = options.timeoutMs ?? 60_000;
  return withThrowawayConsumer(kafka, options.groupPrefix, async (consumer) => {
    await consumer.subscribe({ topic, fromBeginning: true });
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`reading ${topic} to its end timed out after ${timeoutMs} ms`)), timeoutMs);
      const ends = new Map(remaining);
      whenPastEnds(consumer, ends, () => {
        clearTimeout(timer);
        resolve();
      });
      void consumer.run({
        autoCommit: false,
        eachBatch: async ({ batch }) => {
          const end = remaining.get(batch.partition);
          if (end === undefined) return;
          for (const message of batch.messages) if (BigInt(message.offset) < end) records.push(toReadRecord(batch.partition, message));
        },
      });
    });
    return records;
  });
}

/** Hands records to `onRecord` until `max` were seen or none arrived for `idleMs` (a bounded tail). */
export async function readUntilIdle(kafka: Kafka, topic: string, options: { groupPrefix: string; fromBeginning: boolean; max: number; idleMs: number; onRecord: (r: ReadRecord) => Promise<void> }): Promise<number> {
  return withThrowawayConsumer(kafka, options.groupPrefix, async (consumer) => {
    let seen = 0;
    await consumer.subscribe({ topic, fromBeginning: options.fromBeginning });
    await new Promise<void>((resolve) => {
      // The first record may take a group join to arrive: allow more before the first one.
      let idle = setTimeout(resolve, options.idleMs + 5000);
      void consumer.run({
        autoCommit: false,
        eachMessage: async ({ partition, message }) => {
          if (seen >= options.max) return;
          seen++;
          await options.onRecord(toReadRecord(partition, message));
          clearTimeout(idle);
          idle = setTimeout(resolve, seen >= options.max ? 0 : options.idleMs);
        },
      });
    });
    return seen;
  });
}
