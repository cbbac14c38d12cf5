import type { FeatureDef, FeatureGroup, Scalar } from './definition.js';

/**
 * The one evaluator of feature definitions. Every path (stream processor, online reads, training
 * sets, backfill, the check) calls it, so they cannot disagree on semantics:
 *
 * - Events of an entity are totally ordered by (event time, offset), the offset being the event's
 *   position in the group's input partition (an entity's events share one partition), which breaks
 *   ties in the same millisecond.
 * - As of an instant t, the entity's events with ts <= t count; a W-window covers t - W < ts <= t, so
 *   values decay as events expire, without a new event.
 * - As of an event e (its feature row), the events up to e in the total order count, e included, and
 *   windows are relative to e.ts; `since_previous` measures from the greatest event before e.
 * - Sums and averages are accumulated in one fixed order (ascending by the total order) and rounded
 *   to 1e-6, so every path gives bit-identical values.
 */
export interface FeatureEvent {
  readonly eventId: string;
  readonly ts: number;
  /** Position in the group's input partition. */
  readonly offset: number;
  /** The stored raw fields (group.fields) plus the transforms' derived fields. */
  readonly fields: Readonly<Record<string, Scalar>>;
}

export type FeatureValue = number | string | boolean | null;
export type FeatureValues = Record<string, FeatureValue>;

export type Cut = { readonly instant: number } | { readonly event: Pick<FeatureEvent, 'ts' | 'offset'> };

export function compareEvents(a: Pick<FeatureEvent, 'ts' | 'offset'>, b: Pick<FeatureEvent, 'ts' | 'offset'>): number {
  return a.ts - b.ts || a.offset - b.offset;
}

/** Keeps the group's stored fields of a raw event and adds its transforms. */
export function featureEvent(group: FeatureGroup, eventId: string, ts: number, offset: number, raw: Readonly<Record<string, unknown>>): FeatureEvent {
  const fields: Record<string, Scalar> = {};
  for (const f of group.fields) fields[f] = (raw[f] ?? null) as Scalar;
  for (const [name, t] of group.transformList) fields[name] = t.fn(fields);
  return { eventId, ts, offset, fields };
}

/** Index after the last event counted by the cut, in events sorted by compareEvents. */
export function cutIndex(events: readonly Pick<FeatureEvent, 'ts' | 'offset'>[], cut: Cut): number {
  let lo = 0;
  let hi = events.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    const e = events[mid]!;
    const inside = 'instant' in cut ? e.ts <= cut.instant : compareEvents(e, cut.event) <= 0;
    if (inside) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

const round6 = (x: number): number => Math.round(x * 1e6) / 1e6;

interface Acc {
  n: number;
  sum: number;
  best: number | null;
  distinct: Set<Scalar> | null;
  last: FeatureEvent | null;
}

/**
 * The group's features as of `cut` over `events` (sorted by compareEvents). With an event cut the
 * event itself must be in `events`. With no event at or before the cut, counts are 0 and the rest
 * null or the declared empty value: whether the entity is known at all is the caller's question.
 */
export function evaluate(group: FeatureGroup, events: readonly FeatureEvent[], cut: Cut): FeatureValues {
  const end = cutIndex(events, cut);
  const t = 'instant' in cut ? cut.instant : cut.event.ts;
  const atEvent = 'event' in cut;
  const current = atEvent ? events[end - 1]! : null;
  const accs: Acc[] = group.features.map(() => ({ n: 0, sum: 0, best: null, distinct: null, last: null }));
  const features = group.features;
  // Windowed aggregations: one ascending pass over the events inside the longest window.
  let lo = end;
  while (lo > 0 && events[lo - 1]!.ts > t - group.maxWindowMs) lo--;
  for (let i = lo; i < end; i++) {
    const e = events[i]!;
    for (let k = 0; k < features.length; k++) {
      const f = features[k]!;
      const spec = f.spec;
      if (spec.kind === 'ratio' || f.windowMs === null || e.ts <= t - f.windowMs) continue;
      if (f.where && !f.where.test(e.fields)) continue;
      if (spec.kind === 'last' || spec.kind === 'since_previous') {
        // The greatest matching event wins; since_previous at an event skips the event itself.
        if (!(spec.kind === 'since_previous' && e === current)) accs[k]!.last = e;
        continue;
      }
      accumulate(spec, accs[k]!, e);
    }
  }
  // Unwindowed last and since_previous: the greatest matching event, searched backwards.
  features.forEach((f, k) => {
    if ((f.spec.kind !== 'last' && f.spec.kind !== 'since_previous') || f.windowMs !== null) return;
    for (let i = end - 1; i >= 0; i--) {
      const e = events[i]!;
      if (f.spec.kind === 'since_previous' && e === current) continue;
      if (f.where && !f.where.test(e.fields)) continue;
      accs[k]!.last = e;
      return;
    }
  });
  const out: FeatureValues = {};
  features.forEach((f, k) => {
    if (f.spec.kind !== 'ratio') out[f.name] = finish(f, accs[k]!, t);
  });
  for (const f of features) {
    if (f.spec.kind !== 'ratio') continue;
    const a = out[f.spec.numerator];
    const b = out[f.spec.denominator];
    out[f.name] = typeof a === 'number' && typeof b === 'number' && b !== 0 ? round6(a / b) : null;
  }
  // Declaration order.
  const ordered: FeatureValues = {};
  for (const name of group.featureNames) ordered[name] = out[name]!;
  return ordered;
}

function accumulate(spec: FeatureDef['spec'], acc: Acc, e: FeatureEvent): void {
  switch (spec.kind) {
    case 'count':
      acc.n++;
      return;
    case 'sum':
    case 'avg': {
      const v = e.fields[spec.field];
      if (typeof v !== 'number') return;
      acc.n++;
      acc.sum += v;
      return;
    }
    case 'min':
    case 'max': {
      const v = e.fields[spec.field];
      if (typeof v !== 'number') return;
      acc.n++;
      if (acc.best === null || (spec.kind === 'min' ? v < acc.best : v > acc.best)) acc.best = v;
      return;
    }
    case 'distinct': {
      const v = e.fields[spec.field];
      if (v === null || v === undefined) return;
      (acc.distinct ??= new Set()).add(v);
      return;
    }
    default:
      return;
  }
}

function finish(f: FeatureDef, acc: Acc, t: number): FeatureValue {
  const spec = f.spec;
  switch (spec.kind) {
    case 'count':
      return acc.n;
    case 'sum':
      return round6(acc.sum);
    case 'avg':
      return acc.n === 0 ? null : round6(acc.sum / acc.n);
    case 'min':
    case 'max':
      return acc.best ?? spec.empty ?? null;
    case 'distinct':
      return acc.distinct?.size ?? 0;
    case 'last':
      return acc.last ? (acc.last.fields[spec.field] ?? null) : null;
    case 'since_previous':
      return acc.last ? (t - acc.last.ts) / 1000 : null;
    default:
      return null;
  }
}

/** Inserts `e` into events sorted by compareEvents (no-op position search is O(log n)). */
export function insertSorted<T extends Pick<FeatureEvent, 'ts' | 'offset'>>(events: T[], e: T): number {
  const i = cutIndex(events, { event: e });
  events.splice(i, 0, e);
  return i;
}

/** Equal feature values (numbers by value, null only equals null). */
export function sameValues(group: FeatureGroup, a: FeatureValues, b: FeatureValues): boolean {
  return group.featureNames.every((n) => a[n] === b[n]);
}
