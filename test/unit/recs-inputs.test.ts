import { describe, expect, it } from 'vitest';
import {
  RECS_CROSS_FEATURE_NAMES,
  RECS_INPUT_NAMES,
  RECS_INPUT_SOURCES,
  RECS_MAX_CANDIDATES,
  RECS_TOP_K,
  recsCandidates,
  recsCrossFeatures,
  recsInputRow,
  type RecsUserEvent,
} from '../../serving/models/recs-inputs.js';
import { FRAUD_INPUT_NAMES, FRAUD_INPUT_SOURCES } from '../../serving/models/fraud-inputs.js';
import { accountGroup, itemGroup, userGroup } from '../../topology/features/groups.js';
import { evaluate, featureEvent, type FeatureValues } from '../../topology/features/engine.js';
import { RECS_LABEL_HORIZON_MS, buildRecsTrainingSet, recsTrainingSimOptions, type RecsTrainingSetOptions } from '../../scripts/build-recs-training-set.js';
import { generateInteractions } from '../../sim/interactions.js';

const DAY_MS = 86_400_000;
const T = Date.UTC(2024, 2, 1, 12);

/** Independent of the module: counted events sorted newest first, first occurrence of each item wins. */
function bruteCandidates(events: readonly RecsUserEvent[], asOf: { ts: number; offset: number }, max: number): string[] {
  const counted = events.filter((e) => e.ts > asOf.ts - DAY_MS && (e.ts < asOf.ts || (e.ts === asOf.ts && e.offset <= asOf.offset)));
  const newestFirst = [...counted].sort((a, b) => (a.ts !== b.ts ? b.ts - a.ts : b.offset - a.offset));
  const out: string[] = [];
  for (const e of newestFirst) if (!out.includes(e.itemId)) out.push(e.itemId);
  return out.slice(0, Math.max(0, max));
}

function bruteCross(events: readonly RecsUserEvent[], item: string, asOf: { ts: number; offset: number }): Record<string, number | null> {
  const mine = events.filter((e) => e.itemId === item && e.ts > asOf.ts - DAY_MS && (e.ts < asOf.ts || (e.ts === asOf.ts && e.offset <= asOf.offset)));
  const n = (action: RecsUserEvent['action']): number => mine.filter((e) => e.action === action).length;
  const last = mine.length === 0 ? null : Math.max(...mine.map((e) => e.ts));
  return { user_item_views_24h: n('view'), user_item_clicks_24h: n('click'), user_item_purchases_24h: n('purchase'), user_item_seconds_since_last: last === null ? null : (asOf.ts - last) / 1000 };
}

// A hand-made history of one user, deliberately out of order. asOf is (T, 20).
const ev = (itemId: string, action: RecsUserEvent['action'], ts: number, offset: number): RecsUserEvent => ({ itemId, action, ts, offset });
const events: RecsUserEvent[] = [
  ev('A', 'view', T - 5_000, 10),
  ev('B', 'view', T - DAY_MS, 1), // exactly 24 h old: outside the window
  ev('C', 'view', T - DAY_MS + 1, 2), // 1 ms inside
  ev('D', 'view', T, 18), // same ms as asOf, lower offset: counted
  ev('E', 'click', T, 19), // same ms, lower offset, newer than D
  ev('F', 'view', T, 20), // asOf itself
  ev('G', 'view', T, 21), // same ms, higher offset: after asOf
  ev('H', 'view', T + 1, 22), // later ms
  ev('A', 'click', T - 3_000, 11),
  ev('A', 'purchase', T - 1_000, 12),
  ev('B', 'click', T - 2 * DAY_MS, 0),
  ev('C', 'click', T - 60_000, 8), // C touched again recently: ranked by its latest event
  ev('E', 'view', T - 7_000, 9),
  ev('D', 'view', T + 5, 23), // after asOf: does not move D
];
const asOf = { ts: T, offset: 20 };

describe('recsCandidates', () => {
  it('lists the distinct items of the 24 h up to asOf, most recent first, ties in a millisecond by offset', () => {
    expect(recsCandidates(events, asOf)).toEqual(['F', 'E', 'D', 'A', 'C']);
    expect(recsCandidates(events, asOf)).toEqual(bruteCandidates(events, asOf, RECS_MAX_CANDIDATES));
  });

  it('excludes events exactly 24 h old and events after asOf in the total order', () => {
    const c = recsCandidates(events, asOf);
    expect(c).not.toContain('B');
    expect(c).not.toContain('G');
    expect(c).not.toContain('H');
    expect(recsCandidates(events, { ts: T, offset: 21 })).toEqual(['G', 'F', 'E', 'D', 'A', 'C']);
    // One millisecond later the 24 h edge has passed C's old view, but its recent click keeps it.
    expect(recsCandidates(events, { ts: T + 1, offset: 22 })).toEqual(['H', 'G', 'F', 'E', 'D', 'A', 'C']);
    expect(recsCandidates(events, { ts: T - 2 * DAY_MS, offset: 0 })).toEqual(['B']);
    expect(recsCandidates(events, { ts: T - 2 * DAY_MS - 1, offset: 99 })).toEqual([]);
  });

  it('caps the list at max, keeping the most recent, and does not depend on the input order', () => {
    expect(recsCandidates(events, asOf, 3)).toEqual(['F', 'E', 'D']);
    expect(recsCandidates(events, asOf, 0)).toEqual([]);
    expect(recsCandidates([...events].reverse(), asOf)).toEqual(recsCandidates(events, asOf));
    const many = Array.from({ length: 80 }, (_, i) => ev(`I${String(i).padStart(5, '0')}`, 'view', T - 80_000 + i * 1000, i));
    const top = recsCandidates(many, { ts: T, offset: 1000 });
    expect(top).toHaveLength(RECS_MAX_CANDIDATES);
    expect(top[0]).toBe('I00079');
    expect(top.at(-1)).toBe(`I${String(80 - RECS_MAX_CANDIDATES).padStart(5, '0')}`);
    expect(RECS_TOP_K).toBe(10);
  });

  it('agrees with the brute force on random histories with ties and window edges', () => {
    let seed = 7;
    const rand = (n: number): number => {
      seed = (seed * 1103515245 + 12345) % 2147483648;
      return seed % n;
    };
    for (let round = 0; round < 200; round++) {
      const list: RecsUserEvent[] = [];
      let ts = T - 2 * DAY_MS;
      for (let offset = 0; offset < 60; offset++) {
        ts += [0, 0, 1, 60_000, 3_600_000, DAY_MS / 4][rand(6)]!;
        list.push(ev(`I${rand(12)}`, (['view', 'click', 'purchase'] as const)[rand(3)]!, ts, offset * 3));
      }
      const pick = list[rand(list.length)]!;
      const points = [
        { ts: pick.ts, offset: pick.offset },
        { ts: pick.ts, offset: pick.offset - 1 },
        { ts: pick.ts + DAY_MS, offset: 0 },
        { ts: pick.ts + DAY_MS - 1, offset: 1_000 },
      ];
      for (const p of points) {
        const max = [1, 5, RECS_MAX_CANDIDATES][rand(3)]!;
        expect(recsCandidates(list, p, max)).toEqual(bruteCandidates(list, p, max));
        for (const item of ['I0', 'I3', 'I7', 'I11', 'none']) expect(recsCrossFeatures(list, item, p)).toEqual(bruteCross(list, item, p));
      }
    }
  });
});

describe('recsCrossFeatures', () => {
  it("counts the user's views, clicks and purchases of the item in the window up to asOf", () => {
    expect(recsCrossFeatures(events, 'A', asOf)).toEqual({ user_item_views_24h: 1, user_item_clicks_24h: 1, user_item_purchases_24h: 1, user_item_seconds_since_last: 1 });
    // D: the view at (T, 18) counts, the one at T + 5 does not.
    expect(recsCrossFeatures(events, 'D', asOf)).toEqual({ user_item_views_24h: 1, user_item_clicks_24h: 0, user_item_purchases_24h: 0, user_item_seconds_since_last: 0 });
    // C: the view 24 h - 1 ms ago and the click a minute ago.
    expect(recsCrossFeatures(events, 'C', asOf)).toEqual({ user_item_views_24h: 1, user_item_clicks_24h: 1, user_item_purchases_24h: 0, user_item_seconds_since_last: 60 });
    // B: only events 24 h or older; G: only after asOf.
    for (const item of ['B', 'G', 'H', 'Z']) expect(recsCrossFeatures(events, item, asOf)).toEqual({ user_item_views_24h: 0, user_item_clicks_24h: 0, user_item_purchases_24h: 0, user_item_seconds_since_last: null });
    for (const item of ['A', 'B', 'C', 'D', 'E', 'F', 'G', 'H']) expect(recsCrossFeatures(events, item, asOf)).toEqual(bruteCross(events, item, asOf));
    expect(Object.keys(recsCrossFeatures(events, 'A', asOf))).toEqual([...RECS_CROSS_FEATURE_NAMES]);
  });
});

describe('recsInputRow', () => {
  it('orders user features, item features, cross features and imputes missing values as -1', () => {
    expect(RECS_INPUT_NAMES).toEqual([...userGroup.featureNames, ...itemGroup.featureNames, 'user_item_views_24h', 'user_item_clicks_24h', 'user_item_purchases_24h', 'user_item_seconds_since_last']);
    const user: FeatureValues = Object.fromEntries(userGroup.featureNames.map((n, i) => [n, 100 + i]));
    const item: FeatureValues = Object.fromEntries(itemGroup.featureNames.map((n, i) => [n, 200 + i]));
    const cross = { user_item_views_24h: 3, user_item_clicks_24h: 2, user_item_purchases_24h: 1, user_item_seconds_since_last: 12.5 };
    const row = recsInputRow(user, item, cross);
    expect(row).toEqual([...userGroup.featureNames.map((_, i) => 100 + i), ...itemGroup.featureNames.map((_, i) => 200 + i), 3, 2, 1, 12.5]);

    const missingUser: FeatureValues = { ...user, user_ctr_24h: null, user_seconds_since_last_interaction: 'x' as unknown as number };
    const missingItem: FeatureValues = { ...item, item_ctr_24h: Number.NaN };
    delete missingItem.item_views_1h;
    const sparse = recsInputRow(missingUser, missingItem, { ...cross, user_item_seconds_since_last: null });
    const at = (name: string): number => sparse[RECS_INPUT_NAMES.indexOf(name)]!;
    expect(at('user_ctr_24h')).toBe(-1);
    expect(at('user_seconds_since_last_interaction')).toBe(-1);
    expect(at('item_ctr_24h')).toBe(-1);
    expect(at('item_views_1h')).toBe(-1);
    expect(at('user_item_seconds_since_last')).toBe(-1);
    expect(sparse.filter((v) => v === -1)).toHaveLength(5);
    expect(recsInputRow({}, {}, {})).toEqual(RECS_INPUT_NAMES.map(() => -1));
  });

  it('declares a source and the default -1 missing policy for every input (recs and fraud)', () => {
    expect(RECS_INPUT_SOURCES.map((s) => s.name)).toEqual([...RECS_INPUT_NAMES]);
    for (const s of RECS_INPUT_SOURCES) {
      expect(s.missing).toEqual({ policy: 'default', value: -1 });
      if (s.source === 'feature') expect((s.group === 'user' ? userGroup : itemGroup).featureNames).toContain(s.name);
      else expect(RECS_CROSS_FEATURE_NAMES).toContain(s.name);
    }
    expect(FRAUD_INPUT_SOURCES.map((s) => s.name)).toEqual([...FRAUD_INPUT_NAMES]);
    const bySource = (source: string): string[] => FRAUD_INPUT_SOURCES.filter((s) => s.source === source).map((s) => s.name);
    expect(bySource('event')).toEqual(['amount', 'old_balance', 'new_balance']);
    expect(bySource('derived')).toEqual(['balance_error', ...FRAUD_INPUT_NAMES.filter((n) => n.startsWith('type_'))]);
    expect(bySource('feature')).toEqual([...accountGroup.featureNames]);
    for (const s of FRAUD_INPUT_SOURCES) {
      expect(s.missing).toEqual({ policy: 'default', value: -1 });
      if (s.source === 'feature') expect(s.group).toBe('account');
    }
  });
});

/**
 * Rebuilds every row of a small training set from untrimmed histories, independently of the
 * builder's bookkeeping: user features by the engine with the event cut over the user's events up to
 * the query, item features by the engine with the instant cut over every event of the item with
 * ts <= e.ts (none later), candidates and cross features by brute force, labels by scanning ahead.
 */
function checkTrainingSet(opts: RecsTrainingSetOptions): { queries: number; rows: number; positives: number; sameMsLaterItemEvents: number; expiredCandidateEvents: number } {
  const set = buildRecsTrainingSet(opts);
  const all = [...generateInteractions(recsTrainingSimOptions(opts))];
  const horizon = opts.labelHorizonMs ?? RECS_LABEL_HORIZON_MS;
  const byUser = new Map<string, number[]>();
  const byItem = new Map<string, number[]>();
  all.forEach((x, i) => {
    byUser.set(x.user_id, [...(byUser.get(x.user_id) ?? []), i]);
    byItem.set(x.item_id, [...(byItem.get(x.item_id) ?? []), i]);
  });
  const raw = (i: number): Record<string, unknown> => all[i] as unknown as Record<string, unknown>;

  expect(set.header).toEqual([...RECS_INPUT_NAMES]);
  expect(set.stats.rows).toBe(set.examples.length);
  const byQuery = new Map<number, typeof set.examples>();
  for (const e of set.examples) byQuery.set(e.query, [...(byQuery.get(e.query) ?? []), e]);
  expect(byQuery.size).toBe(set.stats.queries);
  // Queries come in order; only those whose label window reaches the end of the stream are missing.
  const lastTs = all.at(-1)!.ts;
  expect([...byQuery.keys()]).toEqual(all.flatMap((e, i) => (e.ts + horizon < lastTs ? [i] : [])));

  let sameMsLaterItemEvents = 0;
  let expiredCandidateEvents = 0;
  for (const [query, rows] of byQuery) {
    const e = all[query]!;
    const asOfQ = { ts: e.ts, offset: query };
    const mine = byUser.get(e.user_id)!.filter((i) => i <= query);
    const userEvents: RecsUserEvent[] = mine.map((i) => ({ itemId: all[i]!.item_id, action: all[i]!.action, ts: all[i]!.ts, offset: i }));
    expect(rows.map((r) => r.itemId)).toEqual(bruteCandidates(userEvents, asOfQ, RECS_MAX_CANDIDATES));
    const userHistory = mine.map((i) => featureEvent(userGroup, all[i]!.event_id, all[i]!.ts, i, raw(i)));
    const userF = evaluate(userGroup, userHistory, { event: userHistory.at(-1)! });
    for (const r of rows) {
      expect(r.ts).toBe(e.ts);
      expect(r.userId).toBe(e.user_id);
      const its = byItem.get(r.itemId)!.filter((i) => all[i]!.ts <= e.ts);
      sameMsLaterItemEvents += its.filter((i) => all[i]!.ts === e.ts && i > query).length;
      expiredCandidateEvents += userEvents.filter((u) => u.itemId === r.itemId && u.ts <= e.ts - DAY_MS).length;
      const itemF = evaluate(itemGroup, its.map((i) => featureEvent(itemGroup, all[i]!.event_id, all[i]!.ts, i, raw(i))), { instant: e.ts });
      expect(r.row).toEqual(recsInputRow(userF, itemF, bruteCross(userEvents, r.itemId, asOfQ)));
      const acted = byUser.get(e.user_id)!.some((i) => all[i]!.item_id === r.itemId && all[i]!.action !== 'view' && all[i]!.ts > e.ts && all[i]!.ts <= e.ts + horizon);
      expect(r.label).toBe(acted ? 1 : 0);
    }
  }
  return { queries: set.stats.queries, rows: set.stats.rows, positives: set.stats.positives, sameMsLaterItemEvents, expiredCandidateEvents };
}

describe('buildRecsTrainingSet', () => {
  it('builds every row point in time over days: windows expire, candidates vary, labels look 30 min ahead', () => {
    // ~1.7 days of a small population: 24 h windows expire and users come back after long gaps.
    const r = checkTrainingSet({ seed: 5, count: 3000, users: 25, items: 36, ratePerSec: 0.02 });
    expect(r.queries).toBeGreaterThan(2900);
    expect(r.rows).toBeGreaterThan(3 * r.queries);
    expect(r.positives).toBeGreaterThan(20);
    expect(r.expiredCandidateEvents).toBeGreaterThan(100);
  });

  it('counts the item events of the same millisecond generated after the query (instant cut), never later ones', () => {
    // 2000 events/s: many milliseconds hold several events; a 2 ms label horizon keeps queries in a 1.5 s stream.
    const r = checkTrainingSet({ seed: 9, count: 3000, users: 8, items: 12, ratePerSec: 2000, labelHorizonMs: 2 });
    expect(r.sameMsLaterItemEvents).toBeGreaterThan(50);
    expect(r.positives).toBeGreaterThan(0);
  });

  it('is deterministic', () => {
    const opts: RecsTrainingSetOptions = { seed: 3, count: 1500, users: 30, items: 24, ratePerSec: 0.05 };
    expect(buildRecsTrainingSet(opts)).toEqual(buildRecsTrainingSet(opts));
  });
});
