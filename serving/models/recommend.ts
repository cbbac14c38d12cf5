import type { Redis } from 'ioredis';
import type { RecommendedItem } from '../../schemas/types.generated.js';
import { FabricError, messageOf } from '../../topology/errors.js';
import type { FeatureValues } from '../../topology/features/engine.js';
import { itemGroup, userGroup } from '../../topology/features/groups.js';
import { readOnlineFeaturesAt } from '../features/online.js';
import { decodeMembers, groupKeys } from '../features/redis-keys.js';
import type { ServedModel } from './live.js';
import type { FrequencyCaps } from '../rules/caps.js';
import { selectTopK, type CompiledRules, type FilterOutcome, type RankedCandidate } from '../rules/engine.js';
import { RECS_MAX_CANDIDATES, RECS_WINDOW_MS, recsCandidates, recsCrossFeatures, recsInputValues, type RecsUserEvent } from './recs-inputs.js';
import { vectorize } from './vector.js';

/** One recommendation request: a user at one of their interactions. */
export interface RecsQuery {
  readonly userId: string;
  /** The interaction (its fields are what rule conditions see as `event`). */
  readonly event: Readonly<Record<string, unknown>> & { readonly event_id: string };
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
  /** The rule set that selected the items, and the rules that fired. */
  readonly rulesVersion: number;
  readonly fired: string[];
}

/** Item metadata by kind and id (serving/metadata's store in the fabric). */
export interface MetadataLookup {
  getMany(kind: string, ids: readonly string[]): Promise<Map<string, Readonly<Record<string, string | number | boolean | null>>>>;
}

/** What the recommender needs besides the model: the stores and the rule set in force. */
export interface RecommendDeps {
  readonly redis: Redis;
  readonly keyPrefix: string;
  readonly rules: CompiledRules;
  /** Needed when the rules read metadata (filters on item attributes, diversity, enrichment). */
  readonly metadata?: MetadataLookup;
  /** Needed when the rules have frequency caps. */
  readonly caps?: FrequencyCaps;
  onModelError?(err: FabricError): void;
  /** A rule that failed at run time (counted by the caller). */
  onRuleError?(rule: string, message: string): void;
  /** A shadow ranking: the top-k walk without the frequency caps (neither consulted nor counted). */
  readonly shadow?: boolean;
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
 * Scores the candidates of many queries in one engine call, ranks them and applies the rule set: the
 * one recommender the stream (processors/recs) and POST /v1/predict/recs share. Candidates are the
 * distinct items of the user's last 24 h up to the query; cross features come from the same history;
 * item features from the online store as of the query's time (one snapshot per distinct item). The
 * ranked candidates then go through the rules: list and condition filters, the top-k walk with the
 * diversity quota and the frequency caps (one Redis script per query, all queries in one pipeline, in
 * order), and enrichment from the metadata store. Timing failures of the model are thrown (the caller
 * retries or answers 5xx); a run the model refuses gives every query the fallback with reason
 * model_error.
 */
export async function recommend(deps: RecommendDeps, served: ServedModel, queries: readonly RecsQuery[], histories: ReadonlyMap<string, readonly RecsUserEvent[]>): Promise<RecsAnswer[]> {
  const { redis, keyPrefix, rules } = deps;
  const { entry, handle: model } = served;
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
      deps.onModelError?.(err);
      modelError = true;
    }
  }

  // Metadata of every candidate the rules look at, one read per kind for all queries.
  const attributes = new Map<string, Readonly<Record<string, string | number | boolean | null>>>();
  const itemAttributes = rules.metadataNeeded.get('item');
  if (itemAttributes && itemAttributes.length > 0 && !modelError) {
    if (!deps.metadata) throw new FabricError('FABRIC_CONFIG_INVALID', `rules of ${rules.model} read item metadata, but no metadata store is configured`);
    const ids = [...new Set(scored.flatMap((s) => s.list.map((c) => c.item)))];
    for (const [id, attrs] of await deps.metadata.getMany('item', ids)) attributes.set(id, attrs);
  }
  const { k, rule: topKRule, diversity } = rules.topK(entry);

  interface Pending {
    readonly ranked: RankedCandidate[];
    readonly features: Map<string, Record<string, number | null>>;
    readonly filtered: FilterOutcome;
  }
  const pending: (Pending | RecsAnswer)[] = queries.map((q, i) => {
    const { list, missing } = scored[i]!;
    const base = { candidates: candidatesOf[i]!.length, items: [] as RecommendedItem[], provider: 'none', rulesVersion: rules.version, fired: [] as string[] };
    if (q.reason) return { ...base, reasons: [`fallback:${q.reason}`], fallback: true };
    if (modelError && list.length > 0) return { ...base, reasons: ['fallback:model_error'], fallback: true };
    if (list.length === 0) return { ...base, reasons: [missing > 0 ? 'fallback:features_missing' : 'no_candidates'], fallback: missing > 0 };
    const ranked = list
      .map((c) => ({ id: c.item, score: Number(scores![c.row]!.toFixed(6)), attributes: attributes.get(c.item) ?? {} }))
      .sort((a, b) => b.score - a.score || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
    const filtered = rules.filter({ event: q.event, entity: q.userId, features: q.user ?? {} }, ranked);
    for (const e of filtered.errors) deps.onRuleError?.(e.rule, e.message);
    return { ranked, features: new Map(list.map((c) => [c.item, c.features])), filtered };
  });

  // The top-k walk: in Redis (atomic with the caps) when the rules cap, else here.
  const open = pending.map((p, i) => ({ p, i })).filter((x): x is { p: Pending; i: number } => 'ranked' in x.p);
  let chosen: number[][];
  const capped = rules.itemCaps.length > 0 && !deps.shadow;
  if (capped) {
    if (!deps.caps) throw new FabricError('FABRIC_CONFIG_INVALID', `rules of ${rules.model} have frequency caps, but no cap store is configured`);
    chosen = await deps.caps.settle(
      open.map(({ p, i }) => ({
        model: rules.model,
        entity: queries[i]!.userId,
        member: queries[i]!.event.event_id,
        ts: queries[i]!.ts,
        caps: rules.itemCaps,
        candidates: p.filtered.kept.map((c) => c.id),
        groups: p.filtered.kept.map((c) => (diversity ? String(c.attributes[diversity.attribute] ?? '') : '')),
        k,
        maxPerGroup: diversity?.maxPerValue ?? 0,
      })),
    );
  } else chosen = open.map(({ p }) => selectTopK(p.filtered.kept, k, diversity));

  open.forEach(({ p, i }, n) => {
    const { kept } = p.filtered;
    const picked = chosen[n]!;
    const fired: string[] = [...p.filtered.excluded.keys()];
    const reasons: string[] = [...p.filtered.excluded].map(([rule, count]) => `${rule}: excluded ${count}`);
    if (capped) {
      const uncapped = selectTopK(kept, k, diversity);
      const held = uncapped.filter((x) => !picked.includes(x)).length;
      if (held > 0 || picked.some((x) => !uncapped.includes(x))) {
        fired.push(...rules.itemCaps.map((c) => c.name));
        reasons.push(`${rules.itemCaps.map((c) => c.name).join(', ')}: ${held} item${held === 1 ? '' : 's'} already shown to this user within the window`);
      }
    }
    if (topKRule) fired.push(topKRule);
    const items: RecommendedItem[] = picked.map((x, r) => {
      const c = kept[x]!;
      const joined: Record<string, string | number | boolean | null> = {};
      for (const e of rules.enrich) for (const a of e.attributes) if (c.attributes[a] !== undefined) joined[a] = typeof c.attributes[a] === 'bigint' ? Number(c.attributes[a]) : (c.attributes[a] as string | number | boolean | null);
      return { item_id: c.id, rank: r + 1, score: c.score, features: p.features.get(c.id)!, attributes: joined };
    });
    if (items.some((it) => Object.keys(it.attributes).length > 0)) fired.push(...rules.enrich.map((e) => e.rule));
    reasons.unshift(`top ${items.length} of ${p.ranked.length} candidates`);
    pending[i] = { candidates: candidatesOf[i]!.length, items, reasons, fallback: false, provider: items.length > 0 ? provider : 'none', rulesVersion: rules.version, fired };
  });
  return pending as RecsAnswer[];
}
