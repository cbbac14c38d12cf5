import type { FeatureValues } from '../../topology/features/engine.js';
import { itemGroup, userGroup } from '../../topology/features/groups.js';

/**
 * The `recs` model's input vector: one definition used by the training-set builder
 * (scripts/build-recs-training-set.ts) and by online scoring (processors/recs), so training and
 * serving cannot disagree on candidates, column order, cross features or imputation. Pure: no I/O.
 *
 * A query is one interaction of a user, scored as of that event: its candidates are the distinct items
 * the user interacted with in the last 24 h up to the event (the event's own item included), and each
 * (user, candidate) pair is one row: the user's features, the candidate item's features, then four
 * user-item cross features computed here from the user's own events.
 *
 * Windows follow the feature engine's rule: as of (t, offset) the user's events up to it in the total
 * order (ts, offset) count, and a 24 h window covers t - 24 h < ts <= t.
 */

/** Most candidates scored per query (the most recently touched items win). */
export const RECS_MAX_CANDIDATES = 50;
/** Items recommended per query. */
export const RECS_TOP_K = 10;
/** The look-back of candidates and cross features. */
export const RECS_WINDOW_MS = 24 * 3_600_000;
/** What a missing input becomes (as for fraud: every real value is >= 0). */
export const RECS_MISSING = -1;

/** The user-item cross features, in vector order. */
export const RECS_CROSS_FEATURE_NAMES = Object.freeze(['user_item_views_24h', 'user_item_clicks_24h', 'user_item_purchases_24h', 'user_item_seconds_since_last'] as const);
export type RecsCrossFeatureName = (typeof RECS_CROSS_FEATURE_NAMES)[number];
export type RecsCrossFeatures = Record<RecsCrossFeatureName, number | null>;

/** The model inputs: the user features, the item features (both in definition order), the cross features. */
export const RECS_INPUT_NAMES: readonly string[] = Object.freeze([...userGroup.featureNames, ...itemGroup.featureNames, ...RECS_CROSS_FEATURE_NAMES]);

/** Where an input comes from and what a missing value becomes (the manifest's signature entries). */
export type RecsInputSource =
  | { readonly name: string; readonly source: 'feature'; readonly group: 'user' | 'item'; readonly missing: { readonly policy: 'default'; readonly value: number } }
  | { readonly name: string; readonly source: 'derived'; readonly missing: { readonly policy: 'default'; readonly value: number } };

const missing = Object.freeze({ policy: 'default' as const, value: RECS_MISSING });

export const RECS_INPUT_SOURCES: readonly RecsInputSource[] = Object.freeze([
  ...userGroup.featureNames.map((name) => Object.freeze({ name, source: 'feature' as const, group: 'user' as const, missing })),
  ...itemGroup.featureNames.map((name) => Object.freeze({ name, source: 'feature' as const, group: 'item' as const, missing })),
  ...RECS_CROSS_FEATURE_NAMES.map((name) => Object.freeze({ name, source: 'derived' as const, missing })),
]);

/** One of the user's own interactions, with its position in the user group's input partition. */
export interface RecsUserEvent {
  /** The interaction's id, when known (online reads). */
  readonly eventId?: string;
  readonly itemId: string;
  readonly action: 'view' | 'click' | 'purchase';
  readonly ts: number;
  readonly offset: number;
}

export interface RecsAsOf {
  readonly ts: number;
  readonly offset: number;
}

/** Counted as of `asOf`: at or before it in the total order (ts, offset), and inside the 24 h window. */
function counts(e: RecsUserEvent, asOf: RecsAsOf): boolean {
  return e.ts > asOf.ts - RECS_WINDOW_MS && (e.ts < asOf.ts || (e.ts === asOf.ts && e.offset <= asOf.offset));
}

/** a strictly after b in the total order (ts, offset). */
const later = (a: RecsUserEvent, b: RecsUserEvent): boolean => a.ts > b.ts || (a.ts === b.ts && a.offset > b.offset);

/**
 * The query's candidates: the distinct items of the user's events counted as of `asOf` (ts in
 * (asOf.ts - 24 h, asOf.ts] and (ts, offset) <= asOf), most recent interaction first (ties in the same
 * millisecond by offset, descending; then by item id), at most `max`. The events may come in any order
 * and may include events after `asOf` (ignored).
 */
export function recsCandidates(userEvents: readonly RecsUserEvent[], asOf: RecsAsOf, max: number = RECS_MAX_CANDIDATES): string[] {
  const cap = Math.floor(max);
  if (!(cap > 0)) return [];
  const latest = new Map<string, RecsUserEvent>();
  for (const e of userEvents) {
    if (!counts(e, asOf)) continue;
    const seen = latest.get(e.itemId);
    if (seen === undefined || later(e, seen)) latest.set(e.itemId, e);
  }
  return [...latest.values()]
    .sort((a, b) => b.ts - a.ts || b.offset - a.offset || (a.itemId < b.itemId ? -1 : a.itemId > b.itemId ? 1 : 0))
    .slice(0, cap)
    .map((e) => e.itemId);
}

/**
 * The user-item cross features of `itemId` as of `asOf`, over the same events as the candidates: the
 * user's views, clicks and purchases of the item in the 24 h window, and the seconds from the user's
 * latest interaction with it to asOf.ts (0 when it is the query's own event; null without one in 24 h).
 */
export function recsCrossFeatures(userEvents: readonly RecsUserEvent[], itemId: string, asOf: RecsAsOf): RecsCrossFeatures {
  let views = 0;
  let clicks = 0;
  let purchases = 0;
  let lastTs: number | null = null;
  for (const e of userEvents) {
    if (e.itemId !== itemId || !counts(e, asOf)) continue;
    if (e.action === 'view') views++;
    else if (e.action === 'click') clicks++;
    else if (e.action === 'purchase') purchases++;
    if (lastTs === null || e.ts > lastTs) lastTs = e.ts;
  }
  return {
    user_item_views_24h: views,
    user_item_clicks_24h: clicks,
    user_item_purchases_24h: purchases,
    user_item_seconds_since_last: lastTs === null ? null : (asOf.ts - lastTs) / 1000,
  };
}

/** Every recs input by name (null when missing): what a model's signature picks from. */
export function recsInputValues(userFeatures: Readonly<FeatureValues>, itemFeatures: Readonly<FeatureValues>, cross: Readonly<Partial<Record<string, number | null>>>): Record<string, number | null> {
  const values: Record<string, number | null> = {};
  const num = (v: unknown): number | null => (typeof v === 'number' && Number.isFinite(v) ? v : null);
  for (const name of userGroup.featureNames) values[name] = num(userFeatures[name]);
  for (const name of itemGroup.featureNames) values[name] = num(itemFeatures[name]);
  for (const name of RECS_CROSS_FEATURE_NAMES) values[name] = num(cross[name]);
  return values;
}

/** The model vector (RECS_INPUT_NAMES order), a missing or non-numeric value as RECS_MISSING (-1). */
export function recsInputRow(userFeatures: Readonly<FeatureValues>, itemFeatures: Readonly<FeatureValues>, cross: Readonly<Partial<Record<string, number | null>>>): number[] {
  const values = recsInputValues(userFeatures, itemFeatures, cross);
  return RECS_INPUT_NAMES.map((name) => values[name] ?? RECS_MISSING);
}
