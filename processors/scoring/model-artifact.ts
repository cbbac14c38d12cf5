import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { resolve, sep } from 'node:path';
import { z } from 'zod';
import { FabricError } from '../../topology/errors.js';

const profile = z.object({ edges: z.array(z.number()).min(1), proportions: z.array(z.number().min(0)).min(2), mean: z.number().optional() }).refine((p) => p.proportions.length === p.edges.length + 1, 'proportions must have one more entry than edges');

const manifest = z.object({
  name: z.string().regex(/^[a-z][a-z0-9_-]*$/),
  version: z.string().min(1),
  sha256: z.string().regex(/^[0-9a-f]{64}$/),
  file: z.string().default('model.onnx'),
  inputs: z.array(z.string()).min(1),
  input_name: z.string().default('input'),
  output_name: z.string().default('probabilities'),
  positive_class_index: z.number().int().min(0).default(1),
  thresholds: z.object({ block: z.number().min(0).max(1), review: z.number().min(0).max(1) }).refine((t) => t.review <= t.block, 'review threshold must not exceed block'),
  reference: z.record(profile).default({}),
  metrics: z.record(z.unknown()).optional(),
});

export type ReferenceProfile = z.infer<typeof profile>;

export interface ModelArtifact {
  readonly name: string;
  readonly version: string;
  readonly sha256: string;
  readonly path: string;
  readonly bytes: Buffer;
  readonly inputs: readonly string[];
  readonly inputName: string;
  readonly outputName: string;
  readonly positiveClassIndex: number;
  readonly thresholds: { readonly block: number; readonly review: number };
  readonly reference: Readonly<Record<string, ReferenceProfile>>;
}

/**
 * Loads models/<name>/model.json and the ONNX file it names, refusing a file outside the model's
 * folder (path traversal) and bytes that do not match the pinned sha256.
 */
export async function loadModelArtifact(modelsDir: string, name: string): Promise<ModelArtifact> {
  const dir = resolve(modelsDir, name);
  let raw: unknown;
  try {
    raw = JSON.parse(await readFile(resolve(dir, 'model.json'), 'utf8'));
  } catch (err) {
    throw new FabricError('FABRIC_MODEL_INVALID', `model ${name}: cannot read ${resolve(dir, 'model.json')}: ${(err as Error).message}`, { cause: err });
  }
  const parsed = manifest.safeParse(raw);
  if (!parsed.success) throw new FabricError('FABRIC_MODEL_INVALID', `model ${name}: model.json is invalid: ${parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ')}`);
  const m = parsed.data;
  const path = resolve(dir, m.file);
  if (!path.startsWith(dir + sep)) throw new FabricError('FABRIC_MODEL_INVALID', `model ${name}: file ${m.file} escapes the model folder`);
  const bytes = await readFile(path).catch((err: Error) => {
    throw new FabricError('FABRIC_MODEL_INVALID', `model ${name}: cannot read ${path}: ${err.message}`, { cause: err });
  });
  const digest = createHash('sha256').update(bytes).digest('hex');
  if (digest !== m.sha256) throw new FabricError('FABRIC_MODEL_INVALID', `model ${name}: sha256 ${digest} does not match the pinned ${m.sha256}`);
  return Object.freeze({
    name: m.name,
    version: m.version,
    sha256: m.sha256,
    path,
    bytes,
    inputs: Object.freeze([...m.inputs]),
    inputName: m.input_name,
    outputName: m.output_name,
    positiveClassIndex: m.positive_class_index,
    thresholds: Object.freeze({ ...m.thresholds }),
    reference: Object.freeze(m.reference),
  });
}
