/**
 * The `account` feature group's definition written out once for tests, independently of
 * processors/features: the features of an event at offset o and time t are over the account's events
 * at smaller offsets (in its partition) with ts in (t - W, t], plus itself; the previous event is the
 * greatest by (ts, offset) among those earlier ones with ts <= t. Sums are rounded to 1e-6.
 */
export interface OracleEvent {
  readonly ts: number;
  readonly offset: number;
  readonly amount: number;
  readonly counterparty: string;
}

const HOUR = 3_600_000;
const DAY = 24 * HOUR;
const round6 = (x: number): number => Math.round(x * 1e6) / 1e6;

/** `earlier`: the account's events at smaller offsets than `current` (any order, any ts). */
export function oracleAccountFeatures(earlier: readonly OracleEvent[], current: OracleEvent) {
  const t = current.ts;
  const before = earlier.filter((e) => e.offset < current.offset && e.ts <= t);
  const day = [...before, current].filter((e) => e.ts > t - DAY);
  const hour = day.filter((e) => e.ts > t - HOUR);
  const sum = (xs: readonly OracleEvent[]): number => xs.reduce((s, e) => s + e.amount, 0);
  let previous: OracleEvent | undefined;
  for (const e of before) if (!previous || e.ts > previous.ts || (e.ts === previous.ts && e.offset > previous.offset)) previous = e;
  return {
    txn_count_1h: hour.length,
    txn_count_24h: day.length,
    amount_sum_1h: round6(sum(hour)),
    amount_sum_24h: round6(sum(day)),
    amount_avg_24h: round6(sum(day) / day.length),
    amount_max_24h: Math.max(...day.map((e) => e.amount)),
    distinct_counterparties_24h: new Set(day.map((e) => e.counterparty)).size,
    seconds_since_last_txn: previous ? (t - previous.ts) / 1000 : null,
  };
}
