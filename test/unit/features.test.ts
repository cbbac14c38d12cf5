import { describe, expect, it } from 'vitest';
import { DAY_MS, HOUR_MS, computeAccountFeatures, type AccountEventRef } from '../../processors/features/account.js';
import { oracleAccountFeatures } from '../shared/account-oracle.js';

const T0 = 1_700_000_000_000;
let nextOffset = 0;
const ev = (id: string, ts: number, amount: number, cp = 'm1', offset = nextOffset++): AccountEventRef => ({ eventId: id, ts, offset, amount, counterpartyId: cp });

/** The definition, written out independently (test/shared/account-oracle.ts). */
function bruteForce(events: readonly AccountEventRef[], current: AccountEventRef) {
  const asOracle = (e: AccountEventRef) => ({ ts: e.ts, offset: e.offset, amount: e.amount, counterparty: e.counterpartyId });
  return oracleAccountFeatures(events.map(asOracle), asOracle(current));
}

describe('account features at an event (point in time, ordered by ts then offset)', () => {
  it('gives counts of zero, null average and null gap for an account with no history', () => {
    const f = computeAccountFeatures([], T0);
    expect(f).toMatchObject({ txn_count_1h: 0, txn_count_24h: 0, amount_sum_24h: 0, amount_avg_24h: null, seconds_since_last_txn: null });
  });

  it('counts the current event and measures the gap from the previous one', () => {
    const a = ev('a', T0, 10);
    const b = ev('b', T0 + 90_000, 30, 'm2');
    const f = computeAccountFeatures([a, b], b.ts, b);
    expect(f.txn_count_1h).toBe(2);
    expect(f.amount_sum_1h).toBe(40);
    expect(f.amount_avg_24h).toBe(20);
    expect(f.amount_max_24h).toBe(30);
    expect(f.distinct_counterparties_24h).toBe(2);
    expect(f.seconds_since_last_txn).toBe(90);
    expect(computeAccountFeatures([a], a.ts, a).seconds_since_last_txn).toBeNull();
    // The current event counts even when the history does not hold it.
    expect(computeAccountFeatures([a], b.ts, b)).toEqual(f);
  });

  it('uses t - W < ts <= t: an event exactly W old has expired, one at t counts', () => {
    const old = ev('old', T0 - HOUR_MS, 5);
    const inside = ev('in', T0 - HOUR_MS + 1, 7);
    const f = computeAccountFeatures([old, inside], T0);
    expect(f.txn_count_1h).toBe(1);
    expect(f.amount_sum_1h).toBe(7);
    expect(f.txn_count_24h).toBe(2);
  });

  it('orders events of the same millisecond by offset: each sees only the ones before it', () => {
    const tied = [ev('x', T0, 1, 'c1', 10), ev('y', T0, 2, 'c2', 11), ev('z', T0, 4, 'c3', 12)];
    const prior = ev('p', T0 - 30_000, 8, 'c0', 9);
    const all = [tied[2]!, prior, tied[0]!, tied[1]!];
    const got = tied.map((e) => computeAccountFeatures(all, e.ts, e));
    expect(got.map((f) => f.txn_count_1h)).toEqual([2, 3, 4]);
    expect(got.map((f) => f.amount_sum_1h)).toEqual([9, 11, 15]);
    expect(got.map((f) => f.distinct_counterparties_24h)).toEqual([2, 3, 4]);
    // Only the first of the tie has a previous event in another millisecond.
    expect(got.map((f) => f.seconds_since_last_txn)).toEqual([30, 0, 0]);
    tied.forEach((e, i) => expect(got[i]).toEqual(bruteForce(all, e)));
  });

  it('is not changed for an earlier event by a later offset carrying an earlier ts (out-of-order arrival)', () => {
    const a = ev('a', T0, 10, 'c1', 0);
    const b = ev('b', T0 + 60_000, 20, 'c2', 1);
    const straggler = ev('s', T0 - 60_000, 100, 'c3', 2);
    const c = ev('c', T0 + 120_000, 40, 'c1', 3);
    const all = [a, b, straggler, c];
    const bWithout = computeAccountFeatures([a, b], b.ts, b);
    expect(computeAccountFeatures(all, b.ts, b)).toEqual(bWithout);
    expect(bWithout).toMatchObject({ txn_count_1h: 2, amount_sum_24h: 30, seconds_since_last_txn: 60 });
    // a and b precede the straggler in the partition but not in event time: for it they do not exist yet.
    expect(computeAccountFeatures(all, straggler.ts, straggler)).toMatchObject({ txn_count_1h: 1, amount_sum_1h: 100, seconds_since_last_txn: null });
    // A later event counts it, and measures its gap from the greatest earlier event (b), not from it.
    expect(computeAccountFeatures(all, c.ts, c)).toMatchObject({ txn_count_1h: 4, amount_sum_1h: 170, seconds_since_last_txn: 60 });
    for (const e of all) expect(computeAccountFeatures(all, e.ts, e)).toEqual(bruteForce(all, e));
  });

  it('matches the definition on a random stream with ties and out-of-order timestamps', () => {
    let seed = 7;
    const rand = () => (seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31;
    const events: AccountEventRef[] = [];
    let clock = T0;
    for (let i = 0; i < 400; i++) {
      clock += Math.floor(rand() * 20 * 60_000);
      // Some events share the previous one's millisecond, some arrive up to 3 h late.
      const ts = i > 0 && rand() < 0.15 ? events[i - 1]!.ts : rand() < 0.2 ? clock - Math.floor(rand() * 3 * HOUR_MS) : clock;
      events.push(ev(`e${i}`, ts, Math.floor(rand() * 400) / 4, `c${Math.floor(rand() * 6)}`, i));
    }
    const shuffled = [...events];
    for (let i = shuffled.length - 1; i > 0; i--) {
      const j = Math.floor(rand() * (i + 1));
      [shuffled[i], shuffled[j]] = [shuffled[j]!, shuffled[i]!];
    }
    for (const e of events) expect(computeAccountFeatures(shuffled, e.ts, e)).toEqual(bruteForce(events, e));
  });

  it('refuses an instant other than the current event time', () => {
    const a = ev('a', T0, 1);
    expect(() => computeAccountFeatures([a], T0 + 1, a)).toThrow(RangeError);
  });

  it('is independent of history order (deterministic replays)', () => {
    const events = Array.from({ length: 50 }, (_, i) => ev(`e${i}`, T0 + i * 60_000, 0.1 * (i + 1), `c${i % 7}`, i));
    const last = events[events.length - 1]!;
    const forward = computeAccountFeatures(events, last.ts, last);
    const backward = computeAccountFeatures([...events].reverse(), last.ts, last);
    expect(backward).toEqual(forward);
  });
});

describe('account features at a read instant', () => {
  it('decays as events expire even without a new event', () => {
    const a = ev('a', T0, 100, 'c1', 0);
    const b = ev('b', T0 + 10 * 60_000, 50, 'c2', 1);
    const at = (t: number) => computeAccountFeatures([a, b], t);
    expect(at(b.ts)).toEqual({ txn_count_1h: 2, txn_count_24h: 2, amount_sum_1h: 150, amount_sum_24h: 150, amount_avg_24h: 75, amount_max_24h: 100, distinct_counterparties_24h: 2, seconds_since_last_txn: 0 });
    expect(at(a.ts + HOUR_MS)).toMatchObject({ txn_count_1h: 1, amount_sum_1h: 50, txn_count_24h: 2, seconds_since_last_txn: 3000 });
    expect(at(b.ts + HOUR_MS)).toMatchObject({ txn_count_1h: 0, amount_sum_1h: 0, txn_count_24h: 2 });
    expect(at(a.ts + DAY_MS)).toMatchObject({ txn_count_24h: 1, amount_avg_24h: 50, amount_max_24h: 50, distinct_counterparties_24h: 1 });
    expect(at(b.ts + DAY_MS)).toEqual({ txn_count_1h: 0, txn_count_24h: 0, amount_sum_1h: 0, amount_sum_24h: 0, amount_avg_24h: null, amount_max_24h: 0, distinct_counterparties_24h: 0, seconds_since_last_txn: DAY_MS / 1000 });
  });

  it('ignores events after the instant (no future leakage), whatever their offset', () => {
    const past = ev('p', T0, 10, 'c1', 5);
    const future = ev('f', T0 + 1, 1000, 'evil', 1);
    expect(computeAccountFeatures([future, past], T0)).toEqual(computeAccountFeatures([past], T0));
    expect(computeAccountFeatures([future, past], T0).seconds_since_last_txn).toBe(0);
    expect(computeAccountFeatures([future], T0).seconds_since_last_txn).toBeNull();
  });
});
