import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as ort from 'onnxruntime-node';
import { describe, expect, it } from 'vitest';

/**
 * scikit-learn / onnxruntime parity of the committed models. The training scripts (train_fraud.py,
 * train_recs.py) write test/fixtures/parity/<model>.json: input rows (validation rows, some with -1
 * missing values), scikit-learn's predict_proba[:, 1] and Python onnxruntime's. Here onnxruntime-node,
 * which serving runs, scores the committed model file on the same rows: it must agree with
 * scikit-learn to 1e-5, and the fixture must belong to the committed bytes (sha256).
 */
const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const TOLERANCE = 1e-5;

interface ParityFixture {
  model: string;
  sha256: string;
  inputs: number[][];
  sklearn_proba: number[];
  onnxruntime_proba: number[];
}

describe.each(['fraud', 'recs'])('model %s: scikit-learn / onnxruntime-node parity', (name) => {
  const fixture = JSON.parse(readFileSync(join(ROOT, 'test', 'fixtures', 'parity', `${name}.json`), 'utf8')) as ParityFixture;
  const bytes = readFileSync(join(ROOT, 'models', name, 'model.onnx'));
  const manifest = JSON.parse(readFileSync(join(ROOT, 'models', name, 'model.json'), 'utf8')) as { sha256: string; inputs: string[] };

  it('is the fixture of the committed model file', () => {
    expect(fixture.model).toBe(name);
    const sha256 = createHash('sha256').update(bytes).digest('hex');
    expect(fixture.sha256).toBe(sha256);
    expect(manifest.sha256).toBe(sha256);
  });

  it('holds enough well-formed rows, some with missing (-1) inputs', () => {
    const width = manifest.inputs.length;
    expect(fixture.inputs.length).toBeGreaterThanOrEqual(100);
    expect(fixture.sklearn_proba).toHaveLength(fixture.inputs.length);
    expect(fixture.onnxruntime_proba).toHaveLength(fixture.inputs.length);
    for (const row of fixture.inputs) {
      expect(row).toHaveLength(width);
      expect(row.every(Number.isFinite)).toBe(true);
    }
    expect(fixture.inputs.filter((row) => row.includes(-1)).length).toBeGreaterThanOrEqual(10);
    // Not a constant model: the fixture spans a range of scores (recs' positive rate is ~1%).
    expect(Math.max(...fixture.sklearn_proba) - Math.min(...fixture.sklearn_proba)).toBeGreaterThan(0.1);
  });

  it(`scores every row within ${TOLERANCE} of scikit-learn`, async () => {
    const session = await ort.InferenceSession.create(bytes, { executionProviders: ['cpu'], intraOpNumThreads: 1 });
    try {
      const width = manifest.inputs.length;
      const flat = Float32Array.from(fixture.inputs.flat());
      // All outputs, read by name: onnxruntime-node 1.22 returns a lone fetched output under the first
      // output's name (run(feeds, ['probabilities']) yields { label: <probabilities> }).
      const out = await session.run({ input: new ort.Tensor('float32', flat, [fixture.inputs.length, width]) });
      const proba = out.probabilities!;
      expect(proba.dims).toEqual([fixture.inputs.length, 2]);
      const data = proba.data as Float32Array;
      const off: string[] = [];
      fixture.inputs.forEach((_, i) => {
        const node = data[i * 2 + 1]!;
        const sk = fixture.sklearn_proba[i]!;
        if (!(Math.abs(node - sk) <= TOLERANCE)) off.push(`row ${i}: node ${node} vs sklearn ${sk}`);
        // Same runtime version in Python and Node: the same float32 result.
        expect(Math.abs(node - fixture.onnxruntime_proba[i]!)).toBeLessThanOrEqual(1e-6);
      });
      expect(off).toEqual([]);
    } finally {
      await session.release();
    }
  });
});
