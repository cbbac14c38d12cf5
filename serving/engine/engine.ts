import { availableParallelism } from 'node:os';
import { FabricError, messageOf } from '../../topology/errors.js';
import { backoffMs, sleep } from '../../topology/runtime/retry.js';
import type { Metrics } from '../../topology/runtime/metrics.js';
import type { InputInfo, ModelSpec } from './protocol.js';
import { RunError, spawnWorker, type Isolation, type Loaded, type ModelWorker } from './workers.js';

export type ProviderChoice = 'auto' | 'cuda' | 'cpu';

/**
 * `starting`: workers loading. `ready`: every worker answers. `degraded`: some workers are restarting,
 * the others serve. `restarting`: no worker serves right now (all restarting). `failed`: a worker spent
 * its restart budget; calls fail fast (retriable) until `start()` is called again.
 */
export type EngineState = 'starting' | 'ready' | 'degraded' | 'restarting' | 'failed';

export interface EngineOptions {
  /** Workers, each with a session per loaded model. Default: one per core. */
  readonly workers?: number;
  /** Worker threads (default, fastest) or child processes (crash isolation); see workers.ts. */
  readonly isolation?: Isolation;
  readonly provider: ProviderChoice;
  /** CUDA allowed (auto tries cuda then cpu only when true). */
  readonly gpu: boolean;
  /** Intra-op threads per session. Default: cores / workers, at least 1. */
  readonly threads?: number;
  /** Let idle ONNX threads spin (lower latency, burns CPU). Default false. */
  readonly spinning?: boolean;
  /**
   * Longest a run may take: a later answer fails its requests with FABRIC_MODEL_TIMEOUT and recycles
   * the worker (a stuck run would block every later one). Also how long a call waits for a restarting worker.
   */
  readonly timeoutMs: number;
  /** Longest a model may take to load in a worker. Default 30 s. */
  readonly loadTimeoutMs?: number;
  /** Restarts of a worker in a row without a successful run in between before giving up. Default 5. */
  readonly maxRestarts?: number;
  readonly restartBaseMs?: number;
  readonly restartCapMs?: number;
  readonly metrics?: Metrics;
  readonly onStateChange?: (state: EngineState, cause?: Error) => void;
}

/** Triton's two knobs, plus how many batches of one model may run at once. */
export interface BatchingOptions {
  /** Most rows in one ONNX run. Default 64. */
  readonly maxBatch?: number;
  /** How long a request may wait for others to fill a batch when a worker is free. Default 0: requests batch only while the workers are busy. */
  readonly maxQueueDelayMs?: number;
  /** Batches of this model in flight at once. Default: two per worker (one runs while the next is on its way). */
  readonly concurrency?: number;
  /** Rows waiting before further requests are refused (FABRIC_MODEL_OVERLOADED). Default 100,000. */
  readonly maxQueuedRows?: number;
}

/** A model version as the engine loads it (the registry's loader verified the artifact first). */
export interface LoadableModel {
  readonly name: string;
  readonly version: string;
  readonly bytes?: Uint8Array;
  readonly path?: string;
  readonly inputName: string;
  readonly outputName: string;
  readonly positiveClassIndex: number;
  /** Declared input names, in order (the signature); the session's input must take exactly this many. */
  readonly inputs: readonly string[];
}

export interface ScoreResult {
  /** One score per row (the positive class probability). */
  readonly scores: Float32Array;
  /** Execution provider of the session that ran the rows (cuda, cpu). */
  readonly provider: string;
}

/** A worker position in the pool (its process is replaced on death). */
export interface WorkerSlot {
  readonly index: number;
  worker: ModelWorker | null;
  provider: string;
  failures: number;
  restarting: boolean;
  gaveUp: FabricError | null;
  /** Model keys loaded in the current worker. */
  keys: Set<string>;
}

interface Request {
  /** Owned by the engine (built by score()): a lone request's buffer is transferred as it is. */
  readonly owned: boolean;
  readonly rows: Float32Array;
  readonly n: number;
  readonly enqueued: number;
  resolve(r: ScoreResult): void;
  reject(err: Error): void;
}

const DEFAULT_MAX_BATCH = 64;
const DEFAULT_MAX_QUEUED_ROWS = 100_000;

/**
 * The serving engine, one for every path (stream scoring, POST /v1/predict, batch jobs): a pool of
 * ONNX worker processes (one per core by default), each holding a session per loaded model version,
 * and per model a dynamic micro-batcher: requests queue, and a batch of up to `maxBatch` rows goes
 * to the least busy worker as soon as one of the model's `concurrency` slots is free (after at most
 * `maxQueueDelayMs` to fill it). The execution provider is chosen at load: `cuda` when configured
 * (and then only cuda: a cuda configuration never silently runs on cpu), `auto` tries cuda when the
 * GPU is allowed, else cpu; every result says which ran it.
 *
 * Failures: a worker that dies or exceeds `timeoutMs` fails its runs (FABRIC_MODEL_UNAVAILABLE /
 * FABRIC_MODEL_TIMEOUT, both retriable: timing, not input) and is replaced with backoff, the models
 * reloaded; the other workers keep serving. A run the model itself refuses fails its requests with
 * FABRIC_MODEL_INVALID (deterministic).
 */
export class ServingEngine {
  private readonly slots: WorkerSlot[];
  private readonly models = new Map<string, ModelHandle>();
  private readonly abort = new AbortController();
  private readonly waiters = new Set<() => void>();
  private current: EngineState = 'starting';
  private readonly listeners = new Set<(state: EngineState, cause?: Error) => void>();
  private closed = false;
  readonly threads: number;
  readonly providers: readonly string[];

  constructor(readonly options: EngineOptions) {
    const cores = availableParallelism();
    const workers = options.workers ?? cores;
    if (!Number.isInteger(workers) || workers < 1) throw new FabricError('FABRIC_CONFIG_INVALID', `serving engine: workers must be a positive integer, got ${workers}`);
    this.threads = options.threads ?? Math.max(1, Math.floor(cores / workers));
    this.providers = options.provider === 'cpu' ? ['cpu'] : options.provider === 'cuda' ? ['cuda'] : options.gpu ? ['cuda', 'cpu'] : ['cpu'];
    this.slots = Array.from({ length: workers }, (_, index) => ({ index, worker: null, provider: 'none', failures: 0, restarting: false, gaveUp: null, keys: new Set<string>() }));
  }

  get state(): EngineState {
    return this.current;
  }

  get workerCount(): number {
    return this.slots.length;
  }

  /** Provider of the first live worker's sessions (cuda, cpu), `none` before any model loaded. */
  get provider(): string {
    return this.slots.find((s) => s.worker && s.provider !== 'none')?.provider ?? 'none';
  }

  /** Loaded model versions by key (`name@version`). */
  get loaded(): ReadonlyMap<string, ModelHandle> {
    return this.models;
  }

  /** Subscribes to state changes; returns the unsubscribe function. */
  onStateChange(listener: (state: EngineState, cause?: Error) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** Spawns the workers (again after `failed`, which resets the restart budgets). */
  async start(): Promise<void> {
    if (this.closed) throw new FabricError('FABRIC_SHUTTING_DOWN', 'serving engine closed');
    const fresh = this.slots.filter((s) => !s.worker && !s.restarting);
    for (const slot of fresh) {
      slot.failures = 0;
      slot.gaveUp = null;
    }
    this.setState('starting');
    await Promise.all(fresh.map((slot) => this.spawn(slot).then((w) => this.install(slot, w))));
    this.refreshState();
  }

  /**
   * Loads a model version into every worker and returns its handle; the same handle when already
   * loaded. Fails with FABRIC_MODEL_INVALID when a session cannot be created, within the load
   * timeout, or when the session's input does not match the declared signature (name, float tensor of
   * [batch, inputs.length]); nothing is then kept.
   */
  async load(model: LoadableModel, batching: BatchingOptions = {}): Promise<ModelHandle> {
    if (this.closed) throw new FabricError('FABRIC_SHUTTING_DOWN', 'serving engine closed');
    const key = modelKey(model.name, model.version);
    const existing = this.models.get(key);
    if (existing) return existing;
    if (!model.bytes && !model.path) throw new FabricError('FABRIC_MODEL_INVALID', `model ${key}: neither bytes nor a path to load`);
    const spec: ModelSpec = {
      key,
      ...(model.path !== undefined ? { path: model.path } : { bytes: model.bytes! }),
      inputName: model.inputName,
      outputName: model.outputName,
      width: model.inputs.length,
      positiveClassIndex: model.positiveClassIndex,
      providers: this.providers,
      threads: this.threads,
      spinning: this.options.spinning ?? false,
    };
    const handle = new ModelHandle(this, model, spec, batching);
    const live = this.slots.filter((s) => s.worker);
    if (live.length === 0) throw this.unavailable(`has no live worker to load ${key} into`);
    const results = await Promise.allSettled(live.map((s) => this.loadInto(s, spec)));
    const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) {
      for (const s of live) s.worker?.unload(key);
      throw failed.reason instanceof FabricError ? failed.reason : new FabricError('FABRIC_MODEL_INVALID', `model ${key}: ${messageOf(failed.reason)}`, { cause: failed.reason });
    }
    handle.provider = (results[0] as PromiseFulfilledResult<Loaded>).value.provider;
    this.models.set(key, handle);
    return handle;
  }

  /**
   * Unloads a version: later and queued requests fail retriably (FABRIC_MODEL_UNAVAILABLE), runs in
   * flight finish, then the sessions are released.
   */
  unload(handle: ModelHandle): void {
    if (this.models.get(handle.key) !== handle) return;
    this.models.delete(handle.key);
    handle.retire(new FabricError('FABRIC_MODEL_UNAVAILABLE', `model ${handle.key} was unloaded`), () => {
      for (const s of this.slots) {
        if (this.models.has(handle.key)) return; // loaded again meanwhile
        s.keys.delete(handle.key);
        s.worker?.unload(handle.key);
      }
    });
  }

  /** Test hook: the next run on every live worker exits, throws or hangs. */
  injectFault(fault: 'exit' | 'throw' | 'hang', workerIndex?: number): void {
    for (const s of this.slots) if (workerIndex === undefined || s.index === workerIndex) s.worker?.injectFault(fault);
  }

  /** Resolves when at least one worker serves; fails (retriable) after `timeoutMs`, or at once when failed/closed. */
  async whenReady(timeoutMs: number): Promise<void> {
    await this.liveSlot(timeoutMs);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.abort.abort();
    for (const handle of this.models.values()) handle.failQueued(new FabricError('FABRIC_SHUTTING_DOWN', 'serving engine closed'));
    this.models.clear();
    await Promise.all(this.slots.map((s) => s.worker?.kill(new FabricError('FABRIC_SHUTTING_DOWN', 'serving engine closed'))));
    for (const s of this.slots) s.worker = null;
    for (const wake of this.waiters) wake();
    this.waiters.clear();
  }

  /** The least busy live worker that has the model (null when none serves right now). */
  pick(key: string): WorkerSlot | null {
    let best: WorkerSlot | null = null;
    for (const s of this.slots) {
      if (!s.worker || s.worker.dead || !this.hasModel(s, key)) continue;
      if (!best || s.worker.inFlight < best.worker!.inFlight) best = s;
    }
    return best;
  }

  /** Waits for a live worker (a restart in progress), at most `timeoutMs`. */
  async liveSlot(timeoutMs: number, key?: string): Promise<WorkerSlot> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      if (this.closed) throw new FabricError('FABRIC_SHUTTING_DOWN', 'serving engine closed');
      const slot = key === undefined ? this.slots.find((s) => s.worker && !s.worker.dead) ?? null : this.pick(key);
      if (slot) return slot;
      if (this.current === 'failed') throw this.unavailable(`gave up restarting its workers: ${this.slots.find((s) => s.gaveUp)?.gaveUp?.message ?? ''}`);
      const left = deadline - Date.now();
      if (left <= 0) throw this.unavailable(`is ${this.current}; no worker ready within ${timeoutMs} ms`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(() => {
          this.waiters.delete(wake);
          resolve();
        }, left);
        const wake = (): void => {
          clearTimeout(timer);
          resolve();
        };
        this.waiters.add(wake);
      });
    }
  }

  /** One ONNX run on a worker, bounded by the timeout; a timeout recycles the worker. */
  async runOn(slot: WorkerSlot, key: string, rows: Float32Array, n: number): Promise<ScoreResult> {
    const worker = slot.worker!;
    const timeoutMs = this.options.timeoutMs;
    let timer: NodeJS.Timeout | undefined;
    let settled = false;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        // A main thread busy for longer than the timeout runs this timer before the answer that
        // arrived meanwhile: let pending messages in first (the check phase follows the poll phase).
        setImmediate(() => {
          if (settled) return;
          reject(new FabricError('FABRIC_MODEL_TIMEOUT', `model ${key} did not answer within ${timeoutMs} ms`));
          void worker.kill(new Error(`a run exceeded ${timeoutMs} ms; the worker was recycled`));
        });
      }, timeoutMs);
    });
    try {
      const scores = await Promise.race([worker.run(key, rows, n).finally(() => (settled = true)), timeout]);
      slot.failures = 0;
      return { scores, provider: slot.provider };
    } catch (err) {
      if (err instanceof FabricError) throw err;
      if (err instanceof RunError) throw new FabricError('FABRIC_MODEL_INVALID', `model ${key} failed: ${err.message}`, { cause: err });
      throw this.unavailable(`worker died: ${messageOf(err)}`, err);
    } finally {
      clearTimeout(timer);
    }
  }

  private hasModel(slot: WorkerSlot, key: string): boolean {
    return slot.keys.has(key);
  }

  private async loadInto(slot: WorkerSlot, spec: ModelSpec): Promise<Loaded> {
    const worker = slot.worker;
    if (!worker) throw this.unavailable('worker is restarting');
    const timeoutMs = this.options.loadTimeoutMs ?? 30_000;
    let timer: NodeJS.Timeout | undefined;
    try {
      const loaded = await Promise.race([
        worker.load(spec),
        new Promise<never>((_, reject) => {
          timer = setTimeout(() => {
            reject(new FabricError('FABRIC_MODEL_INVALID', `model ${spec.key}: not loaded within ${timeoutMs} ms`));
            // A load stuck in native code holds the worker: recycle it.
            void worker.kill(new Error(`loading ${spec.key} exceeded ${timeoutMs} ms; the worker was recycled`));
          }, timeoutMs);
        }),
      ]);
      checkInputs(spec, loaded.inputs, loaded.outputs);
      slot.keys.add(spec.key);
      slot.provider = loaded.provider;
      return loaded;
    } catch (err) {
      if (err instanceof FabricError) throw err;
      throw new FabricError('FABRIC_MODEL_INVALID', `model ${spec.key}: ${messageOf(err)}`, { cause: err });
    } finally {
      clearTimeout(timer);
    }
  }

  private async spawn(slot: WorkerSlot): Promise<ModelWorker> {
    const worker = spawnWorker(this.options.isolation ?? 'thread');
    slot.keys = new Set();
    slot.worker = worker;
    try {
      // Every model loaded so far is loaded into a new worker before it takes runs.
      for (const handle of this.models.values()) await this.loadInto(slot, handle.spec);
    } catch (err) {
      slot.worker = null;
      await worker.kill(err instanceof Error ? err : new Error(String(err)));
      throw err;
    }
    slot.worker = null;
    return worker;
  }

  private install(slot: WorkerSlot, worker: ModelWorker): void {
    if (this.closed) {
      void worker.kill(new FabricError('FABRIC_SHUTTING_DOWN', 'serving engine closed'));
      return;
    }
    slot.worker = worker;
    slot.restarting = false;
    worker.onDeath((cause) => this.died(slot, worker, cause));
    this.refreshState();
    for (const wake of this.waiters) wake();
    this.waiters.clear();
    for (const handle of this.models.values()) handle.pump();
  }

  private died(slot: WorkerSlot, worker: ModelWorker, cause: Error): void {
    if (slot.worker !== worker || this.closed) return;
    slot.worker = null;
    slot.failures++;
    this.options.metrics?.servingWorkerRestarts.inc();
    void this.restart(slot, cause);
  }

  private async restart(slot: WorkerSlot, cause: Error): Promise<void> {
    for (let first = true; ; first = false) {
      if (this.closed) return;
      if (slot.failures <= (this.options.maxRestarts ?? 5) && first) {
        slot.restarting = true;
        this.refreshState(cause);
      }
      if (slot.failures > (this.options.maxRestarts ?? 5)) {
        slot.restarting = false;
        slot.gaveUp = this.unavailable(`worker ${slot.index} gave up after ${this.options.maxRestarts ?? 5} restarts in a row: ${cause.message}`, cause);
        this.refreshState(slot.gaveUp);
        for (const wake of this.waiters) wake();
        this.waiters.clear();
        for (const handle of this.models.values()) handle.pump();
        return;
      }
      await sleep(backoffMs(slot.failures - 1, this.options.restartBaseMs ?? 200, this.options.restartCapMs ?? 10_000), this.abort.signal);
      if (this.closed) return;
      try {
        return this.install(slot, await this.spawn(slot));
      } catch (err) {
        cause = err instanceof Error ? err : new Error(String(err));
        slot.failures++;
      }
    }
  }

  private refreshState(cause?: Error): void {
    const live = this.slots.filter((s) => s.worker).length;
    const restarting = this.slots.some((s) => s.restarting);
    const next: EngineState = this.slots.some((s) => s.gaveUp) ? 'failed' : live === this.slots.length ? 'ready' : !restarting && this.current === 'starting' ? 'starting' : live > 0 ? 'degraded' : 'restarting';
    this.setState(next, cause);
  }

  private setState(state: EngineState, cause?: Error): void {
    if (state === this.current) return;
    this.current = state;
    for (const listener of [this.options.onStateChange, ...this.listeners]) {
      try {
        listener?.(state, cause);
      } catch {
        // A listener's failure must not break the engine.
      }
    }
  }

  unavailable(why: string, cause?: unknown): FabricError {
    return new FabricError('FABRIC_MODEL_UNAVAILABLE', `serving engine ${why}`, cause === undefined ? {} : { cause });
  }
}

/**
 * One loaded model version: its micro-batcher. `score` queues rows (split into maxBatch chunks) and
 * resolves with their scores; batches form from whatever is queued when one of the model's
 * concurrency slots frees (or after maxQueueDelayMs), so under load requests share ONNX runs.
 */
export class ModelHandle {
  readonly key: string;
  readonly name: string;
  readonly version: string;
  readonly width: number;
  readonly maxBatch: number;
  readonly maxQueueDelayMs: number;
  readonly concurrency: number;
  readonly maxQueuedRows: number;
  provider = 'none';
  private readonly queue: Request[] = [];
  private queuedRows = 0;
  private inFlight = 0;
  private timer: NodeJS.Timeout | null = null;
  private retired: FabricError | null = null;
  private onIdle: (() => void) | null = null;

  constructor(private readonly engine: ServingEngine, readonly model: LoadableModel, readonly spec: ModelSpec, batching: BatchingOptions) {
    this.key = spec.key;
    this.name = model.name;
    this.version = model.version;
    this.width = model.inputs.length;
    this.maxBatch = batching.maxBatch ?? DEFAULT_MAX_BATCH;
    this.maxQueueDelayMs = batching.maxQueueDelayMs ?? 0;
    this.concurrency = batching.concurrency ?? 2 * engine.workerCount;
    this.maxQueuedRows = batching.maxQueuedRows ?? DEFAULT_MAX_QUEUED_ROWS;
    if (!(this.maxBatch >= 1 && this.concurrency >= 1 && this.maxQueueDelayMs >= 0)) throw new FabricError('FABRIC_CONFIG_INVALID', `model ${this.key}: maxBatch and concurrency must be >= 1, maxQueueDelayMs >= 0`);
  }

  /** Rows waiting for a batch. */
  get queued(): number {
    return this.queuedRows;
  }

  /**
   * Scores rows (each `width` numbers). Fails with FABRIC_MODEL_TIMEOUT / FABRIC_MODEL_UNAVAILABLE
   * (retriable), FABRIC_MODEL_OVERLOADED when too many rows wait, FABRIC_MODEL_INVALID when the rows
   * do not fit the model or the model refuses them.
   */
  score(rows: readonly (readonly number[])[]): Promise<ScoreResult> {
    const flat = new Float32Array(rows.length * this.width);
    for (let i = 0; i < rows.length; i++) {
      const row = rows[i]!;
      if (row.length !== this.width) return Promise.reject(new FabricError('FABRIC_MODEL_INVALID', `row ${i} has ${row.length} inputs, model ${this.key} takes ${this.width}`));
      flat.set(row, i * this.width);
    }
    return this.scoreRows(flat, rows.length, true);
  }

  /** As `score`, with rows already flat (row-major Float32Array of n * width); the caller keeps its array. */
  scoreFlat(flat: Float32Array, n: number): Promise<ScoreResult> {
    return this.scoreRows(flat, n, false);
  }

  private async scoreRows(flat: Float32Array, n: number, owned: boolean): Promise<ScoreResult> {
    if (this.retired) throw this.retired;
    if (n === 0) return { scores: new Float32Array(0), provider: this.provider };
    if (flat.length !== n * this.width) throw new FabricError('FABRIC_MODEL_INVALID', `model ${this.key}: ${flat.length} values are not ${n} rows of ${this.width}`);
    // A request larger than the bound alone is admitted into an empty queue (its caller holds those rows anyway).
    if (this.queuedRows > 0 && this.queuedRows + n > this.maxQueuedRows) throw new FabricError('FABRIC_MODEL_OVERLOADED', `model ${this.key}: ${this.queuedRows} rows already wait for a batch (limit ${this.maxQueuedRows})`);
    if (n <= this.maxBatch) return this.enqueue(flat, n, owned);
    // Larger than a batch: chunks run in parallel on the workers, scores joined in order.
    const parts: Promise<ScoreResult>[] = [];
    for (let start = 0; start < n; start += this.maxBatch) {
      const m = Math.min(this.maxBatch, n - start);
      parts.push(this.enqueue(flat.subarray(start * this.width, (start + m) * this.width), m, false));
    }
    const results = await Promise.all(parts);
    const scores = new Float32Array(n);
    let at = 0;
    for (const r of results) {
      scores.set(r.scores, at);
      at += r.scores.length;
    }
    return { scores, provider: results[0]!.provider };
  }

  private enqueue(rows: Float32Array, n: number, owned: boolean): Promise<ScoreResult> {
    return new Promise<ScoreResult>((resolve, reject) => {
      this.queue.push({ owned, rows, n, enqueued: performance.now(), resolve, reject });
      this.queuedRows += n;
      this.pump();
    });
  }

  /** Sends batches while a concurrency slot is free and a worker has the model. */
  pump(): void {
    while (this.queue.length > 0 && this.inFlight < this.concurrency) {
      if (this.engine.state === 'failed' && !this.engine.pick(this.key)) {
        this.failQueued(this.engine.unavailable('has failed (restart budget spent)'));
        return;
      }
      if (this.maxQueueDelayMs > 0 && this.queuedRows < this.maxBatch) {
        const waited = performance.now() - this.queue[0]!.enqueued;
        if (waited < this.maxQueueDelayMs) {
          this.timer ??= setTimeout(() => {
            this.timer = null;
            this.pump();
          }, this.maxQueueDelayMs - waited);
          return;
        }
      }
      const slot = this.engine.pick(this.key);
      if (!slot) {
        // Every worker is restarting: wait for one (bounded by the run timeout), then go on.
        this.waitForWorker();
        return;
      }
      const batch: Request[] = [];
      let n = 0;
      while (this.queue.length > 0 && n + this.queue[0]!.n <= this.maxBatch) {
        const r = this.queue.shift()!;
        batch.push(r);
        n += r.n;
      }
      this.queuedRows -= n;
      this.dispatch(slot, batch, n);
    }
  }

  private waiting = false;

  private waitForWorker(): void {
    if (this.waiting) return;
    this.waiting = true;
    this.engine.liveSlot(this.engine.options.timeoutMs, this.key).then(
      () => {
        this.waiting = false;
        this.pump();
      },
      (err: Error) => {
        this.waiting = false;
        this.failQueued(err);
      },
    );
  }

  private dispatch(slot: WorkerSlot, batch: Request[], n: number): void {
    const width = this.width;
    // The run's buffer is transferred to a worker thread: a lone request's own buffer when the engine
    // built it, else a copy (callers keep their arrays; views of one array cannot be transferred apart).
    const lone = batch.length === 1 && batch[0]!.owned;
    const rows = lone ? batch[0]!.rows : new Float32Array(n * width);
    if (!lone) {
      let at = 0;
      for (const r of batch) {
        rows.set(r.rows, at);
        at += r.rows.length;
      }
    }
    this.inFlight++;
    const started = performance.now();
    const metrics = this.engine.options.metrics;
    metrics?.servingBatchRows.observe({ model: this.name }, n);
    this.engine.runOn(slot, this.key, rows, n).then(
      ({ scores, provider }) => {
        metrics?.servingRunSeconds.observe({ model: this.name, provider }, (performance.now() - started) / 1000);
        metrics?.servingRows.inc({ model: this.name, version: this.version, provider }, n);
        let at = 0;
        for (const r of batch) {
          r.resolve({ scores: scores.subarray(at, at + r.n), provider });
          at += r.n;
        }
      },
      (err: Error) => {
        for (const r of batch) r.reject(err);
      },
    ).finally(() => {
      this.inFlight--;
      if (this.inFlight === 0 && this.onIdle) {
        const idle = this.onIdle;
        this.onIdle = null;
        idle();
      }
      this.pump();
    });
  }

  /** No new requests; queued ones fail with `err`; `idle` runs once the runs in flight finished. */
  retire(err: FabricError, idle: () => void): void {
    this.retired = err;
    this.failQueued(err);
    if (this.inFlight === 0) idle();
    else this.onIdle = idle;
  }

  failQueued(err: Error): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    for (const r of this.queue.splice(0)) r.reject(err);
    this.queuedRows = 0;
  }
}

export function modelKey(name: string, version: string): string {
  return `${name}@${version}`;
}

/** The session must take one float tensor named as declared, of [batch, inputs.length], and give the declared output. */
function checkInputs(spec: ModelSpec, inputs: readonly InputInfo[], outputs: readonly string[]): void {
  const problems: string[] = [];
  if (inputs.length !== 1) problems.push(`the session has ${inputs.length} inputs (${inputs.map((i) => i.name).join(', ')}); the fabric feeds exactly one tensor`);
  const input = inputs.find((i) => i.name === spec.inputName);
  if (!input) problems.push(`no input named ${spec.inputName} (the session's: ${inputs.map((i) => i.name).join(', ')})`);
  else {
    if (input.type !== 'float32') problems.push(`input ${input.name} is ${input.type}, not float32`);
    const width = input.shape[1];
    if (input.shape.length !== 2) problems.push(`input ${input.name} has shape [${input.shape.join(', ')}], not [batch, ${spec.width}]`);
    else if (width !== -1 && width !== spec.width) problems.push(`input ${input.name} takes ${width} values per row; the signature declares ${spec.width}`);
  }
  if (!outputs.includes(spec.outputName)) problems.push(`no output named ${spec.outputName} (the session's: ${outputs.join(', ')})`);
  if (problems.length > 0) throw new FabricError('FABRIC_MODEL_INVALID', `model ${spec.key} does not match its declared signature: ${problems.join('; ')}`);
}
