import type { BatchContext, Output, ProcessorLogic, SourceRecord } from '../../topology/runtime/processor.js';
import { emit, wholeBatch } from '../../topology/runtime/processor.js';
import { FabricError } from '../../topology/errors.js';
import type { Prediction } from '../../schemas/types.generated.js';
import type { FeatureRow } from '../../topology/features/rows.js';
import type { FeatureValues } from '../../topology/features/engine.js';
import type { Metrics } from '../../topology/runtime/metrics.js';
import { splitTransactions } from '../shared/validate.js';
import { decide, type FallbackReason, type ThresholdRules } from '../../serving/rules/threshold-rules.js';
import { ACCOUNT_FEATURE_NAMES, FRAUD_INPUT_NAMES, fraudInputRow } from '../../serving/models/fraud-inputs.js';
import type { ModelRunner } from './model-runner.js';

export interface ScoringProcessorOptions {
  readonly runner: ModelRunner;
  readonly rules: ThresholdRules;
  readonly outputTopic?: string;
  /** Topic of the upstream (features) emits that carry an event's features. Default `features.account`. */
  readonly featuresTopic?: string;
  readonly metrics?: Metrics;
}

/**
 * Scores transactions with the fraud model, chained after the features processor in the same task
 * (`after: 'features'`): the features of each event are the ones features emitted for that very
 * record (`ctx.upstream`), so they are decided by the event's position in its partition, never by
 * when another consumer wrote Redis. The whole batch is one model run in the model worker process and the
 * rules turn scores into decisions.
 *
 * Deterministic outcomes only: an event features routed to `late.<stream>` (or emitted no features
 * for) gets the rules' fallback with reason `features_late`; a run the model itself rejects gets
 * `model_error`. A model timeout or a dead/restarting worker is a matter of timing, not of the
 * input: the batch fails with the retriable error (FABRIC_MODEL_TIMEOUT / FABRIC_MODEL_UNAVAILABLE),
 * nothing is committed, and the retry produces what a clean run would.
 */
export function scoringProcessor(options: ScoringProcessorOptions): ProcessorLogic {
  const model = options.runner.model;
  const outputTopic = options.outputTopic ?? `predictions.${model.name}`;
  const featuresTopic = options.featuresTopic ?? 'features.account';
  if (model.inputs.join(',') !== FRAUD_INPUT_NAMES.join(',')) {
    throw new Error(`model ${model.name} ${model.version} inputs [${model.inputs.join(', ')}] differ from the serving inputs [${FRAUD_INPUT_NAMES.join(', ')}]`);
  }

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
    const rows: number[][] = [];
    const rowOf: number[] = [];
    const valid = split.valid.filter(({ record, txn }) => {
      const f = featuresOf(record, txn.event_id, upstream);
      if (f === 'duplicate') return false;
      rowOf.push(f === 'late' ? -1 : rows.push(fraudInputRow(txn, f)) - 1);
      return true;
    });
    if (valid.length === 0) return outputs;
    let scores: Float32Array | null = null;
    let provider = 'none';
    let modelFailure: FallbackReason | undefined;
    const started = performance.now();
    try {
      ({ scores, provider } = await options.runner.score(rows));
      options.metrics?.scoringRunSeconds.observe({ model: model.name }, (performance.now() - started) / 1000);
      options.metrics?.scoringRows.inc({ model: model.name, provider }, rows.length);
    } catch (err) {
      // Timeouts, crashes, restarts, shutdown: timing, not input. Retry the batch rather than commit a
      // fallback a clean run would not have produced.
      if (!(err instanceof FabricError) || err.retriable) throw err;
      // The model refused this input (deterministically): the fallback keeps the stream going.
      ctx.log.warn({ err: err.message, rows: rows.length }, 'model run failed; fallback decisions');
      modelFailure = 'model_error';
    }
    valid.forEach(({ record, txn }, i) => {
      const row = rowOf[i]!;
      const reason: FallbackReason | undefined = row < 0 ? 'features_late' : modelFailure;
      const score = reason ? null : Number(scores![row]!.toFixed(6));
      const decision = decide(options.rules, score, reason);
      if (decision.fallback) options.metrics?.scoringFallbacks.inc({ model: model.name, reason: reason ?? 'model_error' });
      const inputs: Record<string, number | null> = {};
      if (row >= 0) rows[row]!.forEach((v, j) => (inputs[FRAUD_INPUT_NAMES[j]!] = v));
      else inputs.amount = txn.amount;
      const prediction: Prediction = {
        event_id: txn.event_id,
        entity_id: txn.account_id,
        model: model.name,
        version: model.version,
        score,
        decision: decision.decision,
        reasons: decision.reasons,
        fallback: decision.fallback,
        provider: reason ? 'none' : provider,
        event_ts: txn.ts,
        features: inputs,
        source_topic: record.topic,
        source_partition: record.partition,
        source_offset: Number(record.offset),
      };
      outputs.push(emit(outputTopic, txn.account_id, prediction, record));
    });
    return outputs;
  }

  return {
    name: 'scoring',
    process: wholeBatch(handle),
    readiness() {
      const state = options.runner.state;
      return { ready: state === 'ready', state, detail: `model ${model.name} worker` };
    },
    close: () => options.runner.close(),
  };
}
