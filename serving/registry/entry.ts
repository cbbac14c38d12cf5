import { z } from 'zod';
import type { ModelInput, ModelStage, ModelVersion } from '../../schemas/types.generated.js';
import { loadAvroSchema, type SchemaName } from '../../schemas/catalog.js';
import { FabricError } from '../../topology/errors.js';
import type { FeatureGroup } from '../../topology/features/definition.js';
import type { ArtifactRef } from './store.js';

/** Where a task's inputs come from: the stream it scores and the inputs its builder derives. */
export interface TaskInputs {
  readonly task: string;
  readonly schema: SchemaName;
  readonly derived: readonly string[];
}

const missingSpec = z.object({ policy: z.enum(['default', 'fallback']), value: z.number().optional() }).refine((m) => m.policy === 'fallback' || m.value !== undefined, 'a default policy needs a value');
const inputSpec = z.object({ name: z.string().min(1), type: z.string().default('float'), source: z.enum(['event', 'feature', 'derived']), group: z.string().optional(), missing: missingSpec });

/** model.json, the manifest an artifact folder carries (written by the training scripts). */
export const manifestSchema = z.object({
  name: z.string().regex(/^[a-z][a-z0-9_-]*$/, 'lower case letters, digits, - and _'),
  version: z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$/, 'letters, digits, . _ + -'),
  task: z.string().default('fraud'),
  sha256: z.string().regex(/^[0-9a-f]{64}$/).optional(),
  file: z.string().default('model.onnx'),
  inputs: z.array(z.string()).min(1),
  input_name: z.string().default('input'),
  output_name: z.string().default('probabilities'),
  positive_class_index: z.number().int().min(0).default(1),
  missing_value: z.number().default(-1),
  thresholds: z.record(z.number()).nullable().optional(),
  top_k: z.number().int().positive().optional(),
  max_candidates: z.number().int().positive().optional(),
  owner: z.string().default('unknown'),
  description: z.string().default(''),
  training: z.object({ from_ts: z.number().nullable().optional(), to_ts: z.number().nullable().optional(), rows: z.number().nullable().optional(), source: z.string().optional() }).passthrough().optional(),
  signature: z.object({ inputs: z.array(inputSpec).min(1), output: z.object({ kind: z.string().default('binary_probability'), positive_class_index: z.number().int().min(0).optional(), meaning: z.string().default('') }).optional() }).optional(),
  metrics: z.record(z.unknown()).optional(),
  reference: z.record(z.unknown()).optional(),
});

export type Manifest = z.infer<typeof manifestSchema>;

export function parseManifest(raw: unknown, label: string): Manifest {
  const parsed = manifestSchema.safeParse(raw);
  if (!parsed.success) throw new FabricError('FABRIC_MODEL_INVALID', `${label}: invalid manifest: ${parsed.error.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`).join('; ')}`);
  return parsed.data;
}

/** Numeric leaves of a metrics document, flattened with dots (validation.auc -> 1 number). */
export function flatMetrics(doc: unknown, prefix = '', out: Record<string, number> = {}): Record<string, number> {
  if (typeof doc === 'number' && Number.isFinite(doc)) out[prefix] = doc;
  else if (doc && typeof doc === 'object' && !Array.isArray(doc)) for (const [k, v] of Object.entries(doc)) flatMetrics(v, prefix ? `${prefix}.${k}` : k, out);
  return out;
}

export interface RegisterOptions {
  readonly name?: string;
  readonly version?: string;
  readonly metrics?: unknown;
  readonly reference?: unknown;
  readonly owner?: string;
  readonly registeredBy: string;
  readonly now: number;
}

/** The registry entry of a stored artifact and its manifest (stage `none` until promoted). */
export function entryFor(manifest: Manifest, artifact: ArtifactRef, options: RegisterOptions): ModelVersion {
  const sig = manifest.signature;
  const inputs: ModelInput[] = sig
    ? sig.inputs.map((i) => ({ name: i.name, type: i.type, source: i.source, group: i.group ?? null, missing: i.missing.policy, default_value: i.missing.policy === 'default' ? i.missing.value! : null }))
    : manifest.inputs.map((name) => ({ name, type: 'float', source: 'derived', group: null, missing: 'default', default_value: manifest.missing_value }));
  const params: Record<string, string> = {};
  if (manifest.top_k !== undefined) params.top_k = String(manifest.top_k);
  if (manifest.max_candidates !== undefined) params.max_candidates = String(manifest.max_candidates);
  const metrics = options.metrics ?? manifest.metrics ?? {};
  return {
    name: options.name ?? manifest.name,
    version: options.version ?? manifest.version,
    task: manifest.task,
    format: 'onnx',
    artifact: { ...artifact, files: [...artifact.files] },
    signature: {
      input_name: manifest.input_name,
      inputs,
      output_name: manifest.output_name,
      output_kind: sig?.output?.kind ?? 'binary_probability',
      positive_class_index: sig?.output?.positive_class_index ?? manifest.positive_class_index,
      output_meaning: sig?.output?.meaning ?? '',
    },
    thresholds: { ...(manifest.thresholds ?? {}) },
    params,
    owner: options.owner ?? manifest.owner,
    description: manifest.description,
    training: { from_ts: manifest.training?.from_ts ?? null, to_ts: manifest.training?.to_ts ?? null, rows: manifest.training?.rows ?? null, source: manifest.training?.source ?? '' },
    metrics: flatMetrics(metrics),
    metrics_json: JSON.stringify(metrics),
    reference_json: JSON.stringify(options.reference ?? manifest.reference ?? {}),
    stage: 'none',
    stage_history: [],
    registered_by: options.registeredBy,
    registered_at: options.now,
  };
}

/**
 * Refuses a signature the fabric cannot serve: a declared input list that differs from the artifact's
 * manifest order, a feature no feature group defines, an event field the task's stream lacks, a
 * derived input its builder does not compute, a task without a builder, a default policy without a value.
 */
export function validateSignature(entry: ModelVersion, tasks: readonly TaskInputs[], groups: readonly FeatureGroup[]): void {
  const label = `model ${entry.name}@${entry.version}`;
  const task = tasks.find((t) => t.task === entry.task);
  if (!task) throw new FabricError('FABRIC_MODEL_INVALID', `${label}: unknown task ${JSON.stringify(entry.task)}; the fabric serves ${tasks.map((t) => t.task).join(', ')}`);
  const fields = new Set(loadAvroSchema(task.schema).fields.map((f) => f.name));
  const problems: string[] = [];
  const seen = new Set<string>();
  const underived: string[] = [];
  for (const input of entry.signature.inputs) {
    if (seen.has(input.name)) problems.push(`input ${input.name} is declared twice`);
    seen.add(input.name);
    if (input.type !== 'float') problems.push(`input ${input.name}: type ${input.type} is not served (float only)`);
    if (input.missing === 'default' && (input.default_value === null || !Number.isFinite(input.default_value))) problems.push(`input ${input.name}: missing policy default needs a finite default_value`);
    if (input.source === 'feature') {
      const group = groups.find((g) => g.name === input.group);
      if (!group) problems.push(`input ${input.name} asks for feature group ${JSON.stringify(input.group)}, which is not defined (groups: ${groups.map((g) => g.name).join(', ')})`);
      else if (!group.featureNames.includes(input.name)) problems.push(`input ${input.name} is not a feature of group ${group.name} (its features: ${group.featureNames.join(', ')})`);
    } else if (input.source === 'event') {
      if (!fields.has(input.name)) problems.push(`input ${input.name} is not a field of the ${task.schema} events the ${task.task} task scores`);
    } else if (!task.derived.includes(input.name)) underived.push(input.name);
  }
  if (underived.length > 0) problems.push(`input${underived.length > 1 ? 's' : ''} ${underived.join(', ')} ${underived.length > 1 ? 'are' : 'is'} declared derived, but the ${task.task} task derives only ${task.derived.join(', ')}`);
  if (entry.signature.output_kind !== 'binary_probability') problems.push(`output kind ${entry.signature.output_kind} is not served (binary_probability only)`);
  if (problems.length > 0) throw new FabricError('FABRIC_MODEL_INVALID', `${label}: signature refused: ${problems.join('; ')}`);
}

/** A stage change appended to the history (who, when, from, to, why). */
export function withStage(entry: ModelVersion, to: ModelStage, by: string, at: number, reason: string): ModelVersion {
  return { ...entry, stage: to, stage_history: [...entry.stage_history, { from: entry.stage, to, by, at, reason }] };
}

export function entryKey(name: string, version: string): string {
  return `${name}@${version}`;
}

/** `name` or `name@version`. */
export function parseModelRef(ref: string): { name: string; version: string | null } {
  const at = ref.indexOf('@');
  const name = at < 0 ? ref : ref.slice(0, at);
  const version = at < 0 ? null : ref.slice(at + 1);
  if (!/^[a-z][a-z0-9_-]*$/.test(name) || (version !== null && !/^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$/.test(version))) {
    throw new FabricError('FABRIC_CLI_USAGE', `model reference ${JSON.stringify(ref)} is not name or name@version`);
  }
  return { name, version };
}

/** Applies the declared missing-value policies: null/NaN inputs take their default, or are reported for the fallback. */
export function applyMissingPolicy(inputs: readonly ModelInput[], raw: readonly (number | null)[]): { row: number[]; missing: string[] } {
  const row = new Array<number>(raw.length);
  const missing: string[] = [];
  for (let i = 0; i < raw.length; i++) {
    const v = raw[i];
    if (typeof v === 'number' && Number.isFinite(v)) row[i] = v;
    else {
      const input = inputs[i]!;
      if (input.missing === 'default') row[i] = input.default_value!;
      else {
        row[i] = Number.NaN;
        missing.push(input.name);
      }
    }
  }
  return { row, missing };
}
