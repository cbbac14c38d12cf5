import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { fileURLToPath } from 'node:url';
import * as ort from 'onnxruntime-node';
import { loadModelArtifact, type ModelArtifact } from '../../processors/scoring/model-artifact.js';
import { ModelRunner, type ModelRunnerOptions, type RunnerState } from '../../processors/scoring/model-runner.js';
import { fabricFailure } from '../shared/fabric-failure.js';

const MODELS = fileURLToPath(new URL('../../models', import.meta.url));

let model: ModelArtifact;
let direct: ort.InferenceSession;
const runners: ModelRunner[] = [];

beforeAll(async () => {
  model = await loadModelArtifact(MODELS, 'fraud');
  // The reference: the same bytes through onnxruntime-node in this process, one thread like the worker.
  direct = await ort.InferenceSession.create(model.bytes, { executionProviders: ['cpu'], intraOpNumThreads: 1 });
});

afterEach(async () => {
  await Promise.all(runners.splice(0).map((r) => r.close()));
});

/** Rows covering every input: amounts, balances (some emptied), one-hot types, features with -1 for missing. */
function sampleRows(n: number): number[][] {
  return Array.from({ length: n }, (_, i) => {
    const amount = 10 + ((i * 7919) % 5000);
    const old = i % 3 === 0 ? amount : amount * 4;
    const next = i % 3 === 0 ? 0 : old - amount;
    const type = [0, 0, 0, 0, 0];
    type[i % 5] = 1;
    return [amount, old, next, Math.round((old - amount - next) * 100) / 100, ...type, i % 4, i % 9, amount, amount * 2, i % 4 === 0 ? -1 : amount / 2, amount, i % 6, i % 5 === 0 ? -1 : i * 30];
  });
}

async function directScores(rows: number[][]): Promise<number[]> {
  const out = await direct.run({ [model.inputName]: new ort.Tensor('float32', Float32Array.from(rows.flat()), [rows.length, model.inputs.length]) });
  const probs = out[model.outputName]!;
  const data = probs.data as Float32Array;
  return rows.map((_, i) => data[i * probs.dims[1]! + model.positiveClassIndex]!);
}

async function runner(options: Partial<ModelRunnerOptions> = {}): Promise<{ r: ModelRunner; states: RunnerState[] }> {
  const states: RunnerState[] = [];
  const r = new ModelRunner(model, { provider: 'cpu', threads: 1, timeoutMs: 5_000, gpu: false, restartBaseMs: 5, restartCapMs: 20, onStateChange: (s) => states.push(s), ...options });
  runners.push(r);
  await r.start();
  return { r, states };
}

const failure = fabricFailure;

describe('ModelRunner', () => {
  it('scores a batch in one run exactly as onnxruntime-node does directly, reporting the provider', async () => {
    const { r } = await runner();
    const rows = sampleRows(40);
    const result = await r.score(rows);
    expect([...result.scores]).toEqual(await directScores(rows));
    expect(result.provider).toBe('cpu');
    expect(r.provider).toBe('cpu');
    expect(r.state).toBe('ready');
    expect((await r.score([])).scores.length).toBe(0);
    await expect(r.score([[1, 2, 3]])).rejects.toMatchObject({ code: 'FABRIC_MODEL_INVALID' });
  });

  it('fails the in-flight call retriably when the worker dies, restarts it, and serves calls made meanwhile', async () => {
    const { r, states } = await runner();
    const rows = sampleRows(12);
    const expected = await directScores(rows);
    r.injectFault('exit');
    const crashed = await failure(r.score(rows));
    expect(crashed.code).toBe('FABRIC_MODEL_UNAVAILABLE');
    expect(crashed.retriable).toBe(true);
    expect(r.state).toBe('restarting');
    // Made while restarting: waits for the new worker (bounded by the timeout) and gets the clean scores.
    expect([...(await r.score(rows)).scores]).toEqual(expected);
    expect(states).toEqual(['ready', 'restarting', 'ready']);

    r.injectFault('throw');
    expect((await failure(r.score(rows))).code).toBe('FABRIC_MODEL_UNAVAILABLE');
    expect([...(await r.score(rows)).scores]).toEqual(expected);
  });

  it('times out a stuck run, recycles the worker and answers the next call', async () => {
    const { r, states } = await runner({ timeoutMs: 400 });
    const rows = sampleRows(5);
    r.injectFault('hang');
    const started = Date.now();
    const timedOut = await failure(r.score(rows));
    expect(timedOut.code).toBe('FABRIC_MODEL_TIMEOUT');
    expect(timedOut.retriable).toBe(true);
    expect(Date.now() - started).toBeGreaterThanOrEqual(390);
    await r.whenReady(10_000);
    expect([...(await r.score(rows)).scores]).toEqual(await directScores(rows));
    expect(states).toEqual(['ready', 'restarting', 'ready']);
  });

  it('gives up after maxRestarts deaths without a successful run in between: state failed, calls fail fast and retriable', async () => {
    const { r, states } = await runner({ maxRestarts: 2 });
    const rows = sampleRows(3);
    const crash = async (): Promise<void> => {
      await r.whenReady(10_000);
      r.injectFault('exit');
      expect((await failure(r.score(rows))).code).toBe('FABRIC_MODEL_UNAVAILABLE');
    };
    // A successful run resets the budget: two crashes, a good run, two more crashes still recover.
    await crash();
    await crash();
    await r.whenReady(10_000);
    await r.score(rows);
    await crash();
    await crash();
    await r.whenReady(10_000);
    expect(r.state).toBe('ready');
    // The third death in a row spends the budget.
    await crash();
    await expect.poll(() => r.state).toBe('failed');
    const refused = await failure(r.score(rows));
    expect(refused.code).toBe('FABRIC_MODEL_UNAVAILABLE');
    expect(refused.retriable).toBe(true);
    expect(states.at(-1)).toBe('failed');
    expect(states.filter((s) => s === 'failed')).toHaveLength(1);
    // An explicit start brings it back with a fresh budget.
    await r.start();
    expect(r.state).toBe('ready');
    expect([...(await r.score(rows)).scores]).toEqual(await directScores(rows));
  });

  it('fails to start on bytes that are not a model (state failed) and refuses calls after close', async () => {
    const bad = new ModelRunner({ ...model, bytes: Buffer.from('not an onnx model') }, { provider: 'cpu', threads: 1, timeoutMs: 5_000, gpu: false });
    runners.push(bad);
    await expect(bad.start()).rejects.toMatchObject({ code: 'FABRIC_MODEL_INVALID' });
    expect(bad.state).toBe('failed');

    const { r } = await runner();
    await r.close();
    await expect(r.score(sampleRows(1))).rejects.toMatchObject({ code: 'FABRIC_SHUTTING_DOWN' });
  });
});
