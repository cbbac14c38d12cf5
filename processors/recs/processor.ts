import type { Redis } from 'ioredis';
import type { BatchContext, Output, ProcessorLogic, SourceRecord } from '../../topology/runtime/processor.js';
import { emit, reject, wholeBatch } from '../../topology/runtime/processor.js';
import { FabricError } from '../../topology/errors.js';
import type { Interaction } from '../../schemas/types.generated.js';
import type { FeatureRow } from '../../topology/features/rows.js';
import type { FeatureValues } from '../../topology/features/engine.js';
import { userGroup } from '../../topology/features/groups.js';
import type { Metrics } from '../../topology/runtime/metrics.js';
import { readUserHistories, recommend, type MetadataLookup, type RecsAnswer, type RecsQuery } from '../../serving/models/recommend.js';
import type { FrequencyCaps } from '../../serving/rules/caps.js';
import type { RecsUserEvent } from '../../serving/models/recs-inputs.js';
import { recommendationRecord } from '../../serving/models/records.js';
import type { ServingRules } from '../scoring/processor.js';
import { experimentPlan, type Lane, type ServingModels } from '../../serving/experiments/plan.js';
import type { ServingExperiments } from '../../serving/experiments/spec.js';
import type { ExperimentLatency } from '../../serving/experiments/latency.js';

export interface RecsProcessorOptions {
  readonly models: ServingModels;
  readonly rules: ServingRules;
  /** Needed when the rules read item metadata (filters, diversity, enrichment). */
  readonly metadata?: MetadataLookup;
  /** Needed when the rules have frequency caps. */
  readonly caps?: FrequencyCaps;
  readonly redis: Redis;
  readonly keyPrefix: string;
  /** Default `recs`. */
  readonly model?: string;
  readonly outputTopic?: string;
  /** Topic of the upstream emits that carry an interaction's user features. Default `features.user`. */
  readonly featuresTopic?: string;
  readonly metrics?: Metrics;
  /** Where the arms' time goes (per experiment and arm, outside the records). */
  readonly latency?: ExperimentLatency;
  /** The experiments in force (split, shadow); none: every interaction goes to the serving version. */
  readonly experiments?: ServingExperiments;
}

/** Interactions scored per step of a batch (each brings up to max_candidates rows). */
const CHUNK_EVENTS = 500;

/**
 * Recommendations on the interactions stream, chained after the user features processor in its task:
 * at each interaction, the user's candidate items (the distinct items of their last 24 h, most recent
 * first, capped) are scored by the serving version of the `recs` model (serving/models/recommend.ts,
 * shared with POST /v1/predict/recs), and the top-k go to `predictions.recs` with their scores and
 * the vectors as served.
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

  async function handle(records: SourceRecord[], ctx: BatchContext): Promise<Output[]> {
    const upstream = ctx.upstream;
    if (!upstream) throw new FabricError('FABRIC_CONFIG_INVALID', 'recs must be chained after the user features processor (after: features-user); it got no upstream outputs');
    const outputs: Output[] = [];
    // One rule set per batch: a new version applies from the next batch on.
    const rules = options.rules.current(modelName, 'ranking');
    const pending: { record: SourceRecord; event: Interaction; query: RecsQuery }[] = [];
    const users = new Map<string, number>();
    for (const record of records) {
      const event = record.value as Interaction;
      if (!event || typeof event.user_id !== 'string' || typeof event.item_id !== 'string' || typeof event.ts !== 'number') {
        outputs.push(reject(record, new FabricError('FABRIC_RECORD_REJECTED', 'recs: not an interaction')));
        continue;
      }
      const f = userFeaturesOf(record, event.event_id, upstream);
      if (f === 'duplicate') continue;
      const base = { userId: event.user_id, event: event as unknown as RecsQuery['event'], ts: event.ts, offset: Number(record.offset) };
      if (f === 'late') {
        pending.push({ record, event, query: { ...base, user: null, reason: 'features_late' } });
        continue;
      }
      pending.push({ record, event, query: { ...base, user: f } });
      users.set(event.user_id, Math.min(users.get(event.user_id) ?? Infinity, event.ts));
    }
    if (pending.length === 0) return outputs;
    const histories = users.size > 0 ? await readUserHistories(options.redis, options.keyPrefix, users) : new Map<string, RecsUserEvent[]>();
    const plan = experimentPlan(options.models, options.experiments, modelName, ctx.log);
    const deps = {
      redis: options.redis,
      keyPrefix: options.keyPrefix,
      rules,
      ...(options.metadata ? { metadata: options.metadata } : {}),
      ...(options.caps ? { caps: options.caps } : {}),
      onModelError: (err: FabricError) => ctx.log.warn({ err: err.message }, 'recs model run failed; fallback'),
      onRuleError: (rule: string, message: string) => {
        options.metrics?.ruleErrors.inc({ model: modelName, rule });
        ctx.log.warn({ rule, err: message }, 'rule failed at run time; the item is excluded');
      },
    };
    // In chunks of events: bounded memory and engine queue, and the event loop breathes between them.
    for (let start = 0; start < pending.length; start += CHUNK_EVENTS) {
      const chunk = pending.slice(start, start + CHUNK_EVENTS);
      // Each arm's queries in one call (a user is in one arm, so the arms' caps never touch the same
      // keys), side by side; the shadow ranks every query without consulting or counting caps.
      const byLane = new Map<Lane, number[]>();
      chunk.forEach((p, i) => {
        const l = plan.laneOf(p.event.user_id);
        (byLane.get(l) ?? byLane.set(l, []).get(l)!).push(i);
      });
      const answers = new Array<{ answer: RecsAnswer; lane: Lane }>(chunk.length);
      const timed = async (l: Lane, indexes: readonly number[], shadow: boolean): Promise<{ answers: RecsAnswer[]; ms: number }> => {
        const started = performance.now();
        const out = await recommend({ ...deps, shadow }, l.served, indexes.map((i) => chunk[i]!.query), histories);
        return { answers: out, ms: performance.now() - started };
      };
      const all = chunk.map((_, i) => i);
      const [shadowRun, ...armRuns] = await Promise.all([
        plan.shadow ? timed(plan.shadow, all, true) : Promise.resolve(null),
        ...[...byLane].map(async ([l, indexes]) => {
          const run = await timed(l, indexes, false);
          indexes.forEach((i, n) => (answers[i] = { answer: run.answers[n]!, lane: l }));
          l.ms = run.ms;
          return { arm: l.arm, ms: run.ms, rows: indexes.length };
        }),
      ]);
      chunk.forEach(({ record, event }, i) => {
        const { answer: a, lane: l } = answers[i]!;
        if (a.fallback) options.metrics?.scoringFallbacks.inc({ model: modelName, reason: a.reasons[0]!.replace('fallback:', '') });
        for (const rule of a.fired) options.metrics?.rulesFired.inc({ model: modelName, version: String(a.rulesVersion), rule });
        const origin = { kind: 'stream', topic: record.topic, partition: record.partition, offset: Number(record.offset) } as const;
        if (l.arm) options.metrics?.experimentPredictions.inc({ model: modelName, experiment: plan.experiment!.id, arm: l.arm });
        outputs.push(emit(outputTopic, event.user_id, recommendationRecord(l.served.entry, event, a, origin, l.arm ? { experiment: plan.experiment!.id, arm: l.arm } : {}), record));
        if (shadowRun && plan.shadow) {
          options.metrics?.experimentPredictions.inc({ model: modelName, experiment: plan.experiment!.id, arm: 'shadow' });
          outputs.push(emit(`${outputTopic}.shadow`, event.user_id, recommendationRecord(plan.shadow.served.entry, event, shadowRun.answers[i]!, origin, { experiment: plan.experiment!.id, arm: 'shadow' }), record));
        }
      });
      if (plan.experiment) options.latency?.observe(modelName, plan.experiment.id, [...(armRuns as { arm?: string; ms: number; rows: number }[]).filter((r) => r.arm).map((r) => ({ arm: r.arm!, ms: r.ms, rows: r.rows })), ...(shadowRun ? [{ arm: 'shadow', ms: shadowRun.ms, rows: chunk.length }] : [])]);
      if (shadowRun && plan.shadow) options.metrics?.shadowSeconds.inc({ model: modelName, version: plan.shadow.served.entry.version }, shadowRun.ms / 1000);
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
