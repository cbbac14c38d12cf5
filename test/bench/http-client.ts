/** Main-thread handle on the HTTP load-generator worker (see http-worker.ts). */
import { Worker } from 'node:worker_threads';

export interface BurstResult {
  readonly elapsedMs: number;
  readonly requests: number;
  readonly accepted: number;
  readonly failed: number;
  readonly errors: string[];
}

export interface PacedResult {
  /** Wall-clock ms (performance.timeOrigin + now) just before each request was issued. */
  readonly sendTimes: number[];
  /** Wall-clock ms when each answer was read. */
  readonly ackTimes: number[];
  readonly statuses: number[];
  readonly errors: string[];
  readonly elapsedMs: number;
}

export type WorkerCommand =
  | { id: number; kind: 'load'; key: string; bodies: readonly string[] }
  | { id: number; kind: 'burst'; key: string; url: string; apiKey: string; concurrency: number; limit?: number }
  | { id: number; kind: 'paced'; key: string; url: string; apiKey: string; intervalMs: number; maxInFlight: number };

export type WorkerReply =
  | { id: number; kind: 'loaded' }
  | { id: number; kind: 'burst'; result: BurstResult }
  | { id: number; kind: 'paced'; result: PacedResult }
  | { id: number; kind: 'error'; message: string };

type Omitted<T> = T extends unknown ? Omit<T, 'id'> : never;

export class HttpLoadClient {
  private readonly worker: Worker;
  private nextId = 1;
  private readonly pending = new Map<number, { resolve: (r: WorkerReply) => void; reject: (e: Error) => void }>();

  constructor() {
    // Node 20 workers ignore `--import` in execArgv: a bootstrap registers tsx's loader first.
    const file = new URL('./http-worker.ts', import.meta.url).href;
    const tsx = import.meta.resolve('tsx/esm/api');
    this.worker = new Worker(`import(${JSON.stringify(tsx)}).then((m) => { m.register(); return import(${JSON.stringify(file)}); });`, { eval: true });
    this.worker.on('message', (reply: WorkerReply) => {
      const p = this.pending.get(reply.id);
      if (!p) return;
      this.pending.delete(reply.id);
      if (reply.kind === 'error') p.reject(new Error(reply.message));
      else p.resolve(reply);
    });
    const failAll = (err: Error): void => {
      for (const p of this.pending.values()) p.reject(err);
      this.pending.clear();
    };
    this.worker.on('error', failAll);
    this.worker.on('exit', (code) => failAll(new Error(`HTTP load worker exited with code ${code}`)));
  }

  private call(cmd: Omitted<WorkerCommand>): Promise<WorkerReply> {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.worker.postMessage({ ...cmd, id });
    });
  }

  async load(key: string, bodies: readonly string[]): Promise<void> {
    await this.call({ kind: 'load', key, bodies });
  }

  async burst(key: string, url: string, apiKey: string, concurrency: number, limit?: number): Promise<BurstResult> {
    const reply = await this.call({ kind: 'burst', key, url, apiKey, concurrency, limit });
    if (reply.kind !== 'burst') throw new Error(`unexpected worker reply ${reply.kind}`);
    return reply.result;
  }

  async paced(key: string, url: string, apiKey: string, intervalMs: number, maxInFlight = 64): Promise<PacedResult> {
    const reply = await this.call({ kind: 'paced', key, url, apiKey, intervalMs, maxInFlight });
    if (reply.kind !== 'paced') throw new Error(`unexpected worker reply ${reply.kind}`);
    return reply.result;
  }

  async close(): Promise<void> {
    await this.worker.terminate();
  }
}
