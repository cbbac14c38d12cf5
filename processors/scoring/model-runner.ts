import { Worker } from 'node:worker_threads';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { FabricError } from '../../topology/errors.js';
import type { ModelArtifact } from './model-artifact.js';

export type ProviderChoice = 'auto' | 'cuda' | 'cpu';

interface PendingCall {
  resolve(scores: Float32Array): void;
  reject(err: Error): void;
  timer: NodeJS.Timeout;
}

/**
 * Owns the worker thread that scores with one model. Each call is one micro-batch (one ONNX run);
 * a call that outlives timeoutMs is failed with FABRIC_MODEL_TIMEOUT so the rules can fall back.
 * `provider` is the execution provider the session actually loaded with (reported on every prediction).
 */
export class ModelRunner {
  private worker: Worker | null = null;
  private nextId = 1;
  private readonly pending = new Map<number, PendingCall>();
  provider = 'none';

  constructor(
    readonly model: ModelArtifact,
    private readonly options: { provider: ProviderChoice; threads: number; timeoutMs: number; gpu: boolean },
  ) {}

  async start(): Promise<void> {
    const providers = this.options.provider === 'cpu' ? ['cpu'] : this.options.provider === 'cuda' ? ['cuda'] : this.options.gpu ? ['cuda', 'cpu'] : ['cpu'];
    const here = fileURLToPath(import.meta.url);
    // From TypeScript sources (tests, tsx) the worker runs through tsx's loader; built code runs plain JS.
    const fromSources = here.endsWith('.ts');
    const workerFile = fromSources ? here.replace(/model-runner\.ts$/, 'onnx-worker.ts') : here.replace(/model-runner\.js$/, 'onnx-worker.js');
    const workerData = { bytes: this.model.bytes, inputName: this.model.inputName, outputName: this.model.outputName, width: this.model.inputs.length, positiveClassIndex: this.model.positiveClassIndex, providers, threads: this.options.threads };
    // Node 20 workers ignore `--import` in execArgv: from sources, a bootstrap registers tsx first.
    const worker = fromSources
      ? new Worker(`import('tsx/esm/api').then((m) => { m.register(); return import(${JSON.stringify(pathToFileURL(workerFile).href)}); });`, { eval: true, workerData })
      : new Worker(workerFile, { workerData });
    this.worker = worker;
    this.provider = await new Promise<string>((resolve, reject) => {
      const onMessage = (msg: { ready?: boolean; provider?: string; error?: string }): void => {
        if (msg.ready === undefined) return;
        worker.off('message', onMessage);
        if (msg.ready) resolve(msg.provider!);
        else reject(new FabricError('FABRIC_MODEL_INVALID', `model ${this.model.name}: ${msg.error}`));
      };
      worker.on('message', onMessage);
      worker.once('error', reject);
    });
    worker.on('message', (msg: { id?: number; scores?: Float32Array; error?: string }) => {
      if (msg.id === undefined) return;
      const call = this.pending.get(msg.id);
      if (!call) return;
      this.pending.delete(msg.id);
      clearTimeout(call.timer);
      if (msg.scores) call.resolve(msg.scores);
      else call.reject(new FabricError('FABRIC_MODEL_INVALID', `model ${this.model.name} failed: ${msg.error}`));
    });
    worker.on('error', (err) => this.failAll(err));
    worker.on('exit', (code) => this.failAll(new Error(`model worker exited with code ${code}`)));
  }

  /** Scores rows (each of model.inputs.length numbers); one ONNX run for the whole micro-batch. */
  score(rows: readonly (readonly number[])[]): Promise<Float32Array> {
    const worker = this.worker;
    if (!worker) return Promise.reject(new FabricError('FABRIC_MODEL_INVALID', 'model runner is not started'));
    if (rows.length === 0) return Promise.resolve(new Float32Array(0));
    const width = this.model.inputs.length;
    const flat = new Float32Array(rows.length * width);
    rows.forEach((row, i) => {
      if (row.length !== width) throw new FabricError('FABRIC_MODEL_INVALID', `row has ${row.length} inputs, model ${this.model.name} takes ${width}`);
      flat.set(row, i * width);
    });
    const id = this.nextId++;
    return new Promise<Float32Array>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new FabricError('FABRIC_MODEL_TIMEOUT', `model ${this.model.name} did not answer within ${this.options.timeoutMs} ms`));
      }, this.options.timeoutMs);
      this.pending.set(id, { resolve, reject, timer });
      worker.postMessage({ id, rows: flat, n: rows.length }, [flat.buffer]);
    });
  }

  private failAll(err: Error): void {
    for (const [id, call] of this.pending) {
      clearTimeout(call.timer);
      call.reject(err);
      this.pending.delete(id);
    }
  }

  async close(): Promise<void> {
    const worker = this.worker;
    this.worker = null;
    this.failAll(new FabricError('FABRIC_SHUTTING_DOWN', 'model runner closed'));
    await worker?.terminate();
  }
}
