import { fork, type ChildProcess } from 'node:child_process';
import { createRequire } from 'node:module';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { Worker } from 'node:worker_threads';
import type { InputInfo, LoadReply, ModelSpec, RunReply, WorkerMessage } from './protocol.js';

export interface Loaded {
  readonly provider: string;
  readonly inputs: readonly InputInfo[];
  readonly outputs: readonly string[];
}

/**
 * Where ONNX sessions run. `thread` (default): worker threads, rows and scores transferred without
 * copies, about as fast as onnxruntime in a tight loop; a native crash in ONNX Runtime takes the
 * process down, and a run stuck in native code can only be abandoned (its thread stays busy).
 * `process`: child processes, which a SIGKILL always ends and whose crash is theirs alone, at the cost
 * of IPC serialization (measured at batch 32 against a bare session.run loop: processes 0.18x, threads 0.91x).
 */
export type Isolation = 'thread' | 'process';

interface PendingRun {
  resolve(scores: Float32Array): void;
  reject(err: Error): void;
}

/**
 * One ONNX worker (thread or process) and the answers it owes. The engine owns the policy (timeouts,
 * restarts); a worker only speaks the protocol of onnx-worker.ts and reports its death once.
 */
export abstract class ModelWorker {
  private readonly pending = new Map<number, PendingRun>();
  private readonly loads = new Map<string, { resolve(l: Loaded): void; reject(err: Error): void }>();
  private nextId = 1;
  private deathCause: Error | null = null;
  private readonly deathListeners = new Set<(cause: Error) => void>();
  /** Runs sent and not yet answered (the dispatcher's load measure). */
  inFlight = 0;

  /** The process id or thread id (logs, tests). */
  abstract get id(): number;

  get dead(): boolean {
    return this.deathCause !== null;
  }

  /** Called once when the worker is gone (or was killed); at once if it already is. */
  onDeath(listener: (cause: Error) => void): void {
    if (this.deathCause) listener(this.deathCause);
    else this.deathListeners.add(listener);
  }

  load(spec: ModelSpec): Promise<Loaded> {
    if (this.deathCause) return Promise.reject(this.deathCause);
    return new Promise<Loaded>((resolve, reject) => {
      this.loads.set(spec.key, { resolve, reject });
      this.post({ load: spec });
    });
  }

  unload(key: string): void {
    if (!this.deathCause) this.post({ unload: key });
  }

  /** One run; `rows` may be transferred to the worker (the caller must not use it afterwards). */
  run(key: string, rows: Float32Array, n: number): Promise<Float32Array> {
    if (this.deathCause) return Promise.reject(this.deathCause);
    const id = this.nextId++;
    this.inFlight++;
    return new Promise<Float32Array>((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.post({ id, key, rows, n });
    }).finally(() => this.inFlight--);
  }

  /** Test hook: the next run makes the worker exit, throw, or hang. */
  injectFault(fault: 'exit' | 'throw' | 'hang'): void {
    this.post({ fault });
  }

  /** Ends the worker and fails what it owed; resolves once it is gone (or abandoned, see ThreadWorker). */
  kill(cause: Error): Promise<void> {
    this.die(cause);
    return this.terminate();
  }

  protected abstract post(msg: WorkerMessage): void;
  protected abstract terminate(): Promise<void>;

  protected answer(msg: LoadReply | RunReply): void {
    if ('loaded' in msg) {
      const waiter = this.loads.get(msg.loaded);
      if (!waiter) return;
      this.loads.delete(msg.loaded);
      if ('error' in msg) waiter.reject(new Error(msg.error));
      else waiter.resolve({ provider: msg.provider, inputs: msg.inputs, outputs: msg.outputs });
      return;
    }
    const run = this.pending.get(msg.id);
    if (!run) return;
    this.pending.delete(msg.id);
    if ('scores' in msg) run.resolve(msg.scores);
    else run.reject(msg.unavailable ? new Error(msg.error) : new RunError(msg.error));
  }

  protected die(cause: Error): void {
    if (this.deathCause) return;
    this.deathCause = cause;
    void this.terminate();
    for (const run of this.pending.values()) run.reject(cause);
    this.pending.clear();
    for (const load of this.loads.values()) load.reject(cause);
    this.loads.clear();
    for (const listener of this.deathListeners) listener(cause);
    this.deathListeners.clear();
  }
}

/** The model itself refused a run (deterministic: the input, not the worker). */
export class RunError extends Error {
  override readonly name = 'RunError';
}

const here = fileURLToPath(import.meta.url);
// From TypeScript sources (tests, tsx) the worker runs through tsx; built code runs plain JS.
const fromSources = here.endsWith('.ts');
const workerFile = here.replace(/workers\.(ts|js)$/, fromSources ? 'onnx-worker.ts' : 'onnx-worker.js');
const require = createRequire(import.meta.url);

/** A child process: SIGKILL always ends it, and a native crash is its own. */
export class ProcessWorker extends ModelWorker {
  private constructor(private readonly child: ChildProcess) {
    super();
    child.on('message', (msg: LoadReply | RunReply) => this.answer(msg));
    child.on('error', (err) => this.die(err));
    child.on('exit', (code, signal) => this.die(new Error(`model worker exited (${signal ?? `code ${code}`})`)));
  }

  get id(): number {
    return this.child.pid ?? -1;
  }

  static spawn(): ProcessWorker {
    const execArgv = fromSources ? ['--import', pathToFileURL(require.resolve('tsx')).href] : [];
    return new ProcessWorker(fork(workerFile, [], { execArgv, serialization: 'advanced', stdio: ['ignore', 'inherit', 'inherit', 'ipc'] }));
  }

  protected post(msg: WorkerMessage): void {
    try {
      this.child.send(msg);
    } catch (err) {
      this.die(err instanceof Error ? err : new Error(String(err)));
    }
  }

  protected terminate(): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return Promise.resolve();
    return new Promise((resolve) => {
      this.child.once('exit', () => resolve());
      // SIGKILL: a hung native run ignores anything gentler.
      this.child.kill('SIGKILL');
    });
  }
}

let bindingPinned = false;

/**
 * A worker thread. onnxruntime-node 1.22's binding is not context-aware: a thread can load it only
 * while another thread keeps it loaded (else "Module did not self-register"), so the main thread
 * loads it once first, and replaced threads then load it again (measured). A run stuck in native
 * code cannot be interrupted: terminate() is then abandoned after a grace period, and the engine
 * goes on with a new thread.
 */
export class ThreadWorker extends ModelWorker {
  private exited = false;

  private constructor(private readonly worker: Worker) {
    super();
    worker.on('message', (msg: LoadReply | RunReply) => this.answer(msg));
    worker.on('error', (err) => this.die(err));
    worker.on('exit', (code) => {
      this.exited = true;
      this.die(new Error(`model worker thread exited (code ${code})`));
    });
  }

  get id(): number {
    return this.worker.threadId;
  }

  static spawn(): ThreadWorker {
    if (!bindingPinned) {
      require('onnxruntime-node');
      bindingPinned = true;
    }
    if (!fromSources) return new ThreadWorker(new Worker(workerFile));
    // Sources: register tsx inside the thread, then import the worker module.
    const api = pathToFileURL(require.resolve('tsx/esm/api')).href;
    const boot = `const { register } = await import(${JSON.stringify(api)}); register(); await import(${JSON.stringify(pathToFileURL(workerFile).href)});`;
    return new ThreadWorker(new Worker(boot, { eval: true }));
  }

  protected post(msg: WorkerMessage): void {
    try {
      if ('rows' in msg) this.worker.postMessage(msg, [msg.rows.buffer as ArrayBuffer]);
      else this.worker.postMessage(msg);
    } catch (err) {
      this.die(err instanceof Error ? err : new Error(String(err)));
    }
  }

  protected terminate(): Promise<void> {
    if (this.exited) return Promise.resolve();
    const grace = new Promise<void>((resolve) => setTimeout(resolve, 1000).unref());
    return Promise.race([this.worker.terminate().then(() => undefined, () => undefined), grace]);
  }
}

export function spawnWorker(isolation: Isolation): ModelWorker {
  return isolation === 'process' ? ProcessWorker.spawn() : ThreadWorker.spawn();
}
