/**
 * The `account` feature group: pure, deterministic point-in-time logic shared by the online
 * processor (Redis), the offline training-set builder and tests. A W-window as of instant t covers
 * events with t - W < ts <= t in event time.
 */
export const HOUR_MS = 3_600_000;
export const DAY_MS = 24 * HOUR_MS;
/** The longest window of the group: history older than this (relative to the newest event) is not needed. */
export const ACCOUNT_HISTORY_MS = DAY_MS;

/** What the group remembers of one past event of an account. */
export interface AccountEventRef {
  readonly eventId: string;
  readonly ts: number;
  readonly amount: number;
  readonly counterpartyId: string;
}

export interface AccountFeatures {
  txn_count_1h: number;
  txn_count_24h: number;
  amount_sum_1h: number;
  amount_sum_24h: number;
  amount_avg_24h: number | null;
  amount_max_24h: number;
  distinct_counterparties_24h: number;
  seconds_since_last_txn: number | null;
}

export const ACCOUNT_FEATURE_NAMES = [
  'txn_count_1h',
  'txn_count_24h',
  'amount_sum_1h',
  'amount_sum_24h',
  'amount_avg_24h',
  'amount_max_24h',
  'distinct_counterparties_24h',
  'seconds_since_last_txn',
] as const satisfies readonly (keyof AccountFeatures)[];

/** Total order of events of one account: event time, then id (ties broken deterministically). */
export function compareEvents(a: Pick<AccountEventRef, 'ts' | 'eventId'>, b: Pick<AccountEventRef, 'ts' | 'eventId'>): number {
  return a.ts - b.ts || (a.eventId < b.eventId ? -1 : a.eventId > b.eventId ? 1 : 0);
}

/**
 * Features as of instant `asOf` over `history` (any order; may include events after asOf, which are
 * ignored). `current`, when given, is the event being processed: seconds_since_last_txn is measured
 * from the account's previous event before it, and is null for the account's first event.
 * Without `current` (a read at an arbitrary instant) it is measured from asOf to the latest event.
 */
export function computeAccountFeatures(history: Iterable<AccountEventRef>, asOf: number, current?: Pick<AccountEventRef, 'ts' | 'eventId'>): AccountFeatures {
  let count1h = 0;
  let count24h = 0;
  let sum1h = 0;
  let sum24h = 0;
  let max24h = 0;
  const counterparties = new Set<string>();
  let previous: AccountEventRef | undefined;
  for (const e of history) {
    if (e.ts > asOf) continue;
    if (e.ts > asOf - DAY_MS) {
      count24h++;
      sum24h += e.amount;
      if (e.amount > max24h) max24h = e.amount;
      counterparties.add(e.counterpartyId);
      if (e.ts > asOf - HOUR_MS) {
        count1h++;
        sum1h += e.amount;
      }
    }
    const before = current ? compareEvents(e, current) < 0 : true;
    if (before && (previous === undefined || compareEvents(e, previous) > 0)) previous = e;
  }
  return {
    txn_count_1h: count1h,
    txn_count_24h: count24h,
    amount_sum_1h: round6(sum1h),
    amount_sum_24h: round6(sum24h),
    amount_avg_24h: count24h === 0 ? null : round6(sum24h / count24h),
    amount_max_24h: max24h,
    distinct_counterparties_24h: counterparties.size,
    seconds_since_last_txn: previous === undefined ? null : ((current?.ts ?? asOf) - previous.ts) / 1000,
  };
}

/** Sums are rounded so that replays summing in another order give bit-identical values. */
function round6(x: number): number {
  return Math.round(x * 1e6) / 1e6;
}
