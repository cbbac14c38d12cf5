import type { Redis } from 'ioredis';
import type { BatchContext, Output, ProcessorLogic, SourceRecord } from '../../topology/runtime/processor.js';
import { emit, reject, wholeBatch } from '../../topology/runtime/processor.js';
import { FabricError, messageOf } from '../../topology/errors.js';
import type { Interaction, Recommendation } from '../../schemas/types.generated.js';
import type { FeatureRow } from '../../topology/features/rows.js';
import type { FeatureValues } from '../../topology/features/engine.js';
import { itemGroup, userGroup } from '../../topology/features/groups.js';
import type { Metrics } from '../../topology/runtime/metrics.js';
import { decodeMembers, groupKeys } from '../../serving/features/redis-keys.js';
import { readOnlineFeaturesAt } from '../../serving/features/online.js';
import { RECS_MAX_CANDIDATES, RECS_TOP_K, recsCandidates, recsCrossFeatures, recsInputValues, type RecsUserEvent } from '../../serving/models/recs-inputs.js';
import { vectorize } from '../../serving/models/vector.js';
import type { ServingModels } from '../scoring/processor.js';

export interface RecsProcessorOptions {
  readonly models: ServingModels;
  readonly redis: Redis;
  readonly keyPrefix: string;
  /** Default `recs`. */
  readonly model?: string;
  readonly outputTopic?: string;
  /** Topic of the upstream emits that carry an interaction's user features. Default `features.user`. */
  readonly featuresTopic?: string;
  readonly metrics?: Metrics;
}

const DAY_MS = 86_400_000;
/** Interactions scored per step of a batch (each brings up to max_candidates rows). */
const CHUNK_EVENTS = 500;

interface Pending {
  readonly record: SourceRecord;
  readonly event: Interaction;
  readonly user: FeatureValues | null;
  readonly reason?: string;
}

/**
 * Recommendations on the interactions stream, chained after the user features processor in its task:
 * at each interaction, the user's candidate items (the distinct items of their last 24 h, most recent
 * first, capped) are scored by the serving version of the `recs` model, and the top-k go to
 * `predictions.recs` with their scores and the vectors as served.
 *
 * Inputs: the user's features are the row features-user emitted for this very record; the cross
 * features (the user's views, clicks, purchases of the candidate in 24 h, seconds since the last) come
 * from the user's own window in Redis, written by features-user in this same task before this link
 * runs and cut at the event's (ts, offset): both depend only on the partition's records. The item
 * features are read from the online store as of the event time; they are written by the item group's
 * processor (another consumer group), so when it lags they may miss that lag's events: the vector
 * served is logged with every item, so a recommendation can always be rescored exactly.
 */
export function recsProcessor(options: RecsProcessorOptions): ProcessorLogic {
  const modelName = options.model ?? 'recs';
  const outputTopic = options.outputTopic ?? `predictions.${modelName}`;
  const featuresTopic = options.featuresTopic ?? 'features.user';
  const userKeys = groupKeys(options.keyPrefix, userGroup);

  function userFeaturesOf(record: SourceRecord, eventId: string, upstream: ReadonlyMap<string, readonly Output[]>): FeatureValues | 'late' | 'duplicate' {
    const outputs = upstream.get(record.offset) ?? [];
    if (outputs.some((o) => o.kind === 'emit' && o.topic.startsWith('late.'))) return 'late';
    const rows = outputs.flatMap((o) => (o.kind === 'emit' && o.topic === featuresTopic ? [o.value as FeatureRow] : []));
    if (rows.length === 0) return 'duplicate';
    const own = rows.find((r) => r.event_id === eventId && r.source_offset === Number(record.offset));
    if (!own) throw new FabricError('FABRIC_PROCESSOR_FAILED', `recs: upstream features for ${record.topic}/${record.partition}@${record.offset} hold no row for its event ${eventId}`);
    const values: FeatureValues = {};
    for (const name of userGroup.featureNames) values[name] = own[name] ?? null;
    return values;
  }

  /** Each user's events from (earliest - 24 h) on, as the features processor holds them, in total order. */
  async function userEvents(users: Map<string, number>): Promise<Map<string, RecsUserEvent[]>> {
    const read = options.redis.pipeline();
    for (const [user, earliest] of users) read.zrangebyscore(userKeys.window(user), `(${earliest - DAY_MS}`, '+inf');
    const results = (await read.exec()) ?? [];
    const out = new Map<string, RecsUserEvent[]>();
    [...users.keys()].forEach((user, i) => {
      const [err, members] = results[i] ?? [new Error('no reply'), null];
      if (err) throw new FabricError('FABRIC_SINK_FAILED', `recs: reading the window of user ${user}: ${messageOf(err)}`, { cause: err });
      const events = decodeMembers(userGroup, members as string[])
        .map((e) => ({ itemId: String(e.fields.item_id), action: e.fields.action as RecsUserEvent['action'], ts: e.ts, offset: e.offset }))
        .sort((a, b) => a.ts - b.ts || a.offset - b.offset);
      out.set(user, events);
    });
    return out;
  }

  async function handle(records: SourceRecord[], ctx: BatchContext): Promise<Output[]> {
    const upstream = ctx.upstream;
    if (!upstream) throw new FabricError('FABRIC_CONFIG_INVALID', 'recs must be chained after the user features processor (after: features-user); it got no upstream outputs');
    const outputs: Output[] = [];
    const { entry, handle: model } = options.models.require(modelName);
    const topK = Number(entry.params.top_k ?? RECS_TOP_K);
    const maxCandidates = Number(entry.params.max_candidates ?? RECS_MAX_CANDIDATES);
    const pending: Pending[] = [];
    const users = new Map<string, number>();
    for (const record of records) {
      const event = record.value as Interaction;
      if (!event || typeof event.user_id !== 'string' || typeof event.item_id !== 'string' || typeof event.ts !== 'number') {
        outputs.push(reject(record, new FabricError('FABRIC_RECORD_REJECTED', 'recs: not an interaction')));
        continue;
      }
      const f = userFeaturesOf(record, event.event_id, upstream);
      if (f === 'duplicate') continue;
      if (f === 'late') {
        pending.push({ record, event, user: null, reason: 'features_late' });
        continue;
      }
      pending.push({ record, event, user: f });
      users.set(event.user_id, Math.min(users.get(event.user_id) ?? Infinity, event.ts));
    }
    if (pending.length === 0) return outputs;
    const histories = users.size > 0 ? await userEvents(users) : new Map<string, RecsUserEvent[]>();

    // In chunks of events: bounded memory and engine queue, and the event loop breathes between them.
    const all = pending;
    for (let start = 0; start < all.length; start += CHUNK_EVENTS) {
      const pending = all.slice(start, start + CHUNK_EVENTS);
      // Candidates per event, then one online read of every (item, event time) pair.
      const candidatesOf = pending.map((p) => (p.user ? recsCandidates(histories.get(p.event.user_id) ?? [], { ts: p.event.ts, offset: Number(p.record.offset) }, maxCandidates) : []));
      const pairKey = (item: string, ts: number): string => `${item}\u0000${ts}`;
      const pairs = new Map<string, { entity: string; asOf: number }>();
      pending.forEach((p, i) => {
        for (const item of candidatesOf[i]!) pairs.set(pairKey(item, p.event.ts), { entity: item, asOf: p.event.ts });
      });
      const pairList = [...pairs.values()];
      const itemValues = new Map<string, FeatureValues | null>();
      (await readOnlineFeaturesAt(options.redis, options.keyPrefix, itemGroup, pairList)).forEach((r, i) => itemValues.set(pairKey(pairList[i]!.entity, pairList[i]!.asOf), r.values));

      const rows: number[][] = [];
      const scored = pending.map((p, i) => {
        const list: { item: string; row: number; features: Record<string, number | null> }[] = [];
        let missing = 0;
        for (const item of candidatesOf[i]!) {
          const asOf = { ts: p.event.ts, offset: Number(p.record.offset) };
          const values = recsInputValues(p.user ?? {}, itemValues.get(pairKey(item, p.event.ts)) ?? {}, recsCrossFeatures(histories.get(p.event.user_id) ?? [], item, asOf));
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
          options.metrics?.scoringRows.inc({ model: modelName, provider }, rows.length);
        } catch (err) {
          if (!(err instanceof FabricError) || err.retriable) throw err;
          ctx.log.warn({ err: err.message, rows: rows.length }, 'recs model run failed; fallback');
          modelError = true;
        }
      }
      pending.forEach((p, i) => {
        const { list, missing } = scored[i]!;
        let reasons: string[];
        let items: Recommendation['items'] = [];
        if (p.reason) reasons = [`fallback:${p.reason}`];
        else if (modelError && list.length > 0) reasons = ['fallback:model_error'];
        else if (list.length === 0) reasons = [missing > 0 ? 'fallback:features_missing' : 'no_candidates'];
        else {
          const ranked = list.map((c) => ({ ...c, score: Number(scores![c.row]!.toFixed(6)) })).sort((a, b) => b.score - a.score || (a.item < b.item ? -1 : a.item > b.item ? 1 : 0));
          items = ranked.slice(0, topK).map((c, r) => ({ item_id: c.item, rank: r + 1, score: c.score, features: c.features }));
          reasons = [`top ${items.length} of ${list.length} candidates`];
        }
        const fallback = items.length === 0 && reasons[0] !== 'no_candidates';
        if (fallback) options.metrics?.scoringFallbacks.inc({ model: modelName, reason: reasons[0]!.replace('fallback:', '') });
        const rec: Recommendation = {
          event_id: p.event.event_id,
          user_id: p.event.user_id,
          model: entry.name,
          version: entry.version,
          provider: items.length > 0 ? provider : 'none',
          event_ts: p.event.ts,
          candidates: candidatesOf[i]!.length,
          items,
          reasons,
          fallback,
          source_topic: p.record.topic,
          source_partition: p.record.partition,
          source_offset: Number(p.record.offset),
        };
        outputs.push(emit(outputTopic, p.event.user_id, rec, p.record));
      });
    }
    return outputs;
  }

  return {
    name: 'recs',
    process: wholeBatch(handle),
    readiness() {
      try {
        const { entry, handle } = options.models.require(modelName);
        return { ready: true, state: 'ready', detail: `model ${entry.name}@${entry.version} on ${handle.provider}` };
      } catch (err) {
        return { ready: false, state: 'waiting', detail: (err as Error).message };
      }
    },
  };
}
