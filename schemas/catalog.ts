import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';

/** Every Avro schema of the fabric, by the name topics refer to it with. */
export const SCHEMA_FILES = {
  transaction: 'transaction.avsc',
  interaction: 'interaction.avsc',
  account_features: 'account_features.avsc',
  user_features: 'user_features.avsc',
  item_features: 'item_features.avsc',
  prediction: 'prediction.avsc',
  outcome: 'outcome.avsc',
  drift_metric: 'drift_metric.avsc',
  drift_partial: 'drift_partial.avsc',
  model_version: 'model_version.avsc',
  metadata: 'metadata.avsc',
  recommendation: 'recommendation.avsc',
  rule_set: 'rule_set.avsc',
  experiment: 'experiment.avsc',
  alert: 'alert.avsc',
  performance_metric: 'performance_metric.avsc',
} as const;

export type SchemaName = keyof typeof SCHEMA_FILES;

/** Source folder of the .avsc files; works from schemas/ (tsx, vitest) and from dist/schemas/ (built). */
function avroDir(): string {
  const here = dirname(fileURLToPath(import.meta.url));
  return here.endsWith(join('dist', 'schemas')) ? join(here, '..', '..', 'schemas', 'avro') : join(here, 'avro');
}

export interface AvroRecordSchema {
  readonly type: 'record';
  readonly name: string;
  readonly namespace?: string;
  readonly doc?: string;
  readonly fields: readonly { readonly name: string; readonly type: unknown; readonly default?: unknown; readonly doc?: string }[];
}

const cache = new Map<SchemaName, AvroRecordSchema>();

export function loadAvroSchema(name: SchemaName): AvroRecordSchema {
  let schema = cache.get(name);
  if (!schema) {
    schema = Object.freeze(JSON.parse(readFileSync(join(avroDir(), SCHEMA_FILES[name]), 'utf8')) as AvroRecordSchema);
    cache.set(name, schema);
  }
  return schema;
}
