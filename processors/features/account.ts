/**
 * The `account` feature group: pure, deterministic point-in-time logic shared by the online
 * processor (Redis), the offline training-set builder and tests.
 *
 * Events of an account are totally ordered by (event time, partition offset): the offset breaks ties
 * in the same millisecond, and it also decides what "before" means for an event. The features of an
 * event depend only on the account's events at smaller offsets (what was in the partition before it),
 * so an event arriving later with an earlier timestamp never changes what an earlier event got.
 * A W-window as of instant t covers events with t - W < ts <= t in event time.
 */
export const HOUR_MS = 3_600_000;
export const DAY_MS = 24 * HOUR_MS;
/** The longest window of the group. */
export const ACCOUNT_HISTORY_MS = DAY_MS;

/** What the group remembers of one past event of an account. */
export interface AccountEventRef {
  readonly eventId: string;
  readonly ts: number;
  /** Offset of the event's record in its partition (an account's events share one partition, keyed by account). */
  readonly offset: number;
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

/** Total order of the events of one account: event time, then partition offset. */
export function compareEvents(a: Pick<AccountEventRef, 'ts' | 'offset'>, b: Pick<AccountEventRef, 'ts' | 'offset'>): number {
  return a.ts - b.ts || a.offset - b.offset;
}

/**
 * Features over `history` (any order, duplicates by offset allowed).
 *
 * With `current` (the event being processed, at ts t = asOf and offset o): only history events with
 * offset < o count, plus `current` itself; windows are relative to t (events after t in event time but
 * before o in the partition are ignored: no leakage); seconds_since_last_txn is measured from the
 * greatest earlier event by (ts, offset) with ts <= t, null for the account's first event.
 *
 * Without `current` (a read at an arbitrary instant asOf): every history event with ts <= asOf counts,
 * windows are relative to asOf, so counts decay as events expire even without a new event, and
 * seconds_since_last_txn is measured from the latest event to asOf.
 */
export function computeAccountFeatures(history: Iterable<AccountEventRef>, asOf: number, current?: AccountEventRef): AccountFeatures {
  if (current && current.ts !== asOf) throw new RangeError(`computeAccountFeatures: asOf ${asOf} must be the current event's ts ${current.ts}`);
  const w = new WindowAggregate(asOf);
  let previous: AccountEventRef | undefined;
  for (const e of history) {
    if (e.ts > asOf || (current && e.offset >= current.offset)) continue;
    w.add(e);
    if (previous === undefined || compareEvents(e, previous) > 0) previous = e;
  }
  if (current) w.add(current);
  return {
    txn_count_1h: w.count1h,
    txn_count_24h: w.count24h,
    amount_sum_1h: round6(w.sum1h),
    amount_sum_24h: round6(w.sum24h),
    amount_avg_24h: w.count24h === 0 ? null : round6(w.sum24h / w.count24h),
    amount_max_24h: w.max24h,
    distinct_counterparties_24h: w.counterparties.size,
    seconds_since_last_txn: previous === undefined ? null : (asOf - previous.ts) / 1000,
  };
}

/** The windows as of `asOf`, fed with events at ts <= asOf. */
class WindowAggregate {
  count1h = 0;
  count24h = 0;
  sum1h = 0;
  sum24h = 0;
  max24h = 0;
  readonly counterparties = new Set<string>();

  constructor(private readonly asOf: number) {}

  add(e: AccountEventRef): void {
    if (e.ts <= this.asOf - DAY_MS) return;
    this.count24h++;
    this.sum24h += e.amount;
    if (e.amount > this.max24h) this.max24h = e.amount;
    this.counterparties.add(e.counterpartyId);
    if (e.ts > this.asOf - HOUR_MS) {
      this.count1h++;
      this.sum1h += e.amount;
    }
  }
}

/** Sums are rounded so that replays summing in another order give bit-identical values. */
function round6(x: number): number {
  return Math.round(x * 1e6) / 1e6;
}
