import { z } from 'zod';
import type { ModelVersion } from '../../schemas/types.generated.js';
import { FabricError } from '../../topology/errors.js';

const profile = z.object({ edges: z.array(z.number()).min(1), proportions: z.array(z.number().min(0)).min(2), mean: z.number().optional() }).refine((p) => p.proportions.length === p.edges.length + 1, 'proportions must have one more entry than edges');

/** A drift reference per variable: bin edges and the training proportions per bin. */
export type ReferenceProfile = z.infer<typeof profile>;

/** The reference profiles an entry carries (reference_json), by variable; `{}` when it has none. */
export function referenceOf(entry: Pick<ModelVersion, 'name' | 'version' | 'reference_json'>): Readonly<Record<string, ReferenceProfile>> {
  let raw: unknown;
  try {
    raw = JSON.parse(entry.reference_json || '{}');
  } catch (err) {
    throw new FabricError('FABRIC_MODEL_INVALID', `model ${entry.name}@${entry.version}: reference profile is not JSON: ${(err as Error).message}`);
  }
  const parsed = z.record(profile).safeParse(raw);
  if (!parsed.success) throw new FabricError('FABRIC_MODEL_INVALID', `model ${entry.name}@${entry.version}: reference profile is invalid: ${parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ')}`);
  return Object.freeze(parsed.data);
}
