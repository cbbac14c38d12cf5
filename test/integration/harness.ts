import { randomBytes } from 'node:crypto';
import { Kafka, logLevel } from 'kafkajs';
import { Redis } from 'ioredis';
import { loadConfig, prefixed, type FabricConfig } from '../../topology/config.js';
import { createLogger } from '../../topology/runtime/log.js';
import { createClickHouse, type ClickHouseClient } from '../../topology/runtime/clickhouse.js';
import { startFabric, type FabricHandle, type FabricOptions } from '../../app/fabric.js';
import { readToEnd, type ReadRecord } from '../../topology/runtime/topic-reader.js';

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
      await dropNamespace(config, { kafka, redis, clickhouse });
      await clickhouse.close();
      redis.disconnect();
    },
  };
}

/**
 * Deletes everything a run created under its namespace: topics and consumer groups with its prefix,
 * its Redis keys and its ClickHouse database. The clients stay open (their owner closes them).
 */
export async function dropNamespace(config: FabricConfig, clients: { kafka: Kafka; redis: Redis; clickhouse?: ClickHouseClient }): Promise<void> {
  const admin = clients.kafka.admin();
  await admin.connect();
  try {
    const topics = (await admin.listTopics()).filter((t) => t.startsWith(config.topicPrefix));
    if (topics.length) await admin.deleteTopics({ topics }).catch(() => undefined);
    const groups = (await admin.listGroups()).groups.map((g) => g.groupId).filter((g) => g.startsWith(config.topicPrefix));
    if (groups.length) await admin.deleteGroups(groups).catch(() => undefined);
  } finally {
    await admin.disconnect();
  }
  await clients.clickhouse?.command({ query: `DROP DATABASE IF EXISTS ${config.clickhouseDatabase}` }).catch(() => undefined);
  let cursor = '0';
  do {
    const [next, keys] = await clients.redis.scan(cursor, 'MATCH', `${config.redisKeyPrefix}*`, 'COUNT', 1000);
    cursor = next;
    if (keys.length) await clients.redis.del(...keys);
  } while (cursor !== '0');
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
export function readAll(kafka: Kafka, config: FabricConfig, topic: string): Promise<ReadRecord[]> {
  return readToEnd(kafka, prefixed(config, topic), { groupPrefix: 'it-reader' });
}

export async function chRows<T>(client: ClickHouseClient, query: string): Promise<T[]> {
  const rs = await client.query({ query, format: 'JSONEachRow' });
  return rs.json<T>();
}

export function transaction(i: number, overrides: Record<string, unknown> = {}): Record<string, unknown> {
  return { event_id: `it-${i}-${randomBytes(3).toString('hex')}`, account_id: `A${i % 5}`, counterparty_id: `M${i % 3}`, type: 'PAYMENT', amount: 10 + i, old_balance: 1000, new_balance: 990 - i, channel: 'web', ts: Date.now() - 1000 + i, ...overrides };
}
