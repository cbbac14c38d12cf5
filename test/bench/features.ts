/**
 * The features section of `npm run bench`: three pairs, each ours vs a reference measured back to back
 * (reference first) in the same run, median of the repetitions.
 *
 *   1. the features-user processor (user group over events.interactions, plus the repartition topic it
 *      writes in the same transaction) draining N pre-produced interactions, vs a no-op kafkajs
 *      eachBatch consumer of the same topic (the Kafka limit on this box). Each repetition runs in a
 *      fresh namespace (topic prefix, Redis prefix: a new group and empty state); the clock runs from
 *      startFabric() until the group's committed offsets reach the end of the input.
 *   2. readOnlineFeatures() for 64 entities (one pipelined round trip plus decoding and evaluation),
 *      vs redis-benchmark sending the same EVALSHA, 64 per pipeline, over the same keys.
 *   3. buildTrainingSet() for L labels from a ClickHouse feature history (end to end: labels read,
 *      history load, features, CSV write), vs Feast's get_historical_features over the same history.
 *
 * Everything lives under the run's topic prefix and Redis prefix (removed by cleanup.ts) and a
 * ClickHouse database of its own (dropped here at the end of the pair).
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { access, constants, rm, writeFile } from 'node:fs/promises';
import { delimiter, dirname, join } from 'node:path';
import { Redis } from 'ioredis';
import type { Admin, Kafka } from 'kafkajs';
import { loadConfig, prefixed, type FabricConfig } from '../../topology/config.js';
import { applyClickHouse, applyTopology } from '../../topology/apply.js';
import { createKafka } from '../../topology/runtime/kafka.js';
import type { Logger } from '../../topology/runtime/log.js';
import type { Metrics } from '../../topology/runtime/metrics.js';
import { TestDriver } from '../../topology/runtime/test-driver.js';
import { createClickHouse, sqlIdentifier } from '../../topology/runtime/clickhouse.js';
import { accountGroup, userGroup } from '../../topology/features/groups.js';
import type { FeatureGroup } from '../../topology/features/definition.js';
import { featureEvent } from '../../topology/features/engine.js';
import { featureTable, featureTableRow, featureTopic, type FeatureRow } from '../../topology/features/rows.js';
import { startFabric, type FabricHandle } from '../../app/fabric.js';
import { fabricTopology, ITEM_REPARTITION_TOPIC } from '../../app/fabric-topology.js';
import { featuresProcessor } from '../../processors/features/processor.js';
import { EntityLog } from '../../processors/features/entity-log.js';
import { ONLINE_READ_SCRIPT, readOnlineFeatures } from '../../serving/features/online.js';
import { groupKeys } from '../../serving/features/redis-keys.js';
import { buildTrainingSet } from '../../processors/features/training-set.js';
import { AvroSerde } from '../../schemas/serde.js';
import { loadAvroSchema } from '../../schemas/catalog.js';
import type { Interaction } from '../../schemas/types.generated.js';
import { generateInteractions } from '../../sim/interactions.js';
import { generateTransactions } from '../../sim/transactions.js';
import { kcatCommittedCount } from './kcat.js';
import { kafkajsConsumeSample, sample, topicEnd, withTimeout, type Sample } from './throughput.js';
import { feastReference, type FeastHistoryRow } from './feast.js';
import { formatNumber, median, quantile } from './stats.js';
import { seededUniform } from '../shared/seeded.js';

/** What a pair fills in of a report row (run.ts's Row has these fields). */
export interface RowSlot {
  ours: number | null;
  reference: number | null;
  ratio: number | null;
  samples: { ours: Sample[]; reference: Sample[] };
  notes: string[];
  error?: string;
}

export interface FeaturesSizes {
  /** Interactions pre-produced for the processor pair. */
  readonly featuresEvents: number;
  readonly featuresRepetitions: number;
  /** Online reads (of 64 entities each) per repetition, after a warm-up. */
  readonly onlineCalls: number;
  readonly onlineWarmupCalls: number;
  readonly onlineRepetitions: number;
  readonly trainingLabels: number;
  /** Transactions of the feature history (2,000 accounts over 2 days). */
  readonly trainingEvents: number;
  readonly trainingRepetitions: number;
}

type ConfigOverrides = Parameters<typeof loadConfig>[1];

export interface FeaturesContext {
  /** Overrides every namespace starts from (ports, log level, ClickHouse database, ...). */
  readonly common: ConfigOverrides;
  readonly base: FabricConfig;
  readonly log: Logger;
  readonly runId: string;
  /** The run's topic prefix and Redis prefix (cleanup.ts removes everything under them). */
  readonly prefix: string;
  readonly redisPrefix: string;
  readonly tmp: string;
  readonly seed: number;
  readonly sizes: FeaturesSizes;
  readonly progress: (line: string) => void;
}

const HOUR_MS = 3_600_000;
const DAY_MS = 24 * HOUR_MS;
const POLL_MS = 25;

// ------------------------------------------------------------------------------------ 1. processor

/** Event-time rate of the pre-produced interactions (event times end a minute before the run). */
const INTERACTION_RATE = 200;

export interface FeaturesProcessorSample extends Sample {
  /** startFabric() until it resolved (consumer joined, partitions assigned). */
  readonly startupMs: number;
  /** messages / (done - startFabric resolved) */
  readonly processingRate: number;
  readonly batches: number;
}

async function committed(admin: Admin, groupId: string, topic: string): Promise<number> {
  const [entry] = await admin.fetchOffsets({ groupId, topics: [topic] });
  return (entry?.partitions ?? []).reduce((s, p) => s + Math.max(0, Number(p.offset)), 0);
}

async function batchesOf(metrics: Metrics, processor: string): Promise<number> {
  let batches = 0;
  for (const v of (await metrics.processorBatchSeconds.get()).values) if (v.labels.processor === processor && v.metricName?.endsWith('_count')) batches += v.value;
  return batches;
}

async function produceInteractions(kafka: Kafka, serde: AvroSerde, topic: string, events: readonly Interaction[]): Promise<void> {
  const writer = await serde.writer<Interaction>(`${topic}-value`, loadAvroSchema('interaction'));
  const producer = kafka.producer({ idempotent: true, maxInFlightRequests: 1, allowAutoTopicCreation: false });
  await producer.connect();
  try {
    const chunk = 1000;
    for (let i = 0; i < events.length; i += chunk) {
      await producer.send({ topic, acks: -1, messages: events.slice(i, i + chunk).map((e) => ({ key: e.user_id, value: writer.encode(e) })) });
    }
  } finally {
    await producer.disconnect();
  }
}

/**
 * One measurement of the features-user processor in the (fresh) namespace of `config`, whose input
 * already holds `n` records: startFabric (no gateway, no apply: the topology is applied beforehand,
 * as for the reference) until the group's committed offsets cover the input. Afterwards (untimed):
 * the repartition topic holds exactly `n` records and features.user at least `n` rows, read_committed.
 */
async function featuresProcessorSample(config: FabricConfig, log: Logger, admin: Admin, n: number, timeoutMs = 300_000): Promise<FeaturesProcessorSample> {
  const def = fabricTopology().processor('features-user');
  const input = prefixed(config, 'events.interactions');
  const group = prefixed(config, def.group);
  let fabric: FabricHandle | null = null;
  try {
    const t0 = performance.now();
    fabric = await startFabric(config, log, { processors: ['features-user'], gateway: false, apply: false });
    const started = performance.now();
    const failed = fabric.fatal.then((err) => Promise.reject(new Error(`features-user failed: ${err.message}`)));
    failed.catch(() => undefined);
    const deadline = t0 + timeoutMs;
    const drained = (async (): Promise<number> => {
      for (;;) {
        if ((await committed(admin, group, input)) >= n) return performance.now();
        if (performance.now() > deadline) throw new Error(`group ${group} committed ${await committed(admin, group, input)} of ${n} input offsets within ${timeoutMs / 1000} s`);
        await new Promise((r) => setTimeout(r, POLL_MS));
      }
    })();
    drained.catch(() => undefined);
    const doneAt = await Promise.race([drained, failed]);
    const batches = await batchesOf(fabric.metrics, 'features-user');
    await fabric.stop();
    fabric = null;

    // Not timed: every event was forwarded once and got its row, visible read_committed.
    const repartitioned = await kcatCommittedCount(config.kafkaBrokers, prefixed(config, ITEM_REPARTITION_TOPIC));
    const rows = await kcatCommittedCount(config.kafkaBrokers, prefixed(config, featureTopic(userGroup)));
    if (repartitioned !== n || rows < n) throw new Error(`features-user wrote ${repartitioned} repartitioned records and ${rows} feature rows read_committed for ${n} input events (expected ${n} and >= ${n})`);
    const elapsedMs = doneAt - t0;
    return { ...sample(elapsedMs, n, `${rows} feature rows, ${repartitioned} repartitioned`), startupMs: started - t0, processingRate: n / ((doneAt - started) / 1000), batches };
  } finally {
    if (fabric) await withTimeout(fabric.stop(), 60_000, 'stopping features-user').catch(() => undefined);
  }
}

/**
 * Row 1: features-user vs a no-op kafkajs eachBatch consumer over the same pre-produced topic, one
 * fresh namespace per repetition (reference first, then ours).
 */
export async function featuresProcessorPair(ctx: FeaturesContext, row: RowSlot): Promise<void> {
  const n = ctx.sizes.featuresEvents;
  const spanMs = Math.round((n / INTERACTION_RATE) * 1000);
  const startTs = Date.now() - spanMs - 60_000;
  const events = [...generateInteractions({ seed: ctx.seed + 10, startTs, ratePerSec: INTERACTION_RATE, count: n })].map((e) => ({ ...e, event_id: `${ctx.runId}-${e.event_id}` }));
  const users = new Set(events.map((e) => e.user_id)).size;
  const ours: FeaturesProcessorSample[] = [];
  const ref: Sample[] = [];
  for (let i = 0; i < ctx.sizes.featuresRepetitions; i++) {
    const tag = `feat${i}`;
    const config = loadConfig(undefined, { ...ctx.common, topicPrefix: `${ctx.prefix}${tag}.`, redisKeyPrefix: `${ctx.redisPrefix}${tag}:` });
    const kafka = createKafka(config, ctx.log, 'bench-features');
    const serde = new AvroSerde({ url: config.registryUrl });
    const input = prefixed(config, 'events.interactions');
    await applyTopology(fabricTopology(), config, kafka, serde, { clickhouse: false });
    await produceInteractions(kafka, serde, input, events);
    const admin = kafka.admin();
    await admin.connect();
    try {
      const produced = await topicEnd(admin, input);
      if (produced !== n) throw new Error(`${input} holds ${produced} records after pre-producing ${n}`);
      ref.push(await kafkajsConsumeSample(kafka, prefixed(config, 'bench.features.noop'), input, n));
      ours.push(await featuresProcessorSample(config, ctx.log, admin, n));
    } finally {
      await admin.disconnect().catch(() => undefined);
    }
    const o = ours.at(-1)!;
    ctx.progress(`features 1/3 rep ${i + 1}: no-op consumer ${formatNumber(ref.at(-1)!.rate)}/s, features-user ${formatNumber(o.rate)}/s (${formatNumber(o.processingRate)}/s after a ${formatNumber(o.startupMs)} ms start, ${o.batches} batches)`);
  }
  row.samples = { ours, reference: ref };
  row.ours = median(ours.map((s) => s.rate));
  row.reference = median(ref.map((s) => s.rate));
  row.ratio = row.ours / row.reference;
  const m = (f: (x: FeaturesProcessorSample) => number): string => formatNumber(median(ours.map(f)));
  row.notes.push(
    `${formatNumber(n)} pre-produced interactions of ${formatNumber(users)} users (3 partitions, event times spanning ${formatNumber(spanMs / 1000)} s and ending 1 min before the run), one fresh namespace per repetition (topics, group, Redis state), the no-op consumer then features-user, ${ctx.sizes.featuresRepetitions} times; both clocks include connect and partition assignment: the consumer's until it has seen N messages, ours from startFabric (apply off: the topology is applied before either) until the group committed every input offset`,
    `features-user (${ctx.base.processingGuarantee}) per batch: Redis read of the batch's unseen users, a MULTI of window/latest writes, and a transaction of N feature rows + N repartition records (${ITEM_REPARTITION_TOPIC}) + offsets; checked afterwards: N repartitioned records and >= N rows read_committed`,
    `median start-up ${m((x) => x.startupMs)} ms, after it ${m((x) => x.processingRate)} events/s; batches committed (median) ${m((x) => x.batches)}`,
  );
}

// -------------------------------------------------------------------------------------- 2. online read

export const ONLINE_ENTITIES = 64;
const ONLINE_EVENTS_PER_ENTITY = 100;
/** Each entity's events span about this long (mean), ending a minute (plus a second per entity) before the run. */
const ONLINE_SPAN_MS = 16 * HOUR_MS;

/** redis-benchmark's __rand_int__ is 12 zero-padded digits: E + that is an entity id it can address. */
export const onlineEntityId = (i: number): string => `E${String(i).padStart(12, '0')}`;

interface Exec {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
  readonly error?: string;
}

function exec(cmd: string, args: readonly string[], timeoutMs: number): Promise<Exec> {
  return new Promise((done) => {
    execFile(cmd, [...args], { timeout: timeoutMs, killSignal: 'SIGKILL', maxBuffer: 16 * 1024 * 1024, encoding: 'utf8' }, (err, stdout, stderr) => {
      if (!err) return done({ code: 0, stdout, stderr });
      const e = err as NodeJS.ErrnoException & { code?: number | string; killed?: boolean; signal?: string };
      const why = e.killed ? `killed after ${timeoutMs / 1000} s` : typeof e.code === 'number' ? `exit ${e.code}` : (e.signal ?? e.message);
      done({ code: typeof e.code === 'number' ? e.code : null, stdout, stderr, error: why });
    });
  });
}

async function executable(path: string): Promise<boolean> {
  try {
    await access(path, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/** redis-benchmark in PATH, else next to redis-server (in PATH or Debian's /usr/bin); null when missing. */
async function findRedisBenchmark(): Promise<string | null> {
  const dirs = (process.env.PATH ?? '').split(delimiter).filter(Boolean);
  for (const d of dirs) if (await executable(join(d, 'redis-benchmark'))) return join(d, 'redis-benchmark');
  for (const d of [...dirs, '/usr/bin', '/usr/local/bin', '/usr/sbin']) {
    const server = join(d, 'redis-server');
    if ((await executable(server)) && (await executable(join(dirname(server), 'redis-benchmark')))) return join(dirname(server), 'redis-benchmark');
  }
  return null;
}

interface RedisBenchmarkResult {
  readonly rps: number;
  readonly p50: number;
  readonly p99: number;
  readonly avg: number;
  readonly max: number;
}

/** Parses `redis-benchmark --csv` (Redis 7: "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms",...). */
function parseRedisBenchmarkCsv(stdout: string): RedisBenchmarkResult {
  const lines = stdout.trim().split('\n').map((l) => l.trim()).filter((l) => l.startsWith('"'));
  const cells = (l: string): string[] => l.split(',').map((c) => c.replace(/^"|"$/g, ''));
  const header = lines[0] ? cells(lines[0]) : [];
  const data = lines[1] ? cells(lines[1]) : [];
  const col = (name: string): number => {
    const i = header.indexOf(name);
    const v = i >= 0 ? Number(data[i]) : Number.NaN;
    if (!Number.isFinite(v)) throw new Error(`redis-benchmark --csv printed no ${name} column (a redis-benchmark older than Redis 7?): ${stdout.trim().slice(0, 200)}`);
    return v;
  };
  return { rps: col('rps'), p50: col('p50_latency_ms'), p99: col('p99_latency_ms'), avg: col('avg_latency_ms'), max: col('max_latency_ms') };
}

interface CommandStat {
  calls: number;
  usec: number;
  failed: number;
}

async function evalshaStats(redis: Redis): Promise<CommandStat> {
  const info = await redis.info('commandstats');
  const line = info.split('\n').find((l) => l.startsWith('cmdstat_evalsha:'));
  const get = (k: string): number => Number(new RegExp(`${k}=([0-9.]+)`).exec(line ?? '')?.[1] ?? 0);
  return { calls: get('calls'), usec: get('usec'), failed: get('failed_calls') + get('rejected_calls') };
}

/** Writes 64 entities' windows and latest hashes under `keyPrefix` by running the features processor over their events (TestDriver, no Kafka). */
async function populateOnline(ctx: FeaturesContext, redis: Redis, keyPrefix: string, group: FeatureGroup): Promise<{ events: number; oldestMs: number }> {
  const endAt = Date.now() - 60_000;
  const all: Interaction[] = [];
  for (let u = 0; u < ONLINE_ENTITIES; u++) {
    const own = [...generateInteractions({ seed: ctx.seed + 1000 + u, startTs: 0, ratePerSec: ONLINE_EVENTS_PER_ENTITY / (ONLINE_SPAN_MS / 1000), count: ONLINE_EVENTS_PER_ENTITY, users: 1 })];
    const shift = endAt - u * 1000 - own.at(-1)!.ts;
    for (const e of own) all.push({ ...e, event_id: `${ctx.runId}-${u}-${e.event_id}`, user_id: onlineEntityId(u), ts: e.ts + shift });
  }
  all.sort((a, b) => a.ts - b.ts);
  const oldest = all[0]!.ts;
  if (oldest <= Date.now() - DAY_MS + HOUR_MS) throw new Error(`online population: the oldest event is ${((Date.now() - oldest) / HOUR_MS).toFixed(1)} h old, not inside the 24 h window`);
  const logic = featuresProcessor({ group, redis, keyPrefix, maxClockSkewMs: ctx.base.maxClockSkewSec * 1000, latenessMs: group.latenessMs ?? ctx.base.featuresLatenessSec * 1000 });
  const driver = await new TestDriver(logic, { startTime: Date.now() }).open();
  try {
    for (let i = 0; i < all.length; i += 500) await driver.pipe('events.interactions', all.slice(i, i + 500), { key: (v) => (v as Interaction).user_id });
    const late = driver.emitted(`late.${group.stream}`).length;
    if (driver.rejected().length > 0 || late > 0) throw new Error(`online population: ${driver.rejected().length} events rejected, ${late} late`);
  } finally {
    await driver.close();
  }
  return { events: all.length, oldestMs: Date.now() - oldest };
}

/** Wall times (ms) of `calls` sequential pipelines of the bare EVALSHA per entity (ioredis, replies parsed, nothing decoded). */
async function timeRawPipelines(redis: Redis, sha: string, keys: ReturnType<typeof groupKeys>, entities: readonly string[], asOf: number, start: number, calls: number): Promise<number[]> {
  const times: number[] = [];
  for (let i = 0; i < calls; i++) {
    const t = performance.now();
    const p = redis.pipeline();
    for (const e of entities) p.evalsha(sha, 2, keys.window(e), keys.latest(e), asOf, start);
    const r = await p.exec();
    if (!r || r.some(([err]) => err)) throw new Error('the bare EVALSHA pipeline failed');
    times.push(performance.now() - t);
  }
  return times;
}

/** Wall times (ms) of `calls` sequential readOnlineFeatures calls of every entity as of `asOf`. */
async function timeOnlineReads(redis: Redis, keyPrefix: string, group: FeatureGroup, entities: readonly string[], asOf: number, calls: number): Promise<number[]> {
  const times: number[] = [];
  for (let i = 0; i < calls; i++) {
    const t = performance.now();
    await readOnlineFeatures(redis, keyPrefix, group, entities, asOf);
    times.push(performance.now() - t);
  }
  return times;
}

/**
 * Rows 2a/2b: p50 and p99 of readOnlineFeatures(64 entities) vs redis-benchmark replaying the same
 * EVALSHA 64 per pipeline on one connection. ratio = reference / ours (>= 0.4 is the target).
 */
export async function onlineReadPair(ctx: FeaturesContext, p50: RowSlot, p99: RowSlot): Promise<void> {
  const group = userGroup;
  const keyPrefix = `${ctx.redisPrefix}online:`;
  const redis = new Redis(ctx.base.redisUrl, { maxRetriesPerRequest: 2 });
  try {
    const pop = await populateOnline(ctx, redis, keyPrefix, group);
    const entities = Array.from({ length: ONLINE_ENTITIES }, (_, i) => onlineEntityId(i));
    const asOf = Date.now();
    const start = asOf - group.maxWindowMs;

    // Every entity has its events in the 24 h window, exactly as written.
    const check = await readOnlineFeatures(redis, keyPrefix, group, entities, asOf);
    for (const r of check) {
      const v = r.values;
      const n = v ? Number(v.user_views_24h) + Number(v.user_clicks_24h) + Number(v.user_purchases_24h) : 0;
      if (!r.exact || n !== ONLINE_EVENTS_PER_ENTITY) throw new Error(`online read of ${r.entity}: ${n} events in 24 h (exact ${r.exact}), expected ${ONLINE_EVENTS_PER_ENTITY}`);
    }

    const bench = await findRedisBenchmark();
    const sha = String(await redis.script('LOAD', ONLINE_READ_SCRIPT));
    if (sha !== createHash('sha1').update(ONLINE_READ_SCRIPT).digest('hex')) throw new Error(`SCRIPT LOAD returned ${sha}, not the SHA-1 of ONLINE_READ_SCRIPT`);
    const keys = groupKeys(keyPrefix, group);
    // The reply the benchmark's command gets is the one ours gets (4 parts, 100 window members).
    const probe = (await redis.evalsha(sha, 2, keys.window(entities[0]!), keys.latest(entities[0]!), asOf, start)) as unknown[];
    if (!Array.isArray(probe) || probe.length !== 4 || (probe[0] as unknown[]).length !== ONLINE_EVENTS_PER_ENTITY) throw new Error(`EVALSHA probe returned an unexpected reply: ${JSON.stringify(probe).slice(0, 200)}`);

    const replyKiB = ((probe[0] as string[]).reduce((sum, x) => sum + Buffer.byteLength(x), 0) * ONLINE_ENTITIES) / 1024;
    const url = new URL(ctx.base.redisUrl);
    const conn = ['-h', url.hostname || '127.0.0.1', '-p', url.port || '6379', ...(url.password ? ['-a', decodeURIComponent(url.password)] : []), ...(url.pathname.length > 1 ? ['--dbnum', url.pathname.slice(1)] : [])];
    const calls = ctx.sizes.onlineCalls;
    const args = [...conn, '-c', '1', '-P', String(ONLINE_ENTITIES), '-n', String(ONLINE_ENTITIES * calls), '-r', String(ONLINE_ENTITIES), '--csv', 'EVALSHA', sha, '2', keys.window('E__rand_int__'), keys.latest('E__rand_int__'), String(asOf), String(start)];
    const reference = async (): Promise<RedisBenchmarkResult & { serverUsecPerCall: number }> => {
      if (!bench) throw new Error('redis-benchmark not found (not in PATH nor next to redis-server; Debian ships it in the redis-tools package)');
      const before = await evalshaStats(redis);
      const r = await exec(bench, args, 300_000);
      if (r.error) throw new Error(`redis-benchmark failed (${r.error}): ${(r.stderr || r.stdout).trim().split('\n').slice(-3).join(' | ')}`);
      const after = await evalshaStats(redis);
      const sent = ONLINE_ENTITIES * calls;
      if (after.failed > before.failed) throw new Error(`redis-benchmark: ${after.failed - before.failed} EVALSHA calls failed on the server`);
      if (after.calls - before.calls < sent) throw new Error(`redis-benchmark: the server counted ${after.calls - before.calls} EVALSHA calls, expected ${sent}`);
      return { ...parseRedisBenchmarkCsv(r.stdout), serverUsecPerCall: (after.usec - before.usec) / (after.calls - before.calls) };
    };

    await timeOnlineReads(redis, keyPrefix, group, entities, asOf, ctx.sizes.onlineWarmupCalls);
    const ours: { p50: number; p99: number; max: number; mean: number }[] = [];
    const bare: { p50: number; p99: number }[] = [];
    const bareCalls = Math.max(50, Math.round(calls / 4));
    const refs: Awaited<ReturnType<typeof reference>>[] = [];
    let refError: string | null = null;
    for (let i = 0; i < ctx.sizes.onlineRepetitions; i++) {
      if (!refError) {
        try {
          refs.push(await reference());
        } catch (err) {
          refError = err instanceof Error ? err.message : String(err);
        }
      }
      const t = await timeOnlineReads(redis, keyPrefix, group, entities, asOf, calls);
      ours.push({ p50: quantile(t, 0.5), p99: quantile(t, 0.99), max: Math.max(...t), mean: t.reduce((s, x) => s + x, 0) / t.length });
      const tb = await timeRawPipelines(redis, sha, keys, entities, asOf, start, bareCalls);
      bare.push({ p50: quantile(tb, 0.5), p99: quantile(tb, 0.99) });
      const r = refs.at(-1);
      ctx.progress(`features 2/3 rep ${i + 1}: readOnlineFeatures p50 ${ours.at(-1)!.p50.toFixed(3)} / p99 ${ours.at(-1)!.p99.toFixed(3)} ms, redis-benchmark ${r && !refError ? `p50 ${r.p50.toFixed(3)} / p99 ${r.p99.toFixed(3)} ms` : `failed: ${refError}`}`);
    }
    const set = (row: RowSlot, q: 'p50' | 'p99'): void => {
      row.ours = median(ours.map((x) => x[q]));
      if (refError) {
        row.error = refError;
        return;
      }
      row.reference = median(refs.map((x) => x[q]));
      row.ratio = row.reference / row.ours;
    };
    set(p50, 'p50');
    set(p99, 'p99');
    const list = (xs: readonly number[]): string => xs.map((x) => x.toFixed(3)).join(', ');
    p50.notes.push(
      `${ONLINE_ENTITIES} users ${onlineEntityId(0)}..${onlineEntityId(ONLINE_ENTITIES - 1)}, ${ONLINE_EVENTS_PER_ENTITY} interactions each within the last 24 h (oldest ${(pop.oldestMs / HOUR_MS).toFixed(1)} h old), written to Redis by featuresProcessor through the TestDriver; ${ctx.sizes.onlineRepetitions} repetitions of ${formatNumber(calls)} sequential calls after ${formatNumber(ctx.sizes.onlineWarmupCalls)} warm-up calls, redis-benchmark then ours; p50/p99 = median over the repetitions`,
      `ours: readOnlineFeatures(${ONLINE_ENTITIES} entities, fixed asOf) wall time per call: one pipeline of ${ONLINE_ENTITIES} EVALSHA (the whole reply), member decoding and evaluation of ${group.features.length} features; per repetition p50 [${list(ours.map((x) => x.p50))}] ms, p99 [${list(ours.map((x) => x.p99))}] ms, mean ${median(ours.map((x) => x.mean)).toFixed(3)} ms; of that, the bare pipeline (the same ${ONLINE_ENTITIES} EVALSHA through ioredis, replies parsed, members not decoded, ${formatNumber(bareCalls)} calls after each repetition) p50 ${median(bare.map((x) => x.p50)).toFixed(3)} / p99 ${median(bare.map((x) => x.p99)).toFixed(3)} ms: the rest is member decoding (JSON per member) and evaluation`,
      refError
        ? `redis-benchmark: ${refError}`
        : `reference: redis-benchmark -c 1 -P ${ONLINE_ENTITIES} -n ${formatNumber(ONLINE_ENTITIES * calls)} -r ${ONLINE_ENTITIES} --csv EVALSHA <sha1 of ONLINE_READ_SCRIPT> 2 ${keyPrefix}win:${group.name}:E__rand_int__ ${keyPrefix}feat:${group.name}:E__rand_int__ <asOf> <asOf - 24h>: its latency of a pipeline runs until the FIRST reply is parsed (so it leaves out receiving and parsing most of the ${formatNumber(ONLINE_ENTITIES * ONLINE_EVENTS_PER_ENTITY)}-member, ~${formatNumber(replyKiB)} KiB reply), every __rand_int__ is drawn independently (keys of random entities, with repeats, window and hash of different entities: same cost shape); per repetition p50 [${list(refs.map((x) => x.p50))}] ms, p99 [${list(refs.map((x) => x.p99))}] ms; server time per EVALSHA (INFO commandstats) ${median(refs.map((x) => x.serverUsecPerCall)).toFixed(1)} µs, so ${((median(refs.map((x) => x.serverUsecPerCall)) * ONLINE_ENTITIES) / 1000).toFixed(3)} ms of Redis per ${ONLINE_ENTITIES}-entity read`,
    );
    p99.notes.push('same repetitions as the row above');
  } finally {
    redis.disconnect();
  }
}

// ------------------------------------------------------------------------------------ 3. training set

const TRAINING_ACCOUNTS = 2000;
const TRAINING_SPAN_MS = 2 * DAY_MS;
const TRAINING_T0 = Date.UTC(2025, 0, 6);

const rng = seededUniform;

/** The account group's rows of seeded transactions, by the stream's engine (EntityLog per account, offers in generation order). */
function accountHistory(seed: number, count: number, latenessMs: number): FeatureRow[] {
  const group = accountGroup;
  const logs = new Map<string, EntityLog>();
  const rows = new Map<number, FeatureRow>();
  let offset = 0;
  for (const { event } of generateTransactions({ seed, startTs: TRAINING_T0, ratePerSec: count / (TRAINING_SPAN_MS / 1000), count, accounts: TRAINING_ACCOUNTS })) {
    const entity = event.account_id;
    let log = logs.get(entity);
    if (!log) logs.set(entity, (log = new EntityLog(group, entity, { topic: 'events.transactions', partition: 0 })));
    const offer = log.offer(featureEvent(group, event.event_id, event.ts, offset++, event as unknown as Record<string, unknown>), latenessMs);
    log.added = [];
    if (offer.kind !== 'admitted') continue;
    // The newest computation of every event wins, as in ReplacingMergeTree(version).
    for (const row of offer.rows) rows.set(row.source_offset, row);
  }
  return [...rows.values()];
}

/**
 * Row 3: buildTrainingSet vs Feast's get_historical_features, L labels over a 2-day history of 2,000
 * accounts in a fresh ClickHouse database (dropped at the end). Feast first, then ours, per repetition.
 */
export async function trainingSetPair(ctx: FeaturesContext, row: RowSlot): Promise<void> {
  const group = accountGroup;
  const database = sqlIdentifier(`${ctx.base.clickhouseDatabase}_bench_${ctx.runId}`);
  const ch = createClickHouse(ctx.base);
  try {
    const tg = performance.now();
    const history = accountHistory(ctx.seed + 20, ctx.sizes.trainingEvents, group.latenessMs ?? ctx.base.featuresLatenessSec * 1000);
    const generateSec = (performance.now() - tg) / 1000;
    await applyClickHouse({ ...ctx.base, clickhouseDatabase: database });
    const table = `${database}.${featureTable(group)}`;
    for (let i = 0; i < history.length; i += 20_000) await ch.insert({ table, values: history.slice(i, i + 20_000).map((r) => featureTableRow(group, r)), format: 'JSONEachRow' });
    const counted = Number((await (await ch.query({ query: `SELECT count() AS n FROM ${table} FINAL`, format: 'JSONEachRow' })).json<{ n: string | number }>())[0]?.n);
    if (counted !== history.length) throw new Error(`${table} holds ${counted} rows after inserting ${history.length}`);

    const accounts = [...new Set(history.map((r) => r.entity_id))];
    const rand = rng(ctx.seed + 21);
    const nLabels = ctx.sizes.trainingLabels;
    const labels = Array.from({ length: nLabels }, () => ({ entity: accounts[Math.floor(rand() * accounts.length)]!, tsMs: TRAINING_T0 + Math.floor(rand() * TRAINING_SPAN_MS) }));
    const firstTs = new Map<string, number>();
    for (const r of history) if (!(r.ts >= (firstTs.get(r.entity_id) ?? Infinity))) firstTs.set(r.entity_id, r.ts);
    const asOfNulls = labels.filter((l) => l.tsMs < firstTs.get(l.entity)!).length;
    const labelsCsv = join(ctx.tmp, 'labels.csv');
    await writeFile(labelsCsv, `${group.entity},ts\n${labels.map((l) => `${l.entity},${l.tsMs}`).join('\n')}\n`);
    const featureNames = [...group.featureNames];
    const feastHistory: FeastHistoryRow[] = history.map((r) => ({ entity: r.entity_id, tsMs: r.ts, values: featureNames.map((f) => (r[f] === null || r[f] === undefined ? null : Number(r[f]))) }));
    ctx.progress(`features 3/3: ${formatNumber(history.length)} history rows of ${formatNumber(accounts.length)} accounts in ${table}, ${formatNumber(nLabels)} labels`);

    const ours: Sample[] = [];
    const ref: Sample[] = [];
    const breakdown: { labels: number; history: number; features: number }[] = [];
    let skipped: string | null = null;
    const feast: { version: string; importSeconds: number; prepareSeconds: number; applySeconds: number; duplicateLabels: number; labelsMissing: number; feastRows: number; wallSeconds: number }[] = [];
    for (let i = 0; i < ctx.sizes.trainingRepetitions; i++) {
      if (!skipped) {
        const tf = performance.now();
        const r = await feastReference({ history: feastHistory, featureNames, labels });
        if ('skipped' in r) skipped = r.skipped;
        else {
          ref.push(sample(r.seconds * 1000, nLabels, `Feast ${r.version}`));
          feast.push({ version: r.version, importSeconds: r.importSeconds, prepareSeconds: r.prepareSeconds, applySeconds: r.applySeconds, duplicateLabels: r.duplicateLabels, labelsMissing: r.labelsMissingFromFeast, feastRows: r.feastRows, wallSeconds: (performance.now() - tf) / 1000 });
        }
      }
      const out = join(ctx.tmp, `train-${i}.csv`);
      const t0 = performance.now();
      const report = await buildTrainingSet({ ch, database, groups: [group], labels: labelsCsv, out });
      const elapsedMs = performance.now() - t0;
      await rm(out, { force: true });
      if (report.rows !== nLabels) throw new Error(`buildTrainingSet wrote ${report.rows} rows for ${nLabels} labels`);
      ours.push(sample(elapsedMs, nLabels, `labels ${report.seconds.labels.toFixed(3)} s, history ${report.seconds.history.toFixed(3)} s (${report.historyRows} rows), features + write ${report.seconds.features.toFixed(3)} s`));
      breakdown.push(report.seconds);
      ctx.progress(`features 3/3 rep ${i + 1}: Feast ${skipped ? `skipped (${skipped})` : `${formatNumber(ref.at(-1)!.rate)} rows/s`}, buildTrainingSet ${formatNumber(ours.at(-1)!.rate)} rows/s (${ours.at(-1)!.note})`);
    }
    row.samples = { ours, reference: ref };
    row.ours = median(ours.map((s) => s.rate));
    if (!skipped && ref.length > 0) {
      row.reference = median(ref.map((s) => s.rate));
      row.ratio = row.ours / row.reference;
    }
    const b = (f: (x: { labels: number; history: number; features: number }) => number): string => median(breakdown.map(f)).toFixed(3);
    row.notes.push(
      `history: ${formatNumber(ctx.sizes.trainingEvents)} seeded transactions over 2 days (simulator population ${formatNumber(TRAINING_ACCOUNTS)} accounts plus fraud-ring mules; ${formatNumber(accounts.length)} accounts with events, each label's account drawn from those), rows computed by EntityLog per account (${generateSec.toFixed(1)} s) and inserted into a fresh ClickHouse database (${database}, dropped afterwards); ${formatNumber(nLabels)} labels: uniform random (account, instant) over the span, as CSV; ${ctx.sizes.trainingRepetitions} repetitions, Feast then ours`,
      `ours: buildTrainingSet end to end (labels CSV read ${b((x) => x.labels)} s, history load from ClickHouse ${b((x) => x.history)} s, evaluation + CSV write ${b((x) => x.features)} s, medians): every feature evaluated at the label instant (windows end at the label)`,
    );
    if (skipped) row.notes.push(`reference skipped: ${skipped}`);
    else {
      const f = (k: keyof (typeof feast)[number], digits = 2): string => formatNumber(median(feast.map((x) => Number(x[k]))), digits);
      row.notes.push(
        `reference: Feast ${feast[0]?.version ?? '?'} get_historical_features + to_df on its local (dask) offline store, timed alone; outside that time each run also spent import ${f('importSeconds')} s, CSV -> parquet ${f('prepareSeconds')} s, registry apply ${f('applySeconds')} s (wall ${f('wallSeconds')} s per run)`,
        `not the same semantics: Feast's answer is an as-of join of the latest history row (values as of the entity's last event before the label), not the window values at the label instant (1 h / 24 h windows do not slide to the label), so this is a speed reference only`,
        `Feast local store quirks (it reports): ${f('duplicateLabels', 0)} duplicate labels merged into one row, ${f('labelsMissing', 0)} labels whose entity has history but none at or before the label left out (as-of nulls), ${f('feastRows', 0)} rows returned for ${formatNumber(nLabels)} labels; scripts/feast_reference.py maps the result back onto every label (${formatNumber(asOfNulls)} labels precede their account's first event: null features on both sides)`,
      );
    }
  } finally {
    await ch.command({ query: `DROP DATABASE IF EXISTS ${database}` }).catch((err: unknown) => ctx.progress(`could not drop ${database}: ${err instanceof Error ? err.message : String(err)}`));
    await ch.close();
  }
}
