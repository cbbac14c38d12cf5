import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { EMPTY, concatMap, of } from 'rxjs';
import * as ort from 'onnxruntime-node';
import { ServingEngine, type EngineState, type ModelHandle } from '../../serving/engine/engine.js';
import { demoModel, loadable } from '../shared/models.js';
import { scoringProcessor, type ServingModels } from '../../processors/scoring/processor.js';
import { TestDriver } from '../../topology/runtime/test-driver.js';
import { emit, reject, type ProcessorLogic, type SourceRecord } from '../../topology/runtime/processor.js';
import { FabricError } from '../../topology/errors.js';
import { sleep } from '../../topology/runtime/retry.js';
import type { AccountFeatureUpdate, Experiment, Prediction, Transaction } from '../../schemas/types.generated.js';
import { createHash } from 'node:crypto';
import { invertedModel } from '../../scripts/model-variant.js';
import { fabricFailure } from '../shared/fabric-failure.js';
import { MODEL_DEFAULT_RULES } from '../../serving/rules/engine.js';

const T0 = Date.UTC(2024, 0, 1);
const HOUR = 3_600_000;
/** The fake features head routes events older than this to late.transactions. */
const LATE_BEFORE = T0 - HOUR;

const { entry, bytes } = demoModel('fraud');
/** The model as this test reads it: input order, tensor names, thresholds (from its registry entry). */
const model = {
  name: entry.name,
  version: entry.version,
  inputs: entry.signature.inputs.map((i) => i.name),
  inputName: entry.signature.input_name,
  outputName: entry.signature.output_name,
  positiveClassIndex: entry.signature.positive_class_index,
  thresholds: { block: entry.thresholds.block!, review: entry.thresholds.review! },
};
let direct: ort.InferenceSession;
let engine: ServingEngine;
let handle: ModelHandle;

beforeAll(async () => {
  direct = await ort.InferenceSession.create(bytes, { executionProviders: ['cpu'], intraOpNumThreads: 1 });
  engine = new ServingEngine({ workers: 1, threads: 1, provider: 'cpu', timeoutMs: 1_000, gpu: false, restartBaseMs: 5, restartCapMs: 20 });
  await engine.start();
  handle = await engine.load(loadable(entry, bytes));
});

afterAll(async () => {
  await engine.close();
});

/** The live models scoring reads per batch: one served version. */
function serving(h: ModelHandle): ServingModels {
  return { require: () => ({ entry, handle: h }), requireVersion: () => ({ entry, handle: h }), unloadableReason: () => undefined };
}

/**
 * A tiny stand-in for the features processor at the head of the chain: rejects negative amounts
 * (so scoring never sees them), routes old events to late.transactions, and emits a deterministic
 * AccountFeatureUpdate (derived from the record and its offset) with the record as `source`.
 * `silent` event ids get no output at all.
 */
function fakeFeatures(silent: ReadonlySet<string> = new Set()): ProcessorLogic {
  return {
    name: 'features',
    process: (records$) =>
      records$.pipe(
        concatMap((record) => {
          const txn = record.value as Transaction;
          if (txn.amount < 0) return of(reject(record, new FabricError('FABRIC_RECORD_REJECTED', 'amount must be non-negative')));
          if (silent.has(txn.event_id)) return EMPTY;
          if (txn.ts < LATE_BEFORE) return of(emit('late.transactions', txn.account_id, txn, record));
          return of(emit('features.account', txn.account_id, featuresFor(record), record));
        }),
      ),
  };
}

function featuresFor(record: SourceRecord): AccountFeatureUpdate {
  const txn = record.value as Transaction;
  const n = Number(record.offset);
  return {
    event_id: txn.event_id,
    entity_id: txn.account_id,
    ts: txn.ts,
    txn_count_1h: 1 + (n % 4),
    txn_count_24h: 1 + (n % 9),
    amount_sum_1h: txn.amount * (1 + (n % 4)),
    amount_sum_24h: txn.amount * (1 + (n % 9)),
    amount_avg_24h: n % 5 === 0 ? null : txn.amount,
    amount_max_24h: txn.amount * 1.5,
    distinct_counterparties_24h: 1 + (n % 6),
    seconds_since_last_txn: n % 7 === 0 ? null : 30 * n,
    amount: txn.amount,
    counterparty_id: txn.counterparty_id,
    source_topic: record.topic,
    source_partition: record.partition,
    source_offset: n,
    version: n,
  };
}

/** Seeded PaySim-like transactions; every fourth empties the account with a TRANSFER or CASH_OUT. */
function transactions(n: number, seed: number, startIndex = 0): Transaction[] {
  let x = seed;
  const rnd = (): number => ((x = (x * 1103515245 + 12345) % 2 ** 31) / 2 ** 31);
  const types = ['CASH_IN', 'CASH_OUT', 'DEBIT', 'PAYMENT', 'TRANSFER'] as const;
  return Array.from({ length: n }, (_, k) => {
    const i = startIndex + k;
    const amount = Math.round(rnd() * 200_000) / 100;
    const drain = i % 4 === 1;
    const old = drain ? amount : Math.round((amount + rnd() * 50_000) * 100) / 100;
    return {
      event_id: `e${i}`,
      account_id: `acct-${i % 5}`,
      counterparty_id: `cp-${Math.floor(rnd() * 20)}`,
      type: drain ? (i % 8 === 1 ? 'TRANSFER' : 'CASH_OUT') : types[Math.floor(rnd() * 5)]!,
      amount,
      old_balance: old,
      new_balance: drain ? 0 : Math.round((old - amount) * 100) / 100,
      channel: 'web',
      ts: T0 + i * 60_000,
    };
  });
}

/** The model input vector, written out here from the definition (not through fraudInputRow). */
function inputsOf(txn: Transaction, f: AccountFeatureUpdate): Record<string, number> {
  return {
    amount: txn.amount,
    old_balance: txn.old_balance,
    new_balance: txn.new_balance,
    balance_error: Math.round((txn.old_balance - txn.amount - txn.new_balance) * 100) / 100,
    type_CASH_IN: txn.type === 'CASH_IN' ? 1 : 0,
    type_CASH_OUT: txn.type === 'CASH_OUT' ? 1 : 0,
    type_DEBIT: txn.type === 'DEBIT' ? 1 : 0,
    type_PAYMENT: txn.type === 'PAYMENT' ? 1 : 0,
    type_TRANSFER: txn.type === 'TRANSFER' ? 1 : 0,
    txn_count_1h: f.txn_count_1h,
    txn_count_24h: f.txn_count_24h,
    amount_sum_1h: f.amount_sum_1h,
    amount_sum_24h: f.amount_sum_24h,
    amount_avg_24h: f.amount_avg_24h ?? -1,
    amount_max_24h: f.amount_max_24h,
    distinct_counterparties_24h: f.distinct_counterparties_24h,
    seconds_since_last_txn: f.seconds_since_last_txn ?? -1,
  };
}

/** Scores straight through onnxruntime-node in this process, columns in the manifest's order. */
async function directScores(vectors: Record<string, number>[]): Promise<number[]> {
  const flat = Float32Array.from(vectors.flatMap((v) => model.inputs.map((name) => v[name]!)));
  const out = await direct.run({ [model.inputName]: new ort.Tensor('float32', flat, [vectors.length, model.inputs.length]) });
  const probs = out[model.outputName]!;
  return vectors.map((_, i) => (probs.data as Float32Array)[i * probs.dims[1]! + model.positiveClassIndex]!);
}

function expectedDecision(score: number): string {
  return score >= model.thresholds.block ? 'block' : score >= model.thresholds.review ? 'review' : 'allow';
}

function chain(h: ModelHandle = handle, silent?: ReadonlySet<string>): TestDriver {
  const scoring = scoringProcessor({ rules: MODEL_DEFAULT_RULES, models: serving(h) });
  // The engine is shared by the tests and closed after them.
  return new TestDriver([fakeFeatures(silent), scoring], { startTime: T0 });
}

const key = (v: unknown): string => (v as Transaction).account_id;

/** Retries a batch on retriable errors with a short backoff, as the stream runtime does. */
async function retried<T>(attempt: () => Promise<T>): Promise<{ value: T; errors: FabricError[] }> {
  const errors: FabricError[] = [];
  for (let i = 0; ; i++) {
    try {
      return { value: await attempt(), errors };
    } catch (err) {
      if (!(err instanceof FabricError) || !err.retriable || i >= 20) throw err;
      errors.push(err);
      await sleep(25);
    }
  }
}

const failure = fabricFailure;

describe('scoring chained after features', () => {
  it('scores every record with the features its upstream emitted for it, one model run per batch, equal to a direct onnxruntime run', async () => {
    const driver = chain();
    const batch1 = transactions(24, 7);
    batch1[5] = { ...batch1[5]!, amount: -1 }; // rejected by the head: never reaches scoring
    const batch2 = transactions(16, 11, 24);
    const spy = vi.spyOn(handle, 'score');
    await driver.pipe('events.transactions', batch1, { key });
    await driver.pipe('events.transactions', batch2, { key });
    expect(spy).toHaveBeenCalledTimes(2);
    expect(spy.mock.calls.map(([rows]) => rows.length)).toEqual([23, 16]);
    spy.mockRestore();

    const updates = driver.emitted<AccountFeatureUpdate>('features.account');
    const predictions = driver.emitted<Prediction>('predictions.fraud');
    const all = [...batch1, ...batch2];
    const scored = all.filter((t) => t.amount >= 0);
    expect(predictions.map((p) => p.event_id)).toEqual(scored.map((t) => t.event_id));
    expect(updates.map((u) => u.event_id)).toEqual(scored.map((t) => t.event_id));
    expect(driver.rejected().map((r) => (r.record.value as Transaction).event_id)).toEqual(['e5']);

    const vectors = scored.map((t, i) => inputsOf(t, updates[i]!));
    const scores = await directScores(vectors);
    predictions.forEach((p, i) => {
      const score = Number(scores[i]!.toFixed(6));
      expect(p.score).toBe(score);
      expect(p.decision).toBe(expectedDecision(score));
      expect(p.fallback).toBe(false);
      expect(p.provider).toBe('cpu');
      expect(p.features).toEqual(vectors[i]);
      expect(p.entity_id).toBe(scored[i]!.account_id);
      expect(p.source_offset).toBe(all.indexOf(scored[i]!));
      expect(p.model).toBe(model.name);
      expect(p.version).toBe(model.version);
    });
    // The sample reaches more than one decision, so thresholds are really exercised.
    expect(new Set(predictions.map((p) => p.decision)).size).toBeGreaterThan(1);
  });

  it('gives the fallback with reason features_late to events the head routed to late.transactions, and no second prediction to a duplicate it emitted nothing for', async () => {
    const txns = transactions(8, 3);
    txns[2] = { ...txns[2]!, ts: LATE_BEFORE - 1 };
    txns[6] = { ...txns[6]!, ts: T0 - 48 * HOUR };
    const driver = chain(handle, new Set(['e4']));
    await driver.pipe('events.transactions', txns, { key });
    expect(driver.emitted<Transaction>('late.transactions').map((t) => t.event_id)).toEqual(['e2', 'e6']);
    const predictions = driver.emitted<Prediction>('predictions.fraud');
    // e4 stands for a redelivered event id: features emitted nothing for it, its first occurrence was scored.
    expect(predictions.map((p) => p.event_id)).toEqual(txns.map((t) => t.event_id).filter((id) => id !== 'e4'));
    for (const p of predictions) {
      if (['e2', 'e6'].includes(p.event_id)) {
        expect(p).toMatchObject({ score: null, decision: 'review', reasons: ['fallback:features_late'], fallback: true, provider: 'none' });
        expect(p.features).toEqual({ amount: txns.find((t) => t.event_id === p.event_id)!.amount });
      } else {
        expect(p.fallback).toBe(false);
        expect(p.score).not.toBeNull();
      }
    }
  });

  it('fails a batch whose worker crashes with a retriable error, commits nothing, and the retried batch equals a clean run', async () => {
    const batch1 = transactions(20, 21);
    const batch2 = transactions(20, 22, 20);
    const clean = chain();
    await clean.pipe('events.transactions', batch1, { key });
    await clean.pipe('events.transactions', batch2, { key });

    const states: EngineState[] = [];
    const off = engine.onStateChange((s) => states.push(s));
    const driver = chain();
    await driver.pipe('events.transactions', batch1, { key });
    engine.injectFault('exit');
    const err = await failure(driver.pipe('events.transactions', batch2, { key }));
    expect(err.code).toBe('FABRIC_MODEL_UNAVAILABLE');
    expect(err.retriable).toBe(true);
    expect(driver.emitted('predictions.fraud')).toHaveLength(20);
    // The runtime retries the same records from the same offset.
    const { errors } = await retried(() => driver.pipe('events.transactions', batch2, { key }));
    expect(errors.every((e) => e.code === 'FABRIC_MODEL_UNAVAILABLE')).toBe(true);
    off();
    expect(states).toEqual(['restarting', 'ready']);
    expect(driver.emitted<Prediction>('predictions.fraud')).toEqual(clean.emitted<Prediction>('predictions.fraud'));
    expect(driver.emitted<Prediction>('predictions.fraud').some((p) => p.fallback)).toBe(false);
  });

  it('fails a batch whose model run times out with FABRIC_MODEL_TIMEOUT (no fallback), and the retry equals a clean run', async () => {
    const txns = transactions(10, 31);
    const clean = chain();
    await clean.pipe('events.transactions', txns, { key });

    const driver = chain();
    engine.injectFault('hang');
    const err = await failure(driver.pipe('events.transactions', txns, { key }));
    expect(err.code).toBe('FABRIC_MODEL_TIMEOUT');
    expect(err.retriable).toBe(true);
    expect(driver.outputs).toHaveLength(0);
    await retried(() => driver.pipe('events.transactions', txns, { key }));
    expect(driver.emitted<Prediction>('predictions.fraud')).toEqual(clean.emitted<Prediction>('predictions.fraud'));
  });

  it('keeps failing batches retriably once repeated crashes spend the restart budget (state failed), committing nothing', async () => {
    const states: EngineState[] = [];
    const fragile = new ServingEngine({ workers: 1, threads: 1, provider: 'cpu', timeoutMs: 1_000, gpu: false, maxRestarts: 1, restartBaseMs: 5, restartCapMs: 20, onStateChange: (s) => states.push(s) });
    await fragile.start();
    try {
      const driver = chain(await fragile.load(loadable(entry, bytes)));
      const txns = transactions(5, 41);
      for (let death = 0; death < 2; death++) {
        await fragile.whenReady(10_000);
        fragile.injectFault('exit');
        expect((await failure(driver.pipe('events.transactions', txns, { key }))).code).toBe('FABRIC_MODEL_UNAVAILABLE');
      }
      await expect.poll(() => fragile.state).toBe('failed');
      const err = await failure(driver.pipe('events.transactions', txns, { key }));
      expect(err.code).toBe('FABRIC_MODEL_UNAVAILABLE');
      expect(err.retriable).toBe(true);
      expect(driver.outputs).toHaveLength(0);
      expect(states).toEqual(['ready', 'restarting', 'ready', 'failed']);
    } finally {
      await fragile.close();
    }
  });
});

describe('scoring without a worker', () => {
  function fakeRunner(score: () => Promise<never>): ModelHandle {
    return { key: 'fraud@test', provider: 'cpu', score } as unknown as ModelHandle;
  }

  it('falls back with model_error when the model refuses the input (deterministic), but rethrows timing failures', async () => {
    const refusing = chain(fakeRunner(() => Promise.reject(new FabricError('FABRIC_MODEL_INVALID', 'bad input'))));
    await refusing.pipe('events.transactions', transactions(3, 51), { key });
    expect(refusing.emitted<Prediction>('predictions.fraud').map((p) => [p.decision, p.reasons, p.fallback, p.score])).toEqual(
      Array.from({ length: 3 }, () => ['review', ['fallback:model_error'], true, null]),
    );

    const slow = chain(fakeRunner(() => Promise.reject(new FabricError('FABRIC_MODEL_TIMEOUT', 'too slow'))));
    await expect(slow.pipe('events.transactions', transactions(3, 52), { key })).rejects.toMatchObject({ code: 'FABRIC_MODEL_TIMEOUT' });
    expect(slow.outputs).toHaveLength(0);
  });

  it('refuses to run unchained: its features come only from the upstream processor', async () => {
    const scoring = scoringProcessor({ rules: MODEL_DEFAULT_RULES, models: serving(fakeRunner(() => Promise.reject(new Error('not called')))) });
    const driver = new TestDriver(scoring, { startTime: T0 });
    await expect(driver.pipe('events.transactions', transactions(1, 61), { key })).rejects.toMatchObject({ code: 'FABRIC_CONFIG_INVALID' });
  });
});

describe('scoring under an experiment', () => {
  const inverted = { ...entry, version: '0.9.0', signature: { ...entry.signature, output_name: 'probabilities_inverted' } };
  const shadowEntry = { ...entry, version: '1.2.0' };
  const experiment: Experiment = {
    id: 'exp_u', model: 'fraud', control: entry.version, treatment: '0.9.0', split: 50, shadow: '1.2.0', metric: 'auc', min_samples: 10, max_duration_ms: 3_600_000, guardrails: [], auto: 'none', alpha: 0.05,
    mixture_sd: 0.05, outcome_horizon_ms: 3_600_000, state: 'running', revision: 1, started_at: T0, started_by: 'test', ended_at: null, decision: null,
  };
  let invertedHandle: ModelHandle;

  beforeAll(async () => {
    invertedHandle = await engine.load(loadable(inverted, invertedModel(bytes, 'probabilities', 'probabilities_inverted')));
  });

  function experimentChain(withShadow: boolean, observed: { arm: string; rows: number }[] = []): TestDriver {
    const models: ServingModels = {
      require: () => ({ entry, handle }),
      requireVersion: (_name, version) => (version === '0.9.0' ? { entry: inverted, handle: invertedHandle } : { entry: shadowEntry, handle }),
      unloadableReason: () => undefined,
    };
    const running = withShadow ? experiment : { ...experiment, shadow: null };
    const scoring = scoringProcessor({ rules: MODEL_DEFAULT_RULES, models, experiments: { running: () => running }, latency: { observe: (_m, _e, calls) => observed.push(...calls.map((c) => ({ arm: c.arm, rows: c.rows }))) } });
    return new TestDriver([fakeFeatures(), scoring], { startTime: T0 });
  }

  /** The arm as documented: sha256("<id>:<entity>"), first 32 bits over 2^32, below split/100. */
  function armFor(account: string): string {
    return createHash('sha256').update(`exp_u:${account}`).digest().readUInt32BE(0) / 2 ** 32 < 0.5 ? 'treatment' : 'control';
  }

  it('scores each account with its arm\'s version, records the arm, and shadows every event without changing a decision', async () => {
    const txns = transactions(60, 17).map((t, i) => ({ ...t, account_id: `acct-${i % 12}` }));
    const observed: { arm: string; rows: number }[] = [];
    const driver = experimentChain(true, observed);
    await driver.pipe('events.transactions', txns, { key });
    const predictions = driver.emitted<Prediction>('predictions.fraud');
    const shadow = driver.emitted<Prediction>('predictions.fraud.shadow');
    const updates = driver.emitted<AccountFeatureUpdate>('features.account');
    const direct = await directScores(txns.map((t, i) => inputsOf(t, updates[i]!)));
    expect(predictions.map((p) => p.event_id)).toEqual(txns.map((t) => t.event_id));
    expect(new Set(predictions.map((p) => p.arm))).toEqual(new Set(['control', 'treatment']));
    predictions.forEach((p, i) => {
      const arm = armFor(p.entity_id);
      expect(p).toMatchObject({ experiment: 'exp_u', arm, version: arm === 'treatment' ? '0.9.0' : entry.version, latency_ms: 0 });
      const expected = arm === 'treatment' ? 1 - direct[i]! : direct[i]!;
      expect(p.score!).toBeCloseTo(expected, 5);
      expect(p.decision).toBe(expectedDecision(p.score!));
    });
    // The shadow: the demo bytes under 1.2.0, so its score is the control's, for every event.
    expect(shadow.map((s) => s.event_id)).toEqual(txns.map((t) => t.event_id));
    shadow.forEach((s, i) => {
      expect(s).toMatchObject({ experiment: 'exp_u', arm: 'shadow', version: '1.2.0', score: Number(direct[i]!.toFixed(6)) });
      expect(s.decision).toBe(expectedDecision(s.score!));
    });
    // The same batch without a shadow decides the same: the shadow changes nothing served.
    const plain = experimentChain(false);
    await plain.pipe('events.transactions', txns, { key });
    expect(plain.emitted<Prediction>('predictions.fraud')).toEqual(predictions);
    expect(plain.emitted<Prediction>('predictions.fraud.shadow')).toEqual([]);
    // Model time is reported per arm, with the rows each call scored.
    const treated = predictions.filter((p) => p.arm === 'treatment').length;
    expect(observed).toEqual(expect.arrayContaining([{ arm: 'control', rows: 60 - treated }, { arm: 'treatment', rows: treated }, { arm: 'shadow', rows: 60 }]));
  });

  it('leaves events outside the experiment while its control is not the serving version (a promotion by hand)', async () => {
    const models: ServingModels = { require: () => ({ entry: shadowEntry, handle }), requireVersion: () => ({ entry: inverted, handle: invertedHandle }), unloadableReason: () => undefined };
    const scoring = scoringProcessor({ rules: MODEL_DEFAULT_RULES, models, experiments: { running: () => experiment } });
    const driver = new TestDriver([fakeFeatures(), scoring], { startTime: T0 });
    await driver.pipe('events.transactions', transactions(10, 5), { key });
    const predictions = driver.emitted<Prediction>('predictions.fraud');
    expect(predictions.every((p) => p.experiment === '' && p.arm === '' && p.version === '1.2.0')).toBe(true);
    expect(driver.emitted('predictions.fraud.shadow')).toEqual([]);
  });
});
