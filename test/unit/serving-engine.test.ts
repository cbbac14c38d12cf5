import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as ort from 'onnxruntime-node';
import { ServingEngine, type BatchingOptions, type EngineOptions, type EngineState, type LoadableModel, type ModelHandle } from '../../serving/engine/engine.js';
import { Metrics } from '../../topology/runtime/metrics.js';
import { fabricFailure } from '../shared/fabric-failure.js';

const MODEL_DIR = fileURLToPath(new URL('../../models/fraud', import.meta.url));
const MODEL_PATH = join(MODEL_DIR, 'model.onnx');
const manifest = JSON.parse(readFileSync(join(MODEL_DIR, 'model.json'), 'utf8')) as { inputs: string[]; input_name: string; output_name: string; positive_class_index: number };
const bytes = readFileSync(MODEL_PATH);
const WIDTH = manifest.inputs.length;

let direct: ort.InferenceSession;
const engines: ServingEngine[] = [];

beforeAll(async () => {
  // The reference: the same bytes through onnxruntime-node in this process, one thread like the workers.
  direct = await ort.InferenceSession.create(bytes, { executionProviders: ['cpu'], intraOpNumThreads: 1 });
});

afterEach(async () => {
  await Promise.all(engines.splice(0).map((e) => e.close()));
});

/** The fraud model as the engine loads it (from model.json), with overrides for the refusal cases. */
function fraud(overrides: Partial<LoadableModel> = {}): LoadableModel {
  return { name: 'fraud', version: '1.0.0', bytes, inputName: manifest.input_name, outputName: manifest.output_name, positiveClassIndex: manifest.positive_class_index, inputs: manifest.inputs, ...overrides };
}

/** Rows covering every input: amounts, balances (some emptied), one-hot types, features with -1 for missing. */
function sampleRows(n: number, seed = 0): number[][] {
  return Array.from({ length: n }, (_, k) => {
    const i = k + seed;
    const amount = 10 + ((i * 7919) % 5000);
    const old = i % 3 === 0 ? amount : amount * 4;
    const next = i % 3 === 0 ? 0 : old - amount;
    const type = [0, 0, 0, 0, 0];
    type[i % 5] = 1;
    return [amount, old, next, Math.round((old - amount - next) * 100) / 100, ...type, i % 4, i % 9, amount, amount * 2, i % 4 === 0 ? -1 : amount / 2, amount, i % 6, i % 5 === 0 ? -1 : i * 30];
  });
}

/** Positive-class scores of a direct InferenceSession.run (no fetches: see onnx-worker.ts). */
async function directScores(rows: number[][]): Promise<number[]> {
  const out = await direct.run({ [manifest.input_name]: new ort.Tensor('float32', Float32Array.from(rows.flat()), [rows.length, WIDTH]) });
  const probs = out[manifest.output_name]!;
  const data = probs.data as Float32Array;
  return rows.map((_, i) => data[i * probs.dims[1]! + manifest.positive_class_index]!);
}

async function engine(options: Partial<EngineOptions> = {}): Promise<{ e: ServingEngine; states: EngineState[] }> {
  const states: EngineState[] = [];
  const e = new ServingEngine({ provider: 'cpu', gpu: false, workers: 1, threads: 1, timeoutMs: 5_000, restartBaseMs: 5, restartCapMs: 20, onStateChange: (s) => states.push(s), ...options });
  engines.push(e);
  await e.start();
  return { e, states };
}

async function withModel(options: Partial<EngineOptions> = {}, batching: BatchingOptions = {}, model: Partial<LoadableModel> = {}): Promise<{ e: ServingEngine; h: ModelHandle; states: EngineState[] }> {
  const { e, states } = await engine(options);
  const h = await e.load(fraud(model), batching);
  return { e, h, states };
}

/** The micro-batch histogram for one model: how many runs, how many rows, how many runs of at most `le` rows. */
async function batchRuns(metrics: Metrics, model: string): Promise<{ count: number; sum: number; atMost: (le: number) => number }> {
  const { values } = (await metrics.registry.getSingleMetric('fabric_serving_batch_rows')!.get()) as { values: { labels: Partial<Record<string, string | number>>; value: number; metricName?: string }[] };
  const mine = values.filter((v) => v.labels.model === model);
  const pick = (suffix: string): number => mine.find((v) => v.metricName === `fabric_serving_batch_rows${suffix}`)?.value ?? 0;
  return {
    count: pick('_count'),
    sum: pick('_sum'),
    atMost: (le) => mine.find((v) => v.metricName === 'fabric_serving_batch_rows_bucket' && v.labels.le === le)?.value ?? 0,
  };
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

describe('ServingEngine: scores', () => {
  it('scores exactly as onnxruntime-node does directly for 1, 7, 64 and 200 rows (200 split into maxBatch runs and rejoined in order), on cpu', async () => {
    const metrics = new Metrics({ defaults: false });
    const { e, h, states } = await withModel({ workers: 2, metrics });
    expect(h.maxBatch).toBe(64);
    for (const n of [1, 7, 64, 200]) {
      const rows = sampleRows(n, n);
      const result = await h.score(rows);
      expect(result.scores).toBeInstanceOf(Float32Array);
      expect(result.scores.length).toBe(n);
      expect(Array.from(result.scores)).toEqual(await directScores(rows));
      expect(result.provider).toBe('cpu');
    }
    // The flat form gives the same scores.
    const rows = sampleRows(70, 3);
    expect(Array.from((await h.scoreFlat(Float32Array.from(rows.flat()), 70)).scores)).toEqual(await directScores(rows));
    expect((await h.score([])).scores.length).toBe(0);
    expect(e.provider).toBe('cpu');
    expect(h.provider).toBe('cpu');
    expect(e.state).toBe('ready');
    expect(states.at(-1)).toBe('ready');
    // 1 + 7 + 64 + (64+64+64+8) + (64+6): no run larger than maxBatch.
    const runs = await batchRuns(metrics, 'fraud');
    expect(runs.sum).toBe(1 + 7 + 64 + 200 + 70);
    expect(runs.atMost(64)).toBe(runs.count);
    expect(runs.count).toBe(9);
    // Loading the same version again gives the same handle.
    expect(await e.load(fraud())).toBe(h);
    expect(e.loaded.get('fraud@1.0.0')).toBe(h);
  });

  it('loads a model by path (as for a stored model with external data) and scores it identically', async () => {
    const { h } = await withModel({}, {}, { bytes: undefined, path: MODEL_PATH, version: 'by-path' });
    const rows = sampleRows(9);
    expect(Array.from((await h.score(rows)).scores)).toEqual(await directScores(rows));
  });

  it('coalesces concurrent single-row calls into micro-batches of at most maxBatch rows, each call getting its own score', async () => {
    const metrics = new Metrics({ defaults: false });
    const { h } = await withModel({ metrics }, { maxBatch: 32, concurrency: 1 });
    const rows = sampleRows(200);
    const expected = await directScores(rows);
    const results = await Promise.all(rows.map((row) => h.score([row])));
    expect(results.map((r) => r.scores.length)).toEqual(rows.map(() => 1));
    expect(results.map((r) => r.scores[0])).toEqual(expected);
    const runs = await batchRuns(metrics, 'fraud');
    expect(runs.sum).toBe(200);
    // The first call runs alone; the other 199 wait for it and go in runs of 32: 1 + ceil(199 / 32) = 8.
    expect(runs.count).toBeLessThanOrEqual(20);
    expect(runs.count).toBeGreaterThanOrEqual(Math.ceil(200 / 32));
    expect(runs.atMost(32)).toBe(runs.count);
    expect(h.queued).toBe(0);
  });

  it('maxQueueDelayMs > 0 holds a request to fill a batch; 0 sends it as soon as a worker is free', async () => {
    const metrics = new Metrics({ defaults: false });
    const { e } = await engine({ metrics });
    const waiting = await e.load(fraud({ name: 'fraud-delay' }), { maxQueueDelayMs: 400 });
    const eager = await e.load(fraud({ name: 'fraud-eager' }));
    const rows = sampleRows(2);
    const expected = await directScores(rows);

    const a = waiting.score([rows[0]!]);
    await sleep(5);
    const b = waiting.score([rows[1]!]);
    expect([(await a).scores[0], (await b).scores[0]]).toEqual(expected);
    expect(await batchRuns(metrics, 'fraud-delay')).toMatchObject({ count: 1, sum: 2 });

    const c = eager.score([rows[0]!]);
    await sleep(5);
    const d = eager.score([rows[1]!]);
    expect([(await c).scores[0], (await d).scores[0]]).toEqual(expected);
    expect(await batchRuns(metrics, 'fraud-eager')).toMatchObject({ count: 2, sum: 2 });
  });

  it('maxQueueDelayMs does not hold a batch that is already full', async () => {
    const metrics = new Metrics({ defaults: false });
    const { e } = await engine({ metrics });
    const h = await e.load(fraud(), { maxQueueDelayMs: 60_000, maxBatch: 4 });
    const rows = sampleRows(4);
    const all = Promise.all(rows.map((row) => h.score([row])));
    const outcome = await Promise.race([all, sleep(10_000).then(() => 'held' as const)]);
    expect(outcome).not.toBe('held');
    expect((outcome as { scores: Float32Array }[]).map((r) => r.scores[0])).toEqual(await directScores(rows));
    expect(await batchRuns(metrics, 'fraud')).toMatchObject({ count: 1, sum: 4 });
  });

  it('refuses rows beyond maxQueuedRows with FABRIC_MODEL_OVERLOADED (retriable); the requests already queued still succeed', async () => {
    const { h } = await withModel({}, { concurrency: 1, maxQueuedRows: 10 });
    const rows = sampleRows(20);
    const expected = await directScores(rows);
    const chunk = (i: number): number[][] => rows.slice(i * 5, i * 5 + 5);
    // The first call runs at once (the one concurrency slot); the next two wait (10 rows, the limit).
    const first = h.score(chunk(0));
    const second = h.score(chunk(1));
    const third = h.score(chunk(2));
    expect(h.queued).toBe(10);
    const refused = await fabricFailure(h.score(chunk(3)));
    expect(refused.code).toBe('FABRIC_MODEL_OVERLOADED');
    expect(refused.retriable).toBe(true);
    expect(refused.message).toMatch(/limit 10/);
    const done = await Promise.all([first, second, third]);
    expect(done.flatMap((r) => Array.from(r.scores))).toEqual(expected.slice(0, 15));
    // Once drained the same request is accepted.
    expect(Array.from((await h.score(chunk(3))).scores)).toEqual(expected.slice(15, 20));    // A single request larger than the bound is admitted into an empty queue (a stream batch must never be refused forever).
    expect(Array.from((await h.score(rows)).scores)).toEqual(expected);
  });

  it('refuses rows of the wrong width with FABRIC_MODEL_INVALID (not retriable), before any run', async () => {
    const metrics = new Metrics({ defaults: false });
    const { h } = await withModel({ metrics });
    const short = await fabricFailure(h.score([[1, 2, 3]]));
    expect(short.code).toBe('FABRIC_MODEL_INVALID');
    expect(short.retriable).toBe(false);
    expect(short.message).toMatch(/row 0 has 3 inputs.*takes 17/);
    const mixed = await fabricFailure(h.score([sampleRows(1)[0]!, [...sampleRows(1)[0]!, 0]]));
    expect(mixed.code).toBe('FABRIC_MODEL_INVALID');
    expect(mixed.message).toMatch(/row 1 has 18 inputs/);
    const flat = await fabricFailure(h.scoreFlat(new Float32Array(WIDTH * 2 - 1), 2));
    expect(flat.code).toBe('FABRIC_MODEL_INVALID');
    expect(flat.retriable).toBe(false);
    expect((await batchRuns(metrics, 'fraud')).count).toBe(0);
  });

  it('refuses a bad configuration with FABRIC_CONFIG_INVALID', async () => {
    expect(() => new ServingEngine({ provider: 'cpu', gpu: false, workers: 0, timeoutMs: 1_000 })).toThrow(expect.objectContaining({ code: 'FABRIC_CONFIG_INVALID' }));
    const { e } = await engine();
    await expect(e.load(fraud(), { maxBatch: 0 })).rejects.toMatchObject({ code: 'FABRIC_CONFIG_INVALID' });
    expect(e.loaded.size).toBe(0);
  });
});

describe('ServingEngine: model loading', () => {
  it('refuses models that cannot load or do not match their signature with FABRIC_MODEL_INVALID and a clear message, and keeps serving the good model', async () => {
    const { e, h } = await withModel();
    const rows = sampleRows(6);
    const expected = await directScores(rows);
    const refusal = async (version: string, overrides: Partial<LoadableModel>, message: RegExp): Promise<void> => {
      const err = await fabricFailure(e.load(fraud({ version, ...overrides })));
      expect(err.code, version).toBe('FABRIC_MODEL_INVALID');
      expect(err.retriable).toBe(false);
      expect(err.message).toContain(`fraud@${version}`);
      expect(err.message).toMatch(message);
      expect(e.loaded.has(`fraud@${version}`)).toBe(false);
      // Still serving the good version, on the same worker.
      expect(e.state).toBe('ready');
      expect(Array.from((await h.score(rows)).scores)).toEqual(expected);
    };
    await refusal('garbage', { bytes: Buffer.from('not a model') }, /could load the model/);
    await refusal('truncated', { bytes: bytes.subarray(0, Math.floor(bytes.length / 2)) }, /could load the model/);
    await refusal('narrow', { inputs: manifest.inputs.slice(0, 16) }, /signature.*takes 17 values per row; the signature declares 16/);
    await refusal('wide', { inputs: [...manifest.inputs, 'extra'] }, /takes 17 values per row; the signature declares 18/);
    await refusal('input-name', { inputName: 'features' }, /signature.*no input named features \(the session's: input\)/);
    await refusal('output-name', { outputName: 'scores' }, /signature.*no output named scores \(the session's: .*probabilities/);
    await refusal('missing-file', { bytes: undefined, path: join(MODEL_DIR, 'no-such-model.onnx') }, /could load the model/);
    await refusal('nothing', { bytes: undefined }, /neither bytes nor a path/);
    expect([...e.loaded.keys()]).toEqual(['fraud@1.0.0']);
    // A later good version still loads.
    const v2 = await e.load(fraud({ version: '2.0.0' }));
    expect(Array.from((await v2.score(rows)).scores)).toEqual(expected);
  });
});

// Every fault on both kinds of workers: threads (the default) and processes (isolation).
describe.each(['thread', 'process'] as const)('ServingEngine: worker faults (%s workers)', (isolation) => {
  it('a worker that exits or throws mid-run fails the call retriably, is replaced with the model reloaded, and serves again', async () => {
    const metrics = new Metrics({ defaults: false });
    const { e, h, states } = await withModel({ isolation, metrics });
    const rows = sampleRows(12);
    const expected = await directScores(rows);
    const firstPid = e.pick(h.key)!.worker!.id;

    e.injectFault('exit');
    const crashed = await fabricFailure(h.score(rows));
    expect(crashed.code).toBe('FABRIC_MODEL_UNAVAILABLE');
    expect(crashed.retriable).toBe(true);
    expect(e.state).toBe('restarting');
    // Made while restarting: waits for the new worker (bounded by the timeout) and gets the clean scores.
    expect(Array.from((await h.score(rows)).scores)).toEqual(expected);
    expect(states).toEqual(['ready', 'restarting', 'ready']);
    const secondPid = e.pick(h.key)!.worker!.id;
    expect(secondPid).not.toBe(firstPid);

    e.injectFault('throw');
    const thrown = await fabricFailure(h.score(rows));
    expect(thrown.code).toBe('FABRIC_MODEL_UNAVAILABLE');
    expect(thrown.retriable).toBe(true);
    await e.whenReady(10_000);
    expect(Array.from((await h.score(rows)).scores)).toEqual(expected);
    expect(e.pick(h.key)!.worker!.id).not.toBe(secondPid);
    expect(states).toEqual(['ready', 'restarting', 'ready', 'restarting', 'ready']);
    expect((await metrics.servingWorkerRestarts.get()).values[0]!.value).toBe(2);
  });

  it('a hung run fails with FABRIC_MODEL_TIMEOUT (retriable) after timeoutMs; the worker is recycled and the next call is answered', async () => {
    const { e, h, states } = await withModel({ isolation, timeoutMs: 1_000 });
    const rows = sampleRows(5);
    const hungPid = e.pick(h.key)!.worker!.id;
    e.injectFault('hang');
    const started = Date.now();
    const timedOut = await fabricFailure(h.score(rows));
    expect(timedOut.code).toBe('FABRIC_MODEL_TIMEOUT');
    expect(timedOut.retriable).toBe(true);
    expect(Date.now() - started).toBeGreaterThanOrEqual(950);
    await e.whenReady(10_000);
    expect(e.pick(h.key)!.worker!.id).not.toBe(hungPid);
    expect(Array.from((await h.score(rows)).scores)).toEqual(await directScores(rows));
    expect(states).toEqual(['ready', 'restarting', 'ready']);
  });

  it('with two workers a fault in one leaves the engine degraded while the other serves, then ready again', async () => {
    const { e, h, states } = await withModel({ isolation, workers: 2 });
    const rows = sampleRows(8);
    const expected = await directScores(rows);
    expect(e.state).toBe('ready');
    // (While start() spawns the two workers the engine may pass through 'degraded': see the report.)
    const seen = states.length;
    // Both idle: the first worker takes the next run.
    expect(e.pick(h.key)!.index).toBe(0);
    e.injectFault('exit', 0);
    const crashed = await fabricFailure(h.score(rows));
    expect(crashed.code).toBe('FABRIC_MODEL_UNAVAILABLE');
    expect(crashed.retriable).toBe(true);
    expect(e.state).toBe('degraded');
    expect(e.pick(h.key)!.index).toBe(1);
    expect(Array.from((await h.score(rows)).scores)).toEqual(expected);
    await expect.poll(() => e.state, { timeout: 10_000 }).toBe('ready');
    expect(states.slice(seen)).toEqual(['degraded', 'ready']);
    // The replaced worker has the model again and serves.
    expect(e.pick(h.key)!.index).toBe(0);
    expect(Array.from((await h.score(rows)).scores)).toEqual(expected);
  });

  it('gives up after maxRestarts deaths without a successful run in between: state failed, calls fail fast and retriable; start() recovers', async () => {
    const { e, h, states } = await withModel({ isolation, maxRestarts: 2 });
    const rows = sampleRows(3);
    const crash = async (): Promise<void> => {
      await e.whenReady(10_000);
      e.injectFault('exit');
      expect((await fabricFailure(h.score(rows))).code).toBe('FABRIC_MODEL_UNAVAILABLE');
    };
    // A successful run resets the budget: two crashes, a good run, two more crashes still recover.
    await crash();
    await crash();
    await e.whenReady(10_000);
    await h.score(rows);
    await crash();
    await crash();
    await e.whenReady(10_000);
    expect(e.state).toBe('ready');
    // The third death in a row spends the budget.
    await crash();
    expect(e.state).toBe('failed');
    const started = Date.now();
    const refused = await fabricFailure(h.score(rows));
    expect(refused.code).toBe('FABRIC_MODEL_UNAVAILABLE');
    expect(refused.retriable).toBe(true);
    expect(refused.message).toMatch(/failed|gave up/);
    expect(Date.now() - started).toBeLessThan(1_000); // fast: not the 5 s timeout
    await expect(e.whenReady(5_000)).rejects.toMatchObject({ code: 'FABRIC_MODEL_UNAVAILABLE' });
    expect(states.at(-1)).toBe('failed');
    expect(states.filter((s) => s === 'failed')).toHaveLength(1);
    // An explicit start brings it back with a fresh budget, the model reloaded.
    await e.start();
    expect(e.state).toBe('ready');
    expect(states.slice(-3)).toEqual(['failed', 'starting', 'ready']);
    expect(Array.from((await h.score(rows)).scores)).toEqual(await directScores(rows));
  });
});

describe('ServingEngine: unload and close', () => {
  it('unload fails the queued requests retriably and forgets the version; it can be loaded again', async () => {
    const { e, h } = await withModel({}, { maxQueueDelayMs: 60_000 });
    const rows = sampleRows(3);
    // Held by the queue delay: queued, none in flight.
    const queued = rows.map((row) => h.score([row]));
    expect(h.queued).toBe(3);
    e.unload(h);
    for (const p of queued) {
      const err = await fabricFailure(p);
      expect(err.code).toBe('FABRIC_MODEL_UNAVAILABLE');
      expect(err.retriable).toBe(true);
      expect(err.message).toMatch(/unloaded/);
    }
    expect(h.queued).toBe(0);
    expect(e.loaded.has(h.key)).toBe(false);
    const again = await e.load(fraud());
    expect(again).not.toBe(h);
    expect(Array.from((await again.score(rows)).scores)).toEqual(await directScores(rows));
  });

  // BUG (serving/engine/engine.ts, unload()): unload deletes the handle from `models` but leaves its key
  // in every WorkerSlot.keys and does not mark the handle unloaded, so a later call on the handle is
  // still dispatched; the worker answers "model ... is not loaded in this worker", which runOn maps
  // (RunError) to FABRIC_MODEL_INVALID, not retriable: the scoring processor then commits fallback
  // decisions instead of retrying. Expected: FABRIC_MODEL_UNAVAILABLE (retriable), as for queued requests.
  it('a call on a handle after its version was unloaded fails retriably (FABRIC_MODEL_UNAVAILABLE)', async () => {
    const { e, h } = await withModel();
    e.unload(h);
    const err = await fabricFailure(h.score(sampleRows(1)));
    expect(err.code).toBe('FABRIC_MODEL_UNAVAILABLE');
    expect(err.retriable).toBe(true);
  });

  // BUG (serving/engine/engine.ts unload() + onnx-worker.ts 'unload' handler): unload releases the
  // worker's session at once, while runs already sent to that worker are pending (onnxruntime-node runs
  // on setImmediate), so they fail with "Session already disposed." -> RunError -> FABRIC_MODEL_INVALID
  // (not retriable). Expected: in-flight runs complete, or fail retriably.
  it('runs in flight when their version is unloaded complete or fail retriably', async () => {
    const { e } = await engine();
    const outcomes: string[] = [];
    for (let round = 0; round < 5; round++) {
      const h = await e.load(fraud({ version: `round-${round}` }), { concurrency: 3 });
      const inFlight = sampleRows(3).map((row) => h.score([row]).then(
        () => 'ok',
        (err: { code?: string; retriable?: boolean; message?: string }) => (err.retriable ? 'retriable' : `${err.code} (not retriable): ${err.message}`),
      ));
      e.unload(h);
      outcomes.push(...(await Promise.all(inFlight)));
    }
    expect(outcomes.filter((o) => o !== 'ok' && o !== 'retriable')).toEqual([]);
  });

  it('close() fails queued, in-flight and later calls with FABRIC_SHUTTING_DOWN', async () => {
    const { e, h } = await withModel({}, { concurrency: 1 });
    const rows = sampleRows(4);
    const inFlight = fabricFailure(h.score(rows.slice(0, 2)));
    const queued = fabricFailure(h.score(rows.slice(2)));
    expect(h.queued).toBe(2);
    await e.close();
    for (const p of [inFlight, queued, fabricFailure(h.score(rows))]) {
      const err = await p;
      expect(err.code).toBe('FABRIC_SHUTTING_DOWN');
      expect(err.retriable).toBe(true);
    }
    await expect(e.load(fraud({ version: 'late' }))).rejects.toMatchObject({ code: 'FABRIC_SHUTTING_DOWN' });
    await expect(e.start()).rejects.toMatchObject({ code: 'FABRIC_SHUTTING_DOWN' });
    await expect(e.whenReady(1_000)).rejects.toMatchObject({ code: 'FABRIC_SHUTTING_DOWN' });
    expect(e.loaded.size).toBe(0);
  });
});
