import { fork, type ChildProcess } from 'node:child_process';
import { createRequire } from 'node:module';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { FabricError, messageOf } from '../../topology/errors.js';
import { backoffMs, sleep } from '../../topology/runtime/retry.js';
import type { ModelArtifact } from './model-artifact.js';

export type ProviderChoice = 'auto' | 'cuda' | 'cpu';

/**
 * `starting`: first worker loading. `ready`: a worker answers calls. `restarting`: the worker died (crash,
 * uncaught error, or recycled after a timeout) and a new one is being started with backoff. `failed`: the
 * restart budget is spent; calls fail fast (retriable) until `start()` is called again.
 */
export type RunnerState = 'starting' | 'ready' | 'restarting' | 'failed';

/** Test hook: how the worker process fails its next run request (see `injectFault`). */
export type WorkerFault = 'exit' | 'throw' | 'hang';

export interface ModelRunnerOptions {
  readonly provider: ProviderChoice;
  readonly threads: number;
  /**
   * Longest a run may take: a later answer fails the call with FABRIC_MODEL_TIMEOUT and recycles the
   * worker (a stuck run would block every later call). Also bounds how long a call waits for a
   * restarting worker before failing with FABRIC_MODEL_UNAVAILABLE.
   */
  readonly timeoutMs: number;
  readonly gpu: boolean;
  /**
   * Restarts allowed in a row without a successful run in between (a worker death or a failed start
   * each uses one); when spent, the runner goes to `failed`. Default 5.
   */
  readonly maxRestarts?: number;
  /** Base of the jittered exponential backoff between restarts (retry.ts backoffMs). Default 200 ms. */
  readonly restartBaseMs?: number;
  /** Cap of that backoff. Default 10 s. */
  readonly restartCapMs?: number;
  /** Called on every state change (also available as `onStateChange(listener)`). */
  readonly onStateChange?: StateListener;
}

export type StateListener = (state: RunnerState, cause?: Error) => void;

export interface ScoreResult {
  /** One score per row (the positive class probability). */
  readonly scores: Float32Array;
  /** Execution provider of the session that ran this batch (cuda, cpu). */
  readonly provider: string;
}

interface PendingCall {
  resolve(scores: Float32Array): void;
  reject(err: Error): void;
  timer: NodeJS.Timeout;
}

/** One worker process and the calls it owes an answer. */
interface Slot {
  readonly worker: ChildProcess;
  readonly provider: string;
  readonly pending: Map<number, PendingCall>;
  dead: boolean;
}

interface ReadyWaiter {
  resolve(slot: Slot): void;
  reject(err: Error): void;
  timer: NodeJS.Timeout;
}

/** A worker that does not report ready within this time counts as a failed start. */
const START_TIMEOUT_MS = 60_000;

/**
 * Owns the worker process that scores with one model. Each call is one micro-batch (one ONNX run).
 *
 * A child process, not a worker thread: onnxruntime-node's native binding is not context-aware, so it
 * loads once per process (a second worker thread, or a new one after the first died, fails with
 * "Module did not self-register"); a thread could never be restarted. A process can, and a native
 * crash (segfault, abort, OOM kill) in the ONNX runtime then takes down the worker, not the fabric.
 * Scoring still never blocks the event loop that serves Kafka and HTTP.
 *
 * A worker that dies (exit, uncaught error) or does not answer within `timeoutMs` (then it is
 * terminated) fails its pending calls with FABRIC_MODEL_UNAVAILABLE (the timed-out call itself with
 * FABRIC_MODEL_TIMEOUT; both retriable) and is restarted with jittered backoff; calls made meanwhile
 * wait for the new worker, at most `timeoutMs`. After `maxRestarts` failures in a row without a
 * successful run the runner gives up: state `failed`, calls fail fast with FABRIC_MODEL_UNAVAILABLE.
 * Every result carries the execution provider that produced it.
 */
export class ModelRunner {
  private slot: Slot | null = null;
  private nextId = 1;
  private current: RunnerState = 'starting';
  private failures = 0;
  private closed = false;
  private starting: Promise<void> | null = null;
  private lastProvider = 'none';
  private readonly waiters = new Set<ReadyWaiter>();
  private readonly listeners = new Set<StateListener>();
  private readonly abort = new AbortController();
  private readonly maxRestarts: number;

  constructor(
    readonly model: ModelArtifact,
    private readonly options: ModelRunnerOptions,
  ) {
    this.maxRestarts = options.maxRestarts ?? 5;
    if (options.onStateChange) this.listeners.add(options.onStateChange);
  }

  get state(): RunnerState {
    return this.current;
  }

  /** Execution provider of the current (or last) worker's session: cuda, cpu, or none before the first start. */
  get provider(): string {
    return this.slot?.provider ?? this.lastProvider;
  }

  /** Subscribes to state changes; returns the unsubscribe function. */
  onStateChange(listener: StateListener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /**
   * Starts the worker (first start, or again after `failed`, which resets the restart budget).
   * Rejects with FABRIC_MODEL_INVALID when the model cannot be loaded; the state is then `failed`.
   */
  async start(): Promise<void> {
    if (this.closed) throw new FabricError('FABRIC_SHUTTING_DOWN', 'model runner closed');
    if (this.slot || this.current === 'restarting') return;
    this.starting ??= this.firstStart().finally(() => (this.starting = null));
    return this.starting;
  }

  private async firstStart(): Promise<void> {
    this.failures = 0;
    this.setState('starting');
    try {
      const slot = await this.spawn();
      if (this.closed) {
        await stop(slot.worker);
        throw new FabricError('FABRIC_SHUTTING_DOWN', 'model runner closed');
      }
      this.install(slot);
    } catch (err) {
      const error = err instanceof FabricError ? err : new FabricError('FABRIC_MODEL_INVALID', `model ${this.model.name}: ${messageOf(err)}`, { cause: err });
      if (!this.closed) this.giveUp(error);
      throw error;
    }
  }

  /**
   * Scores rows (each of model.inputs.length numbers); one ONNX run for the whole micro-batch.
   * Fails with FABRIC_MODEL_TIMEOUT or FABRIC_MODEL_UNAVAILABLE (retriable: timing, not the input),
   * FABRIC_MODEL_INVALID when the rows do not fit the model or the run itself fails.
   */
  async score(rows: readonly (readonly number[])[]): Promise<ScoreResult> {
    const width = this.model.inputs.length;
    const flat = new Float32Array(rows.length * width);
    rows.forEach((row, i) => {
      if (row.length !== width) throw new FabricError('FABRIC_MODEL_INVALID', `row has ${row.length} inputs, model ${this.model.name} takes ${width}`);
      flat.set(row, i * width);
    });
    if (rows.length === 0) return { scores: new Float32Array(0), provider: this.provider };
    const slot = this.slot ?? (await this.readySlot(this.options.timeoutMs));
    return this.run(slot, flat, rows.length);
  }

  /** Resolves when a worker is ready; fails (retriable) after `timeoutMs`, or at once when `failed` or closed. */
  async whenReady(timeoutMs: number): Promise<void> {
    await this.readySlot(timeoutMs);
  }

  private async readySlot(timeoutMs: number): Promise<Slot> {
    if (this.closed) throw new FabricError('FABRIC_SHUTTING_DOWN', 'model runner closed');
    if (this.slot) return this.slot;
    if (this.current === 'failed') throw this.unavailable('gave up restarting its worker');
    return new Promise<Slot>((resolve, reject) => {
      const waiter: ReadyWaiter = {
        resolve,
        reject,
        timer: setTimeout(() => {
          this.waiters.delete(waiter);
          reject(this.unavailable(`is ${this.current}; no worker ready within ${timeoutMs} ms`));
        }, timeoutMs),
      };
      this.waiters.add(waiter);
    });
  }

  /**
   * Test hook: the worker fails its next run request: 'exit' ends the process (code 1), 'throw'
   * raises an uncaught error in it, 'hang' blocks it forever (the call times out). Not for production.
   */
  injectFault(fault: WorkerFault): void {
    if (!this.slot) throw this.unavailable(`is ${this.current}`);
    this.slot.worker.send({ fault });
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.abort.abort();
    const shutdown = new FabricError('FABRIC_SHUTTING_DOWN', 'model runner closed');
    this.rejectWaiters(shutdown);
    const slot = this.slot;
    this.slot = null;
    if (slot) {
      slot.dead = true;
      this.failPending(slot, shutdown);
      await stop(slot.worker);
    }
  }

  private run(slot: Slot, rows: Float32Array, n: number): Promise<ScoreResult> {
    const id = this.nextId++;
    return new Promise<ScoreResult>((resolve, reject) => {
      const timer = setTimeout(() => {
        slot.pending.delete(id);
        reject(new FabricError('FABRIC_MODEL_TIMEOUT', `model ${this.model.name} did not answer within ${this.options.timeoutMs} ms`));
        this.died(slot, new Error(`a run exceeded ${this.options.timeoutMs} ms; the worker was recycled`));
      }, this.options.timeoutMs);
      slot.pending.set(id, {
        resolve: (scores) => {
          this.failures = 0;
          resolve({ scores, provider: slot.provider });
        },
        reject,
        timer,
      });
      slot.worker.send({ id, rows, n });
    });
  }

  private spawn(): Promise<Slot> {
    const providers = this.options.provider === 'cpu' ? ['cpu'] : this.options.provider === 'cuda' ? ['cuda'] : this.options.gpu ? ['cuda', 'cpu'] : ['cpu'];
    const here = fileURLToPath(import.meta.url);
    // From TypeScript sources (tests, tsx) the worker runs through tsx's loader; built code runs plain JS.
    const fromSources = here.endsWith('.ts');
    const workerFile = fromSources ? here.replace(/model-runner\.ts$/, 'onnx-worker.ts') : here.replace(/model-runner\.js$/, 'onnx-worker.js');
    const execArgv = fromSources ? ['--import', pathToFileURL(createRequire(import.meta.url).resolve('tsx')).href] : [];
    const worker = fork(workerFile, [], { execArgv, serialization: 'advanced', stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    const init = { bytes: this.model.bytes, inputName: this.model.inputName, outputName: this.model.outputName, width: this.model.inputs.length, positiveClassIndex: this.model.positiveClassIndex, providers, threads: this.options.threads };
    return new Promise<Slot>((resolve, reject) => {
      const fail = (err: Error): void => {
        cleanup();
        worker.kill('SIGKILL');
        reject(err);
      };
      const onMessage = (msg: { ready?: boolean; provider?: string; error?: string }): void => {
        if (msg.ready === undefined) return;
        if (!msg.ready) return fail(new FabricError('FABRIC_MODEL_INVALID', `model ${this.model.name}: ${msg.error}`));
        cleanup();
        const slot: Slot = { worker, provider: msg.provider!, pending: new Map(), dead: false };
        worker.on('message', (m: { id?: number; scores?: Float32Array; error?: string }) => this.answer(slot, m));
        worker.on('error', (err) => this.died(slot, err));
        worker.on('exit', (code, signal) => this.died(slot, new Error(`model worker exited (${signal ?? `code ${code}`})`)));
        resolve(slot);
      };
      const onError = (err: Error): void => fail(new FabricError('FABRIC_MODEL_INVALID', `model ${this.model.name}: worker failed to start: ${err.message}`, { cause: err }));
      const onExit = (code: number | null, signal: string | null): void => fail(new FabricError('FABRIC_MODEL_INVALID', `model ${this.model.name}: worker exited (${signal ?? `code ${code}`}) while starting`));
      const timer = setTimeout(() => fail(new FabricError('FABRIC_MODEL_INVALID', `model ${this.model.name}: worker not ready within ${START_TIMEOUT_MS} ms`)), START_TIMEOUT_MS);
      const cleanup = (): void => {
        clearTimeout(timer);
        worker.off('message', onMessage);
        worker.off('error', onError);
        worker.off('exit', onExit);
      };
      worker.on('message', onMessage);
      worker.on('error', onError);
      worker.on('exit', onExit);
      worker.send({ init });
    });
  }

  private install(slot: Slot): void {
    this.slot = slot;
    this.lastProvider = slot.provider;
    this.setState('ready');
    for (const w of this.waiters) {
      clearTimeout(w.timer);
      w.resolve(slot);
    }
    this.waiters.clear();
  }

  private answer(slot: Slot, msg: { id?: number; scores?: Float32Array; error?: string }): void {
    if (msg.id === undefined) return;
    const call = slot.pending.get(msg.id);
    if (!call) return;
    slot.pending.delete(msg.id);
    clearTimeout(call.timer);
    if (msg.scores) call.resolve(msg.scores);
    else call.reject(new FabricError('FABRIC_MODEL_INVALID', `model ${this.model.name} failed: ${msg.error}`));
  }

  /** A worker is gone (crash, uncaught error, recycled after a timeout): fail its calls, restart. */
  private died(slot: Slot, cause: Error): void {
    if (slot.dead) return;
    slot.dead = true;
    slot.worker.kill('SIGKILL');
    this.failPending(slot, this.unavailable(`worker died: ${cause.message}`, cause));
    if (this.slot !== slot || this.closed) return;
    this.slot = null;
    this.failures++;
    void this.restart(cause);
  }

  private async restart(cause: Error): Promise<void> {
    for (;;) {
      if (this.closed) return;
      if (this.failures > this.maxRestarts) return this.giveUp(this.unavailable(`gave up after ${this.maxRestarts} restarts in a row: ${cause.message}`, cause));
      this.setState('restarting', cause);
      await sleep(backoffMs(this.failures - 1, this.options.restartBaseMs ?? 200, this.options.restartCapMs ?? 10_000), this.abort.signal);
      if (this.closed) return;
      try {
        const slot = await this.spawn();
        if (this.closed) {
          await stop(slot.worker);
          return;
        }
        return this.install(slot);
      } catch (err) {
        cause = err instanceof Error ? err : new Error(String(err));
        this.failures++;
      }
    }
  }

  private giveUp(cause: FabricError): void {
    this.setState('failed', cause);
    this.rejectWaiters(cause.code === 'FABRIC_MODEL_UNAVAILABLE' ? cause : this.unavailable(cause.message, cause));
  }

  private rejectWaiters(err: Error): void {
    for (const w of this.waiters) {
      clearTimeout(w.timer);
      w.reject(err);
    }
    this.waiters.clear();
  }

  private failPending(slot: Slot, err: Error): void {
    for (const call of slot.pending.values()) {
      clearTimeout(call.timer);
      call.reject(err);
    }
    slot.pending.clear();
  }

  private unavailable(why: string, cause?: unknown): FabricError {
    return new FabricError('FABRIC_MODEL_UNAVAILABLE', `model ${this.model.name} runner ${why}`, cause === undefined ? {} : { cause });
  }

  private setState(state: RunnerState, cause?: Error): void {
    if (state === this.current) return;
    this.current = state;
    for (const listener of this.listeners) {
      try {
        listener(state, cause);
      } catch {
        // A listener's failure must not break the runner.
      }
    }
  }
}

/** Ends a worker process and waits until it is gone. */
function stop(worker: ChildProcess): Promise<void> {
  if (worker.exitCode !== null || worker.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    worker.once('exit', () => resolve());
    worker.kill('SIGKILL');
  });
}
