/**
 * The cost of experiments on the scoring path: the scoring processor (chained after a features head
 * that emits a fixed row per record, so only scoring is measured) over the same batches of
 * transactions, with no experiment (the reference), under a 20% A/B split (two engine calls per batch,
 * side by side), and under the split plus a shadow version (three calls; the shadow scores every
 * event). Events per second, alternated, median of the repetitions.
 */
import { of, concatMap } from 'rxjs';
import type { AccountFeatureUpdate, Experiment, ModelVersion, Transaction } from '../../schemas/types.generated.js';
import { scoringProcessor, type ServingModels } from '../../processors/scoring/processor.js';
import { ServingEngine, type ModelHandle } from '../../serving/engine/engine.js';
import { MODEL_DEFAULT_RULES } from '../../serving/rules/engine.js';
import { TestDriver } from '../../topology/runtime/test-driver.js';
import { emit, type ProcessorLogic, type SourceRecord } from '../../topology/runtime/processor.js';
import { demoModel, loadable } from '../shared/models.js';
import type { Pair } from './ledger.js';

export interface ExperimentSizes {
  readonly events: number;
  readonly batch: number;
  readonly repetitions: number;
}

/** A features head that emits the same kind of row features would, derived from the record alone. */
export function fixedFeatures(): ProcessorLogic {
  return {
    name: 'features',
    process: (records$) =>
      records$.pipe(
        concatMap((record: SourceRecord) => {
          const t = record.value as Transaction;
          const n = Number(record.offset);
          const row: AccountFeatureUpdate = {
            event_id: t.event_id, entity_id: t.account_id, ts: t.ts, txn_count_1h: 1 + (n % 4), txn_count_24h: 1 + (n % 9), amount_sum_1h: t.amount, amount_sum_24h: t.amount * 2, amount_avg_24h: t.amount,
            amount_max_24h: t.amount, distinct_counterparties_24h: 1 + (n % 6), seconds_since_last_txn: 30 + n, amount: t.amount, counterparty_id: t.counterparty_id, source_topic: record.topic, source_partition: record.partition, source_offset: n, version: n,
          };
          return of(emit('features.account', t.account_id, row, record));
        }),
      ),
  };
}

export async function experimentsPairs(sizes: ExperimentSizes): Promise<{ ab: Pair; shadow: Pair }> {
  const { entry, bytes } = demoModel('fraud');
  const engine = new ServingEngine({ provider: 'cpu', gpu: false, timeoutMs: 5_000 });
  await engine.start();
  try {
    const versions = new Map<string, { entry: ModelVersion; handle: ModelHandle }>();
    for (const version of [entry.version, '1.1.0', '1.2.0']) {
      const e = { ...entry, version };
      versions.set(version, { entry: e, handle: await engine.load(loadable(e, bytes)) });
    }
    const models: ServingModels = { require: () => versions.get(entry.version)!, requireVersion: (_n, v) => versions.get(v)!, unloadableReason: () => undefined };
    const experiment: Experiment = {
      id: 'bench', model: 'fraud', control: entry.version, treatment: '1.1.0', split: 20, shadow: null, metric: 'auc', min_samples: 1, max_duration_ms: 1, guardrails: [], auto: 'none', alpha: 0.05, mixture_sd: 0.05,
      outcome_horizon_ms: 1, state: 'running', revision: 1, started_at: 0, started_by: 'bench', ended_at: null, decision: null,
    };
    const now = Date.now();
    const txns: Transaction[] = Array.from({ length: sizes.events }, (_, i) => ({
      event_id: `b${i}`, account_id: `C${i % 5000}`, counterparty_id: `M${i % 300}`, type: (['PAYMENT', 'TRANSFER', 'CASH_OUT', 'DEBIT', 'CASH_IN'] as const)[i % 5]!, amount: 10 + (i % 997), old_balance: 5000, new_balance: 4990 - (i % 997), channel: 'web', ts: now - sizes.events + i,
    }));
    const run = async (running: Experiment | undefined): Promise<number> => {
      const scoring = scoringProcessor({ rules: MODEL_DEFAULT_RULES, models, ...(running ? { experiments: { running: () => running } } : {}) });
      const driver = new TestDriver([fixedFeatures(), scoring], { startTime: now });
      const started = performance.now();
      for (let i = 0; i < txns.length; i += sizes.batch) await driver.pipe('events.transactions', txns.slice(i, i + sizes.batch), { key: (v) => (v as Transaction).account_id });
      const seconds = (performance.now() - started) / 1000;
      if (driver.emitted('predictions.fraud').length !== txns.length) throw new Error('not every event was scored');
      return txns.length / seconds;
    };
    const withShadow = { ...experiment, shadow: '1.2.0' };
    await run(undefined);
    await run(withShadow);
    const plain: number[] = [];
    const ab: number[] = [];
    const shadow: number[] = [];
    for (let rep = 0; rep < sizes.repetitions; rep++) {
      plain.push(await run(undefined));
      ab.push(await run(experiment));
      shadow.push(await run(withShadow));
    }
    return { ab: { ours: ab, reference: plain }, shadow: { ours: shadow, reference: plain } };
  } finally {
    await engine.close();
  }
}
