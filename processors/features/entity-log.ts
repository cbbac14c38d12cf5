import type { FeatureGroup, Scalar } from '../../topology/features/definition.js';
import { compareEvents, cutIndex, evaluate, sameValues, type FeatureEvent, type FeatureValues } from '../../topology/features/engine.js';
import type { FeatureRow } from '../../topology/features/rows.js';
import { FabricError } from '../../topology/errors.js';
import { eventProblem } from '../shared/validate.js';

/**
 * One entity's events as a feature group sees them, and what admitting one more does. Pure: the
 * stream processor runs it over the members it loads from Redis, backfill over a whole topic in
 * memory; both therefore admit, route and correct exactly alike.
 *
 * Offering an event, in this order:
 * - an event id the entity already holds is a redelivery (a client retry, a replay): nothing at all;
 * - an event more than the lateness behind the entity's newest event time is late: it goes to
 *   late.<stream> and changes nothing;
 * - otherwise it is admitted. Its row holds the features as of itself; every event after it in the
 *   total order whose features it changes (it is inside their windows, or it is now their previous
 *   event) gets a corrected row. All rows the admission produces carry its offset as `version`.
 */
export type Offer =
  | { readonly kind: 'duplicate' }
  | { readonly kind: 'late'; readonly newestTs: number }
  | { readonly kind: 'admitted'; readonly event: FeatureEvent; readonly rows: readonly FeatureRow[] };

export class EntityLog {
  /** Sorted by compareEvents. */
  readonly events: FeatureEvent[] = [];
  private readonly byId = new Map<string, FeatureEvent>();
  private readonly byOffset = new Set<number>();
  /** Events admitted since construction (or the last takeAdded), in offset order. */
  added: FeatureEvent[] = [];
  /** The newest row produced for the entity's greatest event, if an admission produced one. */
  latestRow: FeatureRow | null = null;
  newestTs = -Infinity;

  constructor(
    readonly group: FeatureGroup,
    readonly entityId: string,
    private readonly source: { readonly topic: string; readonly partition: number },
  ) {}

  /** Adds a stored event (from Redis or an earlier part of the topic): no row. */
  remember(e: FeatureEvent): void {
    if (this.byOffset.has(e.offset)) return;
    this.byOffset.add(e.offset);
    this.events.splice(cutIndex(this.events, { event: e }), 0, e);
    const first = this.byId.get(e.eventId);
    if (!first || e.offset < first.offset) this.byId.set(e.eventId, e);
    if (e.ts > this.newestTs) this.newestTs = e.ts;
  }

  /** Adds stored events in bulk (one sort instead of one insertion each). */
  load(events: readonly FeatureEvent[]): void {
    for (const e of events) {
      if (this.byOffset.has(e.offset)) continue;
      this.byOffset.add(e.offset);
      this.events.push(e);
      const first = this.byId.get(e.eventId);
      if (!first || e.offset < first.offset) this.byId.set(e.eventId, e);
      if (e.ts > this.newestTs) this.newestTs = e.ts;
    }
    this.events.sort(compareEvents);
  }

  /** Starts a new batch over the same events: nothing added yet. */
  resetBatch(): void {
    this.added = [];
    this.latestRow = null;
  }

  has(eventId: string): boolean {
    return this.byId.has(eventId);
  }

  offer(e: FeatureEvent, latenessMs: number): Offer {
    if (this.byId.has(e.eventId)) return { kind: 'duplicate' };
    if (e.ts < this.newestTs - latenessMs) return { kind: 'late', newestTs: this.newestTs };
    const at = cutIndex(this.events, { event: e });
    // Successors' rows before the event (what was last emitted for them), to emit only real changes.
    const successors = this.events.slice(at);
    const before = successors.map((f) => evaluate(this.group, this.events, { event: f }));
    this.remember(e);
    this.added.push(e);
    const rows: FeatureRow[] = [this.row(e, evaluate(this.group, this.events, { event: e }), e.offset)];
    successors.forEach((f, i) => {
      const after = evaluate(this.group, this.events, { event: f });
      if (!sameValues(this.group, before[i]!, after)) rows.push(this.row(f, after, e.offset));
    });
    const greatest = this.events[this.events.length - 1]!;
    const latest = rows.find((r) => r.source_offset === greatest.offset);
    if (latest) this.latestRow = latest;
    return { kind: 'admitted', event: e, rows };
  }

  /**
   * The stored events to remove for a trim at `bound`: every event below it but the greatest one by
   * the total order (the anchor `since_previous` and `last` may need), in that order (the last one
   * has the greatest time). See trimBound().
   */
  trimmed(bound: number): FeatureEvent[] {
    const below: FeatureEvent[] = [];
    for (const e of this.events) {
      if (e.ts >= bound) break;
      below.push(e);
    }
    below.pop();
    return below;
  }

  /** Drops trimmed events from memory (backfill keeps its working set bounded the same way). */
  forget(events: readonly FeatureEvent[]): void {
    if (events.length === 0) return;
    const gone = new Set(events.map((e) => e.offset));
    const kept = this.events.filter((e) => !gone.has(e.offset));
    this.events.length = 0;
    this.events.push(...kept);
    for (const e of events) {
      this.byOffset.delete(e.offset);
      if (this.byId.get(e.eventId)?.offset === e.offset) this.byId.delete(e.eventId);
    }
  }

  private row(e: FeatureEvent, values: FeatureValues, version: number): FeatureRow {
    const row: FeatureRow = { event_id: e.eventId, entity_id: this.entityId, ts: e.ts, source_topic: this.source.topic, source_partition: this.source.partition, source_offset: e.offset, version };
    for (const name of this.group.featureNames) row[name] = values[name]!;
    for (const f of this.group.fields) row[f] = (e.fields[f] ?? null) as Scalar;
    return row;
  }
}

/**
 * Events older than this bound (relative to the entity's newest event time before the batch, W) are
 * trimmed, but for one anchor. Every event admitted from now on has ts >= W - L (it is not late), so
 * its windows, and the windows of every row a late admission corrects (their events are after it),
 * lie above W - L - maxWindow: the bound, max(maxWindow, L) + L + 1 h behind W, never removes a member
 * any row needs; the previous event of any of them is above the bound or is the anchor. A redelivery
 * whose first occurrence is above the bound is recognised; below it (a day plus the lateness plus
 * 1 h behind the newest event) it is late anyway, so it changes nothing either way (it may reach the
 * late topic instead of nowhere). The latest hash records the greatest time actually trimmed: online
 * reads whose longest window starts at or after it are exact.
 */
export function trimBound(group: FeatureGroup, newestBefore: number, latenessMs: number): number {
  return newestBefore - Math.max(group.maxWindowMs, latenessMs) - latenessMs - 3_600_000;
}

/**
 * Why a group refuses an event (it goes to the DLQ), null when it is fine: the stream's domain checks,
 * the fields the group keys, orders and aggregates by, and a ts too far ahead of the record's
 * Kafka timestamp (FABRIC_EVENT_TIME_SKEW).
 */
export function eventRejection(group: FeatureGroup, value: Record<string, unknown>, recordTs: number, maxClockSkewMs: number): FabricError | null {
  const problem = eventProblem(group.schema, value) ?? groupProblem(group, value);
  if (problem) return new FabricError('FABRIC_RECORD_REJECTED', problem);
  const ts = value[group.timeField] as number;
  return ts > recordTs + maxClockSkewMs ? skewError(ts, recordTs, maxClockSkewMs) : null;
}

/** Problems a feature group has with an event beyond its schema: the fields it keys, orders and aggregates by. */
function groupProblem(group: FeatureGroup, value: Record<string, unknown>): string | null {
  const entity = value[group.entity];
  if (typeof entity !== 'string' || entity === '') return `${group.entity} is empty: the ${group.name} group has no entity for the event`;
  const id = value[group.idField];
  if (typeof id !== 'string' || id === '') return `${group.idField} is empty`;
  const ts = value[group.timeField];
  if (typeof ts !== 'number' || !Number.isSafeInteger(ts) || ts <= 0) return `${group.timeField} must be epoch milliseconds, got ${String(ts)}`;
  for (const f of group.fields) {
    const v = value[f];
    if (group.fieldKinds[f] === 'number' && (typeof v !== 'number' || !Number.isFinite(v))) return `${f} must be a finite number, got ${String(v)}`;
  }
  return null;
}

function skewError(ts: number, recordTs: number, maxClockSkewMs: number): FabricError {
  const hint = ts > recordTs * 100 ? '; it looks like microseconds or nanoseconds, ts must be epoch milliseconds' : '';
  return new FabricError('FABRIC_EVENT_TIME_SKEW', `ts ${ts} is ${ts - recordTs} ms ahead of the record's Kafka timestamp ${recordTs} (at most ${maxClockSkewMs} ms allowed)${hint}`);
}
