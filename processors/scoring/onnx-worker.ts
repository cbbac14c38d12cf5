/**
 * Worker process owning one ONNX session (forked by ModelRunner; see there why a process and not a
 * thread). IPC messages (advanced serialization, so typed arrays pass as they are):
 * {init} -> {ready: true, provider} or {ready: false, error}; then {id, rows (Float32Array,
 * row-major), n} -> {id, scores (Float32Array)} or {id, error}.
 * Test hook (ModelRunner.injectFault): {fault: 'exit' | 'throw' | 'hang'} makes the next run request
 * end the process with code 1, raise an uncaught error, or block the process forever.
 * The worker exits when its parent goes away (IPC channel closed), so it never outlives the fabric.
 */
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

type Fault = 'exit' | 'throw' | 'hang';
type Message = { readonly init: Init } | { readonly fault: Fault } | Request;

async function createSession(init: Init): Promise<{ session: ort.InferenceSession; provider: string }> {
  const errors: string[] = [];
  for (const provider of init.providers) {
    try {
      const session = await ort.InferenceSession.create(new Uint8Array(init.bytes), {
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

function send(msg: unknown): void {
  process.send!(msg);
}

let init: Init | undefined;
let session: Promise<ort.InferenceSession> | undefined;
let fault: Fault | undefined;

process.on('disconnect', () => process.exit(0));
process.on('message', (msg: Message) => {
  if ('init' in msg) {
    init = msg.init;
    const created = createSession(init);
    session = created.then((s) => s.session);
    session.catch(() => undefined); // reported below as {ready: false}
    created.then(
      ({ provider }) => send({ ready: true, provider }),
      (err: Error) => send({ ready: false, error: err.message }),
    );
    return;
  }
  if ('fault' in msg) {
    fault = msg.fault;
    return;
  }
  if (fault) injected(fault);
  void score(msg).then(
    (scores) => send({ id: msg.id, scores }),
    (err: Error) => send({ id: msg.id, error: err.message }),
  );
});

function injected(kind: Fault): void {
  if (kind === 'exit') process.exit(1);
  if (kind === 'throw') throw new Error('injected worker fault');
  // 'hang': a run that never returns; only a kill ends it.
  for (;;) Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0);
}

async function score(req: Request): Promise<Float32Array> {
  if (!init || !session) throw new Error('worker got a run before its init');
  const input = new ort.Tensor('float32', req.rows, [req.n, init.width]);
  // No fetches argument: onnxruntime-node 1.22 returns the wrong output when fetches name one
  // (['probabilities'] yields 'label'); the full result is picked by name instead.
  const out = await (await session).run({ [init.inputName]: input });
  const probs = out[init.outputName];
  if (!probs) throw new Error(`model has no output ${init.outputName}`);
  const data = probs.data as Float32Array;
  const classes = probs.dims[1] ?? 1;
  const scores = new Float32Array(req.n);
  for (let i = 0; i < req.n; i++) scores[i] = classes === 1 ? data[i]! : data[i * classes + init.positiveClassIndex]!;
  return scores;
}
