import { randomBytes } from 'node:crypto';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { Redis } from 'ioredis';
import { loadConfig } from '../../topology/config.js';
import { TestDriver } from '../../topology/runtime/test-driver.js';
import type { Output } from '../../topology/runtime/processor.js';
import type { FeatureGroup } from '../../topology/features/definition.js';
import { accountGroup, userGroup } from '../../topology/features/groups.js';
import { featureRowSchema } from '../../topology/features/rows.js';
import { featuresProcessor } from '../../processors/features/processor.js';
import { readLatestRow, readOnlineFeatures } from '../../serving/features/online.js';
import { decodeMembers, groupKeys } from '../../serving/features/redis-keys.js';
import {
  DAY_MS,
  HOUR_MS,
  LATE_GROUP_HEADER,
  LATE_NEWEST_HEADER,
  LATE_REASON_HEADER,
  ORACLE_GROUPS,
  before,
  randomEvents,
  runOracle,
  type ExpectedOutput,
  type OracleRun,
} from '../shared/feature-oracle.js';
import { seededUniform } from '../shared/seeded.js';

/**
 * The features processor against the real Redis, through the TestDriver: every output, every latest
 * hash, every window member and online reads at many instants are compared with an independent
 * brute-force recomputation from the raw records in offset order (test/shared/feature-oracle.ts, the
 * specification written out again, not the engine), and crashes and replays with a clean run.
 */
const MIN = 60_000;
const SKEW_MS = 5 * MIN;
const LATENESS_MS = HOUR_MS;
const T0 = Date.UTC(2024, 4, 1);
/** Kafka timestamp of every record unless a test says otherwise: after every event time of the streams. */
const ARRIVAL = T0 + 30 * DAY_MS;
const TOPICS: Record<'account' | 'user', string> = { account: 'events.transactions', user: 'events.interactions' };
const GROUPS: Record<'account' | 'user', FeatureGroup> = { account: accountGroup, user: userGroup };

const redis = new Redis(loadConfig().redisUrl);
const prefixes: string[] = [];

async function keysUnder(prefix: string): Promise<string[]> {
  const keys: string[] = [];
  let cursor = '0';
  do {
    const [next, batch] = await redis.scan(cursor, 'MATCH', `${prefix}*`, 'COUNT', 1000);
    cursor = next;
    keys.push(...batch);
  } while (cursor !== '0');
  return keys;
}

afterEach(async () => {
  for (const prefix of prefixes.splice(0)) {
    const keys = await keysUnder(prefix);
    if (keys.length) await redis.del(...keys);
  }
});
afterAll(() => redis.disconnect());

/** A fresh key prefix (deleted after the test). */
function namespace(): string {
  const prefix = `it-feat-${randomBytes(4).toString('hex')}:`;
  prefixes.push(prefix);
  return prefix;
}

async function open(prefix: string, group: 'account' | 'user' = 'account'): Promise<TestDriver> {
  const logic = featuresProcessor({ group: GROUPS[group], redis, keyPrefix: prefix, maxClockSkewMs: SKEW_MS, latenessMs: LATENESS_MS });
  return new TestDriver(logic, { startTime: ARRIVAL }).open();
}

type Raw = Record<string, unknown>;
const keyed = (group: 'account' | 'user') => ({ key: (v: unknown) => String((v as Raw)[ORACLE_GROUPS[group].entity]) });
const byAccount = keyed('account');

function txn(eventId: string, accountId: string, ts: number, amount: number, counterparty = 'm-1'): Raw {
  return { event_id: eventId, account_id: accountId, counterparty_id: counterparty, type: 'PAYMENT', amount, old_balance: 1000, new_balance: 1000 - amount, channel: 'web', ts };
}

/** The oracle over records piped with Kafka timestamp `arrival`. */
function recompute(values: readonly unknown[], group: 'account' | 'user' = 'account', arrival = ARRIVAL): OracleRun {
  return runOracle(group, values.map((value) => ({ value, timestamp: arrival })), { latenessMs: LATENESS_MS, maxClockSkewMs: SKEW_MS, topic: TOPICS[group] });
}

/**
 * The processor's outputs by the offset of the record that produced them, in order, normalized like
 * the oracle's: rejects by code; late records with their group and newest_ts headers (the reason,
 * free text, is checked to be there and dropped).
 */
function byOffset(outputs: readonly Output[]): Record<number, ExpectedOutput[]> {
  const out: Record<number, ExpectedOutput[]> = {};
  for (const o of outputs) {
    const offset = Number(o.kind === 'emit' ? o.source!.offset : o.record.offset);
    let normalized: ExpectedOutput;
    if (o.kind === 'reject') normalized = { reject: o.error.code as 'FABRIC_RECORD_REJECTED' };
    else if (o.topic.startsWith('late.')) {
      const { [LATE_REASON_HEADER]: reason, ...headers } = o.headers ?? {};
      expect(typeof reason === 'string' && reason.length > 0, `late record at ${offset} has a reason`).toBe(true);
      normalized = { topic: o.topic, key: o.key, value: o.value, headers };
    } else {
      expect(o.headers, `features row at ${offset} has no headers`).toBeUndefined();
      normalized = { topic: o.topic, key: o.key, value: o.value };
    }
    (out[offset] ??= []).push(normalized);
  }
  return out;
}

/** Pipes `values` in random batch sizes; with `crashRate`, some batches first run with commit: false (a crash) and are re-piped with other boundaries. */
async function pipeRandomly(driver: TestDriver, group: 'account' | 'user', values: readonly unknown[], rand: () => number, crashRate = 0): Promise<void> {
  for (let i = 0; i < values.length; ) {
    while (rand() < crashRate) await driver.pipe(TOPICS[group], values.slice(i, i + 1 + Math.floor(rand() * 60)), { ...keyed(group), commit: false });
    const n = 1 + Math.floor(rand() * 40);
    await driver.pipe(TOPICS[group], values.slice(i, i + n), keyed(group));
    i += n;
  }
}

/** Every window and latest-features key of the namespace, prefix stripped. */
async function dump(prefix: string): Promise<Record<string, unknown>> {
  const keys = (await keysUnder(prefix)).filter((k) => k.startsWith(`${prefix}win:`) || k.startsWith(`${prefix}feat:`)).sort();
  const out: Record<string, unknown> = {};
  for (const key of keys) out[key.slice(prefix.length)] = key.startsWith(`${prefix}win:`) ? await redis.zrange(key, 0, -1, 'WITHSCORES') : await redis.hgetall(key);
  return out;
}

const pick = (values: Record<string, unknown> | null, names: readonly string[]) => (values ? Object.fromEntries(names.map((n) => [n, values[n]])) : null);

/**
 * Redis against the oracle, per entity: the latest hash is the newest row of the greatest event; the
 * window holds admitted events only, every one at or above the trim bound and the greatest below it.
 * Returns how many entities were trimmed.
 */
async function checkRedis(prefix: string, oracle: OracleRun): Promise<number> {
  const name = oracle.group as 'account' | 'user';
  const group = GROUPS[name];
  const keys = groupKeys(prefix, group);
  let trimmed = 0;
  for (const entity of oracle.entities()) {
    const row = oracle.latestRow(entity)!;
    expect(await readLatestRow(redis, prefix, group, entity), `latest hash of ${entity}`).toEqual({ event_id: row.event_id, ts: row.ts, offset: row.source_offset, version: row.version, values: pick(row, ORACLE_GROUPS[name].features) });
    const hash = await redis.hgetall(keys.latest(entity));
    const bound = hash.trim_bound === undefined ? -Infinity : Number(hash.trim_bound);
    const newest = oracle.newestTs(entity)!;
    expect(bound, `trim bound of ${entity} leaves 25 h behind its newest event`).toBeLessThanOrEqual(newest - DAY_MS - HOUR_MS);
    // trim_bound is the greatest event time trimmed: every admitted event after it is kept, and at or
    // below it at most the anchor (the greatest event there, which since_previous may need).
    const admitted = oracle.eventsOf(entity);
    const asMember = (e: (typeof admitted)[number]) => [e.offset, e.value.event_id, e.ts, pick(e.value as Raw, ORACLE_GROUPS[name].stored)];
    const atOrBelow = admitted.filter((e) => e.ts <= bound);
    const anchor = atOrBelow.reduce<(typeof atOrBelow)[number] | undefined>((g, e) => (!g || before(g, e) ? e : g), undefined);
    const members = decodeMembers(group, await redis.zrange(keys.window(entity), 0, -1)).map((e) => [e.offset, e.eventId, e.ts, pick(e.fields, ORACLE_GROUPS[name].stored)]);
    const order = (a: unknown[], b: unknown[]) => (a[0] as number) - (b[0] as number);
    const kept = members.filter((m) => (m[2] as number) > bound).sort(order);
    expect(kept, `window members of ${entity} after its trim bound`).toEqual(admitted.filter((e) => e.ts > bound).map(asMember).sort(order));
    const old = members.filter((m) => (m[2] as number) <= bound);
    expect(old.length, `members of ${entity} at or below its trim bound`).toBeLessThanOrEqual(1);
    if (old.length === 1) expect(old[0], `the anchor of ${entity}`).toEqual(asMember(anchor!));
    if (Number.isFinite(bound)) expect(atOrBelow.length, `a trim bound of ${entity} means something was trimmed`).toBeGreaterThan(old.length);
    if (members.length < admitted.length) trimmed++;
  }
  return trimmed;
}

/**
 * Online reads at many instants per entity against the oracle's instant features (over every admitted
 * event): equal whenever the read says it is exact, exact from newest - 1 h on; 1 h after the newest
 * event the 1 h counts are 0. Returns the counts of inexact reads and of exact reads answered by the
 * anchor only (empty 24 h window, a previous event).
 */
async function checkOnline(prefix: string, oracle: OracleRun, rand: () => number, randomInstants = 25): Promise<{ inexact: number; anchorOnly: number }> {
  const name = oracle.group as 'account' | 'user';
  const group = GROUPS[name];
  let inexact = 0;
  let anchorOnly = 0;
  for (const entity of oracle.entities()) {
    const events = oracle.eventsOf(entity);
    const newest = oracle.newestTs(entity)!;
    const first = Math.min(...events.map((e) => e.ts));
    const instants = [first - 1, first, newest - HOUR_MS, newest - 1, newest, newest + HOUR_MS, newest + DAY_MS, ...events.flatMap((e) => [e.ts - 1, e.ts, e.ts + HOUR_MS, e.ts + DAY_MS + 1])];
    for (let k = 0; k < randomInstants; k++) instants.push(Math.floor(first - 2 * HOUR_MS + rand() * (newest - first + 2 * DAY_MS)));
    for (const t of instants) {
      const [read] = await readOnlineFeatures(redis, prefix, group, [entity], t);
      expect(read!.entity).toBe(entity);
      const want = oracle.atInstant(entity, t);
      if (t >= newest - HOUR_MS) expect(read!.exact, `${entity} at ${t} (newest ${newest}) is exact`).toBe(true);
      if (!read!.exact) {
        inexact++;
        continue;
      }
      expect(read!.values, `${entity} at ${t}`).toEqual(want);
      const countDay = name === 'account' ? want!.txn_count_24h : (want!.user_views_24h as number) + (want!.user_clicks_24h as number) + (want!.user_purchases_24h as number);
      const since = name === 'account' ? want!.seconds_since_last_txn : want!.user_seconds_since_last_interaction;
      if (countDay === 0 && since !== null) anchorOnly++;
    }
    // Decay: an hour after the newest event, no new event, the 1 h windows are empty.
    const [decayed] = await readOnlineFeatures(redis, prefix, group, [entity], newest + HOUR_MS);
    if (name === 'account') expect(decayed!.values).toMatchObject({ txn_count_1h: 0, amount_sum_1h: 0 });
    else expect(decayed!.values).toMatchObject({ user_views_1h: 0, user_clicks_1h: 0, user_purchases_1h: 0 });
  }
  // An entity without any event: no values (exact: nothing was ever trimmed for it).
  expect(await readOnlineFeatures(redis, prefix, group, ['nobody'], T0)).toEqual([{ entity: 'nobody', values: null, exact: true }]);
  return { inexact, anchorOnly };
}

/** Rows carry exactly the specified columns; the record schema of features.<group> has them in the specified order. */
function checkColumns(name: 'account' | 'user', rows: readonly Raw[]): void {
  const shape = ORACLE_GROUPS[name];
  const columns = ['event_id', 'entity_id', 'ts', ...shape.features, ...shape.stored, 'source_topic', 'source_partition', 'source_offset', 'version'];
  expect(featureRowSchema(GROUPS[name]).fields.map((f) => f.name)).toEqual(columns);
  for (const row of rows) expect(Object.keys(row).sort()).toEqual([...columns].sort());
}

/** The stream exercised what it is meant to. */
function checkCoverage(oracle: OracleRun, options: { sleepy?: string } = {}): void {
  const o = oracle.outcomes;
  expect(o.filter((x) => x.kind === 'reject' && x.code === 'FABRIC_RECORD_REJECTED').length, 'invalid records').toBeGreaterThan(0);
  expect(o.filter((x) => x.kind === 'reject' && x.code === 'FABRIC_EVENT_TIME_SKEW').length, 'microsecond timestamps').toBeGreaterThan(0);
  expect(o.filter((x) => x.kind === 'late').length, 'late events').toBeGreaterThan(0);
  expect(o.filter((x) => x.kind === 'duplicate').length, 'client retries').toBeGreaterThan(0);
  // Some retries arrive when their event is already beyond the lateness: still nothing at all.
  expect(o.filter((x, i) => x.kind === 'duplicate' && ((oracle.records[i]!.value as Raw).ts as number) < x.newestTs - LATENESS_MS).length, 'retries beyond the lateness').toBeGreaterThan(0);
  const rows = oracle.rows();
  expect(rows.filter((r) => r.version !== r.source_offset).length, 'corrections').toBeGreaterThan(0);
  // Same-millisecond ties within an entity among the admitted events.
  expect(oracle.entities().some((e) => new Set(oracle.eventsOf(e).map((x) => x.ts)).size < oracle.eventsOf(e).length), 'ties').toBe(true);
  if (options.sleepy) {
    const gaps = rows.filter((r) => r.entity_id === options.sleepy).map((r) => (r.seconds_since_last_txn ?? r.user_seconds_since_last_interaction) as number | null);
    expect(Math.max(0, ...gaps.map((g) => g ?? 0)), 'a gap of the sleepy entity outlasting the retained window').toBeGreaterThan((DAY_MS + 2 * HOUR_MS + LATENESS_MS) / 1000);
  }
}

describe('features processor (account): exact against an independent recomputation, on Redis', () => {
  it('equals the oracle on seeded random streams in random batch sizes: outputs, corrections, late, Redis, online reads', async () => {
    let inexact = 0;
    let anchorOnly = 0;
    for (const seed of [1, 2, 3, 4, 5]) {
      const prefix = namespace();
      const values = randomEvents('account', { seed, n: 300, entities: 10, t0: T0, latenessMs: LATENESS_MS, sleepyEvery: 130 });
      const driver = await open(prefix);
      await pipeRandomly(driver, 'account', values, seededUniform(seed * 7919));
      const oracle = recompute(values);
      checkCoverage(oracle, { sleepy: 'acct-0' });
      expect(byOffset(driver.outputs)).toEqual(oracle.expected());
      checkColumns('account', driver.emitted<Raw>('features.account'));
      expect(await checkRedis(prefix, oracle)).toBeGreaterThan(0);
      const online = await checkOnline(prefix, oracle, seededUniform(seed));
      inexact += online.inexact;
      anchorOnly += online.anchorOnly;
    }
    // The reads probed trimmed history (inexact) and exact reads that need the kept anchor.
    expect(inexact).toBeGreaterThan(0);
    expect(anchorOnly).toBeGreaterThan(0);
  });

  it('a batch that crashed (commit: false) and is re-piped with other boundaries changes no output and no Redis value', async () => {
    const values = randomEvents('account', { seed: 42, n: 300, entities: 10, t0: T0, latenessMs: LATENESS_MS, sleepyEvery: 130 });
    const head = values.slice(0, -10);
    const last = values.slice(-10);

    const cleanPrefix = namespace();
    const clean = await open(cleanPrefix);
    await pipeRandomly(clean, 'account', head, seededUniform(5));
    await clean.pipe(TOPICS.account, last, byAccount);

    const crashedPrefix = namespace();
    const crashed = await open(crashedPrefix);
    await pipeRandomly(crashed, 'account', head, seededUniform(6), 0.3);
    await crashed.pipe(TOPICS.account, last, { ...byAccount, commit: false });
    await crashed.pipe(TOPICS.account, last, byAccount);

    const oracle = recompute(values);
    expect(byOffset(clean.outputs)).toEqual(oracle.expected());
    expect(byOffset(crashed.outputs)).toEqual(oracle.expected());
    // Both runs ended with the same batch touching every account, so the windows are trimmed alike.
    expect(await dump(crashedPrefix)).toEqual(await dump(cleanPrefix));
    expect(await checkRedis(crashedPrefix, oracle)).toBeGreaterThan(0);
  });

  it('a replay from offset 0 into the same namespace, after trims, gives the same outputs and Redis state', async () => {
    const prefix = namespace();
    const values = randomEvents('account', { seed: 9, n: 300, entities: 10, t0: T0, latenessMs: LATENESS_MS, sleepyEvery: 130 });
    const first = await open(prefix);
    await pipeRandomly(first, 'account', values.slice(0, -10), seededUniform(10));
    await first.pipe(TOPICS.account, values.slice(-10), byAccount);
    const state = await dump(prefix);
    const oracle = recompute(values);
    expect(await checkRedis(prefix, oracle)).toBeGreaterThan(0);

    // Offsets reset (a new driver), Redis as the first run left it: trimmed, every member "ahead".
    const replay = await open(prefix);
    await pipeRandomly(replay, 'account', values.slice(0, -10), seededUniform(11), 0.2);
    await replay.pipe(TOPICS.account, values.slice(-10), byAccount);
    expect(byOffset(replay.outputs)).toEqual(oracle.expected());
    expect(await dump(prefix)).toEqual(state);
  });

  it('an old event within the lateness after a trim gets its exact window and corrects the later rows; its replay too', async () => {
    const prefix = namespace();
    const driver = await open(prefix);
    // One account, an event every 2 h for 3 days: older events are trimmed as the newest moves on.
    const txns = Array.from({ length: 36 }, (_, i) => txn(`t${i}`, 'acct-a', T0 + i * 2 * HOUR_MS, 10 + i, `m-${i % 4}`));
    for (let i = 0; i < txns.length; i += 6) await driver.pipe(TOPICS.account, txns.slice(i, i + 6), byAccount);
    const keys = groupKeys(prefix, accountGroup);
    const newest = txns.at(-1)!.ts as number;
    expect(await redis.zcard(keys.window('acct-a'))).toBeLessThan(txns.length);

    const straggler = txn('old', 'acct-a', newest - LATENESS_MS + 1, 500, 'm-9');
    const atEdge = txn('edge', 'acct-a', newest - LATENESS_MS, 700, 'm-9');
    const tooOld = txn('older', 'acct-a', newest - LATENESS_MS - 1, 700, 'm-9');
    const next = txn('next', 'acct-a', newest + MIN, 1, 'm-1');
    await driver.pipe(TOPICS.account, [straggler, atEdge, tooOld], byAccount);
    await driver.pipe(TOPICS.account, [next], byAccount);
    const all = [...txns, straggler, atEdge, tooOld, next];
    const oracle = recompute(all);
    const expected = oracle.expected();
    expect(byOffset(driver.outputs)).toEqual(expected);
    // Its window reaches back to the events 46 h..68 h after T0 (12), its previous event is the one at 68 h;
    // the event at 70 h gets a corrected row (its 1 h window now holds the straggler).
    expect(expected[36]!.map((o) => ('value' in o ? [(o.value as Raw).event_id, (o.value as Raw).txn_count_24h, (o.value as Raw).seconds_since_last_txn, (o.value as Raw).version] : o))).toEqual([
      ['old', 13, 3600.001, 36],
      ['t35', 13, 3599.999, 36],
    ]);
    expect(expected[37]!.map((o) => ('value' in o ? (o.value as Raw).event_id : o))).toEqual(['edge', 'old', 't35']);
    expect(expected[38]).toMatchObject([{ topic: 'late.transactions', key: 'acct-a', headers: { [LATE_GROUP_HEADER]: 'account', [LATE_NEWEST_HEADER]: String(newest) } }]);
    await checkRedis(prefix, oracle);

    // The same records replayed into a fresh namespace, in one batch (no trim ever ran there at those points).
    const fresh = await open(namespace());
    await fresh.pipe(TOPICS.account, all, byAccount);
    expect(byOffset(fresh.outputs)).toEqual(expected);
  });

  it('refuses a far-future ts (microseconds) with FABRIC_EVENT_TIME_SKEW without changing anything', async () => {
    const prefix = namespace();
    const driver = await open(prefix);
    const arrival = T0 + HOUR_MS;
    const a = txn('a', 'acct-s', T0, 10);
    await driver.pipe(TOPICS.account, [a], { ...byAccount, timestamp: arrival });
    const state = await dump(prefix);

    const micro = txn('micro', 'acct-s', T0 * 1000, 99);
    const beyond = txn('beyond', 'acct-s', arrival + SKEW_MS + 1, 7);
    const out = await driver.pipe(TOPICS.account, [micro, beyond], { ...byAccount, timestamp: arrival });
    expect(out.map((o) => (o.kind === 'reject' ? o.error.code : o.kind))).toEqual(['FABRIC_EVENT_TIME_SKEW', 'FABRIC_EVENT_TIME_SKEW']);
    const first = out[0] as Extract<Output, { kind: 'reject' }>;
    expect(first.error.message).toMatch(/microseconds/);
    expect(first.record.offset).toBe('1');
    expect(await dump(prefix)).toEqual(state);

    // The next events are computed as if the refused ones never existed; ts = timestamp + skew is fine.
    const b = txn('b', 'acct-s', T0 + 10 * MIN, 20);
    const atLimit = txn('limit', 'acct-s', arrival + SKEW_MS, 5);
    await driver.pipe(TOPICS.account, [b, atLimit], { ...byAccount, timestamp: arrival });
    const oracle = recompute([a, micro, beyond, b, atLimit], 'account', arrival);
    expect(byOffset(driver.outputs)).toEqual(oracle.expected());
    expect(driver.emitted<Raw>('features.account').map((u) => [u.event_id, u.txn_count_1h, u.seconds_since_last_txn])).toEqual([
      ['a', 1, null],
      ['b', 2, 600],
      ['limit', 2, (arrival + SKEW_MS - (b.ts as number)) / 1000],
    ]);
    await checkRedis(prefix, oracle);
  });

  it('routes an event more than the lateness behind to late.transactions, unchanged, with its headers, and changes nothing', async () => {
    const prefix = namespace();
    const driver = await open(prefix);
    const a = txn('a', 'acct-l', T0 + 5 * HOUR_MS, 10);
    await driver.pipe(TOPICS.account, [a], byAccount);
    const state = await dump(prefix);
    const late = txn('late', 'acct-l', (a.ts as number) - LATENESS_MS - 1, 50);
    const out = await driver.pipe(TOPICS.account, [late], byAccount);
    expect(out).toHaveLength(1);
    expect(out[0]).toMatchObject({ kind: 'emit', topic: 'late.transactions', key: 'acct-l', value: late, source: { offset: '1' } });
    const headers = (out[0] as Extract<Output, { kind: 'emit' }>).headers!;
    expect(Object.keys(headers).sort()).toEqual([LATE_GROUP_HEADER, LATE_NEWEST_HEADER, LATE_REASON_HEADER].sort());
    expect(headers[LATE_GROUP_HEADER]).toBe('account');
    expect(headers[LATE_NEWEST_HEADER]).toBe(String(a.ts));
    expect(headers[LATE_REASON_HEADER]).toContain('acct-l');
    expect(await dump(prefix)).toEqual(state);

    // Exactly the lateness behind: admitted; it is before a, which gets a corrected row.
    const justInTime = txn('in-time', 'acct-l', (a.ts as number) - LATENESS_MS, 30);
    await driver.pipe(TOPICS.account, [justInTime], byAccount);
    expect(driver.emitted<Raw>('features.account').map((u) => [u.event_id, u.txn_count_24h, u.version])).toEqual([
      ['a', 1, 0],
      ['in-time', 1, 2],
      ['a', 2, 2],
    ]);
    const oracle = recompute([a, late, justInTime]);
    expect(byOffset(driver.outputs)).toEqual(oracle.expected());
    // The latest hash describes the account's greatest event (a), in its newest version.
    expect(await readLatestRow(redis, prefix, accountGroup, 'acct-l')).toMatchObject({ event_id: 'a', version: 2, values: { txn_count_24h: 2 } });
    await checkRedis(prefix, oracle);
  });

  it('treats a redelivered event id as a no-op: counted once, emitted once', async () => {
    const prefix = namespace();
    const driver = await open(prefix);
    const x = txn('x', 'acct-d', T0, 10, 'm-1');
    const y = txn('y', 'acct-d', T0 + MIN, 20, 'm-2');
    const z = txn('z', 'acct-d', T0 + 2 * MIN, 40, 'm-3');
    await driver.pipe(TOPICS.account, [x, y], byAccount);
    // x again in a later batch, then z, then y again in the same batch.
    await driver.pipe(TOPICS.account, [x, z, y], byAccount);
    const emitted = driver.emitted<Raw>('features.account');
    expect(emitted.map((e) => e.event_id)).toEqual(['x', 'y', 'z']);
    expect(emitted[2]).toMatchObject({ event_id: 'z', txn_count_1h: 3, amount_sum_1h: 70, seconds_since_last_txn: 60, source_offset: 3, version: 3 });
    expect(byOffset(driver.outputs)).toEqual(recompute([x, y, x, z, y]).expected());
    expect(await redis.zcard(groupKeys(prefix, accountGroup).window('acct-d'))).toBe(3);
  });

  it('a redelivery of an admitted event is a no-op even beyond the lateness; a new event id that late goes late', async () => {
    const prefix = namespace();
    const driver = await open(prefix);
    const x = txn('x', 'acct-rl', T0, 10, 'm-1');
    const y = txn('y', 'acct-rl', T0 + 3 * HOUR_MS, 20, 'm-2');
    await driver.pipe(TOPICS.account, [x, y], byAccount);
    const state = await dump(prefix);

    // x redelivered after the newest moved past x.ts + lateness: nothing at all. w is late and new: late.
    const w = txn('w', 'acct-rl', T0 + MIN, 30, 'm-3');
    const out = await driver.pipe(TOPICS.account, [x, w], byAccount);
    expect(out).toHaveLength(1);
    expect(out[0]).toMatchObject({ kind: 'emit', topic: 'late.transactions', key: 'acct-rl', value: w, source: { offset: '3' } });
    expect(await dump(prefix)).toEqual(state);

    // Within one batch too: v is admitted and moves the newest, its copy right after is a no-op; so is
    // a copy of y; u (new, late) goes late; t (new, in time, before z) is admitted and corrects z.
    const v = txn('v', 'acct-rl', T0 + 4 * HOUR_MS, 40, 'm-1');
    const z = txn('z', 'acct-rl', T0 + 7 * HOUR_MS, 50, 'm-2');
    const u = txn('u', 'acct-rl', T0 + 4 * HOUR_MS, 60, 'm-3');
    const t = txn('t', 'acct-rl', T0 + 6 * HOUR_MS + 1, 70, 'm-4');
    await driver.pipe(TOPICS.account, [v, z, v, y, u, t], byAccount);
    const all = [x, y, x, w, v, z, v, y, u, t];
    const oracle = recompute(all);
    expect(oracle.outcomes.map((o) => o.kind)).toEqual(['admitted', 'admitted', 'duplicate', 'late', 'admitted', 'admitted', 'duplicate', 'duplicate', 'late', 'admitted']);
    expect(byOffset(driver.outputs)).toEqual(oracle.expected());
    expect(driver.emitted<Raw>('late.transactions').map((e) => e.event_id)).toEqual(['w', 'u']);
    expect(driver.emitted<Raw>('features.account').map((e) => [e.event_id, e.txn_count_24h, e.version])).toEqual([
      ['x', 1, 0],
      ['y', 2, 1],
      ['v', 3, 4],
      ['z', 4, 5],
      ['t', 4, 9], // x, y, v and itself: z is at a later ts
      ['z', 5, 9],
    ]);
    expect(await redis.zcard(groupKeys(prefix, accountGroup).window('acct-rl'))).toBe(5);
    await checkRedis(prefix, oracle);
  });

  it('a redelivery older than the dedupe horizon (its member trimmed) is late: it reaches late.transactions and changes nothing', async () => {
    const prefix = namespace();
    const driver = await open(prefix);
    const txns = Array.from({ length: 36 }, (_, i) => txn(`t${i}`, 'acct-tr', T0 + i * 2 * HOUR_MS, 10 + i, `m-${i % 4}`));
    for (let i = 0; i < txns.length; i += 6) await driver.pipe(TOPICS.account, txns.slice(i, i + 6), byAccount);
    const members = decodeMembers(accountGroup, await redis.zrange(groupKeys(prefix, accountGroup).window('acct-tr'), 0, -1));
    expect(members.some((m) => m.eventId === 't0')).toBe(false);
    const state = await dump(prefix);
    // t0 (admitted 70 h ago, trimmed since) and t33 (still kept) come again, e.g. from a client retrying.
    // Redeliveries are recognised within the trim horizon (a day plus the lateness plus 1 h, the
    // documented bound): t33 is a no-op; t0 is beyond it, so it is judged as a new event and is late.
    const out = await driver.pipe(TOPICS.account, [txns[0], txns[33]], byAccount);
    expect(out.map((o) => (o.kind === 'emit' ? [o.topic, (o.value as { event_id: string }).event_id, o.headers?.['fabric.late.newest_ts']] : ['reject']))).toEqual([['late.transactions', 't0', String(txns[35]!.ts)]]);
    expect(await dump(prefix)).toEqual(state);
  });

  it('orders a same-millisecond tie by offset, and never regresses the latest hash on a retry', async () => {
    const prefix = namespace();
    const driver = await open(prefix);
    const latest = async () => redis.hgetall(groupKeys(prefix, accountGroup).latest('acct-t'));
    const a = txn('a', 'acct-t', T0, 10, 'm-1');
    const b = txn('b', 'acct-t', T0 + MIN, 20, 'm-2');
    const c = txn('c', 'acct-t', T0 + MIN, 40, 'm-3');
    await driver.pipe(TOPICS.account, [a], byAccount);
    // b and c share a millisecond: c (the greater offset) sees b, and is the account's latest event.
    await driver.pipe(TOPICS.account, [b, c], { ...byAccount, commit: false });
    expect(await latest()).toMatchObject({ event_id: 'c', offset: '2', version: '2', txn_count_1h: '3', seconds_since_last_txn: '0' });
    // The retry ends after b: its write of b (a smaller (ts, offset)) must not replace c's.
    await driver.pipe(TOPICS.account, [b], byAccount);
    expect((await latest()).event_id).toBe('c');
    await driver.pipe(TOPICS.account, [c], byAccount);
    expect(driver.emitted<Raw>('features.account').map((u) => [u.event_id, u.txn_count_1h, u.amount_sum_1h, u.seconds_since_last_txn])).toEqual([
      ['a', 1, 10, null],
      ['b', 2, 30, 60],
      ['c', 3, 70, 0],
    ]);
    expect(await latest()).toMatchObject({ event_id: 'c', offset: '2', ts: String(c.ts), txn_count_1h: '3', amount_sum_1h: '70' });
    const oracle = recompute([a, b, c]);
    expect(byOffset(driver.outputs)).toEqual(oracle.expected());
    await checkRedis(prefix, oracle);
  });

  it('a hot entity: 120,000 events in one batch, then a batch that trims nearly all of them (Redis calls sized to fit)', async () => {
    const prefix = namespace();
    const N = 120_000;
    const STEP = 10 * MIN;
    const logic = featuresProcessor({ group: accountGroup, redis, keyPrefix: prefix, maxClockSkewMs: SKEW_MS, latenessMs: LATENESS_MS });
    const driver = await new TestDriver(logic, { startTime: T0 + (N + 10) * STEP }).open();
    const events = Array.from({ length: N }, (_, i) => txn(`h${i}`, 'acct-hot', T0 + i * STEP, 1 + (i % 7)));
    // More members than one call could pass as arguments (ZADD of 240,000 arguments).
    await driver.pipe(TOPICS.account, events, byAccount);
    const keys = groupKeys(prefix, accountGroup);
    expect(await redis.zcard(keys.window('acct-hot'))).toBe(N);
    const newest = T0 + (N - 1) * STEP;
    const last = txn('h-last', 'acct-hot', newest + MIN, 3);
    await driver.pipe(TOPICS.account, [last], byAccount);
    // The trim removes every member below newest - 24 h - lateness - 1 h (trimBound, lateness 1 h here) but the anchor, in one ZREM.
    const bound = newest - DAY_MS - 2 * LATENESS_MS;
    const below = events.filter((e) => (e.ts as number) < bound);
    const kept = events.length - below.length + 1 + 1; // above the bound, the anchor, the new event
    expect(await redis.zcard(keys.window('acct-hot'))).toBe(kept);
    expect(Number(await redis.hget(keys.latest('acct-hot'), 'trim_bound'))).toBe(below.at(-2)!.ts);
    const day = [...events, last].filter((e) => (e.ts as number) > (last.ts as number) - DAY_MS);
    const row = driver.emitted<Raw>('features.account').at(-1)!;
    expect([row.event_id, row.txn_count_24h, row.amount_sum_24h, row.seconds_since_last_txn]).toEqual(['h-last', day.length, day.reduce((s, e) => s + (e.amount as number), 0), 60]);
  });

  it('reads online features as of the read instant: they decay, and equal the latest row at the last event but for the gap', async () => {
    const prefix = namespace();
    const driver = await open(prefix);
    const events = [txn('a', 'acct-r', T0, 100, 'm-1'), txn('b', 'acct-r', T0 + 20 * MIN, 50, 'm-2'), txn('c', 'acct-r', T0 + 50 * MIN, 25, 'm-1')];
    await driver.pipe(TOPICS.account, events, byAccount);
    const last = events.at(-1)!.ts as number;
    const read = async (at: number) => (await readOnlineFeatures(redis, prefix, accountGroup, ['acct-r'], at))[0]!;
    const latest = (await readLatestRow(redis, prefix, accountGroup, 'acct-r'))!;
    expect(latest.values.seconds_since_last_txn).toBe(30 * 60);
    expect(await read(last)).toEqual({ entity: 'acct-r', values: { ...latest.values, seconds_since_last_txn: 0 }, exact: true });
    const oracle = recompute(events);
    for (const at of [T0 - 1, T0, T0 + 30 * MIN, last + 10 * MIN, T0 + HOUR_MS, last + HOUR_MS, T0 + DAY_MS, last + DAY_MS - 1, last + DAY_MS]) expect((await read(at)).values, `at ${at}`).toEqual(oracle.atInstant('acct-r', at));
    expect((await read(last + HOUR_MS)).values).toMatchObject({ txn_count_1h: 0, amount_sum_1h: 0, txn_count_24h: 3 });
    expect((await read(last + DAY_MS)).values).toEqual({ txn_count_1h: 0, txn_count_24h: 0, amount_sum_1h: 0, amount_sum_24h: 0, amount_avg_24h: null, amount_max_24h: 0, distinct_counterparties_24h: 0, seconds_since_last_txn: DAY_MS / 1000 });
    expect((await read(T0 - 1)).values).toEqual({ txn_count_1h: 0, txn_count_24h: 0, amount_sum_1h: 0, amount_sum_24h: 0, amount_avg_24h: null, amount_max_24h: 0, distinct_counterparties_24h: 0, seconds_since_last_txn: null });
    // Several entities in one call, in the asked order; an unknown one has no values.
    expect((await readOnlineFeatures(redis, prefix, accountGroup, ['nobody', 'acct-r'], last)).map((r) => [r.entity, r.values === null])).toEqual([
      ['nobody', true],
      ['acct-r', false],
    ]);
  });
});

describe('features processor (user): exact against an independent recomputation, on Redis', () => {
  it('equals the oracle on a seeded random stream: outputs, corrections, late, Redis, online reads; crash and replay', async () => {
    const values = randomEvents('user', { seed: 21, n: 200, entities: 6, t0: T0, latenessMs: LATENESS_MS, sleepyEvery: 70 });
    const oracle = recompute(values, 'user');
    checkCoverage(oracle);
    const prefix = namespace();
    const driver = await open(prefix, 'user');
    await pipeRandomly(driver, 'user', values.slice(0, -6), seededUniform(22), 0.2);
    await driver.pipe(TOPICS.user, values.slice(-6), keyed('user'));
    expect(byOffset(driver.outputs)).toEqual(oracle.expected());
    checkColumns('user', driver.emitted<Raw>('features.user'));
    await checkRedis(prefix, oracle);
    await checkOnline(prefix, oracle, seededUniform(23), 10);

    // Replay from offset 0 into the same namespace.
    const state = await dump(prefix);
    const replay = await open(prefix, 'user');
    await pipeRandomly(replay, 'user', values.slice(0, -6), seededUniform(24));
    await replay.pipe(TOPICS.user, values.slice(-6), keyed('user'));
    expect(byOffset(replay.outputs)).toEqual(oracle.expected());
    expect(await dump(prefix)).toEqual(state);
  });
});
