import type { Redis } from 'ioredis';
import type { Output, ProcessorLogic, SourceRecord } from '../../topology/runtime/processor.js';
import { emit, wholeBatch } from '../../topology/runtime/processor.js';
import { isFabricError } from '../../topology/errors.js';
import type { Prediction, Transaction } from '../../schemas/types.generated.js';
import type { Metrics } from '../../topology/runtime/metrics.js';
import { accountKeys } from '../features/redis-keys.js';
import { parseFeatures } from '../features/processor.js';
import type { AccountFeatures } from '../features/account.js';
import { splitTransactions } from '../shared/validate.js';
import { decide, type FallbackReason, type ThresholdRules } from '../rules/threshold-rules.js';
import { FRAUD_INPUT_NAMES, fraudInputRow } from './fraud-inputs.js';
import type { ModelRunner } from './model-runner.js';

export interface ScoringProcessorOptions {
  readonly redis: Redis;
  readonly keyPrefix: string;
  readonly runner: ModelRunner;
  readonly rules: ThresholdRules;
  /** How long to wait for the features processor to write an event's snapshot. */
  readonly featureWaitMs: number;
  /** Longest pause between snapshot look-ups; the first retry comes after 5 ms and doubles up to it. */
  readonly pollMs?: number;
  readonly outputTopic?: string;
  readonly metrics?: Metrics;
  readonly sleep?: (ms: number) => Promise<void>;
}

/**
 * Scores transactions with the fraud model: features as of each event come from the snapshot the
 * features processor wrote to Redis (so a replay scores with the same inputs), the whole batch is
 * one model run in the worker thread, and the rules turn scores into decisions. Missing features or
 * a model timeout give the rules' fallback decision with the reason: a prediction is never dropped.
 */
export function scoringProcessor(options: ScoringProcessorOptions): ProcessorLogic {
  const keys = accountKeys(options.keyPrefix);
  const model = options.runner.model;
  const outputTopic = options.outputTopic ?? `predictions.${model.name}`;
  const pollMs = options.pollMs ?? 50;
  const wait = options.sleep ?? ((ms: number) => new Promise<void>((r) => setTimeout(r, ms)));
  if (model.inputs.join(',') !== FRAUD_INPUT_NAMES.join(',')) {
    throw new Error(`model ${model.name} ${model.version} inputs [${model.inputs.join(', ')}] differ from the serving inputs [${FRAUD_INPUT_NAMES.join(', ')}]`);
  }

  async function fetchFeatures(txns: readonly Transaction[]): Promise<(AccountFeatures | null)[]> {
    const found: (AccountFeatures | null)[] = txns.map(() => null);
    const deadline = Date.now() + options.featureWaitMs;
    // Features and scoring read the same events concurrently: the snapshot is usually a few ms away.
    let pause = Math.min(5, pollMs);
    for (;;) {
      const missing = found.flatMap((f, i) => (f === null ? [i] : []));
      if (missing.length === 0) return found;
      const raw = await options.redis.mget(missing.map((i) => keys.snapshot(txns[i]!.event_id)));
      raw.forEach((json, j) => {
        if (json !== null) found[missing[j]!] = parseFeatures(JSON.parse(json) as Record<string, number | null>);
      });
      if (found.every((f) => f !== null) || Date.now() >= deadline) return found;
      await wait(pause);
      pause = Math.min(pause * 2, pollMs);
    }
  }

  async function handle(records: SourceRecord[]): Promise<Output[]> {
    const { valid, rejects: outputs } = splitTransactions(records);
    if (valid.length === 0) return outputs;
    const features = await fetchFeatures(valid.map((v) => v.txn));
    const rows: number[][] = [];
    const rowOf: number[] = [];
    valid.forEach(({ txn }, i) => {
      const f = features[i];
      if (f) {
        rowOf[i] = rows.length;
        rows.push(fraudInputRow(txn, f));
      } else rowOf[i] = -1;
    });
    let scores: Float32Array | null = null;
    let modelFailure: FallbackReason | undefined;
    const started = performance.now();
    try {
      scores = await options.runner.score(rows);
      options.metrics?.scoringRunSeconds.observe({ model: model.name }, (performance.now() - started) / 1000);
      options.metrics?.scoringRows.inc({ model: model.name, provider: options.runner.provider }, rows.length);
    } catch (err) {
      modelFailure = isFabricError(err, 'FABRIC_MODEL_TIMEOUT') ? 'model_timeout' : 'model_error';
    }
    valid.forEach(({ record, txn }, i) => {
      const row = rowOf[i]!;
      const reason: FallbackReason | undefined = row < 0 ? 'features_missing' : modelFailure;
      const score = reason ? null : Number(scores![row]!.toFixed(6));
      const decision = decide(options.rules, score, reason);
      if (reason) options.metrics?.scoringFallbacks.inc({ model: model.name, reason });
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
        provider: reason ? 'none' : options.runner.provider,
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
    close: () => options.runner.close(),
  };
}
