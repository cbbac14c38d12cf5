/**
 * Worker thread owning one ONNX session: onnxruntime-node's run() blocks its thread, so scoring
 * never runs on the event loop that serves Kafka and HTTP. Messages: {id, rows (Float32Array,
 * row-major), n} -> {id, scores (Float32Array)} or {id, error}.
 */
import { parentPort, workerData } from 'node:worker_threads';
import * as ort from 'onnxruntime-node';

interface Init {
  readonly bytes: Uint8Array;
  readonly inputName: string;
  readonly outputName: string;
  readonly width: number;
  readonly positiveClassIndex: number;
  readonly providers: readonly string[];
  readonly threads: number;
}

interface Request {
  readonly id: number;
  readonly rows: Float32Array;
  readonly n: number;
}

const init = workerData as Init;

async function createSession(): Promise<{ session: ort.InferenceSession; provider: string }> {
  const errors: string[] = [];
  for (const provider of init.providers) {
    try {
      const session = await ort.InferenceSession.create(init.bytes, {
        executionProviders: [provider],
        intraOpNumThreads: init.threads,
        interOpNumThreads: 1,
        executionMode: 'sequential',
        graphOptimizationLevel: 'all',
      });
      return { session, provider };
    } catch (err) {
      errors.push(`${provider}: ${(err as Error).message}`);
    }
  }
  throw new Error(`no execution provider could load the model (${errors.join('; ')})`);
}

const port = parentPort!;
createSession().then(
  ({ session, provider }) => {
    port.postMessage({ ready: true, provider });
    port.on('message', (req: Request) => {
      void score(session, req).then(
        (scores) => port.postMessage({ id: req.id, scores }, [scores.buffer as ArrayBuffer]),
        (err: Error) => port.postMessage({ id: req.id, error: err.message }),
      );
    });
  },
  (err: Error) => port.postMessage({ ready: false, error: err.message }),
);

async function score(session: ort.InferenceSession, req: Request): Promise<Float32Array> {
  const input = new ort.Tensor('float32', req.rows, [req.n, init.width]);
  // No fetches argument: onnxruntime-node 1.22 returns the wrong output when fetches name one
  // (['probabilities'] yields 'label'); the full result is picked by name instead.
  const out = await session.run({ [init.inputName]: input });
  const probs = out[init.outputName];
  if (!probs) throw new Error(`model has no output ${init.outputName}`);
  const data = probs.data as Float32Array;
  const classes = probs.dims[1] ?? 1;
  const scores = new Float32Array(req.n);
  for (let i = 0; i < req.n; i++) scores[i] = classes === 1 ? data[i]! : data[i * classes + init.positiveClassIndex]!;
  return scores;
}
