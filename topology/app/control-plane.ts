import type { Kafka } from 'kafkajs';
import { prefixed, type FabricConfig } from '../config.js';
import type { BatchingProducer } from '../runtime/producer.js';

/** A model registration as written to the compacted _fabric.models topic (latest per model name wins). */
export interface ModelRegistration {
  readonly name: string;
  readonly version: string;
  readonly sha256: string;
  readonly path: string;
  readonly thresholds: { readonly block: number; readonly review: number };
  readonly stage: 'production' | 'staging';
}

export async function publishModel(producer: BatchingProducer, config: FabricConfig, registration: ModelRegistration): Promise<void> {
  await producer.send([{ topic: prefixed(config, '_fabric.models'), key: registration.name, value: Buffer.from(JSON.stringify(registration)) }]);
}

/**
 * Reads a compacted control topic from the beginning to its current end and returns the latest
 * value per key. Uses a throwaway consumer group that commits nothing.
 */
export async function readCompacted(kafka: Kafka, config: FabricConfig, topic: string, timeoutMs = 15_000): Promise<Map<string, Buffer>> {
  const physical = prefixed(config, topic);
  const admin = kafka.admin();
  await admin.connect();
  let ends: { partition: number; high: string; low: string }[];
  try {
    ends = (await admin.fetchTopicOffsets(physical)).map((o) => ({ partition: o.partition, high: o.high, low: o.low }));
  } finally {
    await admin.disconnect();
  }
  const latest = new Map<string, Buffer>();
  const remaining = new Set(ends.filter((e) => BigInt(e.high) > BigInt(e.low)).map((e) => e.partition));
  if (remaining.size === 0) return latest;
  const highOf = new Map(ends.map((e) => [e.partition, BigInt(e.high)]));
  const consumer = kafka.consumer({ groupId: `${prefixed(config, 'fabric.cp-reader')}-${process.pid}-${Date.now()}` });
  await consumer.connect();
  try {
    await consumer.subscribe({ topic: physical, fromBeginning: true });
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`reading ${physical} timed out after ${timeoutMs} ms`)), timeoutMs);
      void consumer.run({
        autoCommit: false,
        eachMessage: async ({ partition, message }) => {
          const key = message.key?.toString();
          if (key !== undefined) {
            if (message.value) latest.set(key, message.value);
            else latest.delete(key);
          }
          if (BigInt(message.offset) + 1n >= highOf.get(partition)!) remaining.delete(partition);
          if (remaining.size === 0) {
            clearTimeout(timer);
            resolve();
          }
        },
      });
    });
  } finally {
    await consumer.disconnect();
  }
  return latest;
}
