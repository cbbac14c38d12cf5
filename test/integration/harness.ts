import { randomBytes } from 'node:crypto';
import { Kafka, logLevel } from 'kafkajs';
import { Redis } from 'ioredis';
import { loadConfig, prefixed, type FabricConfig } from '../../topology/config.js';
import { createLogger } from '../../topology/runtime/log.js';
import { createClickHouse, type ClickHouseClient } from '../../topology/runtime/clickhouse.js';
import { startFabric, type FabricHandle, type FabricOptions } from '../../topology/app/fabric.js';

/** A configuration isolated from every other run: its own topics, consumer groups, Redis keys and ClickHouse database. */
export function isolatedConfig(overrides: Parameters<typeof loadConfig>[1] = {}): FabricConfig {
  const id = randomBytes(4).toString('hex');
  return loadConfig(process.env, {
    topicPrefix: `it-${id}.`,
    redisKeyPrefix: `it-${id}:`,
    clickhouseDatabase: `it_${id}`,
    gatewayPort: 0,
    logLevel: 'warn',
    clickhouseLingerMs: 200,
    scoringFeatureWaitMs: 5000,
    ...overrides,
  });
}

export interface TestFabric {
  readonly config: FabricConfig;
  readonly handle: FabricHandle;
  readonly url: string;
  readonly kafka: Kafka;
  readonly clickhouse: ClickHouseClient;
  readonly redis: Redis;
  /** Stops the fabric, deletes the run's topics, Redis keys and ClickHouse database. */
  cleanup(): Promise<void>;
}

export async function startTestFabric(config: FabricConfig, options: FabricOptions = {}): Promise<TestFabric> {
  const handle = await startFabric(config, createLogger(config), options);
  const kafka = new Kafka({ brokers: config.kafkaBrokers.split(','), clientId: 'it', logLevel: logLevel.NOTHING });
  const clickhouse = createClickHouse(config);
  const redis = new Redis(config.redisUrl);
  let stopped = false;
  return {
    config,
    handle,
    url: `http://127.0.0.1:${handle.gatewayPort}`,
    kafka,
    clickhouse,
    redis,
    async cleanup() {
      if (!stopped) await handle.stop();
      stopped = true;
      const admin = kafka.admin();
      await admin.connect();
      const topics = (await admin.listTopics()).filter((t) => t.startsWith(config.topicPrefix));
      if (topics.length) await admin.deleteTopics({ topics }).catch(() => undefined);
      await admin.disconnect();
      await clickhouse.command({ query: `DROP DATABASE IF EXISTS ${config.clickhouseDatabase}` }).catch(() => undefined);
      await clickhouse.close();
      const keys = await redis.keys(`${config.redisKeyPrefix}*`);
      for (let i = 0; i < keys.length; i += 500) await redis.del(...keys.slice(i, i + 500));
      redis.disconnect();
    },
  };
}

/** Polls `probe` until it returns a value that `done` accepts; no sleeps in tests. */
export async function waitFor<T>(probe: () => Promise<T>, done: (value: T) => boolean, options: { timeoutMs?: number; intervalMs?: number; what?: string } = {}): Promise<T> {
  const deadline = Date.now() + (options.timeoutMs ?? 60_000);
  let last: T | undefined;
  for (;;) {
    try {
      last = await probe();
      if (done(last)) return last;
    } catch (err) {
      if (Date.now() > deadline) throw err;
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${options.what ?? 'condition'}; last value: ${JSON.stringify(last)?.slice(0, 500)}`);
    await new Promise((r) => setTimeout(r, options.intervalMs ?? 250));
  }
}

export async function post(url: string, path: string, body: string, headers: Record<string, string> = {}): Promise<{ status: number; body: Record<string, unknown>; headers: Headers }> {
  const res = await fetch(`${url}${path}`, { method: 'POST', body, headers: { 'Content-Type': 'application/json', Authorization: 'Bearer dev-key', ...headers } });
  const text = await res.text();
  let parsed: Record<string, unknown> = {};
  try {
    parsed = JSON.parse(text) as Record<string, unknown>;
  } catch {
    parsed = { raw: text };
  }
  return { status: res.status, body: parsed, headers: res.headers };
}

/** Every record of a topic (all partitions) from the beginning until its current end. */
export async function readAll(kafka: Kafka, config: FabricConfig, topic: string): Promise<{ key: string | null; value: Buffer | null; headers: Record<string, string>; partition: number; offset: string }[]> {
  const physical = prefixed(config, topic);
  const admin = kafka.admin();
  await admin.connect();
  const ends = await admin.fetchTopicOffsets(physical);
  await admin.disconnect();
  const remaining = new Map(ends.filter((e) => BigInt(e.high) > BigInt(e.low)).map((e) => [e.partition, BigInt(e.high)]));
  const out: { key: string | null; value: Buffer | null; headers: Record<string, string>; partition: number; offset: string }[] = [];
  if (remaining.size === 0) return out;
  const consumer = kafka.consumer({ groupId: `it-reader-${randomBytes(4).toString('hex')}` });
  await consumer.connect();
  await consumer.subscribe({ topic: physical, fromBeginning: true });
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`reading ${physical} timed out`)), 60_000);
    void consumer.run({
      eachMessage: async ({ partition, message }) => {
        const headers: Record<string, string> = {};
        for (const [k, v] of Object.entries(message.headers ?? {})) headers[k] = String(v);
        out.push({ key: message.key?.toString() ?? null, value: message.value, headers, partition, offset: message.offset });
        const end = remaining.get(partition);
        if (end !== undefined && BigInt(message.offset) + 1n >= end) remaining.delete(partition);
        if (remaining.size === 0) {
          clearTimeout(timer);
          resolve();
        }
      },
    });
  });
  await consumer.disconnect();
  return out;
}

export async function chRows<T>(client: ClickHouseClient, query: string): Promise<T[]> {
  const rs = await client.query({ query, format: 'JSONEachRow' });
  return rs.json<T>();
}

export function transaction(i: number, overrides: Record<string, unknown> = {}): Record<string, unknown> {
  return { event_id: `it-${i}-${randomBytes(3).toString('hex')}`, account_id: `A${i % 5}`, counterparty_id: `M${i % 3}`, type: 'PAYMENT', amount: 10 + i, old_balance: 1000, new_balance: 990 - i, channel: 'web', ts: Date.now() - 1000 + i, ...overrides };
}
