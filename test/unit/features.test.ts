import { describe, expect, it } from 'vitest';
import { DAY_MS, HOUR_MS, computeAccountFeatures, type AccountEventRef } from '../../processors/features/account.js';

const T0 = 1_700_000_000_000;
const ev = (id: string, ts: number, amount: number, cp = 'm1'): AccountEventRef => ({ eventId: id, ts, amount, counterpartyId: cp });

describe('account features (point in time)', () => {
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
  });

  it('uses t - W < ts <= t: an event exactly W old has expired, one at t counts', () => {
    const old = ev('old', T0 - HOUR_MS, 5);
    const inside = ev('in', T0 - HOUR_MS + 1, 7);
    const f = computeAccountFeatures([old, inside], T0);
    expect(f.txn_count_1h).toBe(1);
    expect(f.amount_sum_1h).toBe(7);
    expect(f.txn_count_24h).toBe(2);
  });

  it('decays as events expire even without a new event', () => {
    const a = ev('a', T0, 100);
    expect(computeAccountFeatures([a], T0 + DAY_MS - 1).txn_count_24h).toBe(1);
    expect(computeAccountFeatures([a], T0 + DAY_MS).txn_count_24h).toBe(0);
    expect(computeAccountFeatures([a], T0 + DAY_MS).amount_avg_24h).toBeNull();
  });

  it('ignores events after the instant (no future leakage), whatever their order', () => {
    const past = ev('p', T0, 10);
    const future = ev('f', T0 + 1, 1000, 'evil');
    const f1 = computeAccountFeatures([future, past], T0, past);
    const f2 = computeAccountFeatures([past], T0, past);
    expect(f1).toEqual(f2);
  });

  it('is independent of history order (deterministic replays)', () => {
    const events = Array.from({ length: 50 }, (_, i) => ev(`e${i}`, T0 + i * 60_000, 0.1 * (i + 1), `c${i % 7}`));
    const last = events[events.length - 1]!;
    const forward = computeAccountFeatures(events, last.ts, last);
    const backward = computeAccountFeatures([...events].reverse(), last.ts, last);
    expect(backward).toEqual(forward);
  });
});
