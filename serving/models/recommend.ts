import type { Redis } from 'ioredis';
import type { RecommendedItem } from '../../schemas/types.generated.js';
import { FabricError, messageOf } from '../../topology/errors.js';
import type { FeatureValues } from '../../topology/features/engine.js';
import { itemGroup, userGroup } from '../../topology/features/groups.js';
import { readOnlineFeaturesAt } from '../features/online.js';
import { decodeMembers, groupKeys } from '../features/redis-keys.js';
import type { ServedModel } from './live.js';
import { RECS_MAX_CANDIDATES, RECS_TOP_K, RECS_WINDOW_MS, recsCandidates, recsCrossFeatures, recsInputValues, type RecsUserEvent } from './recs-inputs.js';
import { vectorize } from './vector.js';

/** One recommendation request: a user at one of their interactions. */
export interface RecsQuery {
  readonly userId: string;
  /** The interaction's event time and its position among the user's events. */
  readonly ts: number;
  readonly offset: number;
  /** The user's features as of the interaction; null: no score (see `reason`). */
  readonly user: FeatureValues | null;
  /** A fallback reason decided before scoring (e.g. features_late). */
  readonly reason?: string;
}

export interface RecsAnswer {
  readonly candidates: number;
  readonly items: RecommendedItem[];
  readonly reasons: string[];
  readonly fallback: boolean;
  readonly provider: string;
}

/** Each user's events from (earliest - 24 h) on, as the user features processor holds them, in total order. */
export async function readUserHistories(redis: Redis, keyPrefix: string, users: ReadonlyMap<string, number>): Promise<Map<string, RecsUserEvent[]>> {
  const keys = groupKeys(keyPrefix, userGroup);
  const read = redis.pipeline();
  for (const [user, earliest] of users) read.zrangebyscore(keys.window(user), `(${earliest - RECS_WINDOW_MS}`, '+inf');
  const results = (await read.exec()) ?? [];
  const out = new Map<string, RecsUserEvent[]>();
  [...users.keys()].forEach((user, i) => {
    const [err, members] = results[i] ?? [new Error('no reply'), null];
    if (err) throw new FabricError('FABRIC_SINK_FAILED', `recs: reading the window of user ${user}: ${messageOf(err)}`, { cause: err });
    const events = decodeMembers(userGroup, members as string[])
      .map((e) => ({ eventId: e.eventId, itemId: String(e.fields.item_id), action: e.fields.action as RecsUserEvent['action'], ts: e.ts, offset: e.offset }))
      .sort((a, b) => a.ts - b.ts || a.offset - b.offset);
    out.set(user, events);
  });
  return out;
}

/**
 * Scores the candidates of many queries in one engine call and ranks them: the one recommender the
 * stream (processors/recs) and POST /v1/predict/recs share. Candidates are the distinct items of the
 * user's last 24 h up to the query; cross features come from the same history; item features from
 * the online store as of the query's time (one snapshot per distinct item). Timing failures of the
 * model are thrown (the caller retries or answers 5xx); a run the model refuses gives every query
 * the fallback with reason model_error.
 */
export async function recommend(redis: Redis, keyPrefix: string, served: ServedModel, queries: readonly RecsQuery[], histories: ReadonlyMap<string, readonly RecsUserEvent[]>, onModelError?: (err: FabricError) => void): Promise<RecsAnswer[]> {
  const { entry, handle: model } = served;
  const topK = Number(entry.params.top_k ?? RECS_TOP_K);
  const maxCandidates = Number(entry.params.max_candidates ?? RECS_MAX_CANDIDATES);
  const candidatesOf = queries.map((q) => (q.user ? recsCandidates(histories.get(q.userId) ?? [], q, maxCandidates) : []));
  const pairKey = (item: string, ts: number): string => `${item}\u0000${ts}`;
  const pairs = new Map<string, { entity: string; asOf: number }>();
  queries.forEach((q, i) => {
    for (const item of candidatesOf[i]!) pairs.set(pairKey(item, q.ts), { entity: item, asOf: q.ts });
  });
  const pairList = [...pairs.values()];
  const itemValues = new Map<string, FeatureValues | null>();
  (await readOnlineFeaturesAt(redis, keyPrefix, itemGroup, pairList)).forEach((r, i) => itemValues.set(pairKey(pairList[i]!.entity, pairList[i]!.asOf), r.values));

  const rows: number[][] = [];
  const scored = queries.map((q, i) => {
    const list: { item: string; row: number; features: Record<string, number | null> }[] = [];
    let missing = 0;
    for (const item of candidatesOf[i]!) {
      const values = recsInputValues(q.user ?? {}, itemValues.get(pairKey(item, q.ts)) ?? {}, recsCrossFeatures(histories.get(q.userId) ?? [], item, q));
      const v = vectorize(entry, values);
      if (v.missing.length > 0) missing++;
      else list.push({ item, row: rows.push(v.row) - 1, features: v.features });
    }
    return { list, missing };
  });
  let scores: Float32Array | null = null;
  let provider = 'none';
  let modelError = false;
  if (rows.length > 0) {
    try {
      ({ scores, provider } = await model.score(rows));
    } catch (err) {
      if (!(err instanceof FabricError) || err.retriable) throw err;
      onModelError?.(err);
      modelError = true;
    }
  }
  return queries.map((q, i) => {
    const { list, missing } = scored[i]!;
    let reasons: string[];
    let items: RecommendedItem[] = [];
    if (q.reason) reasons = [`fallback:${q.reason}`];
    else if (modelError && list.length > 0) reasons = ['fallback:model_error'];
    else if (list.length === 0) reasons = [missing > 0 ? 'fallback:features_missing' : 'no_candidates'];
    else {
      const ranked = list.map((c) => ({ ...c, score: Number(scores![c.row]!.toFixed(6)) })).sort((a, b) => b.score - a.score || (a.item < b.item ? -1 : a.item > b.item ? 1 : 0));
      items = ranked.slice(0, topK).map((c, r) => ({ item_id: c.item, rank: r + 1, score: c.score, features: c.features }));
      reasons = [`top ${items.length} of ${list.length} candidates`];
    }
    return { candidates: candidatesOf[i]!.length, items, reasons, fallback: items.length === 0 && reasons[0] !== 'no_candidates', provider: items.length > 0 ? provider : 'none' };
  });
}
