import type { ModelVersion } from '../../schemas/types.generated.js';
import { applyMissingPolicy } from '../registry/entry.js';

/**
 * A model's input row from the values its task offers, in the signature's order, with the declared
 * missing-value policy applied: `missing` names the inputs without a value whose policy is the
 * fallback (the row must then not be scored). `features` is the vector as served, for the lineage.
 */
export function vectorize(entry: ModelVersion, values: Readonly<Record<string, number | null>>): { row: number[]; missing: string[]; features: Record<string, number | null> } {
  const inputs = entry.signature.inputs;
  const raw = inputs.map((i) => values[i.name] ?? null);
  const { row, missing } = applyMissingPolicy(inputs, raw);
  const features: Record<string, number | null> = {};
  inputs.forEach((input, i) => (features[input.name] = Number.isFinite(row[i]!) ? row[i]! : null));
  return { row, missing, features };
}
