import { randomBytes } from 'node:crypto';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { Redis } from 'ioredis';
import { loadConfig } from '../../topology/config.js';
import { TestDriver } from '../../topology/runtime/test-driver.js';
import { RedisStateStore } from '../../topology/runtime/state-store.js';
import type { Output } from '../../topology/runtime/processor.js';
import { featuresProcessor, parseFeatures, readOnlineAccountFeatures } from '../../processors/features/processor.js';
import { accountKeys } from '../../processors/features/redis-keys.js';
import { ACCOUNT_FEATURE_NAMES, type AccountFeatures } from '../../processors/features/account.js';
import type { AccountFeatureUpdate, Transaction } from '../../schemas/types.generated.js';
import { oracleAccountFeatures } from '../shared/account-oracle.js';
import { seededUniform } from '../shared/seeded.js';

/**
 * The features processor against the real Redis, through the TestDriver: every value is compared with
 * an independent brute-force recomputation from the raw records in offset order (the definition of the
 * group written out again, not the processor's code), and crashes and replays with a clean run.
 */
const MIN = 60_000;
const HOUR = 60 * MIN;
const DAY = 24 * HOUR;
const SKEW_MS = 5 * MIN;
const LATENESS_MS = HOUR;
const T0 = Date.UTC(2024, 4, 1);
/** Kafka timestamp of every record unless a test says otherwise: after every event time of the streams. */
const ARRIVAL = T0 + 30 * DAY;
const TOPIC = 'events.transactions';
const TASK = { group: 'features', topic: TOPIC, partition: 0 };

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

/** A driver over the real processor; its task state lives in Redis under its own prefix. */
async function open(prefix: string, statePrefix = `${prefix}run-${randomBytes(2).toString('hex')}:`): Promise<TestDriver> {
  const logic = featuresProcessor({ redis, keyPrefix: prefix, maxClockSkewMs: SKEW_MS, latenessMs: LATENESS_MS });
  return new TestDriver(logic, { store: new RedisStateStore(redis, statePrefix), startTime: ARRIVAL }).open();
}

const byAccount = { key: (v: unknown) => (v as Transaction).account_id };

function txn(eventId: string, accountId: string, ts: number, amount: number, counterparty = 'm-1'): Transaction {
  return { event_id: eventId, account_id: accountId, counterparty_id: counterparty, type: 'PAYMENT', amount, old_balance: 1000, new_balance: 1000 - amount, channel: 'web', ts };
}

const seeded = seededUniform;

/**
 * A seeded stream over `accounts` accounts spanning ~3 days: same-millisecond ties within an account,
 * mild out-of-order timestamps (within the lateness), late events, client retries (duplicate event
 * ids), timestamps in microseconds and one sleepy account. It ends with one event per account, so that one final batch
 * touches (and trims) every account's window.
 */
function randomStream(seed: number, n = 300, accounts = 10): Transaction[] {
  const rand = seeded(seed);
  const out: Transaction[] = [];
  let clock = T0;
  // acct-0 is sleepy (every 150th slot): its gaps outlast the retained window, so its
  // seconds_since_last_txn needs the anchor a trim keeps.
  const account = (i: number): string => (i % 150 === 0 ? 'acct-0' : `acct-${1 + Math.floor(rand() * (accounts - 1))}`);
  const amount = () => Math.floor(rand() * 4000) / 4; // quarters: sums are exact in any order
  for (let i = 0; i < n; i++) {
    const r = rand();
    const previous = out.at(-1);
    if (previous && r < 0.04) {
      out.push(out[Math.max(0, out.length - 1 - Math.floor(rand() * 20))]!);
      continue;
    }
    clock += Math.floor(rand() * 30 * MIN);
    const cp = `m-${Math.floor(rand() * 5)}`;
    if (previous && r < 0.16) out.push(txn(`e${seed}-${i}`, previous.account_id, previous.ts, amount(), cp));
    else if (r < 0.32) out.push(txn(`e${seed}-${i}`, account(i), clock - Math.floor(rand() * 50 * MIN), amount(), cp));
    else if (r < 0.36) out.push(txn(`e${seed}-${i}`, account(i), clock - 2 * HOUR - Math.floor(rand() * DAY), amount(), cp));
    else if (r < 0.38) out.push(txn(`e${seed}-${i}`, account(i), clock * 1000, amount(), cp));
    else out.push(txn(`e${seed}-${i}`, account(i), clock, amount(), cp));
  }
  for (let a = 0; a < accounts; a++) out.push(txn(`e${seed}-end-${a}`, `acct-${a}`, (clock += MIN), amount(), 'm-0'));
  return out;
}

type Normalized = { topic: string; key: string; value: unknown } | { reject: string };

interface Recomputed {
  /** What the processor must output for each record, by offset. */
  outputs: Record<string, Normalized>;
  /** The events that entered the windows (first occurrences, neither late nor skewed), with their features. */
  accepted: { txn: Transaction; offset: number; value: AccountFeatureUpdate }[];
  /** Offsets of the redeliveries (no output) that arrived past watermark - lateness, i.e. a late check first would have routed late. */
  lateRedeliveries: number[];
  watermark: number | null;
}

const round6 = (x: number) => Math.round(x * 1e6) / 1e6;

/**
 * The group's definition applied to the records in offset order, from scratch: a far-future ts is
 * rejected; then an event id the account already accepted (a redelivery) is a no-op, whatever its
 * lateness (no output: its first occurrence's stand); then an event at or below watermark - lateness
 * goes late; the others are accepted. Only accepted events move the watermark.
 */
function recompute(txns: readonly Transaction[], arrival = ARRIVAL): Recomputed {
  const outputs: Record<string, Normalized> = {};
  const accepted: Recomputed['accepted'] = [];
  const lateRedeliveries: number[] = [];
  let watermark = -Infinity;
  txns.forEach((t, offset) => {
    if (t.ts > arrival + SKEW_MS) outputs[offset] = { reject: 'FABRIC_EVENT_TIME_SKEW' };
    else if (accepted.some((a) => a.txn.account_id === t.account_id && a.txn.event_id === t.event_id)) {
      if (t.ts <= watermark - LATENESS_MS) lateRedeliveries.push(offset);
    } else if (t.ts <= watermark - LATENESS_MS) outputs[offset] = { topic: 'late.transactions', key: t.account_id, value: t };
    else {
      watermark = Math.max(watermark, t.ts);
      const earlier = accepted.filter((a) => a.txn.account_id === t.account_id).map((a) => ({ ts: a.txn.ts, offset: a.offset, amount: a.txn.amount, counterparty: a.txn.counterparty_id }));
      const value = {
        event_id: t.event_id,
        entity_id: t.account_id,
        ts: t.ts,
        ...oracleAccountFeatures(earlier, { ts: t.ts, offset, amount: t.amount, counterparty: t.counterparty_id }),
        source_topic: TOPIC,
        source_partition: 0,
        source_offset: offset,
      };
      accepted.push({ txn: t, offset, value });
      outputs[offset] = { topic: 'features.account', key: t.account_id, value };
    }
  });
  return { outputs, accepted, lateRedeliveries, watermark: Number.isFinite(watermark) ? watermark : null };
}

/** The processor's outputs by source offset (at most one per record; none for a redelivered event id). */
function byOffset(outputs: readonly Output[]): Record<string, Normalized> {
  const out: Record<string, Normalized> = {};
  for (const o of outputs) {
    const offset = o.kind === 'emit' ? o.source!.offset : o.record.offset;
    expect(out[offset], `two outputs for offset ${offset}`).toBeUndefined();
    out[offset] = o.kind === 'emit' ? { topic: o.topic, key: o.key, value: o.value } : { reject: o.error.code };
  }
  return out;
}

/** Pipes `txns` in random batch sizes; with `crashRate`, some batches first run with commit: false (a crash) and are re-piped with other boundaries. */
async function pipeRandomly(driver: TestDriver, txns: readonly Transaction[], rand: () => number, crashRate = 0): Promise<void> {
  for (let i = 0; i < txns.length; ) {
    while (rand() < crashRate) await driver.pipe(TOPIC, txns.slice(i, i + 1 + Math.floor(rand() * 60)), { ...byAccount, commit: false });
    const n = 1 + Math.floor(rand() * 40);
    await driver.pipe(TOPIC, txns.slice(i, i + n), byAccount);
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

async function watermarkAfter(driver: TestDriver, owner: string, offset: number): Promise<number | null> {
  const raw = await driver.store.load(owner, TASK, String(offset));
  return raw === null ? null : (JSON.parse(raw) as { watermark: number | null }).watermark;
}

const featuresOf = (u: AccountFeatureUpdate): AccountFeatures => Object.fromEntries(ACCOUNT_FEATURE_NAMES.map((n) => [n, u[n]])) as unknown as AccountFeatures;

describe('features processor: exact event time against Redis', () => {
  it('equals a brute-force recomputation on seeded random streams in random batch sizes', async () => {
    for (const seed of [1, 2, 3]) {
      const prefix = namespace();
      const txns = randomStream(seed);
      const driver = await open(prefix);
      await pipeRandomly(driver, txns, seeded(seed * 7919));
      const expected = recompute(txns);
      expect(byOffset(driver.outputs)).toEqual(expected.outputs);

      // The stream exercised what it is meant to (ties, disorder, late, retries, skew, trims).
      const kinds = Object.values(expected.outputs);
      expect(kinds.filter((o) => 'reject' in o).length).toBeGreaterThan(0);
      expect(kinds.filter((o) => 'topic' in o && o.topic === 'late.transactions').length).toBeGreaterThan(0);
      expect(txns.length - kinds.length).toBeGreaterThan(0); // duplicates (no output)
      expect(expected.lateRedeliveries.length).toBeGreaterThan(0); // some of them past watermark - lateness
      expect(expected.accepted.some((a, i) => i > 0 && a.txn.ts === expected.accepted[i - 1]!.txn.ts && a.txn.account_id === expected.accepted[i - 1]!.txn.account_id)).toBe(true);
      expect(expected.accepted.some((a, i) => i > 0 && a.txn.ts < expected.accepted[i - 1]!.txn.ts)).toBe(true);
      expect(expected.accepted.some((a) => (a.value.seconds_since_last_txn ?? 0) > (DAY + 2 * HOUR + LATENESS_MS) / 1000)).toBe(true);

      const keys = accountKeys(prefix);
      let trimmed = 0;
      for (const accountId of new Set(expected.accepted.map((a) => a.txn.account_id))) {
        const mine = expected.accepted.filter((a) => a.txn.account_id === accountId);
        // The latest hash holds the features of the account's greatest event by (ts, offset).
        const greatest = mine.reduce((g, a) => (a.txn.ts > g.txn.ts || (a.txn.ts === g.txn.ts && a.offset > g.offset) ? a : g));
        const hash = await redis.hgetall(keys.latest(accountId));
        expect(parseFeatures(hash)).toEqual(featuresOf(greatest.value));
        expect({ ts: hash.ts, offset: hash.offset, event_id: hash.event_id }).toEqual({ ts: String(greatest.txn.ts), offset: String(greatest.offset), event_id: greatest.txn.event_id });
        if ((await redis.zcard(keys.window(accountId))) < mine.length) trimmed++;
      }
      expect(trimmed).toBeGreaterThan(0);
      expect(await watermarkAfter(driver, 'features', txns.length)).toBe(expected.watermark);
    }
  });

  it('a batch that crashed (commit: false) and is re-piped with other boundaries changes no output and no Redis value', async () => {
    const txns = randomStream(42);
    const accounts = 10;
    const head = txns.slice(0, -accounts);
    const last = txns.slice(-accounts);

    const cleanPrefix = namespace();
    const clean = await open(cleanPrefix);
    await pipeRandomly(clean, head, seeded(5));
    await clean.pipe(TOPIC, last, byAccount);

    const crashedPrefix = namespace();
    const crashed = await open(crashedPrefix);
    await pipeRandomly(crashed, head, seeded(6), 0.3);
    await crashed.pipe(TOPIC, last, { ...byAccount, commit: false });
    await crashed.pipe(TOPIC, last, byAccount);

    expect(byOffset(crashed.outputs)).toEqual(byOffset(clean.outputs));
    expect(byOffset(clean.outputs)).toEqual(recompute(txns).outputs);
    // Both runs ended with the same batch touching every account, so the windows are trimmed alike.
    expect(await dump(crashedPrefix)).toEqual(await dump(cleanPrefix));
    expect(await watermarkAfter(crashed, 'features', txns.length)).toBe(await watermarkAfter(clean, 'features', txns.length));
  });

  it('a replay from offset 0 into the same namespace, after trims, gives the same values', async () => {
    const prefix = namespace();
    const txns = randomStream(9);
    const first = await open(prefix);
    await pipeRandomly(first, txns.slice(0, -10), seeded(10));
    await first.pipe(TOPIC, txns.slice(-10), byAccount);
    const before = await dump(prefix);

    // Offsets reset (a new task state), Redis as the first run left it: trimmed, with every member "ahead".
    const replay = await open(prefix);
    await pipeRandomly(replay, txns.slice(0, -10), seeded(11));
    await replay.pipe(TOPIC, txns.slice(-10), byAccount);
    expect(byOffset(replay.outputs)).toEqual(byOffset(first.outputs));
    expect(await dump(prefix)).toEqual(before);
  });

  it('an old event within the lateness after a trim gets its exact window; its own replay too', async () => {
    const prefix = namespace();
    const driver = await open(prefix);
    // One account, an event every 2 h for 3 days: older events are trimmed as the watermark moves on.
    const txns = Array.from({ length: 36 }, (_, i) => txn(`t${i}`, 'acct-a', T0 + i * 2 * HOUR, 10 + i, `m-${i % 4}`));
    for (let i = 0; i < txns.length; i += 6) await driver.pipe(TOPIC, txns.slice(i, i + 6), byAccount);
    const keys = accountKeys(prefix);
    const watermark = txns.at(-1)!.ts;
    expect(await redis.zcard(keys.window('acct-a'))).toBeLessThan(txns.length);

    const straggler = txn('old', 'acct-a', watermark - LATENESS_MS + 1, 500, 'm-9');
    const tooOld = txn('older', 'acct-a', watermark - LATENESS_MS, 700, 'm-9');
    const next = txn('next', 'acct-a', watermark + MIN, 1, 'm-1');
    await driver.pipe(TOPIC, [straggler, tooOld], byAccount);
    await driver.pipe(TOPIC, [next], byAccount);
    const all = [...txns, straggler, tooOld, next];
    const expected = recompute(all);
    expect(byOffset(driver.outputs)).toEqual(expected.outputs);
    // Its window reaches back to events 46 h..68 h after T0 (12 of them), its previous event is the one at 68 h.
    expect(expected.outputs[36]).toMatchObject({ topic: 'features.account', value: { txn_count_24h: 13, seconds_since_last_txn: 3600.001 } });
    expect(expected.outputs[37]).toMatchObject({ topic: 'late.transactions' });

    // The same records replayed into a fresh namespace (no trim ever ran there at those points).
    const fresh = await open(namespace());
    await fresh.pipe(TOPIC, all, byAccount);
    expect(byOffset(fresh.outputs)).toEqual(expected.outputs);
  });

  it('refuses a far-future ts (microseconds) with FABRIC_EVENT_TIME_SKEW without moving the watermark or the features', async () => {
    const prefix = namespace();
    const driver = await open(prefix);
    const arrival = T0 + HOUR;
    const a = txn('a', 'acct-s', T0, 10);
    await driver.pipe(TOPIC, [a], { ...byAccount, timestamp: arrival });
    const before = await dump(prefix);

    const micro = txn('micro', 'acct-s', T0 * 1000, 99);
    const atLimit = txn('limit', 'acct-s', arrival + SKEW_MS, 5);
    const beyond = txn('beyond', 'acct-s', arrival + SKEW_MS + 1, 7);
    const out = await driver.pipe(TOPIC, [micro, beyond], { ...byAccount, timestamp: arrival });
    expect(out.map((o) => (o.kind === 'reject' ? o.error.code : o.kind))).toEqual(['FABRIC_EVENT_TIME_SKEW', 'FABRIC_EVENT_TIME_SKEW']);
    const first = out[0] as Extract<Output, { kind: 'reject' }>;
    expect(first.error.message).toMatch(/microseconds/);
    expect(first.record.offset).toBe('1');
    expect(await dump(prefix)).toEqual(before);
    expect(await watermarkAfter(driver, 'features', 3)).toBe(a.ts);

    // The next events are computed as if the refused ones never existed.
    const b = txn('b', 'acct-s', T0 + 10 * MIN, 20);
    await driver.pipe(TOPIC, [b, atLimit], { ...byAccount, timestamp: arrival });
    expect(byOffset(driver.outputs)).toEqual(recompute([a, micro, beyond, b, atLimit], arrival).outputs);
    expect(driver.emitted<AccountFeatureUpdate>('features.account').map((u) => [u.event_id, u.txn_count_1h, u.seconds_since_last_txn])).toEqual([
      ['a', 1, null],
      ['b', 2, 600],
      ['limit', 2, (arrival + SKEW_MS - b.ts) / 1000],
    ]);
  });

  it('routes an event older than watermark - lateness to late.transactions, unchanged, with no features emit', async () => {
    const prefix = namespace();
    const driver = await open(prefix);
    const a = txn('a', 'acct-l', T0 + 5 * HOUR, 10);
    await driver.pipe(TOPIC, [a], byAccount);
    const before = await dump(prefix);
    const late = txn('late', 'acct-l', a.ts - LATENESS_MS, 50);
    const out = await driver.pipe(TOPIC, [late], byAccount);
    expect(out).toHaveLength(1);
    expect(out[0]).toMatchObject({ kind: 'emit', topic: 'late.transactions', key: 'acct-l', value: late, source: { offset: '1' } });
    expect(await dump(prefix)).toEqual(before);
    expect(await watermarkAfter(driver, 'features', 2)).toBe(a.ts);

    const justInTime = txn('in-time', 'acct-l', a.ts - LATENESS_MS + 1, 30);
    await driver.pipe(TOPIC, [justInTime], byAccount);
    expect(driver.emitted<AccountFeatureUpdate>('features.account').map((u) => [u.event_id, u.txn_count_24h])).toEqual([
      ['a', 1],
      ['in-time', 1],
    ]);
    // The latest hash still describes the account's greatest event, not the last one processed.
    expect((await redis.hgetall(accountKeys(prefix).latest('acct-l'))).event_id).toBe('a');
  });

  it('treats a redelivered event id as a no-op: counted once, emitted once', async () => {
    const prefix = namespace();
    const driver = await open(prefix);
    const x = txn('x', 'acct-d', T0, 10, 'm-1');
    const y = txn('y', 'acct-d', T0 + MIN, 20, 'm-2');
    const z = txn('z', 'acct-d', T0 + 2 * MIN, 40, 'm-3');
    await driver.pipe(TOPIC, [x, y], byAccount);
    // x again in a later batch, then z, then y again in the same batch.
    await driver.pipe(TOPIC, [x, z, y], byAccount);
    const emitted = driver.emitted<AccountFeatureUpdate>('features.account');
    expect(emitted.map((e) => e.event_id)).toEqual(['x', 'y', 'z']);
    expect(emitted[2]).toMatchObject({ event_id: 'z', txn_count_1h: 3, amount_sum_1h: 70, seconds_since_last_txn: 60, source_offset: 3 });
    expect(byOffset(driver.outputs)).toEqual(recompute([x, y, x, z, y]).outputs);
    expect(await redis.zcard(accountKeys(prefix).window('acct-d'))).toBe(3);
  });

  it('a redelivery past watermark - lateness is still a no-op (no late.transactions), a late new event id still goes late', async () => {
    const prefix = namespace();
    const driver = await open(prefix);
    const x = txn('x', 'acct-rl', T0, 10, 'm-1');
    const y = txn('y', 'acct-rl', T0 + 3 * HOUR, 20, 'm-2');
    await driver.pipe(TOPIC, [x, y], byAccount);
    const before = await dump(prefix);
    expect(x.ts).toBeLessThanOrEqual((await watermarkAfter(driver, 'features', 2))! - LATENESS_MS);

    // x redelivered after the watermark moved past x.ts + lateness: nothing at all. w is late and new: late.
    const w = txn('w', 'acct-rl', T0 + MIN, 30, 'm-3');
    const out = await driver.pipe(TOPIC, [x, w], byAccount);
    expect(out).toHaveLength(1);
    expect(out[0]).toMatchObject({ kind: 'emit', topic: 'late.transactions', key: 'acct-rl', value: w, source: { offset: '3' } });
    expect(await dump(prefix)).toEqual(before);
    expect(await watermarkAfter(driver, 'features', 4)).toBe(y.ts);

    // Within one batch too: v is admitted, moves the watermark by 3 h, and its copy right after is a
    // no-op; so is a copy of y; u (new, late) goes late; only t (new, in time) is admitted.
    const v = txn('v', 'acct-rl', T0 + 4 * HOUR, 40, 'm-1');
    const z = txn('z', 'acct-rl', T0 + 7 * HOUR, 50, 'm-2');
    const u = txn('u', 'acct-rl', T0 + 4 * HOUR, 60, 'm-3');
    const t = txn('t', 'acct-rl', T0 + 6 * HOUR + 1, 70, 'm-4');
    await driver.pipe(TOPIC, [v, z, v, y, u, t], byAccount);
    const all = [x, y, x, w, v, z, v, y, u, t];
    const expected = recompute(all);
    expect(expected.lateRedeliveries).toEqual([2, 6, 7]);
    expect(byOffset(driver.outputs)).toEqual(expected.outputs);
    expect(Object.keys(expected.outputs).map(Number)).toEqual([0, 1, 3, 4, 5, 8, 9]);
    expect(driver.emitted<Transaction>('late.transactions').map((e) => e.event_id)).toEqual(['w', 'u']);
    expect(driver.emitted<AccountFeatureUpdate>('features.account').map((e) => [e.event_id, e.txn_count_24h])).toEqual([
      ['x', 1],
      ['y', 2],
      ['v', 3],
      ['z', 4],
      ['t', 4], // x, y, v and itself: z is at a later ts
    ]);
    expect(await redis.zcard(accountKeys(prefix).window('acct-rl'))).toBe(5);
    expect(await watermarkAfter(driver, 'features', all.length)).toBe(z.ts);
  });

  it('orders a same-millisecond tie by offset, and never regresses the latest hash on a retry', async () => {
    const prefix = namespace();
    const driver = await open(prefix);
    const latest = async () => redis.hgetall(accountKeys(prefix).latest('acct-t'));
    const a = txn('a', 'acct-t', T0, 10, 'm-1');
    const b = txn('b', 'acct-t', T0 + MIN, 20, 'm-2');
    const c = txn('c', 'acct-t', T0 + MIN, 40, 'm-3');
    await driver.pipe(TOPIC, [a], byAccount);
    // b and c share a millisecond: c (the greater offset) sees b, and is the account's latest event.
    await driver.pipe(TOPIC, [b, c], { ...byAccount, commit: false });
    expect(await latest()).toMatchObject({ event_id: 'c', offset: '2', txn_count_1h: '3', seconds_since_last_txn: '0' });
    // The retry ends after b: its write of b (a smaller (ts, offset)) must not replace c's.
    await driver.pipe(TOPIC, [b], byAccount);
    expect((await latest()).event_id).toBe('c');
    await driver.pipe(TOPIC, [c], byAccount);
    expect(driver.emitted<AccountFeatureUpdate>('features.account').map((u) => [u.event_id, u.txn_count_1h, u.amount_sum_1h, u.seconds_since_last_txn])).toEqual([
      ['a', 1, 10, null],
      ['b', 2, 30, 60],
      ['c', 3, 70, 0],
    ]);
    expect(await latest()).toMatchObject({ event_id: 'c', offset: '2', ts: String(c.ts), txn_count_1h: '3', amount_sum_1h: '70' });
  });

  it('reads online features as of the read instant: they decay, and equal the latest hash at the last event', async () => {
    const prefix = namespace();
    const driver = await open(prefix);
    const events = [txn('a', 'acct-r', T0, 100, 'm-1'), txn('b', 'acct-r', T0 + 20 * MIN, 50, 'm-2'), txn('c', 'acct-r', T0 + 50 * MIN, 25, 'm-1')];
    await driver.pipe(TOPIC, events, byAccount);
    const last = events.at(-1)!;
    const hash = parseFeatures(await redis.hgetall(accountKeys(prefix).latest('acct-r')));
    const read = (at: number) => readOnlineAccountFeatures(redis, prefix, 'acct-r', at);

    // At the last event, as of the read instant: the same windows, and 0 s since the last event.
    expect(await read(last.ts)).toEqual({ ...hash, seconds_since_last_txn: 0 });
    expect(hash.seconds_since_last_txn).toBe(30 * 60);

    // Independently: every event with ts <= asOf, windows relative to asOf.
    const expectedAt = (at: number): AccountFeatures => {
      const day = events.filter((e) => e.ts <= at && e.ts > at - DAY);
      const hour = day.filter((e) => e.ts > at - HOUR);
      const sum = (xs: Transaction[]) => xs.reduce((s, e) => s + e.amount, 0);
      return {
        txn_count_1h: hour.length,
        txn_count_24h: day.length,
        amount_sum_1h: sum(hour),
        amount_sum_24h: sum(day),
        amount_avg_24h: day.length ? round6(sum(day) / day.length) : null,
        amount_max_24h: day.length ? Math.max(...day.map((e) => e.amount)) : 0,
        distinct_counterparties_24h: new Set(day.map((e) => e.counterparty_id)).size,
        seconds_since_last_txn: (at - Math.max(...events.filter((e) => e.ts <= at).map((e) => e.ts))) / 1000,
      };
    };
    for (const at of [T0 + 30 * MIN, last.ts + 10 * MIN, T0 + HOUR, last.ts + HOUR, T0 + DAY, last.ts + DAY - 1, last.ts + DAY]) expect(await read(at)).toEqual(expectedAt(at));
    expect(await read(last.ts + HOUR)).toMatchObject({ txn_count_1h: 0, amount_sum_1h: 0, txn_count_24h: 3 });
    expect(await read(last.ts + DAY)).toEqual({ txn_count_1h: 0, txn_count_24h: 0, amount_sum_1h: 0, amount_sum_24h: 0, amount_avg_24h: null, amount_max_24h: 0, distinct_counterparties_24h: 0, seconds_since_last_txn: DAY / 1000 });
    expect(await readOnlineAccountFeatures(redis, prefix, 'nobody', last.ts)).toBeNull();
  });
});
