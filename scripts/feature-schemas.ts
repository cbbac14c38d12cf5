/**
 * Writes schemas/avro/<group>_features.avsc from the feature definitions (topology/features/groups.ts),
 * so the Avro record of features.<group> cannot drift from its definition: `npm run codegen` runs it
 * before the TypeScript codegen, and test/unit/feature-definitions.test.ts fails when a file is stale.
 */
import { writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { join, dirname } from 'node:path';
import { FEATURE_GROUPS } from '../topology/features/groups.js';
import { featureRowSchema } from '../topology/features/rows.js';

export function featureSchemaFiles(): { file: string; text: string }[] {
  return FEATURE_GROUPS.map((g) => ({ file: `${g.name}_features.avsc`, text: `${JSON.stringify(featureRowSchema(g), null, 2)}\n` }));
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const dir = join(dirname(fileURLToPath(import.meta.url)), '..', 'schemas', 'avro');
  for (const { file, text } of featureSchemaFiles()) writeFileSync(join(dir, file), text);
  console.log(`wrote ${FEATURE_GROUPS.length} feature schemas`);
}
