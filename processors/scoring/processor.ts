import type { BatchContext, Output, ProcessorLogic, SourceRecord } from '../../topology/runtime/processor.js';
import { emit, wholeBatch } from '../../topology/runtime/processor.js';
import { FabricError } from '../../topology/errors.js';
import type { FeatureRow } from '../../topology/features/rows.js';
import type { FeatureValues } from '../../topology/features/engine.js';
import type { Metrics } from '../../topology/runtime/metrics.js';
import { splitTransactions } from '../shared/validate.js';
import type { ModelFallbackReason as FallbackReason } from '../../serving/rules/spec.js';
import type { CompiledRules, OutputKind } from '../../serving/rules/engine.js';
import { settleCaps, type FrequencyCaps } from '../../serving/rules/caps.js';
import { ACCOUNT_FEATURE_NAMES, fraudInputValues } from '../../serving/models/fraud-inputs.js';
import { vectorize } from '../../serving/models/vector.js';
import { predictionRecord } from '../../serving/models/records.js';
import type { ServingExperiments } from '../../serving/experiments/spec.js';
import type { ExperimentLatency } from '../../serving/experiments/latency.js';
import { experimentPlan, type Lane, type ServingModels } from '../../serving/experiments/plan.js';

export type { ServingModels } from '../../serving/experiments/plan.js';

/** Where processors get the rule set in force for a model, per batch (RuleRegistry in the fabric). */
export interface ServingRules {
  current(model: string, output: OutputKind): CompiledRules;
}

export interface ScoringProcessorOptions {
  readonly models: ServingModels;
  readonly rules: ServingRules;
  /** Needed when the rule set caps a decision (frequency_cap rules). */
  readonly caps?: FrequencyCaps;
  /** Default `fraud`. */
  readonly model?: string;
  readonly outputTopic?: string;
  /** Topic of the upstream (features) emits that carry an event's features. Default `features.account`. */
  readonly featuresTopic?: string;
  readonly metrics?: Metrics;
  /** The experiments in force (split, shadow); none: every event goes to the serving version. */
  readonly experiments?: ServingExperiments;
  /** Where the arms' model time goes (per experiment and arm, outside the records). */
  readonly latency?: ExperimentLatency;
  /** Readiness detail: the engine's state. */
  readonly engineState?: () => string;
}

/**
 * Scores transactions with the serving version of the fraud model, chained after the features
 * processor in the same task (`after: 'features'`): the features of each event are the ones features
 * emitted for that very record (`ctx.upstream`), so they are decided by the event's position in its
 * partition, never by when another consumer wrote Redis. The model version is read once per batch
 * from the registry's live models: a promotion takes effect at the next batch, and since a batch's
 * outputs and offsets commit in one transaction, every event is scored exactly once, by one version
 * (recorded on the prediction). The batch's rows go to the serving engine, which micro-batches them
 * over its workers.
 *
 * Deterministic outcomes only: an event features routed to `late.<stream>` (or emitted no features
 * for) gets the rules' fallback with reason `features_late`; an input missing whose policy is the
 * fallback gets `features_missing`; a run the model itself rejects gets `model_error`. A model
 * timeout, a dead worker or no loaded version is a matter of timing, not of the input: the batch
 * fails retriably, nothing is committed, and the retry produces what a clean run would.
 */
export function scoringProcessor(options: ScoringProcessorOptions): ProcessorLogic {
  const modelName = options.model ?? 'fraud';
  const outputTopic = options.outputTopic ?? `predictions.${modelName}`;
  const featuresTopic = options.featuresTopic ?? 'features.account';

  /**
   * The features emitted for this record; 'late' when features sent it to late.<stream>; 'duplicate'
   * when features emitted nothing for it (a redelivered event id, already scored at its first offset).
   */
  function featuresOf(record: SourceRecord, eventId: string, upstream: ReadonlyMap<string, readonly Output[]>): FeatureValues | 'late' | 'duplicate' {
    const outputs = upstream.get(record.offset) ?? [];
    if (outputs.some((o) => o.kind === 'emit' && o.topic.startsWith('late.'))) return 'late';
    // The record's outputs hold its own row, then the rows it corrected (other events' ids).
    const rows = outputs.flatMap((o) => (o.kind === 'emit' && o.topic === featuresTopic ? [o.value as FeatureRow] : []));
    if (rows.length === 0) return 'duplicate';
    const own = rows.find((r) => r.event_id === eventId && r.source_offset === Number(record.offset));
    if (!own) throw new FabricError('FABRIC_PROCESSOR_FAILED', `scoring: upstream features for ${record.topic}/${record.partition}@${record.offset} hold no row for its event ${eventId}`);
    const features: FeatureValues = {};
    for (const name of ACCOUNT_FEATURE_NAMES) features[name] = own[name] ?? null;
    return features;
  }

  async function handle(records: SourceRecord[], ctx: BatchContext): Promise<Output[]> {
    const upstream = ctx.upstream;
    if (!upstream) throw new FabricError('FABRIC_CONFIG_INVALID', 'scoring must be chained after the features processor (after: features); it got no upstream outputs');
    // Features already dead-letters invalid events; the check stays so scoring never scores garbage.
    const split = splitTransactions(records);
    const outputs = split.rejects;
    // One version per arm for the whole batch: a promotion or an experiment's change lands between
    // batches, never inside one. One rule set for the whole batch too.
    const plan = experimentPlan(options.models, options.experiments, modelName, ctx.log);
    const rules = options.rules.current(modelName, 'decision');
    interface Item {
      readonly record: SourceRecord;
      readonly txn: (typeof split.valid)[number]['txn'];
      readonly lane: Lane;
      readonly row: number;
      readonly reason?: FallbackReason;
      readonly features: Record<string, number | null>;
      readonly shadowRow: number;
      readonly shadowFeatures?: Record<string, number | null>;
    }
    const items: Item[] = [];
    for (const { record, txn } of split.valid) {
      const f = featuresOf(record, txn.event_id, upstream);
      if (f === 'duplicate') continue;
      const lane = plan.laneOf(txn.account_id);
      let shadowRow = -1;
      let shadowFeatures: Record<string, number | null> | undefined;
      if (f !== 'late' && plan.shadow) {
        const sv = vectorize(plan.shadow.served.entry, fraudInputValues(txn, f));
        shadowFeatures = sv.features;
        if (sv.missing.length === 0) shadowRow = plan.shadow.rows.push(sv.row) - 1;
      }
      if (f === 'late') {
        items.push({ record, txn, lane, row: -1, reason: 'features_late', features: { amount: txn.amount }, shadowRow });
        continue;
      }
      const v = vectorize(lane.served.entry, fraudInputValues(txn, f));
      if (v.missing.length > 0) items.push({ record, txn, lane, row: -1, reason: 'features_missing', features: v.features, shadowRow, ...(shadowFeatures ? { shadowFeatures } : {}) });
      else items.push({ record, txn, lane, row: lane.rows.push(v.row) - 1, features: v.features, shadowRow, ...(shadowFeatures ? { shadowFeatures } : {}) });
    }
    if (items.length === 0) return outputs;
    // The arms (and the shadow) are scored side by side, each in its own engine call, timed. The engine
    // counts the rows and times the runs (fabric_serving_*), by model, version and provider.
    await Promise.all(plan.lanes.map((lane) => runLane(lane, ctx)));
    if (plan.experiment) options.latency?.observe(modelName, plan.experiment.id, plan.lanes.filter((l) => l.rows.length > 0).map((l) => ({ arm: l.arm ?? 'shadow', ms: l.ms, rows: l.rows.length })));
    const decided = items.map(({ txn, lane, row, reason: own, features }) => {
      const reason = own ?? lane.failure;
      const score = reason ? null : Number(lane.scores![row]!.toFixed(6));
      const outcome = rules.decide({ event: txn as unknown as Record<string, unknown>, entity: txn.account_id, features, score, ...(reason ? { reason } : {}) }, lane.served.entry);
      if (outcome.error) {
        options.metrics?.ruleErrors.inc({ model: modelName, rule: outcome.error.rule });
        ctx.log.warn({ rule: outcome.error.rule, err: outcome.error.message, event: txn.event_id }, 'rule failed at run time; fallback decision');
      }
      return { score, reason, outcome };
    });
    const final = await settleCaps(rules, options.caps, items.map((it) => it.txn), decided.map((d) => d.outcome));
    items.forEach(({ record, txn, lane, features }, i) => {
      const { score, reason } = decided[i]!;
      const outcome = final[i]!;
      if (outcome.fallback) options.metrics?.scoringFallbacks.inc({ model: modelName, reason: outcome.error ? 'rule_error' : (reason ?? 'model_error') });
      for (const rule of outcome.fired) options.metrics?.rulesFired.inc({ model: modelName, version: String(rules.version), rule });
      const origin = { kind: 'stream', topic: record.topic, partition: record.partition, offset: Number(record.offset) } as const;
      const how = lane.arm ? { experiment: plan.experiment!.id, arm: lane.arm } : {};
      if (lane.arm) options.metrics?.experimentPredictions.inc({ model: modelName, experiment: plan.experiment!.id, arm: lane.arm });
      outputs.push(emit(outputTopic, txn.account_id, predictionRecord(lane.served.entry, txn, score, outcome, rules.version, reason ? 'none' : lane.provider, features, origin, how), record));
    });
    // Shadow predictions: the shadow version's score and the decision the rules would take with it
    // (caps neither consulted nor counted), for every event the arms scored; they never decide.
    const shadow = plan.shadow;
    if (shadow) {
      options.metrics?.shadowSeconds.inc({ model: modelName, version: shadow.served.entry.version }, shadow.ms / 1000);
      items.forEach(({ record, txn, reason: own, shadowRow, shadowFeatures }) => {
        const reason: FallbackReason | undefined = own === 'features_late' ? own : shadowRow < 0 ? 'features_missing' : shadow.failure;
        const score = reason ? null : Number(shadow.scores![shadowRow]!.toFixed(6));
        const features = shadowFeatures ?? { amount: txn.amount };
        const outcome = rules.decide({ event: txn as unknown as Record<string, unknown>, entity: txn.account_id, features, score, ...(reason ? { reason } : {}) }, shadow.served.entry);
        const origin = { kind: 'stream', topic: record.topic, partition: record.partition, offset: Number(record.offset) } as const;
        options.metrics?.experimentPredictions.inc({ model: modelName, experiment: plan.experiment!.id, arm: 'shadow' });
        outputs.push(emit(`${outputTopic}.shadow`, txn.account_id, predictionRecord(shadow.served.entry, txn, score, outcome, rules.version, reason ? 'none' : shadow.provider, features, origin, { experiment: plan.experiment!.id, arm: 'shadow' }), record));
      });
    }
    return outputs;
  }

  /** Scores a lane's rows in one engine call; a run the model refuses (deterministically) is the lane's fallback. */
  async function runLane(lane: Lane, ctx: BatchContext): Promise<void> {
    if (lane.rows.length === 0) return;
    const started = performance.now();
    try {
      ({ scores: lane.scores, provider: lane.provider } = await lane.served.handle.score(lane.rows));
    } catch (err) {
      // Timeouts, crashes, restarts, shutdown: timing, not input. Retry the batch rather than commit a
      // fallback a clean run would not have produced.
      if (!(err instanceof FabricError) || err.retriable) throw err;
      ctx.log.warn({ err: err.message, rows: lane.rows.length, version: lane.served.entry.version, arm: lane.arm ?? 'serving' }, 'model run failed; fallback decisions');
      lane.failure = 'model_error';
    }
    lane.ms = performance.now() - started;
  }

  return {
    name: 'scoring',
    process: wholeBatch(handle),
    readiness() {
      let detail: string;
      let ready: boolean;
      try {
        const { entry, handle } = options.models.require(modelName);
        const engine = options.engineState?.() ?? 'ready';
        ready = engine === 'ready' || engine === 'degraded';
        detail = `model ${entry.name}@${entry.version} on ${handle.provider}, engine ${engine}`;
      } catch (err) {
        ready = false;
        detail = (err as Error).message;
      }
      return { ready, state: ready ? 'ready' : 'waiting', detail };
    },
  };
}

