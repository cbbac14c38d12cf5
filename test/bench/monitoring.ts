/**
 * The cost of monitoring per event beside the scoring path's: the scoring processor (chained after a
 * features head that emits a fixed row per record, as in the experiments section; one ONNX run per
 * batch) over batches of transactions, against the two drift stages over the predictions it made
 * (per-partition panes binned on the model's reference profile of every input and the score, then
 * the merge into windows and the metrics). Wall time per event of each, alternated, median of the
 * repetitions; the share is drift's time over scoring's (target at most 5%).
 */
import type { Prediction, Transaction } from '../../schemas/types.generated.js';
import { scoringProcessor, type ServingModels } from '../../processors/scoring/processor.js';
import { driftMergeProcessor, driftProcessor } from '../../processors/drift/processor.js';
import { ServingEngine } from '../../serving/engine/engine.js';
import { MODEL_DEFAULT_RULES } from '../../serving/rules/engine.js';
import { referenceOf } from '../../serving/registry/reference.js';
import { TestDriver } from '../../topology/runtime/test-driver.js';
import { demoModel, loadable } from '../shared/models.js';
import { fixedFeatures } from './experiments.js';
import type { Pair } from './ledger.js';

export interface MonitoringSizes {
  readonly events: number;
  readonly batch: number;
  readonly repetitions: number;
}

/** Microseconds per event: `ours` drift (both stages), `reference` scoring. */
export async function monitoringPair(sizes: MonitoringSizes): Promise<Pair> {
  const { entry, bytes } = demoModel('fraud');
  const engine = new ServingEngine({ provider: 'cpu', gpu: false, timeoutMs: 5_000 });
  await engine.start();
  try {
    const handle = await engine.load(loadable(entry, bytes));
    const models: ServingModels = { require: () => ({ entry, handle }), requireVersion: () => ({ entry, handle }), unloadableReason: () => undefined };
    const reference = referenceOf(entry);
    const now = Date.now();
    const txns: Transaction[] = Array.from({ length: sizes.events }, (_, i) => ({
      event_id: `m${i}`, account_id: `C${i % 5000}`, counterparty_id: `M${i % 300}`, type: (['PAYMENT', 'TRANSFER', 'CASH_OUT', 'DEBIT', 'CASH_IN'] as const)[i % 5]!, amount: 10 + (i % 997), old_balance: 5000, new_balance: 4990 - (i % 997), channel: 'web',
      // 50 events per second of event time: windows of 60 s hold 3,000 predictions.
      ts: now - sizes.events * 20 + i * 20,
    }));
    let predictions: Prediction[] = [];
    const scoring = async (): Promise<number> => {
      const driver = new TestDriver([fixedFeatures(), scoringProcessor({ rules: MODEL_DEFAULT_RULES, models })], { startTime: now });
      const started = performance.now();
      for (let i = 0; i < txns.length; i += sizes.batch) await driver.pipe('events.transactions', txns.slice(i, i + sizes.batch), { key: (v) => (v as Transaction).account_id });
      const us = ((performance.now() - started) * 1000) / txns.length;
      predictions = driver.emitted<Prediction>('predictions.fraud');
      if (predictions.length !== txns.length) throw new Error('not every event was scored');
      return us;
    };
    const drift = async (): Promise<number> => {
      const source = await new TestDriver(driftProcessor({ model: 'fraud', version: () => entry.version, references: () => reference, paneMs: 60_000, latenessMs: 5_000, partitions: 1 }), { startTime: now }).open();
      const merge = await new TestDriver(driftMergeProcessor({ model: 'fraud', references: () => reference, windowMs: 60_000 }), { startTime: now }).open();
      const started = performance.now();
      for (let i = 0; i < predictions.length; i += sizes.batch) {
        const partials = (await source.pipe('predictions.fraud', predictions.slice(i, i + sizes.batch))).flatMap((o) => (o.kind === 'emit' ? [o.value] : []));
        if (partials.length) await merge.pipe('drift.partials', partials);
      }
      const us = ((performance.now() - started) * 1000) / predictions.length;
      if (merge.emitted('drift.metrics').length === 0) throw new Error('drift closed no window');
      return us;
    };
    await scoring();
    await drift();
    const ours: number[] = [];
    const ref: number[] = [];
    for (let rep = 0; rep < sizes.repetitions; rep++) {
      ref.push(await scoring());
      ours.push(await drift());
    }
    return { ours, reference: ref };
  } finally {
    await engine.close();
  }
}
