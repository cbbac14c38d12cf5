/**
 * An ONNX worker of the serving engine, run as a worker thread (WorkerThread, the default) or a child
 * process (WorkerProcess): owns ONNX sessions for any number of model versions. Messages (structured
 * clone; score arrays are transferred, not copied, on a thread):
 *   {load: ModelSpec} -> {loaded: key, provider, inputs} | {loaded: key, error}
 *   {unload: key}
 *   {id, key, rows (Float32Array, row-major), n} -> {id, scores (Float32Array)} | {id, error}
 * Test hook: {fault: 'exit' | 'throw' | 'hang'} makes the next run request end the process with code 1,
 * raise an uncaught error, or block the process forever.
 * A process worker exits when its parent goes away (IPC channel closed), so it never outlives the fabric.
 */
import { parentPort } from 'node:worker_threads';
import * as ort from 'onnxruntime-node';
import type { LoadReply, ModelSpec, RunReply, WorkerMessage } from './protocol.js';

type Fault = 'exit' | 'throw' | 'hang';

interface Loaded {
  readonly spec: ModelSpec;
  readonly session: ort.InferenceSession;
}

const sessions = new Map<string, Loaded>();
let fault: Fault | undefined;

async function createSession(spec: ModelSpec): Promise<{ session: ort.InferenceSession; provider: string }> {
  const errors: string[] = [];
  for (const provider of spec.providers) {
    try {
      const options: ort.InferenceSession.SessionOptions = {
        executionProviders: [provider],
        intraOpNumThreads: spec.threads,
        interOpNumThreads: 1,
        executionMode: 'sequential',
        graphOptimizationLevel: 'all',
        // An idle ONNX thread pool spins by default and steals the other processes' CPU.
        extra: { session: { intra_op: { allow_spinning: spec.spinning ? '1' : '0' } } },
      };
      const session = spec.path !== undefined ? await ort.InferenceSession.create(spec.path, options) : await ort.InferenceSession.create(new Uint8Array(spec.bytes!), options);
      return { session, provider };
    } catch (err) {
      errors.push(`${provider}: ${(err as Error).message}`);
    }
  }
  throw new Error(`no execution provider could load the model (${errors.join('; ')})`);
}

function send(msg: LoadReply | RunReply): void {
  if (parentPort) parentPort.postMessage(msg, 'scores' in msg ? [msg.scores.buffer as ArrayBuffer] : []);
  else process.send!(msg);
}

async function load(spec: ModelSpec): Promise<LoadReply> {
  try {
    const { session, provider } = await createSession(spec);
    const inputs = session.inputMetadata.map((m) => ({ name: m.name, type: m.isTensor ? m.type : 'non-tensor', shape: m.isTensor ? m.shape.map((d) => (typeof d === 'number' ? d : -1)) : [] }));
    const outputs = session.outputMetadata.map((m) => m.name);
    sessions.set(spec.key, { spec, session });
    return { loaded: spec.key, provider, inputs, outputs };
  } catch (err) {
    return { loaded: spec.key, error: (err as Error).message };
  }
}

function onMessage(msg: WorkerMessage): void {
  if ('load' in msg) {
    void load(msg.load).then(send);
    return;
  }
  if ('unload' in msg) {
    const s = sessions.get(msg.unload);
    sessions.delete(msg.unload);
    void s?.session.release().catch(() => undefined);
    return;
  }
  if ('fault' in msg) {
    fault = msg.fault;
    return;
  }
  if (fault) injected(fault);
  if (!sessions.has(msg.key)) {
    // Unloaded (or never loaded here): the engine retries elsewhere; not the input's fault.
    send({ id: msg.id, error: `model ${msg.key} is not loaded in this worker`, unavailable: true });
    return;
  }
  void score(msg.key, msg.rows, msg.n).then(
    (scores) => send({ id: msg.id, scores }),
    (err: Error) => send({ id: msg.id, error: err.message }),
  );
}

if (parentPort) parentPort.on('message', onMessage);
else {
  process.on('disconnect', () => process.exit(0));
  process.on('message', onMessage);
}

function injected(kind: Fault): void {
  if (kind === 'exit') process.exit(1);
  if (kind === 'throw') throw new Error('injected worker fault');
  // 'hang': a run that never returns; only a kill ends it.
  for (;;) Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0);
}

async function score(key: string, rows: Float32Array, n: number): Promise<Float32Array> {
  const loaded = sessions.get(key);
  if (!loaded) throw new Error(`model ${key} is not loaded in this worker`);
  const { spec, session } = loaded;
  const input = new ort.Tensor('float32', rows, [n, spec.width]);
  // No fetches argument: onnxruntime-node 1.22 returns the wrong output when fetches name one
  // (['probabilities'] yields 'label'); the full result is picked by name instead.
  const out = await session.run({ [spec.inputName]: input });
  const probs = out[spec.outputName];
  if (!probs) throw new Error(`model has no output ${spec.outputName}`);
  const data = probs.data as Float32Array;
  const classes = probs.dims[1] ?? 1;
  if (classes > 1 && spec.positiveClassIndex >= classes) throw new Error(`output ${spec.outputName} has ${classes} classes; positive class index ${spec.positiveClassIndex} is out of range`);
  const scores = new Float32Array(n);
  for (let i = 0; i < n; i++) scores[i] = classes === 1 ? data[i]! : data[i * classes + spec.positiveClassIndex]!;
  for (const t of Object.values(out)) t.dispose?.();
  return scores;
}
