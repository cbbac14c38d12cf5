/**
 * The serving section of `npm run bench`: three pairs, each ours vs a reference measured in the same
 * run (reference first), on the fraud demo model (models/fraud, a 100-tree gradient-boosting ONNX model).
 *
 *   1. ServingEngine throughput: rows/s of the engine (default workers = one per core, default threads)
 *      scoring fixed batches of N rows with 4 × workers requests in flight (maxBatch = N, so each request
 *      is one ONNX run), vs a bare onnxruntime-node InferenceSession.run tight loop in this process on
 *      the same bytes (intraOpNumThreads 1, sequential), at N = 1, 8, 32 and 64.
 *   2. Micro-batching gain: single-row requests offered open-loop at geometrically increasing rates to
 *      the engine with maxBatch 1 (no batching) and maxBatch 32 (dynamic batching, maxQueueDelayMs 0):
 *      the highest sustained rows/s whose p95 latency (from each request's due time) stays under a
 *      fixed bound, batch32 vs batch1.
 *   3. POST /v1/predict/fraud latency: the fabric in-process (gateway + features/scoring chain, which
 *      writes the account windows of seeded transactions to Redis), fresh transactions for the seeded
 *      accounts at a fixed rate, client-side and server-reported latency, vs the floor done by hand in
 *      the same process at the same rate: one Redis ZRANGEBYSCORE of the account's window plus a bare
 *      session.run of one row.
 *
 * Everything of pair 3 lives under the run's topic prefix and Redis prefix (removed by cleanup.ts).
 */
import http from 'node:http';
import { availableParallelism } from 'node:os';
import { Redis } from 'ioredis';
import * as ort from 'onnxruntime-node';
import { loadConfig, type FabricConfig } from '../../topology/config.js';
import { messageOf } from '../../topology/errors.js';
import type { Logger } from '../../topology/runtime/log.js';
import { Metrics } from '../../topology/runtime/metrics.js';
import { accountGroup } from '../../topology/features/groups.js';
import { evaluate, featureEvent, type FeatureEvent } from '../../topology/features/engine.js';
import { startFabric, type FabricHandle } from '../../app/fabric.js';
import { ServingEngine, type ModelHandle } from '../../serving/engine/engine.js';
import { groupKeys } from '../../serving/features/redis-keys.js';
import { fraudInputRow } from '../../serving/models/fraud-inputs.js';
import type { Transaction } from '../../schemas/types.generated.js';
import { generateTransactions } from '../../sim/transactions.js';
import { demoModel, loadable } from '../shared/models.js';
import { sample, withTimeout, type Sample } from './throughput.js';
import type { RowSlot } from './features.js';
import { formatNumber, median, quantile } from './stats.js';

export interface ServingSizes {
  /** Rows per engine / bare sample (pair 1). */
  readonly engineRows: number;
  readonly engineRepetitions: number;
  /** Offered-load step length (pair 2). */
  readonly batchingStepSec: number;
  /** Wall-time budget of one configuration's search (pair 2). */
  readonly batchingBudgetSec: number;
  /** Bisection steps between the last passing and the first failing rate (pair 2). */
  readonly batchingRefineSteps: number;
  /** Seconds per measured predict run and per floor run (pair 3), after a warm-up of each. */
  readonly predictSec: number;
  readonly predictWarmupSec: number;
  readonly predictRepetitions: number;
}

type ConfigOverrides = Parameters<typeof loadConfig>[1];

export interface ServingContext {
  readonly common: ConfigOverrides;
  readonly base: FabricConfig;
  readonly log: Logger;
  readonly runId: string;
  /** The run's topic prefix and Redis prefix (cleanup.ts removes everything under them). */
  readonly prefix: string;
  readonly redisPrefix: string;
  readonly seed: number;
  readonly apiKey: string;
  readonly sizes: ServingSizes;
  readonly progress: (line: string) => void;
}

export const ENGINE_BATCH_SIZES = [1, 8, 32, 64] as const;
/** The batch size whose ratio has a target (>= ENGINE_TARGET_RATIO). */
export const ENGINE_TARGET_BATCH = 32;
export const ENGINE_TARGET_RATIO = 0.8;
/** Requests in flight per engine worker (pair 1): enough to keep every worker busy. */
const ENGINE_WINDOW_PER_WORKER = 4;
/** Distinct realistic feature vectors the pairs cycle through. */
const VECTOR_COUNT = 4096;

export const BATCHING_MAX_BATCH = 32;
/** The p95 bound of pair 2 (from each request's due time to its scores). */
export const BATCHING_P95_BOUND_MS = 5;
export const BATCHING_TARGET_RATIO = 3;
const BATCHING_START_RATE = 1_000;
const BATCHING_FACTOR = 1.5;
const BATCHING_MAX_RATE = 1_000_000;
/** A step whose requests in flight exceed this much of its offered traffic is far past the bound: stopped. */
const BATCHING_MAX_BACKLOG_SEC = 0.25;

export const PREDICT_RATE = 200;
const SEED_EVENTS = 400;
const SEED_ACCOUNTS = 50;
const SEED_SPAN_MS = 120_000;
const SEED_BODY_EVENTS = 50;
const PREDICT_MAX_IN_FLIGHT = 64;

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

// ------------------------------------------------------------------------------------------ shared

interface FraudModel {
  readonly loadable: ReturnType<typeof loadable>;
  readonly bytes: Buffer;
  readonly width: number;
  readonly inputName: string;
  readonly outputName: string;
  readonly positiveClassIndex: number;
}

function fraudModel(): FraudModel {
  const { entry, bytes } = demoModel('fraud');
  const l = loadable(entry, bytes);
  return { loadable: l, bytes, width: l.inputs.length, inputName: l.inputName, outputName: l.outputName, positiveClassIndex: l.positiveClassIndex };
}

/** The reference session: the same bytes and session options as an engine worker's, one intra-op thread. */
function bareSession(model: FraudModel): Promise<ort.InferenceSession> {
  return ort.InferenceSession.create(new Uint8Array(model.bytes), {
    executionProviders: ['cpu'],
    intraOpNumThreads: 1,
    interOpNumThreads: 1,
    executionMode: 'sequential',
    graphOptimizationLevel: 'all',
    extra: { session: { intra_op: { allow_spinning: '0' } } },
  });
}

/** One bare run: tensor, session.run, positive-class scores picked as the worker does. */
async function bareScore(session: ort.InferenceSession, model: FraudModel, flat: Float32Array, n: number): Promise<Float32Array> {
  const out = await session.run({ [model.inputName]: new ort.Tensor('float32', flat, [n, model.width]) });
  const probs = out[model.outputName];
  if (!probs) throw new Error(`the session has no output ${model.outputName}`);
  const data = probs.data as Float32Array;
  const classes = probs.dims[1] ?? 1;
  const scores = new Float32Array(n);
  for (let i = 0; i < n; i++) scores[i] = classes === 1 ? data[i]! : data[i * classes + model.positiveClassIndex]!;
  for (const t of Object.values(out)) t.dispose?.();
  return scores;
}

/**
 * Realistic fraud-model input vectors: simulated transactions of 200 accounts (PaySim-like amounts,
 * balances and types, fraud rings included), each with its account features computed by the stream's
 * engine at the event (the history so far), through fraudInputRow (the training vector).
 */
function benchVectors(seed: number, count: number): number[][] {
  const history = new Map<string, FeatureEvent[]>();
  const out: number[][] = [];
  let offset = 0;
  for (const { event } of generateTransactions({ seed, startTs: Date.UTC(2025, 0, 6), ratePerSec: 0.5, count, accounts: 200 })) {
    let events = history.get(event.account_id);
    if (!events) history.set(event.account_id, (events = []));
    const e = featureEvent(accountGroup, event.event_id, event.ts, offset++, event as unknown as Record<string, unknown>);
    events.push(e);
    out.push(fraudInputRow(event, evaluate(accountGroup, events, { event: e })));
  }
  return out;
}

// ----------------------------------------------------------------------------- 1. engine throughput

export interface EngineSample extends Sample {
  /** Mean wall time per ONNX run (request), µs. */
  readonly usPerRun: number;
}

function engineSampleOf(elapsedMs: number, runs: number, batch: number): EngineSample {
  return { ...sample(elapsedMs, runs * batch), usPerRun: (elapsedMs * 1000) / runs };
}

async function bareThroughput(session: ort.InferenceSession, model: FraudModel, flats: readonly Float32Array[], batch: number, totalRows: number): Promise<EngineSample> {
  const runs = Math.ceil(totalRows / batch);
  let sink = 0;
  const t0 = performance.now();
  for (let i = 0; i < runs; i++) sink += (await bareScore(session, model, flats[i % flats.length]!, batch))[0]!;
  const elapsed = performance.now() - t0;
  if (!Number.isFinite(sink)) throw new Error('the bare session returned a non-finite score');
  return engineSampleOf(elapsed, runs, batch);
}

/** `runs` requests of `batch` rows through handle.score, `window` in flight at all times. */
async function engineThroughput(handle: ModelHandle, batches: readonly (readonly number[][])[], batch: number, totalRows: number, window: number): Promise<EngineSample> {
  const runs = Math.ceil(totalRows / batch);
  const t0 = performance.now();
  await new Promise<void>((resolve, reject) => {
    let next = 0;
    let done = 0;
    let inFlight = 0;
    let failed = false;
    const launch = (): void => {
      while (!failed && inFlight < window && next < runs) {
        const rows = batches[next++ % batches.length]!;
        inFlight++;
        handle.score(rows).then(
          (r) => {
            inFlight--;
            if (r.scores.length !== rows.length) {
              failed = true;
              reject(new Error(`the engine answered ${r.scores.length} scores for ${rows.length} rows`));
              return;
            }
            if (++done === runs) resolve();
            else launch();
          },
          (err: unknown) => {
            failed = true;
            reject(err instanceof Error ? err : new Error(String(err)));
          },
        );
      }
    };
    launch();
  });
  return engineSampleOf(performance.now() - t0, runs, batch);
}

function chunk(vectors: readonly number[][], batch: number): number[][][] {
  const out: number[][][] = [];
  for (let i = 0; i + batch <= vectors.length; i += batch) out.push(vectors.slice(i, i + batch));
  return out;
}

/**
 * Pair 1, one row per batch size (ENGINE_BATCH_SIZES order). Per batch size: a fresh engine (maxBatch =
 * the batch size), its scores checked against the bare session's, a warm-up of both, then bare then
 * engine, `engineRepetitions` times. A failure is recorded on its batch size's row.
 */
export async function engineThroughputPair(ctx: ServingContext, rows: readonly RowSlot[]): Promise<void> {
  const model = fraudModel();
  const vectors = benchVectors(ctx.seed, VECTOR_COUNT);
  const total = ctx.sizes.engineRows;
  const session = await bareSession(model);
  try {
    for (const [k, batch] of ENGINE_BATCH_SIZES.entries()) {
      const row = rows[k]!;
      const engine = new ServingEngine({ provider: 'cpu', gpu: false, timeoutMs: ctx.base.scoringTimeoutMs });
      try {
        await engine.start();
        const handle = await engine.load(model.loadable, { maxBatch: batch });
        const window = ENGINE_WINDOW_PER_WORKER * engine.workerCount;
        const batches = chunk(vectors, batch);
        const flats = batches.map((b) => Float32Array.from(b.flat()));
        // Not timed: the engine answers what the bare session answers, for every batch shape.
        for (let i = 0; i < Math.min(4, batches.length); i++) {
          const ours = (await handle.score(batches[i]!)).scores;
          const ref = await bareScore(session, model, flats[i]!, batch);
          const diff = ours.reduce((m, s, j) => Math.max(m, Math.abs(s - ref[j]!)), 0);
          if (diff > 1e-5) throw new Error(`engine and bare scores differ by ${diff} at batch ${batch}`);
        }
        const warm = Math.max(batch * 200, Math.round(total / 10));
        await bareThroughput(session, model, flats, batch, warm);
        await engineThroughput(handle, batches, batch, warm, window);
        const ours: EngineSample[] = [];
        const ref: EngineSample[] = [];
        for (let i = 0; i < ctx.sizes.engineRepetitions; i++) {
          ref.push(await bareThroughput(session, model, flats, batch, total));
          ours.push(await engineThroughput(handle, batches, batch, total, window));
          ctx.progress(`serving 1/3 batch ${batch} rep ${i + 1}: bare ${formatNumber(ref.at(-1)!.rate)} rows/s (${ref.at(-1)!.usPerRun.toFixed(1)} µs/run), engine ${formatNumber(ours.at(-1)!.rate)} rows/s (${ours.at(-1)!.usPerRun.toFixed(1)} µs/request)`);
        }
        row.samples = { ours, reference: ref };
        row.ours = median(ours.map((s) => s.rate));
        row.reference = median(ref.map((s) => s.rate));
        row.ratio = row.ours / row.reference;
        const us = (xs: readonly EngineSample[]): string => median(xs.map((x) => x.usPerRun)).toFixed(1);
        row.notes.push(
          `${formatNumber(Math.ceil(total / batch) * batch)} rows per sample as ${formatNumber(Math.ceil(total / batch))} requests of ${batch}, ${ctx.sizes.engineRepetitions} repetitions (bare then engine) after a warm-up of each; median wall time per request: engine ${us(ours)} µs (${engine.workerCount} workers × ${engine.threads} thread${engine.threads === 1 ? '' : 's'}, ${window} requests in flight, handle.score(number[][]), maxBatch ${batch}: one ONNX run per request), bare ${us(ref)} µs per session.run (1 thread, sequential, this process, prebuilt Float32Array)`,
        );
        if (batch === ENGINE_BATCH_SIZES[0]) {
          row.notes.push(`rows: ${formatNumber(VECTOR_COUNT)} fixed vectors (simulated transactions of 200 accounts with their account features computed at the event, fraudInputRow), cycled; the engine's scores checked against the bare session's (max abs diff 1e-5) before timing`);
        }
      } catch (err) {
        row.error = messageOf(err);
        ctx.progress(`serving 1/3 batch ${batch} failed: ${row.error}`);
      } finally {
        await engine.close();
      }
    }
  } finally {
    await session.release().catch(() => undefined);
  }
}

// ------------------------------------------------------------------------------ 2. micro-batching

export interface OfferedStep {
  readonly offeredPerSec: number;
  readonly sent: number;
  readonly completed: number;
  readonly failed: number;
  /** Completions per second, first due time to last completion. */
  readonly achievedPerSec: number;
  readonly p50: number;
  readonly p95: number;
  readonly p99: number;
  /** Mean rows per ONNX run (the engine's batch histogram over the step). */
  readonly meanBatchRows: number;
  readonly pass: boolean;
  readonly why?: string;
}

async function batchHistogram(metrics: Metrics): Promise<{ sum: number; count: number }> {
  let sum = 0;
  let count = 0;
  for (const v of (await metrics.servingBatchRows.get()).values) {
    if (v.metricName?.endsWith('_sum')) sum += v.value;
    else if (v.metricName?.endsWith('_count')) count += v.value;
  }
  return { sum, count };
}

/**
 * Single-row requests offered open-loop at `rate`/s for `durationSec`: request i is due at t0 + i/rate
 * and submitted at the first timer tick at or after it (whatever is due is submitted at once, never
 * waiting for answers); its latency runs from its due time to its scores (so neither a late timer nor
 * a blocked event loop hides queueing). Passes when every request succeeded, the achieved rate is
 * within 10% of the offered one and p95 <= the bound.
 */
async function offeredStep(handle: ModelHandle, metrics: Metrics, vectors: readonly number[][], rate: number, durationSec: number): Promise<OfferedStep> {
  let n = Math.max(20, Math.round(rate * durationSec));
  const interval = 1000 / rate;
  const maxInFlight = Math.max(64, Math.round(rate * BATCHING_MAX_BACKLOG_SEC));
  const latencies: number[] = [];
  let completed = 0;
  let failed = 0;
  let firstError: string | null = null;
  let inFlight = 0;
  let sent = 0;
  let lastDone = 0;
  let stopped: string | null = null;
  let drained!: () => void;
  const allDone = new Promise<void>((resolve) => (drained = resolve));
  const settle = (): void => {
    inFlight--;
    if (sent === n && inFlight === 0) drained();
  };
  const before = await batchHistogram(metrics);
  const t0 = performance.now();
  while (sent < n) {
    const now = performance.now();
    while (sent < n && t0 + sent * interval <= now) {
      if (inFlight >= maxInFlight) {
        stopped = `${inFlight} requests in flight (${BATCHING_MAX_BACKLOG_SEC * 1000} ms of offered traffic): stopped after ${sent} of ${n}`;
        break;
      }
      const due = t0 + sent * interval;
      inFlight++;
      handle.score([vectors[sent % vectors.length]!]).then(
        () => {
          lastDone = performance.now();
          latencies.push(lastDone - due);
          completed++;
          settle();
        },
        (err: unknown) => {
          failed++;
          firstError ??= messageOf(err);
          settle();
        },
      );
      sent++;
    }
    if (stopped) {
      n = sent;
      break;
    }
    if (sent < n) await sleep(Math.max(0, t0 + sent * interval - performance.now()));
  }
  if (inFlight === 0) drained();
  await withTimeout(allDone, 30_000, `draining ${inFlight} requests at ${formatNumber(rate)}/s`);
  const after = await batchHistogram(metrics);
  const achievedPerSec = completed / (Math.max(lastDone - t0, 1) / 1000);
  const p95 = quantile(latencies, 0.95);
  const why = stopped ?? (failed > 0 ? `${failed} requests failed: ${firstError}` : p95 > BATCHING_P95_BOUND_MS ? `p95 ${p95.toFixed(2)} ms > ${BATCHING_P95_BOUND_MS} ms` : achievedPerSec < 0.9 * rate ? `achieved ${formatNumber(achievedPerSec)}/s of ${formatNumber(rate)}/s offered` : null);
  return {
    offeredPerSec: rate,
    sent,
    completed,
    failed,
    achievedPerSec,
    p50: quantile(latencies, 0.5),
    p95,
    p99: quantile(latencies, 0.99),
    meanBatchRows: after.count > before.count ? (after.sum - before.sum) / (after.count - before.count) : Number.NaN,
    pass: why === null,
    ...(why ? { why } : {}),
  };
}

export interface BatchingSearch {
  readonly maxBatch: number;
  readonly steps: OfferedStep[];
  /** Wall time of the search (warm-up and steps; engine start not included). */
  readonly seconds: number;
  /** The passing step of the highest offered rate (null when even the first failed). */
  readonly best: OfferedStep | null;
}

/**
 * Steps the offered rate up geometrically (x1.5 from 1,000/s) until a step fails twice in a row (one
 * retry absorbs a noisy neighbour), then bisects (geometric mean) between the last passing and the
 * first failing rate; bounded by the wall-time budget.
 */
async function searchSustained(ctx: ServingContext, maxBatch: number, vectors: readonly number[][]): Promise<BatchingSearch> {
  const metrics = new Metrics();
  const engine = new ServingEngine({ provider: 'cpu', gpu: false, timeoutMs: ctx.base.scoringTimeoutMs, metrics });
  const steps: OfferedStep[] = [];
  try {
    await engine.start();
    const handle = await engine.load(fraudModel().loadable, { maxBatch, maxQueueDelayMs: 0 });
    const stepSec = ctx.sizes.batchingStepSec;
    const started = performance.now();
    await offeredStep(handle, metrics, vectors, BATCHING_START_RATE, Math.min(0.5, stepSec));
    const deadline = performance.now() + ctx.sizes.batchingBudgetSec * 1000;
    const tryRate = async (rate: number): Promise<OfferedStep> => {
      let s = await offeredStep(handle, metrics, vectors, rate, stepSec);
      steps.push(s);
      if (!s.pass && performance.now() < deadline) {
        s = await offeredStep(handle, metrics, vectors, rate, stepSec);
        steps.push(s);
      }
      ctx.progress(`serving 2/3 maxBatch ${maxBatch}: ${formatNumber(rate)}/s offered → ${formatNumber(s.achievedPerSec)}/s, p95 ${s.p95.toFixed(2)} ms, ${s.meanBatchRows.toFixed(1)} rows/run${s.pass ? '' : ` (${s.why})`}`);
      return s;
    };
    let best: OfferedStep | null = null;
    let failedAt: number | null = null;
    for (let rate = BATCHING_START_RATE; rate <= BATCHING_MAX_RATE && performance.now() < deadline; rate *= BATCHING_FACTOR) {
      const s = await tryRate(Math.round(rate));
      if (!s.pass) {
        failedAt = s.offeredPerSec;
        break;
      }
      best = s;
    }
    for (let i = 0; i < ctx.sizes.batchingRefineSteps && best && failedAt && performance.now() < deadline; i++) {
      const s = await tryRate(Math.round(Math.sqrt(best.offeredPerSec * failedAt)));
      if (s.pass) best = s;
      else failedAt = s.offeredPerSec;
    }
    const seconds = (performance.now() - started) / 1000;
    ctx.progress(`serving 2/3 maxBatch ${maxBatch}: ${best ? `${formatNumber(best.achievedPerSec)} rows/s sustained` : 'no rate passed'} (${steps.length} steps, ${seconds.toFixed(1)} s)`);
    return { maxBatch, steps, best, seconds };
  } finally {
    await engine.close();
  }
}

/** Pair 2: maxBatch 1 (reference) then maxBatch 32 (ours), each searched for its highest sustained rate. */
export async function batchingGainPair(ctx: ServingContext, row: RowSlot): Promise<BatchingSearch[]> {
  const vectors = benchVectors(ctx.seed + 1, VECTOR_COUNT);
  const ref = await searchSustained(ctx, 1, vectors);
  const ours = await searchSustained(ctx, BATCHING_MAX_BATCH, vectors);
  const describe = (s: BatchingSearch): string =>
    `maxBatch ${s.maxBatch}: ${s.best ? `${formatNumber(s.best.achievedPerSec)} rows/s at ${formatNumber(s.best.offeredPerSec)}/s offered (p50 ${s.best.p50.toFixed(2)} / p95 ${s.best.p95.toFixed(2)} / p99 ${s.best.p99.toFixed(2)} ms, ${s.best.meanBatchRows.toFixed(1)} rows per ONNX run)` : 'no rate passed'}, searched in ${s.seconds.toFixed(1)} s; steps (offered/s → p95 ms): ${s.steps.map((x) => `${formatNumber(x.offeredPerSec)}→${x.p95.toFixed(2)}${x.pass ? '' : '✗'}`).join(', ')}`;
  row.notes.push(
    `single-row handle.score([row]) requests offered open-loop (request i due at t0 + i/rate, submitted at the first timer tick after it, latency from the due time); rates x${BATCHING_FACTOR} from ${formatNumber(BATCHING_START_RATE)}/s, ${ctx.sizes.batchingStepSec} s per step, a failing step retried once, then ${ctx.sizes.batchingRefineSteps} bisection steps; a step passes when every request succeeded, p95 <= ${BATCHING_P95_BOUND_MS} ms and the achieved rate is within 10% of the offered one; one engine per configuration (${availableParallelism()} workers, default threads, default concurrency (2 per worker), maxQueueDelayMs 0), maxBatch 1 first`,
    describe(ref),
    describe(ours),
  );
  if (!ref.best) throw new Error(`maxBatch 1 sustained no rate with p95 <= ${BATCHING_P95_BOUND_MS} ms (the first step: ${ref.steps[0]?.why ?? 'not run'})`);
  if (!ours.best) throw new Error(`maxBatch ${BATCHING_MAX_BATCH} sustained no rate with p95 <= ${BATCHING_P95_BOUND_MS} ms (the first step: ${ours.steps[0]?.why ?? 'not run'})`);
  row.reference = ref.best.achievedPerSec;
  row.ours = ours.best.achievedPerSec;
  row.ratio = row.ours / row.reference;
  return [ref, ours];
}

// ------------------------------------------------------------------------------- 3. predict latency

export interface PredictRows {
  readonly p50: RowSlot;
  readonly p99: RowSlot;
  readonly serverP50: RowSlot;
  readonly serverP99: RowSlot;
  /** Client-side p99 vs the predict budget (FABRIC_PREDICT_TIMEOUT_MS). */
  readonly budget: RowSlot;
}

interface LatencyRun {
  /** Client-side (ours) or whole-operation (floor) latencies, ms. */
  readonly total: number[];
  /** Ours: latencyMs the server reported; floor: the Redis read alone. */
  readonly inner: number[];
  /** Floor only: the session.run alone. */
  readonly model: number[];
  readonly errors: string[];
  readonly fallbacks: number;
  readonly cached: number;
  readonly achievedPerSec: number;
}

function postJson(agent: http.Agent, port: number, path: string, apiKey: string, body: string): Promise<{ status: number; text: string }> {
  return new Promise((resolve, reject) => {
    const req = http.request(
      { host: '127.0.0.1', port, path, method: 'POST', agent, headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body), authorization: `Bearer ${apiKey}` } },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, text: Buffer.concat(chunks).toString('utf8') }));
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    req.setTimeout(10_000, () => req.destroy(new Error('no answer within 10 s')));
    req.end(body);
  });
}

/** The seeded accounts' later transactions, each sent with a fresh event id and ts = now. */
class FreshTransactions {
  private next = 0;
  constructor(private readonly pool: readonly Transaction[], private readonly runId: string) {}
  take(): Transaction {
    const i = this.next++;
    return { ...this.pool[i % this.pool.length]!, event_id: `${this.runId}-predict-${i}`, ts: Date.now() };
  }
}

/** POST /v1/predict/fraud at `rate`/s for `sec` (open-loop: not waiting for answers, at most 64 in flight). */
async function predictRun(agent: http.Agent, port: number, apiKey: string, txns: FreshTransactions, rate: number, sec: number): Promise<LatencyRun> {
  const n = Math.max(1, Math.round(rate * sec));
  const interval = 1000 / rate;
  const total: number[] = [];
  const inner: number[] = [];
  const errors: string[] = [];
  let fallbacks = 0;
  let cached = 0;
  const inFlight = new Set<Promise<void>>();
  const t0 = performance.now();
  for (let i = 0; i < n; i++) {
    const wait = t0 + i * interval - performance.now();
    if (wait > 0) await sleep(wait);
    while (inFlight.size >= PREDICT_MAX_IN_FLIGHT) await Promise.race(inFlight);
    const body = JSON.stringify(txns.take());
    const sent = performance.now();
    const p = postJson(agent, port, '/v1/predict/fraud', apiKey, body).then(
      ({ status, text }) => {
        const at = performance.now();
        if (status !== 200) {
          if (errors.length < 5) errors.push(`${status} ${text.slice(0, 200)}`);
          return;
        }
        const r = JSON.parse(text) as { latencyMs: number; fallback: boolean; cached: boolean; score: number | null };
        total.push(at - sent);
        inner.push(r.latencyMs);
        if (r.fallback || r.score === null) fallbacks++;
        if (r.cached) cached++;
      },
      (err: unknown) => {
        if (errors.length < 5) errors.push(messageOf(err));
      },
    );
    const tracked: Promise<void> = p.finally(() => inFlight.delete(tracked));
    inFlight.add(tracked);
  }
  await Promise.all(inFlight);
  return { total, inner, model: [], errors, fallbacks, cached, achievedPerSec: n / ((performance.now() - t0) / 1000) };
}

/**
 * The floor, by hand, sequentially at `rate`/s: per transaction one ZRANGEBYSCORE of its account's
 * window (the members of the longest window before it, not decoded) and a bare session.run of its row
 * (event fields through fraudInputRow, features missing: the tree ensemble's cost does not depend on them).
 */
async function floorRun(redis: Redis, session: ort.InferenceSession, model: FraudModel, keyPrefix: string, txns: FreshTransactions, rate: number, sec: number): Promise<LatencyRun> {
  const n = Math.max(1, Math.round(rate * sec));
  const interval = 1000 / rate;
  const keys = groupKeys(keyPrefix, accountGroup);
  const total: number[] = [];
  const read: number[] = [];
  const run: number[] = [];
  let members = 0;
  const t0 = performance.now();
  for (let i = 0; i < n; i++) {
    const wait = t0 + i * interval - performance.now();
    if (wait > 0) await sleep(wait);
    const txn = txns.take();
    const a = performance.now();
    const window = await redis.zrangebyscore(keys.window(txn.account_id), `(${txn.ts - accountGroup.maxWindowMs}`, txn.ts);
    const b = performance.now();
    const scores = await bareScore(session, model, Float32Array.from(fraudInputRow(txn, {})), 1);
    const c = performance.now();
    if (!Number.isFinite(scores[0]!)) throw new Error('the bare session returned a non-finite score');
    members += window.length;
    total.push(c - a);
    read.push(b - a);
    run.push(c - b);
  }
  if (members === 0) throw new Error('the floor read no window member: the seeded features are not in Redis');
  return { total, inner: read, model: run, errors: [], fallbacks: 0, cached: 0, achievedPerSec: n / ((performance.now() - t0) / 1000) };
}

async function histogramSums(metrics: Metrics): Promise<{ runSec: number; runs: number; predictSec: number; predicts: number }> {
  const out = { runSec: 0, runs: 0, predictSec: 0, predicts: 0 };
  for (const v of (await metrics.servingRunSeconds.get()).values) {
    if (v.metricName?.endsWith('_sum')) out.runSec += v.value;
    else if (v.metricName?.endsWith('_count')) out.runs += v.value;
  }
  for (const v of (await metrics.predictLatency.get()).values) {
    if (v.metricName?.endsWith('_sum')) out.predictSec += v.value;
    else if (v.metricName?.endsWith('_count')) out.predicts += v.value;
  }
  return out;
}

/** POSTs the seed transactions (50 per request) and waits until the features processor wrote every one to its account's window. */
async function seedFeatures(ctx: ServingContext, config: FabricConfig, fabric: FabricHandle, redis: Redis, seed: readonly Transaction[]): Promise<void> {
  const agent = new http.Agent({ keepAlive: true, maxSockets: 4 });
  try {
    for (let i = 0; i < seed.length; i += SEED_BODY_EVENTS) {
      const { status, text } = await postJson(agent, fabric.gatewayPort!, '/v1/events/transactions', ctx.apiKey, JSON.stringify(seed.slice(i, i + SEED_BODY_EVENTS)));
      const accepted = status === 202 ? (JSON.parse(text) as { accepted?: number }).accepted : undefined;
      if (accepted !== Math.min(SEED_BODY_EVENTS, seed.length - i)) throw new Error(`seeding: POST /v1/events/transactions answered ${status} ${text.slice(0, 200)}`);
    }
  } finally {
    agent.destroy();
  }
  const keys = groupKeys(config.redisKeyPrefix, accountGroup);
  const accounts = [...new Set(seed.map((t) => t.account_id))];
  const deadline = Date.now() + 60_000;
  for (let stored = 0; ; ) {
    const pipeline = redis.pipeline();
    for (const a of accounts) pipeline.zcard(keys.window(a));
    stored = ((await pipeline.exec()) ?? []).reduce((s, [err, n]) => s + (err ? 0 : Number(n)), 0);
    if (stored >= seed.length) return;
    if (Date.now() > deadline) throw new Error(`seeding: the features processor wrote ${stored} of ${seed.length} events to Redis within 60 s`);
    await sleep(100);
  }
}

/**
 * Pair 3: the fabric in-process (gateway with predict, features + scoring chain), SEED_EVENTS
 * transactions of SEED_ACCOUNTS accounts over the last 2 minutes ingested through the gateway and
 * processed into Redis; then, `predictRepetitions` times, the floor then POST /v1/predict/fraud, each
 * at PREDICT_RATE/s for `predictSec` (after a warm-up of each), with the prediction cache off.
 */
export async function predictLatencyPair(ctx: ServingContext, rows: PredictRows): Promise<void> {
  const tag = 'serving';
  const config = loadConfig(undefined, { ...ctx.common, topicPrefix: `${ctx.prefix}${tag}.`, redisKeyPrefix: `${ctx.redisPrefix}${tag}:`, predictCacheTtlSec: 0 });
  const model = fraudModel();
  const startTs = Date.now() - SEED_SPAN_MS;
  const sim = [...generateTransactions({ seed: ctx.seed + 2, startTs, ratePerSec: SEED_EVENTS / ((SEED_SPAN_MS - 10_000) / 1000), count: SEED_EVENTS * 6, accounts: SEED_ACCOUNTS })].map((s) => s.event);
  const seed = sim.slice(0, SEED_EVENTS).map((t) => ({ ...t, event_id: `${ctx.runId}-seed-${t.event_id}` }));
  const seeded = new Set(seed.map((t) => t.account_id));
  const pool = sim.slice(SEED_EVENTS).filter((t) => seeded.has(t.account_id));
  if (pool.length === 0) throw new Error('no later transaction of a seeded account in the simulation');
  const txns = new FreshTransactions(pool, ctx.runId);

  ctx.progress(`serving 3/3: starting the fabric (gateway, features + scoring) under ${config.topicPrefix}`);
  const fabric = await startFabric(config, ctx.log, { processors: ['features'], gateway: true });
  const redis = new Redis(config.redisUrl, { lazyConnect: true, maxRetriesPerRequest: 2 });
  const agent = new http.Agent({ keepAlive: true, maxSockets: PREDICT_MAX_IN_FLIGHT });
  let session: ort.InferenceSession | null = null;
  try {
    await redis.connect();
    session = await bareSession(model);
    const port = fabric.gatewayPort;
    if (port === null) throw new Error('the fabric started without a gateway');
    const ts = performance.now();
    await seedFeatures(ctx, config, fabric, redis, seed);
    ctx.progress(`serving 3/3: ${SEED_EVENTS} transactions of ${seeded.size} accounts in Redis after ${formatNumber(performance.now() - ts)} ms; ${PREDICT_RATE} requests/s, ${ctx.sizes.predictRepetitions} × ${ctx.sizes.predictSec} s each`);

    const warmOurs = await predictRun(agent, port, ctx.apiKey, txns, PREDICT_RATE, ctx.sizes.predictWarmupSec);
    if (warmOurs.errors.length > 0) throw new Error(`POST /v1/predict/fraud failed: ${warmOurs.errors.join(' | ')}`);
    await floorRun(redis, session, model, config.redisKeyPrefix, txns, PREDICT_RATE, ctx.sizes.predictWarmupSec);

    const ours: LatencyRun[] = [];
    const floor: LatencyRun[] = [];
    const before = await histogramSums(fabric.metrics);
    for (let i = 0; i < ctx.sizes.predictRepetitions; i++) {
      floor.push(await floorRun(redis, session, model, config.redisKeyPrefix, txns, PREDICT_RATE, ctx.sizes.predictSec));
      ours.push(await predictRun(agent, port, ctx.apiKey, txns, PREDICT_RATE, ctx.sizes.predictSec));
      const o = ours.at(-1)!;
      const f = floor.at(-1)!;
      if (o.errors.length > 0) throw new Error(`POST /v1/predict/fraud failed: ${o.errors.join(' | ')}`);
      ctx.progress(`serving 3/3 rep ${i + 1}: floor p50 ${quantile(f.total, 0.5).toFixed(3)} / p99 ${quantile(f.total, 0.99).toFixed(3)} ms, predict client p50 ${quantile(o.total, 0.5).toFixed(3)} / p99 ${quantile(o.total, 0.99).toFixed(3)} ms, server p50 ${quantile(o.inner, 0.5).toFixed(3)} / p99 ${quantile(o.inner, 0.99).toFixed(3)} ms`);
    }
    const after = await histogramSums(fabric.metrics);
    const q = (runs: readonly LatencyRun[], pick: (r: LatencyRun) => number[], p: number): number => median(runs.map((r) => quantile(pick(r), p)));
    const set = (row: RowSlot, value: number, ref: number): void => {
      row.ours = value;
      row.reference = ref;
      row.ratio = value / ref;
    };
    const floorP50 = q(floor, (r) => r.total, 0.5);
    const floorP99 = q(floor, (r) => r.total, 0.99);
    set(rows.p50, q(ours, (r) => r.total, 0.5), floorP50);
    set(rows.p99, q(ours, (r) => r.total, 0.99), floorP99);
    set(rows.serverP50, q(ours, (r) => r.inner, 0.5), floorP50);
    set(rows.serverP99, q(ours, (r) => r.inner, 0.99), floorP99);
    set(rows.budget, rows.p99.ours!, config.predictTimeoutMs);

    const list = (runs: readonly LatencyRun[], pick: (r: LatencyRun) => number[], p: number): string => runs.map((r) => quantile(pick(r), p).toFixed(3)).join(', ');
    const fallbacks = ours.reduce((s, r) => s + r.fallbacks, 0);
    const cached = ours.reduce((s, r) => s + r.cached, 0);
    const answered = ours.reduce((s, r) => s + r.total.length, 0);
    const runs = after.runs - before.runs;
    const predicts = after.predicts - before.predicts;
    rows.p50.notes.push(
      `fabric in this process (processors features + scoring, gateway; FABRIC_PREDICT_CACHE_TTL_SEC=0, budget ${config.predictTimeoutMs} ms), ${SEED_EVENTS} simulated transactions of ${seeded.size} accounts (event times over the last ${SEED_SPAN_MS / 60_000} min) POSTed to /v1/events/transactions and waited for in Redis (their account windows); then ${ctx.sizes.predictRepetitions} repetitions of the floor then ours, ${PREDICT_RATE}/s for ${ctx.sizes.predictSec} s each (after a ${ctx.sizes.predictWarmupSec} s warm-up of each), later transactions of the seeded accounts with fresh event ids and ts = now; p50/p99 = median over the repetitions`,
      `ours: POST /v1/predict/fraud over node:http keep-alive from this process (open-loop at the rate, at most ${PREDICT_MAX_IN_FLIGHT} in flight), latency from the request's write to the whole answer read; per repetition p50 [${list(ours, (r) => r.total, 0.5)}] ms, p99 [${list(ours, (r) => r.total, 0.99)}] ms; achieved ${formatNumber(median(ours.map((r) => r.achievedPerSec)))} requests/s; ${answered} answers 200, ${fallbacks} with a fallback decision, ${cached} cached`,
      `floor: by hand in this process, sequential at the same rate: ioredis ZRANGEBYSCORE of the account's window (members of the last 24 h, not decoded) p50 ${q(floor, (r) => r.inner, 0.5).toFixed(3)} / p99 ${q(floor, (r) => r.inner, 0.99).toFixed(3)} ms, then a bare session.run of one row (1 thread) p50 ${q(floor, (r) => r.model, 0.5).toFixed(3)} / p99 ${q(floor, (r) => r.model, 0.99).toFixed(3)} ms; whole floor per repetition p50 [${list(floor, (r) => r.total, 0.5)}] ms, p99 [${list(floor, (r) => r.total, 0.99)}] ms`,
      `inside the server over the measured repetitions: mean predict latency ${predicts ? ((after.predictSec - before.predictSec) * 1000 / predicts).toFixed(3) : 'n/a'} ms (${predicts} calls, fabric_predict_duration_seconds), of which the engine round trip (dispatch to scores, the message to the worker included) ${runs ? ((after.runSec - before.runSec) * 1000 / runs).toFixed(3) : 'n/a'} ms mean over ${runs} ONNX runs`,
    );
    rows.p99.notes.push('same repetitions as the row above');
    rows.serverP50.notes.push('latencyMs the predict answer reports (validation, online feature read, vectorize, engine, rules; no HTTP), same repetitions, vs the same floor');
    rows.budget.notes.push(`client-side p99 of the row above vs the predict budget (FABRIC_PREDICT_TIMEOUT_MS = ${config.predictTimeoutMs} ms): ratio = p99 / budget`);
  } finally {
    agent.destroy();
    await session?.release().catch(() => undefined);
    redis.disconnect();
    await withTimeout(fabric.stop(), 60_000, 'stopping the serving fabric').catch((err: unknown) => ctx.progress(`serving 3/3: ${messageOf(err)}`));
  }
}
