import { describe, expect, it } from 'vitest';
import type { ModelVersion } from '../../schemas/types.generated.js';
import { FEATURE_GROUPS } from '../../topology/features/groups.js';
import { applyMissingPolicy, entryFor, flatMetrics, parseManifest, parseModelRef, validateSignature, withStage } from '../../serving/registry/entry.js';
import { ModelRegistry, productionOf } from '../../serving/registry/registry.js';
import type { Kafka } from 'kafkajs';
import type { AvroSerde } from '../../schemas/serde.js';
import type { Logger } from '../../topology/runtime/log.js';
import { TASKS } from '../../serving/models/tasks.js';
import { vectorize } from '../../serving/models/vector.js';
import { fraudInputValues } from '../../serving/models/fraud-inputs.js';
import { MODEL_DEFAULT_RULES } from '../../serving/rules/engine.js';
import { demoModel } from '../shared/models.js';
import { fabricFailure } from '../shared/fabric-failure.js';

const { entry: fraud } = demoModel('fraud');

function withInputs(inputs: ModelVersion['signature']['inputs']): ModelVersion {
  return { ...fraud, signature: { ...fraud.signature, inputs } };
}

function failure(fn: () => unknown) {
  return fabricFailure(Promise.resolve().then(fn));
}

describe('registry entries', () => {
  it('carries the demo fraud model\'s signature: sources per input, the account features from their group, -1 for missing', () => {
    expect(fraud.task).toBe('fraud');
    const byName = new Map(fraud.signature.inputs.map((i) => [i.name, i]));
    expect(byName.get('amount')).toMatchObject({ source: 'event', group: null, missing: 'default', default_value: -1 });
    expect(byName.get('balance_error')).toMatchObject({ source: 'derived' });
    expect(byName.get('seconds_since_last_txn')).toMatchObject({ source: 'feature', group: 'account' });
    expect(() => validateSignature(fraud, TASKS, FEATURE_GROUPS)).not.toThrow();
  });

  it('refuses signatures it cannot serve, naming each problem', async () => {
    const inputs = fraud.signature.inputs;
    const cases: [ModelVersion, RegExp][] = [
      [withInputs(inputs.map((i) => (i.name === 'txn_count_1h' ? { ...i, name: 'txn_count_7d' } : i))), /txn_count_7d is not a feature of group account/],
      [withInputs(inputs.map((i) => (i.name === 'txn_count_1h' ? { ...i, group: 'merchant' } : i))), /feature group "merchant", which is not defined/],
      [withInputs(inputs.map((i) => (i.name === 'amount' ? { ...i, name: 'amount_usd' } : i))), /amount_usd is not a field of the transaction events/],
      [withInputs(inputs.map((i) => (i.name === 'balance_error' ? { ...i, name: 'balance_ratio' } : i))), /balance_ratio is declared derived, but the fraud task derives only/],
      [withInputs([...inputs, inputs[0]!]), /input amount is declared twice/],
      [withInputs(inputs.map((i) => (i.name === 'amount' ? { ...i, missing: 'default', default_value: null } : i))), /missing policy default needs a finite default_value/],
      [{ ...fraud, task: 'churn' }, /unknown task "churn"/],
      [{ ...fraud, signature: { ...fraud.signature, output_kind: 'regression' } }, /output kind regression is not served/],
    ];
    for (const [entry, message] of cases) {
      const err = await failure(() => validateSignature(entry, TASKS, FEATURE_GROUPS));
      expect(err.code).toBe('FABRIC_MODEL_INVALID');
      expect(err.message).toMatch(message);
    }
  });

  it('parses manifests and model references with typed errors', async () => {
    expect((await failure(() => parseManifest({ name: 'Fraud!', version: '1', inputs: [] }, 'm.json'))).message).toMatch(/name: lower case.*inputs/);
    expect(parseModelRef('fraud')).toEqual({ name: 'fraud', version: null });
    expect(parseModelRef('fraud@1.2.0-rc.1')).toEqual({ name: 'fraud', version: '1.2.0-rc.1' });
    expect((await failure(() => parseModelRef('fraud@../x'))).code).toBe('FABRIC_CLI_USAGE');
    expect(flatMetrics({ validation: { auc: 0.9, n: 3, label: 'x' }, list: [1] })).toEqual({ 'validation.auc': 0.9, 'validation.n': 3 });
  });

  it('records stage changes with who, when, from, to and why; production is the last promoted', () => {
    const a = withStage({ ...fraud, version: 'a' }, 'production', 'ops', 100, 'first');
    const b = withStage(withStage({ ...fraud, version: 'b' }, 'staging', 'ci', 150, ''), 'production', 'ops', 200, 'better');
    expect(b.stage_history).toEqual([
      { from: 'none', to: 'staging', by: 'ci', at: 150, reason: '' },
      { from: 'staging', to: 'production', by: 'ops', at: 200, reason: 'better' },
    ]);
    // A raced write leaving two production records: the one promoted last serves.
    expect(productionOf([a, b], 'fraud')!.version).toBe('b');
    expect(productionOf([a, withStage(b, 'archived', 'ops', 300, '')], 'fraud')!.version).toBe('a');
    expect(productionOf([a], 'recs')).toBeUndefined();
  });

  it('keeps a promotion when a registration that raced it arrives later (a version\'s stage history only grows)', () => {
    const serde = { decode: (b: Buffer) => JSON.parse(b.toString()) as unknown, prefetch: async () => undefined } as unknown as AvroSerde;
    const quiet = { info: () => undefined, warn: () => undefined, error: () => undefined } as unknown as Logger;
    const registry = new ModelRegistry({} as Kafka, serde, { topicPrefix: '' }, quiet);
    const registered = { ...fraud, stage: 'none' as const, stage_history: [] };
    const promoted = withStage(registered, 'production', 'fabric start', 100, 'demo');
    const put = (e: ModelVersion) => registry.apply(`${e.name}@${e.version}`, Buffer.from(JSON.stringify(e)));
    put(registered);
    put(promoted);
    put(registered);
    expect(registry.production('fraud')?.stage_history).toEqual(promoted.stage_history);
    // A real change always extends the history: it applies.
    const archived = withStage(promoted, 'archived', 'ops', 200, 'rollback');
    put(archived);
    expect(registry.get('fraud', fraud.version)?.stage).toBe('archived');
    expect(registry.production('fraud')).toBeUndefined();
  });

  it('builds an entry from a manifest with the artifact reference and stage none', () => {
    const e = entryFor(parseManifest({ name: 'm', version: '2', inputs: ['amount'], signature: { inputs: [{ name: 'amount', source: 'event', missing: { policy: 'fallback' } }] }, thresholds: { block: 0.9, review: 0.5 } }, 'x'), { sha256: 'a'.repeat(64), size: 1, uri: `store:sha256/${'a'.repeat(64)}`, file: 'model.onnx', files: [] }, { registeredBy: 'me', now: 5 });
    expect(e).toMatchObject({ name: 'm', version: '2', stage: 'none', stage_history: [], registered_by: 'me', registered_at: 5, thresholds: { block: 0.9, review: 0.5 } });
    expect(e.signature.inputs).toEqual([{ name: 'amount', type: 'float', source: 'event', group: null, missing: 'fallback', default_value: null }]);
  });
});

describe('missing-value policies and the served vector', () => {
  const txn = { event_id: 'e', account_id: 'a', counterparty_id: 'c', type: 'TRANSFER' as const, amount: 100, old_balance: 100, new_balance: 0, channel: 'web', ts: 0 };

  it('fills a missing input with its declared default, in the signature\'s order', () => {
    const v = vectorize(fraud, fraudInputValues(txn, { txn_count_1h: 1, amount_avg_24h: null }));
    const names = fraud.signature.inputs.map((i) => i.name);
    expect(v.missing).toEqual([]);
    expect(v.row[names.indexOf('amount')]).toBe(100);
    expect(v.row[names.indexOf('type_TRANSFER')]).toBe(1);
    expect(v.row[names.indexOf('txn_count_1h')]).toBe(1);
    expect(v.row[names.indexOf('amount_avg_24h')]).toBe(-1);
    expect(v.row[names.indexOf('seconds_since_last_txn')]).toBe(-1);
    expect(v.features.amount_avg_24h).toBe(-1);
  });

  it('reports inputs whose policy is the fallback, and the rules give the fallback decision with the reason', () => {
    const strict = withInputs(fraud.signature.inputs.map((i) => (i.name === 'seconds_since_last_txn' ? { ...i, missing: 'fallback' as const, default_value: null } : i)));
    const v = vectorize(strict, fraudInputValues(txn, { seconds_since_last_txn: null }));
    expect(v.missing).toEqual(['seconds_since_last_txn']);
    expect(v.features.seconds_since_last_txn).toBeNull();
    expect(MODEL_DEFAULT_RULES.current('fraud', 'decision').decide({ event: {}, entity: 'a', features: v.features, score: null, reason: 'features_missing' }, strict)).toEqual({ decision: 'review', reasons: ['fallback:features_missing'], fallback: true, fired: ['thresholds'] });
    // NaN counts as missing too.
    expect(applyMissingPolicy(strict.signature.inputs.slice(0, 1), [Number.NaN])).toEqual({ row: [-1], missing: [] });
  });
});
