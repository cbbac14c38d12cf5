/**
 * The feature groups' semantics written out once for tests, from the specification and independently
 * of topology/features and processors/features (nothing here imports or mirrors them): a brute-force
 * recomputation, slow and obvious on purpose.
 *
 * - A group keys events by an entity field and reads one input partition; an event's position is its
 *   offset there. An entity's events are totally ordered by (ts, offset).
 * - Records are processed in offset order: an invalid one is rejected (FABRIC_RECORD_REJECTED), one
 *   whose ts is more than the allowed skew ahead of its record's Kafka timestamp too
 *   (FABRIC_EVENT_TIME_SKEW); an event id the entity already admitted is a no-op; an event more than
 *   the lateness behind the entity's newest admitted ts goes unchanged to late.<stream>; every other
 *   event is admitted: its own row, then a corrected row for each earlier-admitted event after it in
 *   (ts, offset) order whose values it changed.
 * - The features of an event f: over the entity's admitted events up to f in (ts, offset) order, with
 *   windows t - W < ts <= t for t = f.ts; the previous event is the greatest one strictly before f.
 * - The features at an instant t: over the admitted events with ts <= t; the previous event is the
 *   latest of them. An entity without any event has no values (null).
 */
import { seededUniform } from './seeded.js';

export type OracleGroupName = 'account' | 'user' | 'item';
export type OracleValue = number | null;
export type OracleValues = Record<string, OracleValue>;
export type OracleRow = Record<string, string | number | null>;

export interface OracleGroupShape {
  readonly name: OracleGroupName;
  /** The entity key field of the events. */
  readonly entity: string;
  readonly stream: string;
  /** The event fields every row carries. */
  readonly stored: readonly string[];
  /** Feature names in definition order. */
  readonly features: readonly string[];
}

const interactionFeatures = (p: 'user' | 'item'): string[] => [
  `${p}_views_1h`,
  `${p}_views_24h`,
  `${p}_clicks_1h`,
  `${p}_clicks_24h`,
  `${p}_purchases_1h`,
  `${p}_purchases_24h`,
  `${p}_ctr_24h`,
  p === 'user' ? 'user_distinct_items_24h' : 'item_distinct_users_24h',
  `${p}_seconds_since_last_interaction`,
];

export const ORACLE_GROUPS: Readonly<Record<OracleGroupName, OracleGroupShape>> = {
  account: {
    name: 'account',
    entity: 'account_id',
    stream: 'transactions',
    stored: ['amount', 'counterparty_id'],
    features: ['txn_count_1h', 'txn_count_24h', 'amount_sum_1h', 'amount_sum_24h', 'amount_avg_24h', 'amount_max_24h', 'distinct_counterparties_24h', 'seconds_since_last_txn'],
  },
  user: { name: 'user', entity: 'user_id', stream: 'interactions', stored: ['action', 'item_id'], features: interactionFeatures('user') },
  item: { name: 'item', entity: 'item_id', stream: 'interactions', stored: ['action', 'user_id'], features: interactionFeatures('item') },
};

export const HOUR_MS = 3_600_000;
export const DAY_MS = 24 * HOUR_MS;
export const round6 = (x: number): number => Math.round(x * 1e6) / 1e6;

/** One admitted event of an entity: its time, its offset in the input partition, and the raw event. */
export interface OracleEvent {
  readonly ts: number;
  readonly offset: number;
  readonly value: Readonly<Record<string, unknown>>;
}

/** (ts, offset) order. */
export function before(a: Pick<OracleEvent, 'ts' | 'offset'>, b: Pick<OracleEvent, 'ts' | 'offset'>): boolean {
  return a.ts < b.ts || (a.ts === b.ts && a.offset < b.offset);
}

function greatest<T extends Pick<OracleEvent, 'ts' | 'offset'>>(events: readonly T[]): T | undefined {
  let best: T | undefined;
  for (const e of events) if (!best || before(best, e)) best = e;
  return best;
}

/** The features at time t over `counted` (every event with ts <= t that counts), `previous` the since_previous reference. */
function compute(group: OracleGroupName, counted: readonly OracleEvent[], t: number, previous: OracleEvent | undefined): OracleValues {
  // Ascending (ts, offset): a fixed summation order.
  const inDay = counted.filter((e) => e.ts <= t && e.ts > t - DAY_MS).sort((a, b) => (before(a, b) ? -1 : before(b, a) ? 1 : 0));
  const inHour = inDay.filter((e) => e.ts > t - HOUR_MS);
  const since = previous ? (t - previous.ts) / 1000 : null;
  if (group === 'account') {
    const amounts = (xs: readonly OracleEvent[]): number[] => xs.map((e) => e.value.amount as number);
    const total = (xs: readonly OracleEvent[]): number => amounts(xs).reduce((s, a) => s + a, 0);
    return {
      txn_count_1h: inHour.length,
      txn_count_24h: inDay.length,
      amount_sum_1h: round6(total(inHour)),
      amount_sum_24h: round6(total(inDay)),
      amount_avg_24h: inDay.length === 0 ? null : round6(total(inDay) / inDay.length),
      amount_max_24h: inDay.length === 0 ? 0 : Math.max(...amounts(inDay)),
      distinct_counterparties_24h: new Set(inDay.map((e) => e.value.counterparty_id)).size,
      seconds_since_last_txn: since,
    };
  }
  const p = group;
  const n = (xs: readonly OracleEvent[], action: string): number => xs.filter((e) => e.value.action === action).length;
  const views24 = n(inDay, 'view');
  const clicks24 = n(inDay, 'click');
  const other = group === 'user' ? 'item_id' : 'user_id';
  return {
    [`${p}_views_1h`]: n(inHour, 'view'),
    [`${p}_views_24h`]: views24,
    [`${p}_clicks_1h`]: n(inHour, 'click'),
    [`${p}_clicks_24h`]: clicks24,
    [`${p}_purchases_1h`]: n(inHour, 'purchase'),
    [`${p}_purchases_24h`]: n(inDay, 'purchase'),
    [`${p}_ctr_24h`]: views24 === 0 ? null : round6(clicks24 / views24),
    [group === 'user' ? 'user_distinct_items_24h' : 'item_distinct_users_24h']: new Set(inDay.map((e) => e.value[other])).size,
    [`${p}_seconds_since_last_interaction`]: since,
  };
}

/**
 * The features of event `at` (which must be among `events`): `events` are the entity's admitted events
 * (any order; the ones after `at` in (ts, offset) order are ignored).
 */
export function oracleFeaturesAtEvent(group: OracleGroupName, events: readonly OracleEvent[], at: Pick<OracleEvent, 'ts' | 'offset'>): OracleValues {
  const upTo = events.filter((g) => !before(at, g));
  if (!upTo.some((g) => g.ts === at.ts && g.offset === at.offset)) throw new Error(`oracle: the event at offset ${at.offset} is not among the events`);
  const previous = greatest(upTo.filter((g) => before(g, at)));
  return compute(group, upTo, at.ts, previous);
}

/** The features at instant t over the entity's admitted `events` (any order); null for an entity without any event. */
export function oracleFeaturesAtInstant(group: OracleGroupName, events: readonly OracleEvent[], t: number): OracleValues | null {
  if (events.length === 0) return null;
  const counted = events.filter((g) => g.ts <= t);
  return compute(group, counted, t, greatest(counted));
}

/** The values of an entity that has events, none of them at or before the instant. */
export function oracleEmptyValues(group: OracleGroupName): OracleValues {
  return compute(group, [], 0, undefined);
}

export function sameOracleValues(group: OracleGroupName, a: OracleValues, b: OracleValues): boolean {
  return ORACLE_GROUPS[group].features.every((f) => a[f] === b[f]);
}

export type RejectCode = 'FABRIC_RECORD_REJECTED' | 'FABRIC_EVENT_TIME_SKEW';

export type OracleOutcome =
  | { readonly kind: 'reject'; readonly code: RejectCode }
  /** An event id the entity already admitted (at `firstOffset`); `newestTs` the entity's newest admitted ts at that point. */
  | { readonly kind: 'duplicate'; readonly entity: string; readonly firstOffset: number; readonly newestTs: number }
  | { readonly kind: 'late'; readonly entity: string; readonly newestTs: number }
  /**
   * Rows in emission order: the event's own, then the corrections in (ts, offset) order; `unchanged`
   * counts the events after it whose values it did not change (no row).
   */
  | { readonly kind: 'admitted'; readonly entity: string; readonly rows: readonly OracleRow[]; readonly unchanged: number };

/** A record of the input partition: the event and the record's Kafka timestamp. */
export interface OracleRecord {
  readonly value: unknown;
  readonly timestamp: number;
}

export interface OracleOptions {
  readonly latenessMs: number;
  readonly maxClockSkewMs: number;
  /** The input topic (rows' source_topic). */
  readonly topic: string;
  readonly partition?: number;
}

/** What the processor emits for one record, normalized: a DLQ reject by code, or an emit (late: with its headers but the free-text reason). */
export type ExpectedOutput =
  | { readonly reject: RejectCode }
  | { readonly topic: string; readonly key: string; readonly value: unknown; readonly headers?: Readonly<Record<string, string>> };

export const LATE_GROUP_HEADER = 'fabric.late.group';
export const LATE_REASON_HEADER = 'fabric.late.reason';
export const LATE_NEWEST_HEADER = 'fabric.late.newest_ts';

function problem(group: OracleGroupName, v: Record<string, unknown>): boolean {
  const shape = ORACLE_GROUPS[group];
  const nonEmpty = (x: unknown): boolean => typeof x === 'string' && x !== '';
  if (!nonEmpty(v[shape.entity]) || !nonEmpty(v.event_id)) return true;
  if (typeof v.ts !== 'number' || !Number.isSafeInteger(v.ts) || v.ts <= 0) return true;
  if (group === 'account' && (typeof v.amount !== 'number' || !Number.isFinite(v.amount) || v.amount < 0)) return true;
  return false;
}

/** The whole partition recomputed from scratch, record by record. */
export class OracleRun {
  readonly outcomes: OracleOutcome[] = [];
  /** Each entity's admitted events, in offset (admission) order. */
  readonly admitted = new Map<string, OracleEvent[]>();
  /** The newest row emitted for each admitted event, by its offset. */
  readonly newestRows = new Map<number, OracleRow>();
  readonly shape: OracleGroupShape;

  constructor(
    readonly group: OracleGroupName,
    readonly records: readonly OracleRecord[],
    readonly options: OracleOptions,
  ) {
    this.shape = ORACLE_GROUPS[group];
    records.forEach((r, offset) => this.outcomes.push(this.process(r, offset)));
  }

  private process(record: OracleRecord, offset: number): OracleOutcome {
    const v = record.value as Record<string, unknown>;
    if (problem(this.group, v)) return { kind: 'reject', code: 'FABRIC_RECORD_REJECTED' };
    const ts = v.ts as number;
    if (ts > record.timestamp + this.options.maxClockSkewMs) return { kind: 'reject', code: 'FABRIC_EVENT_TIME_SKEW' };
    const entity = v[this.shape.entity] as string;
    const events = this.admitted.get(entity) ?? [];
    const newestTs = Math.max(-Infinity, ...events.map((e) => e.ts));
    const first = events.find((e) => e.value.event_id === v.event_id);
    if (first) return { kind: 'duplicate', entity, firstOffset: first.offset, newestTs };
    if (ts < newestTs - this.options.latenessMs) return { kind: 'late', entity, newestTs };
    const e: OracleEvent = { ts, offset, value: v };
    const successors = events.filter((f) => before(e, f)).sort((a, b) => (before(a, b) ? -1 : 1));
    const old = successors.map((f) => oracleFeaturesAtEvent(this.group, events, f));
    const now = [...events, e];
    this.admitted.set(entity, now);
    const rows = [this.row(entity, e, oracleFeaturesAtEvent(this.group, now, e), offset)];
    successors.forEach((f, i) => {
      const values = oracleFeaturesAtEvent(this.group, now, f);
      if (!sameOracleValues(this.group, old[i]!, values)) rows.push(this.row(entity, f, values, offset));
    });
    for (const row of rows) this.newestRows.set(row.source_offset as number, row);
    return { kind: 'admitted', entity, rows, unchanged: successors.length - (rows.length - 1) };
  }

  private row(entity: string, e: OracleEvent, values: OracleValues, version: number): OracleRow {
    const row: OracleRow = { event_id: e.value.event_id as string, entity_id: entity, ts: e.ts };
    for (const f of this.shape.features) row[f] = values[f]!;
    for (const f of this.shape.stored) row[f] = (e.value[f] ?? null) as string | number | null;
    row.source_topic = this.options.topic;
    row.source_partition = this.options.partition ?? 0;
    row.source_offset = e.offset;
    row.version = version;
    return row;
  }

  entities(): string[] {
    return [...this.admitted.keys()].sort();
  }

  /** The entity's events admitted by the records up to `throughOffset` (inclusive). */
  eventsOf(entity: string, throughOffset = Infinity): OracleEvent[] {
    return (this.admitted.get(entity) ?? []).filter((e) => e.offset <= throughOffset);
  }

  /** Features at instant t after the records up to `throughOffset`; null for an entity without any event. */
  atInstant(entity: string, t: number, throughOffset = Infinity): OracleValues | null {
    return oracleFeaturesAtInstant(this.group, this.eventsOf(entity, throughOffset), t);
  }

  /** The entity's greatest admitted event by (ts, offset). */
  greatestEvent(entity: string): OracleEvent | undefined {
    return greatest(this.eventsOf(entity));
  }

  newestTs(entity: string): number | null {
    const g = this.greatestEvent(entity);
    return g ? g.ts : null;
  }

  /** The newest row of the entity's greatest event: what the latest hash must hold. */
  latestRow(entity: string): OracleRow | null {
    const g = this.greatestEvent(entity);
    return g ? this.newestRows.get(g.offset)! : null;
  }

  /** All rows in emission order. */
  rows(): OracleRow[] {
    return this.outcomes.flatMap((o) => (o.kind === 'admitted' ? o.rows : []));
  }

  /** The expected outputs by the offset of the record producing them; a record without output (a redelivery) has no entry. */
  expected(): Record<number, ExpectedOutput[]> {
    const out: Record<number, ExpectedOutput[]> = {};
    this.outcomes.forEach((o, offset) => {
      if (o.kind === 'reject') out[offset] = [{ reject: o.code }];
      else if (o.kind === 'late') {
        out[offset] = [{ topic: `late.${this.shape.stream}`, key: o.entity, value: this.records[offset]!.value, headers: { [LATE_GROUP_HEADER]: this.group, [LATE_NEWEST_HEADER]: String(o.newestTs) } }];
      } else if (o.kind === 'admitted') out[offset] = o.rows.map((row) => ({ topic: `features.${this.group}`, key: o.entity, value: row }));
    });
    return out;
  }
}

export function runOracle(group: OracleGroupName, records: readonly OracleRecord[], options: OracleOptions): OracleRun {
  return new OracleRun(group, records, options);
}

/** Options of a seeded random stream of one group's input. */
export interface RandomStreamOptions {
  readonly seed: number;
  /** Records before the closing ones (one in-order event per entity, so that a last batch touches every entity). */
  readonly n: number;
  readonly entities: number;
  /** Event time of the first event. */
  readonly t0: number;
  readonly latenessMs: number;
  /** Entity `<prefix>-0` gets only every sleepyEvery-th slot (long gaps, outlasting the trimmed retention). */
  readonly sleepyEvery?: number;
  /** Mean gap between in-order events (default 15 min). */
  readonly meanGapMs?: number;
  /** Emit invalid records (DLQ) now and then (default true). */
  readonly invalid?: boolean;
}

const ACTIONS = ['view', 'view', 'view', 'view', 'click', 'click', 'purchase'] as const;

/**
 * A seeded stream of raw events for `group` (transactions for account, interactions keyed by user_id or
 * item_id otherwise): same-millisecond ties within an entity, out-of-order events within the lateness
 * (they correct rows), events beyond it, client retries of recent records (duplicate event ids),
 * microsecond timestamps (skew), invalid records, and a sleepy entity. Amounts are in cents.
 */
export function randomEvents(group: OracleGroupName, o: RandomStreamOptions): Record<string, unknown>[] {
  const rand = seededUniform((o.seed * 2654435761) >>> 0);
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rand() * xs.length)]!;
  const key = ORACLE_GROUPS[group].entity;
  const prefix = group === 'account' ? 'acct' : group === 'user' ? 'u' : 'it';
  const entity = (i: number): string => (o.sleepyEvery && i % o.sleepyEvery === 0 ? `${prefix}-0` : `${prefix}-${1 + Math.floor(rand() * (o.entities - 1))}`);
  const gap = o.meanGapMs ?? 15 * 60_000;
  const make = (id: string, ent: string, ts: number): Record<string, unknown> => {
    if (group === 'account') {
      const amount = Math.floor(rand() * 400_000) / 100;
      return { event_id: id, account_id: ent, counterparty_id: `m-${Math.floor(rand() * 5)}`, type: pick(['PAYMENT', 'TRANSFER', 'CASH_OUT'] as const), amount, old_balance: 10_000, new_balance: 10_000 - amount, channel: 'web', ts };
    }
    const other = group === 'user' ? { item_id: `i-${Math.floor(rand() * 6)}` } : { user_id: `u-${Math.floor(rand() * 6)}` };
    return { event_id: id, [key]: ent, ...other, action: pick(ACTIONS), ts };
  };
  const out: Record<string, unknown>[] = [];
  let clock = o.t0;
  let lastValid: Record<string, unknown> | undefined;
  const newestOf = new Map<string, number>();
  for (let i = 0; i < o.n; i++) {
    const id = `e${o.seed}-${i}`;
    const r = rand();
    if (out.length > 0 && r < 0.04) {
      out.push(out[Math.max(0, out.length - 1 - Math.floor(rand() * 20))]!);
      continue;
    }
    clock += Math.floor(rand() * 2 * gap);
    if (o.invalid !== false && r < 0.07) {
      const e = make(id, entity(i), clock);
      const kind = Math.floor(rand() * (group === 'account' ? 8 : 5));
      const broken: Record<string, unknown>[] = [
        { ...e, [key]: '' },
        { ...e, event_id: '' },
        { ...e, ts: clock + 0.5 },
        { ...e, ts: 0 },
        { ...e, ts: -clock },
        { ...e, amount: Number.NaN },
        { ...e, amount: -1 },
        { ...e, amount: Number.POSITIVE_INFINITY },
      ];
      out.push(broken[kind]!);
      continue;
    }
    let e: Record<string, unknown>;
    const ent = entity(i);
    // Out of order and late relative to the entity's newest event time (so that they correct rows, or go late).
    const newest = newestOf.get(ent) ?? clock;
    if (lastValid && r < 0.19) e = make(id, lastValid[key] as string, lastValid.ts as number);
    else if (r < 0.35) e = make(id, ent, newest - Math.floor(rand() * 0.9 * o.latenessMs));
    else if (r < 0.39) e = make(id, ent, newest - o.latenessMs - 1 - Math.floor(rand() * DAY_MS));
    else if (r < 0.41) e = make(id, ent, clock * 1000);
    else e = make(id, ent, clock);
    if (r >= 0.39 && r < 0.41) out.push(e);
    else {
      out.push((lastValid = e));
      newestOf.set(e[key] as string, Math.max(e.ts as number, newestOf.get(e[key] as string) ?? -Infinity));
    }
  }
  for (let k = 0; k < o.entities; k++) out.push(make(`e${o.seed}-end-${k}`, `${prefix}-${k}`, (clock += 60_000)));
  return out;
}
