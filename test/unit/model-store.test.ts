import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { createHash } from 'node:crypto';
import { copyFile, mkdir, mkdtemp, readFile, readdir, rm, symlink, unlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import protobuf from 'protobufjs/minimal.js';
import * as ort from 'onnxruntime-node';
import { externalDataLocations } from '../../serving/registry/onnx-scan.js';
import { LocalModelStore, artifactAddress, type ArtifactRef } from '../../serving/registry/store.js';
import { fabricFailure } from '../shared/fabric-failure.js';

const FRAUD_DIR = fileURLToPath(new URL('../../models/fraud', import.meta.url));
const FRAUD_ONNX = join(FRAUD_DIR, 'model.onnx');

// ---- Hand-built ONNX models (protobuf wire format, field numbers from onnx.proto3) ----

type Build = (w: protobuf.Writer) => void;

function message(build: Build): Uint8Array {
  const w = protobuf.Writer.create();
  build(w);
  return w.finish();
}
const str = (w: protobuf.Writer, field: number, s: string): protobuf.Writer => w.uint32((field << 3) | 2).string(s);
const sub = (w: protobuf.Writer, field: number, bytes: Uint8Array): protobuf.Writer => w.uint32((field << 3) | 2).bytes(bytes);
const varint = (w: protobuf.Writer, field: number, v: number): protobuf.Writer => w.uint32(field << 3).uint64(v);

/** TensorProto: float [1, 2] named `name`, its 8 bytes in the external file `location`. */
function externalTensor(name: string, location: string): Uint8Array {
  return message((t) => {
    varint(t, 1, 1); // dims
    varint(t, 1, 2);
    varint(t, 2, 1); // data_type FLOAT
    str(t, 8, name);
    for (const [key, value] of [['location', location], ['offset', '0'], ['length', '8']] as const) sub(t, 13, message((e) => str(str(e, 1, key), 2, value))); // external_data
    varint(t, 14, 1); // data_location EXTERNAL
  });
}

/** ValueInfoProto: float tensor [N, 2]. */
function floatNx2(name: string): Uint8Array {
  const shape = message((s) => {
    sub(s, 1, message((d) => str(d, 2, 'N'))); // dim_param
    sub(s, 1, message((d) => varint(d, 1, 2))); // dim_value
  });
  const tensorType = message((tt) => sub(varint(tt, 1, 1), 2, shape)); // elem_type FLOAT, shape
  return message((v) => sub(str(v, 1, name), 2, message((t) => sub(t, 1, tensorType))));
}

function modelProto(graph: Uint8Array, extra: Build = () => undefined): Buffer {
  return Buffer.from(
    message((m) => {
      varint(m, 1, 8); // ir_version
      sub(m, 8, message((o) => varint(str(o, 1, ''), 2, 17))); // opset_import
      sub(m, 7, graph);
      extra(m);
    }),
  );
}

/** Y = X + W, W a [1, 2] float initializer stored in the external file `location`. */
function addModel(location: string): Buffer {
  const graph = message((g) => {
    sub(g, 1, message((n) => str(str(str(str(n, 1, 'X'), 1, 'W'), 2, 'Y'), 4, 'Add'))); // node
    str(g, 2, 'add_w');
    sub(g, 5, externalTensor('W', location)); // initializer
    sub(g, 11, floatNx2('X'));
    sub(g, 12, floatNx2('Y'));
  });
  return modelProto(graph);
}

const weights = (a: number, b: number): Buffer => Buffer.from(new Float32Array([a, b]).buffer);
const sha = (bytes: Uint8Array): string => createHash('sha256').update(bytes).digest('hex');

async function onnxAdd(path: string, x: number[]): Promise<number[]> {
  const session = await ort.InferenceSession.create(path, { executionProviders: ['cpu'] });
  try {
    const out = await session.run({ X: new ort.Tensor('float32', Float32Array.from(x), [x.length / 2, 2]) });
    return Array.from(out.Y!.data as Float32Array);
  } finally {
    await session.release();
  }
}

// ---- Fixture folders ----

let base: string;
let root: string;
let store: LocalModelStore;
let sources: string;
let n = 0;

beforeAll(async () => {
  base = await mkdtemp(join(tmpdir(), 'fabric-model-store-'));
});

afterAll(async () => {
  await rm(base, { recursive: true, force: true });
});

beforeEach(async () => {
  n++;
  root = join(base, `store-${n}`);
  sources = join(base, `src-${n}`);
  await mkdir(root, { recursive: true });
  await mkdir(sources, { recursive: true });
  store = new LocalModelStore(root);
});

/** A source folder holding the given files. */
async function folder(name: string, files: Record<string, Uint8Array>): Promise<string> {
  const dir = join(sources, name);
  await mkdir(dir, { recursive: true });
  for (const [file, bytes] of Object.entries(files)) {
    await mkdir(join(dir, file, '..'), { recursive: true });
    await writeFile(join(dir, file), bytes);
  }
  return dir;
}

const storePath = (ref: ArtifactRef, file = ref.file): string => join(root, 'sha256', ref.uri.slice('store:sha256/'.length), file);

describe('LocalModelStore: single-file models', () => {
  it('puts an .onnx file under its sha256 (idempotently) and fetches the identical bytes, without a path', async () => {
    const bytes = await readFile(FRAUD_ONNX);
    const hex = sha(bytes);
    const ref = await store.put(FRAUD_ONNX);
    expect(ref).toEqual({ sha256: hex, size: bytes.length, uri: `store:sha256/${hex}`, file: 'model.onnx', files: [{ path: 'model.onnx', sha256: hex, size: bytes.length }] });
    expect(await readFile(storePath(ref))).toEqual(bytes);
    // Only the .onnx file: the model.json beside it is not part of a single-file artifact.
    expect(await readdir(join(root, 'sha256', hex))).toEqual(['model.onnx']);

    expect(await store.put(FRAUD_ONNX)).toEqual(ref);
    expect(await readdir(join(root, 'sha256'))).toEqual([hex]);

    const fetched = await store.fetch(ref);
    expect(fetched.ref).toEqual(ref);
    expect(Buffer.compare(fetched.bytes, bytes)).toBe(0);
    expect(fetched.path).toBeUndefined();
    expect('path' in fetched).toBe(false);
  });

  it('keeps only the .onnx file of a folder holding model.onnx and model.json (no external data)', async () => {
    const bytes = await readFile(FRAUD_ONNX);
    const dir = await folder('fraud', { 'model.onnx': bytes, 'model.json': await readFile(join(FRAUD_DIR, 'model.json')) });
    const ref = await store.put(dir);
    expect(ref.sha256).toBe(sha(bytes));
    expect(ref.file).toBe('model.onnx');
    expect(ref.files).toEqual([{ path: 'model.onnx', sha256: sha(bytes), size: bytes.length }]);
    expect(await readdir(join(root, 'sha256', ref.uri.slice('store:sha256/'.length)))).toEqual(['model.onnx']);
    const fetched = await store.fetch(ref);
    expect(Buffer.compare(fetched.bytes, bytes)).toBe(0);
    expect(fetched.path).toBeUndefined();
  });

  it('refuses a folder without exactly one .onnx file', async () => {
    const bytes = await readFile(FRAUD_ONNX);
    const none = await fabricFailure(store.put(await folder('none', { 'model.json': Buffer.from('{}') })));
    expect(none.code).toBe('FABRIC_MODEL_INVALID');
    expect(none.message).toMatch(/exactly one \.onnx file, found 0/);
    const two = await fabricFailure(store.put(await folder('two', { 'a.onnx': bytes, 'b.onnx': bytes })));
    expect(two.code).toBe('FABRIC_MODEL_INVALID');
    expect(two.message).toMatch(/found 2 \(a\.onnx, b\.onnx\)/);
    expect((await fabricFailure(store.put(join(sources, 'no-such-model.onnx')))).code).toBe('FABRIC_MODEL_INVALID');
  });
});

describe('LocalModelStore: verification on fetch', () => {
  it('refuses a tampered store file with FABRIC_MODEL_INVALID naming the sha256', async () => {
    const ref = await store.put(FRAUD_ONNX);
    const bytes = await readFile(storePath(ref));
    bytes[100] = bytes[100]! ^ 0xff;
    await writeFile(storePath(ref), bytes);
    const err = await fabricFailure(store.fetch(ref));
    expect(err.code).toBe('FABRIC_MODEL_INVALID');
    expect(err.retriable).toBe(false);
    expect(err.message).toMatch(/sha256/);
    expect(err.message).toContain(sha(bytes));
    expect(err.message).toContain(ref.sha256);
    // Putting the good file again does not paper over the tampered copy.
    expect((await fabricFailure(store.put(FRAUD_ONNX))).code).toBe('FABRIC_MODEL_INVALID');
  });

  it('reports a deleted store file (or store) as FABRIC_MODEL_STORE_UNAVAILABLE (retriable)', async () => {
    const ref = await store.put(FRAUD_ONNX);
    await unlink(storePath(ref));
    const err = await fabricFailure(store.fetch(ref));
    expect(err.code).toBe('FABRIC_MODEL_STORE_UNAVAILABLE');
    expect(err.retriable).toBe(true);
    expect(err.message).toMatch(/missing/);
    const gone = await fabricFailure(new LocalModelStore(join(base, 'no-such-store')).fetch(ref));
    expect(gone.code).toBe('FABRIC_MODEL_STORE_UNAVAILABLE');
    expect(gone.retriable).toBe(true);
  });

  it('refuses a symlink in the source folder, a symlinked source, and a symlink in the store', async () => {
    const bytes = await readFile(FRAUD_ONNX);
    const dir = await folder('linked', { 'model.onnx': bytes });
    await symlink(join(FRAUD_DIR, 'model.json'), join(dir, 'model.json'));
    const inFolder = await fabricFailure(store.put(dir));
    expect(inFolder.code).toBe('FABRIC_MODEL_INVALID');
    expect(inFolder.message).toMatch(/model\.json is a symlink/);

    const link = join(sources, 'link.onnx');
    await symlink(FRAUD_ONNX, link);
    const linkedSource = await fabricFailure(store.put(link));
    expect(linkedSource.code).toBe('FABRIC_MODEL_INVALID');
    expect(linkedSource.message).toMatch(/symlink/);

    // In the store: a symlink to a file with the very same bytes is still refused.
    const ref = await store.put(FRAUD_ONNX);
    const elsewhere = join(sources, 'same-bytes.onnx');
    await copyFile(FRAUD_ONNX, elsewhere);
    await unlink(storePath(ref));
    await symlink(elsewhere, storePath(ref));
    const inStore = await fabricFailure(store.fetch(ref));
    expect(inStore.code).toBe('FABRIC_MODEL_INVALID');
    expect(inStore.message).toMatch(/symlink/);
  });

  it('refuses a reference whose sha256 or file paths are malformed', async () => {
    const ref = await store.put(FRAUD_ONNX);
    expect((await fabricFailure(store.fetch({ ...ref, sha256: '../../etc' }))).code).toBe('FABRIC_MODEL_INVALID');
    const escaping = await fabricFailure(store.fetch({ ...ref, files: [{ ...ref.files[0]!, path: '../../../model.onnx' }] }));
    expect(escaping.code).toBe('FABRIC_MODEL_INVALID');
    expect(escaping.message).toMatch(/escapes/);
  });
});

describe('externalDataLocations', () => {
  it('finds the location of a hand-built model that onnxruntime-node loads from its folder and computes Y = X + W', async () => {
    const model = addModel('weights.bin');
    expect(externalDataLocations(model)).toEqual(['weights.bin']);
    const dir = await folder('add', { 'model.onnx': model, 'weights.bin': weights(1.5, -2) });
    expect(await onnxAdd(join(dir, 'model.onnx'), [1, 2, 10, 20])).toEqual([2.5, 0, 11.5, 18]);
  });

  it('finds locations in sparse initializers, node attributes, subgraphs and local functions', () => {
    const constant = (location: string): Uint8Array =>
      message((n) => {
        str(n, 2, 'C');
        str(n, 4, 'Constant');
        sub(n, 5, message((a) => sub(str(a, 1, 'value'), 5, externalTensor('c', location)))); // attribute t
      });
    const subgraph = message((g) => {
      sub(g, 1, constant('in-subgraph.bin'));
      sub(g, 5, externalTensor('s', 'subgraph-init.bin'));
    });
    const graph = message((g) => {
      sub(g, 1, constant('in-attribute.bin'));
      sub(g, 1, message((n) => sub(str(n, 4, 'If'), 5, message((a) => sub(str(a, 1, 'then_branch'), 6, subgraph))))); // attribute g
      sub(g, 15, message((s) => sub(sub(s, 1, externalTensor('v', 'sparse-values.bin')), 2, externalTensor('i', 'sparse-indices.bin')))); // sparse_initializer
    });
    const withFunction = modelProto(graph, (m) => sub(m, 25, message((f) => sub(str(f, 1, 'f'), 7, constant('in-function.bin')))));
    expect(externalDataLocations(withFunction).sort()).toEqual(['in-attribute.bin', 'in-function.bin', 'in-subgraph.bin', 'sparse-indices.bin', 'sparse-values.bin', 'subgraph-init.bin']);
  });

  it('returns [] for models/fraud/model.onnx and throws on a truncated model', async () => {
    const bytes = await readFile(FRAUD_ONNX);
    expect(externalDataLocations(bytes)).toEqual([]);
    expect(() => externalDataLocations(bytes.subarray(0, Math.floor(bytes.length / 2)))).toThrow();
    const tiny = addModel('weights.bin');
    expect(() => externalDataLocations(tiny.subarray(0, Math.floor(tiny.length / 2)))).toThrow(/truncated|index out of range/);
  });
});

describe('LocalModelStore: external data', () => {
  it('keeps the .onnx and its weights file, and fetch gives the store path onnxruntime-node loads from', async () => {
    const model = addModel('weights.bin');
    const w = weights(3, 4);
    const dir = await folder('add', { 'model.onnx': model, 'weights.bin': w, 'model.json': Buffer.from('{}'), 'notes/readme.txt': Buffer.from('notes') });
    const ref = await store.put(dir);
    expect(ref).toEqual({
      sha256: sha(model),
      size: model.length,
      // With external data the address covers every file: the same graph with other weights is another artifact.
      uri: `store:sha256/${artifactAddress('model.onnx', [{ path: 'model.onnx', sha256: sha(model), size: model.length }, { path: 'weights.bin', sha256: sha(w), size: w.length }])}`,
      file: 'model.onnx',
      files: [
        { path: 'model.onnx', sha256: sha(model), size: model.length },
        { path: 'weights.bin', sha256: sha(w), size: 8 },
      ],
    });
    expect((await readdir(join(root, 'sha256', ref.uri.slice('store:sha256/'.length)))).sort()).toEqual(['model.onnx', 'weights.bin']);
    expect(await store.put(dir)).toEqual(ref);

    const fetched = await store.fetch(ref);
    expect(fetched.path).toBe(storePath(ref));
    expect(Buffer.compare(fetched.bytes, model)).toBe(0);
    expect(await onnxAdd(fetched.path!, [0, 0, 1, 1])).toEqual([3, 4, 4, 5]);

    // Tampered weights are refused; missing weights are a store problem.
    await writeFile(storePath(ref, 'weights.bin'), weights(3, 5));
    const tampered = await fabricFailure(store.fetch(ref));
    expect(tampered.code).toBe('FABRIC_MODEL_INVALID');
    expect(tampered.message).toMatch(/weights\.bin has sha256/);
    await unlink(storePath(ref, 'weights.bin'));
    expect((await fabricFailure(store.fetch(ref))).code).toBe('FABRIC_MODEL_STORE_UNAVAILABLE');
    // A reference that leaves out the weights file is refused (the model needs it).
    await writeFile(storePath(ref, 'weights.bin'), w);
    const partial = await fabricFailure(store.fetch({ ...ref, files: ref.files.slice(0, 1) }));
    expect(partial.code).toBe('FABRIC_MODEL_INVALID');
    expect(partial.message).toMatch(/not part of the artifact|address does not match/);
  });

  it('keeps weights in a subfolder referenced by a relative location', async () => {
    const model = addModel('data/weights.bin');
    const dir = await folder('nested', { 'model.onnx': model, 'data/weights.bin': weights(1, 1) });
    const ref = await store.put(dir);
    expect(ref.files.map((f) => f.path)).toEqual(['data/weights.bin', 'model.onnx']);
    const fetched = await store.fetch(ref);
    expect(await onnxAdd(fetched.path!, [1, 2])).toEqual([2, 3]);
  });

  it('refuses external data locations that escape the model folder', async () => {
    for (const location of ['../secret.bin', '/etc/passwd', 'data/../../secret.bin']) {
      const dir = await folder(`escape-${sha(Buffer.from(location)).slice(0, 8)}`, { 'model.onnx': addModel(location), 'weights.bin': weights(0, 0) });
      await writeFile(join(dir, '..', 'secret.bin'), weights(9, 9));
      const err = await fabricFailure(store.put(dir));
      expect(err.code, location).toBe('FABRIC_MODEL_INVALID');
      expect(err.message).toMatch(/escapes the model folder/);
      expect(err.message).toContain(JSON.stringify(location));
    }
    expect(await readdir(root)).toEqual([]);
  });

  it('refuses a location naming a file that is not in the folder, and a single-file put of a model with external data', async () => {
    const dir = await folder('missing', { 'model.onnx': addModel('other.bin'), 'weights.bin': weights(0, 0) });
    const missing = await fabricFailure(store.put(dir));
    expect(missing.code).toBe('FABRIC_MODEL_INVALID');
    expect(missing.message).toMatch(/"other\.bin" is not part of the artifact/);

    const withWeights = await folder('single', { 'model.onnx': addModel('weights.bin'), 'weights.bin': weights(0, 0) });
    const single = await fabricFailure(store.put(join(withWeights, 'model.onnx')));
    expect(single.code).toBe('FABRIC_MODEL_INVALID');
    expect(single.message).toMatch(/"weights\.bin" is not part of the artifact/);
    expect(await readdir(root)).toEqual([]);
  });

  it('refuses a folder whose .onnx file is not a readable model', async () => {
    const bytes = await readFile(FRAUD_ONNX);
    const err = await fabricFailure(store.put(await folder('truncated', { 'model.onnx': bytes.subarray(0, Math.floor(bytes.length / 2)) })));
    expect(err.code).toBe('FABRIC_MODEL_INVALID');
    expect(err.message).toMatch(/not a readable ONNX model/);
  });
});

describe('LocalModelStore: content address', () => {
  // BUG (serving/registry/store.ts, put(): `sha256: sha256(mainBytes)` / `folder(ref.sha256)`): the
  // artifact's address is the sha256 of the .onnx file alone, but a model with external data keeps its
  // weights outside that file. Two models with the same graph file and different weights (a retrained
  // model of the same architecture, exported with external data) get the same address; the second put
  // finds the folder taken, verifies it against its own file hashes (`await this.fetch(ref)`) and fails
  // with FABRIC_MODEL_INVALID "weights.bin has sha256 <A>, the registry pins <B>", as if the store were
  // tampered with. Expected: the second model is stored (its address covers every file) and both fetch.
  it('stores two models that share the .onnx file but not the weights as two artifacts', async () => {
    const model = addModel('weights.bin');
    const refA = await store.put(await folder('a', { 'model.onnx': model, 'weights.bin': weights(1, 2) }));
    const refB = await store.put(await folder('b', { 'model.onnx': model, 'weights.bin': weights(5, 6) }));
    expect(await onnxAdd((await store.fetch(refA)).path!, [0, 0])).toEqual([1, 2]);
    expect(await onnxAdd((await store.fetch(refB)).path!, [0, 0])).toEqual([5, 6]);
  });
});

describe('LocalModelStore: single-file names', () => {
  it('stores the same bytes from differently named files as one artifact, kept as model.onnx', async () => {
    const bytes = await readFile(FRAUD_ONNX);
    const dir = await mkdtemp(join(tmpdir(), 'fabric-names-'));
    try {
      await writeFile(join(dir, 'fraud-v2.onnx'), bytes);
      const a = await store.put(FRAUD_ONNX);
      const b = await store.put(join(dir, 'fraud-v2.onnx'));
      expect(b).toEqual(a);
      expect(b.file).toBe('model.onnx');
      expect((await store.fetch(b)).bytes.equals(bytes)).toBe(true);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
