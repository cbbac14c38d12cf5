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
import type { ServedModel } from '../../serving/models/live.js';

/** Where scoring gets the serving version of its model, per batch (LiveModels in the fabric). */
export interface ServingModels {
  /** The serving version, or a retriable FABRIC_MODEL_UNAVAILABLE while none is loaded. */
  require(name: string): ServedModel;
}

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
    // One version for the whole batch: a promotion lands between batches, never inside one.
    const { entry, handle: model } = options.models.require(modelName);
    // One rule set for the whole batch too: a new version applies from the next batch on.
    const rules = options.rules.current(modelName, 'decision');
    interface Item {
      readonly record: SourceRecord;
      readonly txn: (typeof split.valid)[number]['txn'];
      readonly row: number;
      readonly reason?: FallbackReason;
      readonly features: Record<string, number | null>;
    }
    const rows: number[][] = [];
    const items: Item[] = [];
    for (const { record, txn } of split.valid) {
      const f = featuresOf(record, txn.event_id, upstream);
      if (f === 'duplicate') continue;
      if (f === 'late') {
        items.push({ record, txn, row: -1, reason: 'features_late', features: { amount: txn.amount } });
        continue;
      }
      const v = vectorize(entry, fraudInputValues(txn, f));
      if (v.missing.length > 0) items.push({ record, txn, row: -1, reason: 'features_missing', features: v.features });
      else items.push({ record, txn, row: rows.push(v.row) - 1, features: v.features });
    }
    if (items.length === 0) return outputs;
    let scores: Float32Array | null = null;
    let provider = 'none';
    let modelFailure: FallbackReason | undefined;
    if (rows.length > 0) {
      // The engine counts the rows and times the runs (fabric_serving_*), by model, version and provider.
      try {
        ({ scores, provider } = await model.score(rows));
      } catch (err) {
        // Timeouts, crashes, restarts, shutdown: timing, not input. Retry the batch rather than commit a
        // fallback a clean run would not have produced.
        if (!(err instanceof FabricError) || err.retriable) throw err;
        // The model refused this input (deterministically): the fallback keeps the stream going.
        ctx.log.warn({ err: err.message, rows: rows.length }, 'model run failed; fallback decisions');
        modelFailure = 'model_error';
      }
    }
    const decided = items.map(({ txn, row, reason: own, features }) => {
      const reason = own ?? modelFailure;
      const score = reason ? null : Number(scores![row]!.toFixed(6));
      const outcome = rules.decide({ event: txn as unknown as Record<string, unknown>, entity: txn.account_id, features, score, ...(reason ? { reason } : {}) }, entry);
      if (outcome.error) {
        options.metrics?.ruleErrors.inc({ model: modelName, rule: outcome.error.rule });
        ctx.log.warn({ rule: outcome.error.rule, err: outcome.error.message, event: txn.event_id }, 'rule failed at run time; fallback decision');
      }
      return { score, reason, outcome };
    });
    const final = await settleCaps(rules, options.caps, items.map((it) => it.txn), decided.map((d) => d.outcome));
    items.forEach(({ record, txn, features }, i) => {
      const { score, reason } = decided[i]!;
      const outcome = final[i]!;
      if (outcome.fallback) options.metrics?.scoringFallbacks.inc({ model: modelName, reason: outcome.error ? 'rule_error' : (reason ?? 'model_error') });
      for (const rule of outcome.fired) options.metrics?.rulesFired.inc({ model: modelName, version: String(rules.version), rule });
      const origin = { kind: 'stream', topic: record.topic, partition: record.partition, offset: Number(record.offset) } as const;
      outputs.push(emit(outputTopic, txn.account_id, predictionRecord(entry, txn, score, outcome, rules.version, reason ? 'none' : provider, features, origin), record));
    });
    return outputs;
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

