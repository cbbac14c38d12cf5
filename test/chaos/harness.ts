/**
 * Chaos harness: runs one seeded input through the fabric's processors (each a real `fabric run`
 * process on the real stack), lets a scenario hurt it (kill -9, instance churn, outages), then reads
 * every effect from outside — Kafka outputs read_committed, Redis, ClickHouse through the
 * deduplicated views — so a scenario's snapshot can be compared with a clean run's.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createWriteStream, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { Kafka, logLevel, CompressionTypes, Partitioners } from 'kafkajs';
import { Redis } from 'ioredis';
import { loadConfig, prefixed, type FabricConfig } from '../../topology/config.js';
import { AvroSerde } from '../../schemas/serde.js';
import { loadAvroSchema } from '../../schemas/catalog.js';
import { applyTopology } from '../../topology/apply.js';
import { readToEnd, type ReadRecord } from '../../topology/runtime/topic-reader.js';
import { consumerLag } from '../../topology/runtime/lag.js';
import { createClickHouse, type ClickHouseClient } from '../../topology/runtime/clickhouse.js';
import { packagePath } from '../../topology/paths.js';
import { Rng } from '../../sim/rng.js';
import { generateTransactions } from '../../sim/transactions.js';
import type { Transaction } from '../../schemas/types.generated.js';
import { fabricTopology } from '../../app/fabric-topology.js';
import { dropNamespace } from '../integration/harness.js';
import { readStatuses } from '../../app/processor-status.js';

export const HEADS = ['features', 'tracking', 'drift', 'drift-merge'] as const;
export type Head = (typeof HEADS)[number];

/** One isolated run: its own topics, consumer groups, Redis keys and ClickHouse database. */
export interface Namespace {
  readonly id: string;
  readonly config: FabricConfig;
  readonly env: NodeJS.ProcessEnv;
  readonly kafka: Kafka;
  readonly serde: AvroSerde;
  readonly redis: Redis;
  readonly clickhouse: ClickHouseClient;
  readonly logDir: string;
  cleanup(): Promise<void>;
}

/** The drift merge's idle timeout in every chaos process (wall clock). */
const DRIFT_IDLE_SEC = 4;

/** Settings every chaos process gets: a short session timeout so a killed instance's partitions move within seconds. */
const PROCESS_SETTINGS = {
  FABRIC_CONSUMER_SESSION_TIMEOUT_MS: '6000',
  FABRIC_CONSUMER_REBALANCE_TIMEOUT_MS: '10000',
  FABRIC_CLICKHOUSE_LINGER_MS: '200',
  FABRIC_SINK_RETRY_MS: '200',
  FABRIC_DRIFT_WINDOW_SEC: '30',
  // Short enough that a scenario's end waits little for the last windows' (idle) results, short enough
  // too that outages and stalled instances fire early results mid-stream, which the final ones replace.
  FABRIC_DRIFT_IDLE_SEC: String(DRIFT_IDLE_SEC),
  // The input's event time runs about 40 times faster than the wall clock: a killed instance's few
  // seconds are minutes of event time, which must not reach the hold (the state's bound) here.
  FABRIC_DRIFT_HOLD_SEC: '86400',
  FABRIC_LOG_LEVEL: 'info',
  // Outages in these scenarios last up to 30 s; the restart budget must outlast them.
  FABRIC_PROCESSOR_MAX_RESTARTS: '50',
};

export async function createNamespace(tag: string): Promise<Namespace> {
  const id = `${tag}-${randomBytes(3).toString('hex')}`;
  const config = loadConfig(process.env, {
    topicPrefix: `ch-${id}.`,
    redisKeyPrefix: `ch-${id}:`,
    clickhouseDatabase: `ch_${id.replace(/-/g, '_')}`,
    logLevel: 'warn',
  });
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    ...PROCESS_SETTINGS,
    FABRIC_TOPIC_PREFIX: config.topicPrefix,
    FABRIC_REDIS_PREFIX: config.redisKeyPrefix,
    FABRIC_CLICKHOUSE_DATABASE: config.clickhouseDatabase,
  };
  const kafka = new Kafka({ brokers: config.kafkaBrokers.split(','), clientId: `chaos-${id}`, logLevel: logLevel.NOTHING, retry: { retries: 20, initialRetryTime: 200, maxRetryTime: 3000 } });
  const serde = new AvroSerde({ url: config.registryUrl });
  await applyTopology(fabricTopology(), config, kafka, serde);
  const redis = new Redis(config.redisUrl);
  // Outage scenarios stop Redis: the harness's reads wait for it, its connection errors are expected.
  redis.on('error', () => undefined);
  const clickhouse = createClickHouse(config);
  const logDir = join(tmpdir(), 'fabric-chaos', id);
  mkdirSync(logDir, { recursive: true });
  return {
    id, config, env, kafka, serde, redis, clickhouse, logDir,
    async cleanup() {
      await dropNamespace(config, { kafka, redis, clickhouse });
      await clickhouse.close();
      redis.disconnect();
    },
  };
}

/** A seeded PaySim-like stream whose event times end a little before now (within the allowed skew and lateness). */
export function seededTransactions(seed: number, count: number, options: { accounts?: number; spanMs?: number } = {}): Transaction[] {
  const spanMs = options.spanMs ?? 10 * 60_000;
  const startTs = Date.now() - spanMs - 60_000;
  const out: Transaction[] = [];
  for (const { event } of generateTransactions({ seed, count, startTs, ratePerSec: (count / spanMs) * 1000, accounts: options.accounts ?? 300 })) out.push(event);
  return out;
}

/**
 * Produces the input in a fixed order (one request at a time, idempotent producer), so every
 * namespace gets the same records at the same partitions and offsets. `paceMs` spreads it out so
 * a scenario can hurt processors while records still arrive.
 */
export async function produceInput(ns: Namespace, events: readonly Transaction[], options: { chunk?: number; paceMs?: number; afterChunk?: (index: number) => Promise<void> } = {}): Promise<void> {
  const topic = prefixed(ns.config, 'events.transactions');
  const writer = await ns.serde.writer<Transaction>(`${topic}-value`, loadAvroSchema('transaction'));
  const producer = ns.kafka.producer({ idempotent: true, maxInFlightRequests: 1, allowAutoTopicCreation: false, createPartitioner: Partitioners.DefaultPartitioner });
  await producer.connect();
  try {
    const chunk = options.chunk ?? 100;
    for (let i = 0; i < events.length; i += chunk) {
      await producer.send({ topic, acks: -1, compression: CompressionTypes.None, messages: events.slice(i, i + chunk).map((e) => ({ key: e.account_id, value: writer.encode(e) })) });
      await options.afterChunk?.(i / chunk);
      if (options.paceMs) await new Promise((r) => setTimeout(r, options.paceMs));
    }
  } finally {
    await producer.disconnect();
  }
}

export interface Instance {
  readonly head: Head;
  readonly n: number;
  readonly child: ChildProcess;
  readonly exited: Promise<number | null>;
}

/** The processor processes of one namespace. */
export class Fleet {
  readonly instances: Instance[] = [];
  private count = 0;
  kills = 0;

  constructor(private readonly ns: Namespace) {}

  spawn(head: Head): Instance {
    const n = ++this.count;
    const log = createWriteStream(join(this.ns.logDir, `${head}-${n}.log`));
    const child = spawn(process.execPath, ['--import', 'tsx', 'app/cli/main.ts', 'run', '--processors', head, '--no-gateway', '--no-stack'], { cwd: packagePath(), env: this.ns.env, stdio: ['ignore', 'pipe', 'pipe'] });
    child.stdout!.pipe(log);
    child.stderr!.pipe(log);
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    const instance = { head, n, child, exited };
    this.instances.push(instance);
    return instance;
  }

  alive(head?: Head): Instance[] {
    return this.instances.filter((i) => i.child.exitCode === null && i.child.signalCode === null && (head === undefined || i.head === head));
  }

  async kill(instance: Instance, signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
    instance.child.kill(signal);
    await instance.exited;
    if (signal === 'SIGKILL') this.kills++;
  }

  /** kill -9 of a random live instance (seeded), immediately replaced by a new one of the same processor. */
  async killAndReplace(rng: Rng, heads: readonly Head[] = HEADS): Promise<Instance> {
    const candidates = this.alive().filter((i) => heads.includes(i.head));
    const victim = candidates[rng.int(0, candidates.length - 1)]!;
    await this.kill(victim);
    return this.spawn(victim.head);
  }

  async stopAll(): Promise<void> {
    await Promise.all(this.alive().map((i) => this.kill(i, 'SIGTERM')));
  }

  /** Logs of every instance that exited on its own with a failure (a supervisor would restart it; the harness reports it). */
  failures(): string[] {
    return this.instances.filter((i) => i.child.exitCode !== null && i.child.exitCode !== 0).map((i) => `${i.head}-${i.n} exited ${i.child.exitCode} (log ${join(this.ns.logDir, `${i.head}-${i.n}.log`)})`);
  }
}

async function decodeAll(ns: Namespace, topic: string): Promise<{ records: ReadRecord[]; values: Record<string, unknown>[] }> {
  const records = await readToEnd(ns.kafka, prefixed(ns.config, topic), { groupPrefix: `${ns.config.topicPrefix}reader`, timeoutMs: 120_000 });
  const values = await Promise.all(records.map((r) => ns.serde.decodeAsync<Record<string, unknown>>(r.value!)));
  return { records, values };
}

/**
 * Committed offsets of every group the fleet runs (the HEADS and the processors chained after them)
 * against the ends of its inputs (0 = caught up). Processors the fleet does not run (monitor-alerts,
 * alert-webhook, the recommendation chain) are not waited for.
 */
export async function totalLag(ns: Namespace): Promise<number> {
  const admin = ns.kafka.admin();
  await admin.connect();
  try {
    const topology = fabricTopology();
    const headOf = (name: string): string => {
      const def = topology.processor(name);
      return def.after === undefined ? def.name : headOf(def.after);
    };
    const run = topology.processors.filter((p) => (HEADS as readonly string[]).includes(headOf(p.name)));
    return (await consumerLag(admin, ns.config, run)).reduce((sum, r) => sum + r.lag, 0);
  } finally {
    await admin.disconnect();
  }
}

/** Waits until `count` instances publish a running processor state (each instance publishes its own). */
export async function waitRunning(ns: Namespace, fleet: Fleet, options: { timeoutMs?: number } = {}): Promise<void> {
  const deadline = Date.now() + (options.timeoutMs ?? 120_000);
  for (;;) {
    const running = (await readStatuses(ns.redis, ns.config.redisKeyPrefix)).filter((p) => p.state === 'running' || p.state === 'paused').length;
    const expected = fleet.alive().length;
    if (running >= expected) return;
    const failures = fleet.failures();
    if (failures.length) throw new Error(`processes failed while starting: ${failures.join('; ')}`);
    if (Date.now() > deadline) throw new Error(`${running} of ${expected} instances running after ${options.timeoutMs ?? 120_000} ms; logs in ${ns.logDir}`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

/**
 * Whether the drift merge has seen time pass beyond its idle timeout after the last partial: a clock
 * tick on drift.partials at least the idle timeout after the newest partial. Once the merge consumed
 * it (lag 0), every window has its latest result, the last (open) ones included.
 */
async function driftIdleAfterLastPartial(ns: Namespace): Promise<boolean> {
  const records = await readToEnd(ns.kafka, prefixed(ns.config, 'drift.partials'), { groupPrefix: `${ns.config.topicPrefix}reader` });
  let partial = -Infinity;
  let tick = -Infinity;
  for (const r of records) {
    if (r.key === 'tick') tick = Math.max(tick, r.timestamp);
    else partial = Math.max(partial, r.timestamp);
  }
  return partial === -Infinity || tick >= partial + DRIFT_IDLE_SEC * 1000;
}

/** Waits until every group has consumed everything, the drift merge's last idle results included (no sleeps: polls). */
export async function waitSettled(ns: Namespace, options: { timeoutMs?: number; fleet?: Fleet } = {}): Promise<void> {
  const deadline = Date.now() + (options.timeoutMs ?? 240_000);
  let last = -1;
  for (;;) {
    const lag = await totalLag(ns).catch(() => -1);
    // Idle checked first, lag after it: the tick it found has then been consumed, and what it fired tracked.
    if (lag === 0 && (await driftIdleAfterLastPartial(ns)) && (await totalLag(ns).catch(() => -1)) === 0) return;
    const failures = options.fleet?.failures() ?? [];
    if (failures.length) throw new Error(`processes failed while settling: ${failures.join('; ')}`);
    if (Date.now() > deadline) throw new Error(`not settled after ${options.timeoutMs ?? 240_000} ms: lag ${lag} (was ${last}); logs in ${ns.logDir}`);
    last = lag;
    await new Promise((r) => setTimeout(r, 500));
  }
}

export interface Snapshot {
  /** event_id -> prediction value (JSON), from a read_committed read of predictions.fraud. */
  readonly predictions: Map<string, string>;
  readonly predictionRecords: number;
  /** event_id -> its feature row of the greatest version. */
  readonly features: Map<string, string>;
  readonly featureRecords: number;
  /** Distinct (event_id, version) pairs among the feature records: fewer than featureRecords means duplicates. */
  readonly featureVersions: number;
  /**
   * drift.metrics as a consumer that keeps the latest record per window sees it (JSON, sorted): the
   * latest result of every (version, variable, window). How many early results came before depends on
   * the wall clock; the latest ones do not.
   */
  readonly drift: string[];
  /** Windows with more than one final result (none expected). */
  readonly driftFinalRepeats: number;
  readonly dlq: number;
  readonly late: number;
  /** account -> latest online features hash (JSON, keys sorted). */
  readonly online: Map<string, string>;
  /** ClickHouse through the deduplicated views: table -> sorted rows (JSON) and the row count the view shows. */
  readonly clickhouse: Record<string, { rows: string[]; visible: number }>;
  /** The raw values for independent recomputations. */
  readonly predictionValues: Record<string, unknown>[];
  readonly inputs: { partition: number; offset: string; value: Transaction }[];
}

function sortedJson(v: unknown): string {
  return JSON.stringify(v, (_k, x: unknown) => (x && typeof x === 'object' && !Array.isArray(x) ? Object.fromEntries(Object.entries(x as Record<string, unknown>).sort(([a], [b]) => a.localeCompare(b))) : x));
}

function byEventId(values: Record<string, unknown>[]): Map<string, string> {
  const out = new Map<string, string>();
  for (const v of values) out.set(String(v.event_id), sortedJson(v));
  return out;
}

/** Feature rows by event id, the greatest version of each (a late event's corrections follow the first row). */
function latestVersions(values: Record<string, unknown>[]): { rows: Map<string, string>; distinct: number } {
  const best = new Map<string, Record<string, unknown>>();
  const seen = new Set<string>();
  for (const v of values) {
    seen.add(`${String(v.event_id)}@${String(v.version)}`);
    const cur = best.get(String(v.event_id));
    if (!cur || Number(v.version) > Number(cur.version)) best.set(String(v.event_id), v);
  }
  return { rows: new Map([...best].map(([k, v]) => [k, sortedJson(v)])), distinct: seen.size };
}

/** The latest drift result per (version, variable, window), in offset order (one key's records share a partition). */
function latestDrift(drift: { records: ReadRecord[]; values: Record<string, unknown>[] }): { drift: string[]; driftFinalRepeats: number } {
  const order = drift.records.map((r, i) => ({ r, v: drift.values[i]! })).sort((a, b) => a.r.partition - b.r.partition || Number(BigInt(a.r.offset) - BigInt(b.r.offset)));
  const latest = new Map<string, Record<string, unknown>>();
  const finals = new Set<string>();
  let driftFinalRepeats = 0;
  for (const { v } of order) {
    const key = `${String(v.model)}/${String(v.version)}/${String(v.variable)}/${String(v.window_start)}/${String(v.window_end)}`;
    if (v.final === true) {
      if (finals.has(key)) driftFinalRepeats++;
      finals.add(key);
    }
    latest.set(key, v);
  }
  return { drift: [...latest.values()].map(sortedJson).sort(), driftFinalRepeats };
}

export async function snapshot(ns: Namespace): Promise<Snapshot> {
  const [inputs, predictions, features, drift] = await Promise.all([decodeAll(ns, 'events.transactions'), decodeAll(ns, 'predictions.fraud'), decodeAll(ns, 'features.account'), decodeAll(ns, 'drift.metrics')]);
  const [dlq, late] = await Promise.all([readToEnd(ns.kafka, prefixed(ns.config, 'dlq.events.transactions'), { groupPrefix: `${ns.config.topicPrefix}reader` }), readToEnd(ns.kafka, prefixed(ns.config, 'late.transactions'), { groupPrefix: `${ns.config.topicPrefix}reader` })]);
  const accounts = [...new Set(inputs.values.map((v) => String(v.account_id)))].sort();
  const pipeline = ns.redis.pipeline();
  for (const a of accounts) pipeline.hgetall(`${ns.config.redisKeyPrefix}feat:account:${a}`);
  const hashes = (await pipeline.exec()) ?? [];
  const online = new Map<string, string>();
  accounts.forEach((a, i) => online.set(a, sortedJson(hashes[i]?.[1] ?? null)));
  const db = ns.config.clickhouseDatabase;
  const clickhouse: Snapshot['clickhouse'] = {};
  for (const [table, columns] of [
    ['v_predictions', 'event_id, score, decision, version, fallback'],
    ['v_events_transactions', 'event_id, account_id, amount, ts_ms'],
    ['features_account FINAL', 'event_id, entity_id, ts_ms, txn_count_1h, txn_count_24h, amount_sum_1h, amount_sum_24h, amount_avg_24h, amount_max_24h, distinct_counterparties_24h, seconds_since_last_txn, amount_exact, source_offset, version'],
    ['drift_metrics FINAL', 'model, variable, window_start_ms, count, psi, status, final'],
  ] as const) {
    const rs = await ns.clickhouse.query({ query: `SELECT ${columns} FROM ${db}.${table}`, format: 'JSONEachRow' });
    const rows = (await rs.json<Record<string, unknown>>()).map(sortedJson).sort();
    clickhouse[table] = { rows, visible: rows.length };
  }
  return {
    predictions: byEventId(predictions.values),
    predictionRecords: predictions.records.length,
    features: latestVersions(features.values).rows,
    featureRecords: features.records.length,
    featureVersions: latestVersions(features.values).distinct,
    ...latestDrift(drift),
    dlq: dlq.length,
    late: late.length,
    online,
    clickhouse,
    predictionValues: predictions.values,
    inputs: inputs.records.map((r, i) => ({ partition: r.partition, offset: r.offset, value: inputs.values[i] as unknown as Transaction })),
  };
}

/** Every difference between a scenario's effects and the clean run's (empty when equal). */
export function differences(clean: Snapshot, other: Snapshot): string[] {
  const diffs: string[] = [];
  const maps = (name: string, a: Map<string, string>, b: Map<string, string>): void => {
    for (const [k, v] of a) {
      const w = b.get(k);
      if (w === undefined) diffs.push(`${name}: ${k} missing`);
      else if (w !== v) diffs.push(`${name}: ${k} differs: ${v} vs ${w}`);
    }
    for (const k of b.keys()) if (!a.has(k)) diffs.push(`${name}: ${k} unexpected`);
  };
  maps('predictions.fraud', clean.predictions, other.predictions);
  maps('features.account', clean.features, other.features);
  maps('redis online features', clean.online, other.online);
  if (other.predictionRecords !== other.predictions.size) diffs.push(`predictions.fraud: ${other.predictionRecords - other.predictions.size} duplicates visible read_committed`);
  if (other.featureRecords !== other.featureVersions) diffs.push(`features.account: ${other.featureRecords - other.featureVersions} duplicates visible read_committed`);
  if (sortedJson(clean.drift) !== sortedJson(other.drift)) {
    const mine = new Set(clean.drift);
    const theirs = new Set(other.drift);
    diffs.push(`drift.metrics (latest per window) differ: ${clean.drift.filter((d) => !theirs.has(d)).length} of ${clean.drift.length} missing or different, ${other.drift.filter((d) => !mine.has(d)).length} extra or different; e.g. ${other.drift.find((d) => !mine.has(d)) ?? ''}`);
  }
  if (other.driftFinalRepeats > 0) diffs.push(`drift.metrics: ${other.driftFinalRepeats} windows with more than one final result`);
  if (clean.dlq !== other.dlq) diffs.push(`dlq: ${clean.dlq} vs ${other.dlq}`);
  if (clean.late !== other.late) diffs.push(`late: ${clean.late} vs ${other.late}`);
  for (const [table, { rows }] of Object.entries(clean.clickhouse)) {
    const theirs = other.clickhouse[table]!.rows;
    if (rows.join('\n') !== theirs.join('\n')) {
      const mine = new Set(rows);
      const missing = rows.filter((r) => !new Set(theirs).has(r)).length;
      const extra = theirs.filter((r) => !mine.has(r)).length;
      diffs.push(`clickhouse ${table}: ${missing} rows missing, ${extra} extra/different`);
    }
  }
  return diffs;
}
