import type { AvroRecordSchema } from '../../schemas/catalog.js';
import type { FeatureGroup, FeatureType } from './definition.js';

/**
 * The feature row of a group, one shape everywhere: the record on `features.<group>` (Avro, generated
 * from the definition and committed as schemas/avro/<group>_features.avsc), the ClickHouse table
 * `features_<group>` (DDL generated here) and what backfill writes.
 *
 * A row holds the features of one event as of that event, the event's stored fields (what the
 * offline engine needs to recompute any instant), its source position, and `version`: the input
 * offset whose processing produced the row. A late event (within the allowed lateness) corrects the
 * rows of the entity's events after it: the corrected rows carry the late event's offset as version,
 * so the table (ReplacingMergeTree(version)) and the latest hash keep the newest computation.
 */
export interface FeatureRow {
  event_id: string;
  entity_id: string;
  ts: number;
  source_topic: string;
  source_partition: number;
  source_offset: number;
  version: number;
  [column: string]: string | number | boolean | null;
}

function pascal(name: string): string {
  return name.replace(/(^|_)([a-z])/g, (_, __, c: string) => c.toUpperCase());
}

export function featureTopic(group: FeatureGroup): string {
  return `features.${group.name}`;
}

export function featureTable(group: FeatureGroup): string {
  return `features_${group.name}`;
}

/** The Avro schema of `features.<group>` (subject `<topic>-value`). */
export function featureRowSchema(group: FeatureGroup): AvroRecordSchema {
  const avro = (t: FeatureType, nullable: boolean): unknown => (nullable ? ['null', t] : t);
  return {
    type: 'record',
    name: `${pascal(group.name)}FeatureUpdate`,
    namespace: 'fabric.features',
    doc: `Features of one ${group.entity} as of one event of ${group.stream} (generated from the ${group.name} feature group; do not edit). Topic features.${group.name}, key: ${group.entity}.`,
    fields: [
      { name: 'event_id', type: 'string', doc: 'The event the features are as of.' },
      { name: 'entity_id', type: 'string' },
      { name: 'ts', type: 'long', doc: 'Event time the features are computed as of, epoch ms.' },
      ...group.features.map((f) => (f.nullable ? { name: f.name, type: avro(f.type, true), default: null } : { name: f.name, type: f.type })),
      // Defaults keep the schema BACKWARD compatible with records written before a field was stored.
      ...group.fields.map((f) => ({ name: f, type: group.fieldTypes[f]!, default: DEFAULTS[group.fieldTypes[f]!], doc: `The event's ${f} (stored so the offline engine can recompute any instant).` })),
      { name: 'source_topic', type: 'string' },
      { name: 'source_partition', type: 'int' },
      { name: 'source_offset', type: 'long', doc: "The event's offset in the group's input partition." },
      { name: 'version', type: 'long', default: 0, doc: 'Input offset whose processing produced this row; greater than source_offset for a row corrected by a late event.' },
    ],
  };
}

const DEFAULTS: Record<FeatureType, string | number | boolean> = { string: '', long: 0, double: 0, boolean: false };

function clickhouseType(t: FeatureType, nullable: boolean): string {
  const base = t === 'long' ? 'Int64' : t === 'double' ? 'Float64' : t === 'boolean' ? 'UInt8' : 'String';
  return nullable ? `Nullable(${base})` : base;
}

/**
 * The column holding a stored double field's exact value as text (JavaScript's shortest round-trip
 * form). ClickHouse 18.16 parses some decimal literals one ulp off (1.769 is stored as
 * 1.7690000000000001), so the offline engine reads this column and offline values stay bit-identical
 * to online ones; the Float64 column is for analysts.
 */
export function exactColumn(field: string): string {
  return `${field}_exact`;
}

/** Stored fields that get an exact text column (doubles; integers parse exactly). */
export function exactFields(group: FeatureGroup): string[] {
  return group.fields.filter((f) => group.fieldTypes[f] === 'double');
}

/** Columns of features_<group> in order: name and ClickHouse type. */
export function featureColumns(group: FeatureGroup): { name: string; type: string }[] {
  return [
    { name: 'event_id', type: 'String' },
    { name: 'entity_id', type: 'String' },
    { name: 'ts_ms', type: 'UInt64' },
    ...group.features.map((f) => ({ name: f.name, type: clickhouseType(f.type, f.nullable) })),
    ...group.fields.map((f) => ({ name: f, type: clickhouseType(group.fieldTypes[f]!, false) })),
    ...exactFields(group).map((f) => ({ name: exactColumn(f), type: 'String' })),
    { name: 'source_topic', type: 'String' },
    { name: 'source_partition', type: 'Int32' },
    { name: 'source_offset', type: 'UInt64' },
    { name: 'version', type: 'UInt64' },
  ];
}

/** CREATE statements for features_<group> and its FINAL view (`db` is an escaped identifier). */
export function featureTableStatements(group: FeatureGroup, db: string): string[] {
  const table = `${db}.${featureTable(group)}`;
  const cols = featureColumns(group).map((c) => `  ${c.name} ${c.type}`);
  cols.splice(3, 0, '  ts DateTime MATERIALIZED toDateTime(intDiv(ts_ms, 1000))');
  return [
    `CREATE TABLE IF NOT EXISTS ${table} (\n${cols.join(',\n')}\n) ENGINE = ReplacingMergeTree(version)\nPARTITION BY toYYYYMMDD(toDateTime(intDiv(ts_ms, 1000)))\nORDER BY (entity_id, ts_ms, event_id)`,
    `CREATE VIEW IF NOT EXISTS ${db}.v_${featureTable(group)} AS SELECT * FROM ${table} FINAL`,
  ];
}

/** The ClickHouse row of a feature row (JSONEachRow; booleans as 0/1; exact text of stored doubles). */
export function featureTableRow(group: FeatureGroup, row: FeatureRow): Record<string, unknown> {
  const { ts, ...rest } = row;
  const out: Record<string, unknown> = { ts_ms: ts };
  for (const [k, v] of Object.entries(rest)) out[k] = typeof v === 'boolean' ? (v ? 1 : 0) : v;
  for (const f of exactFields(group)) out[exactColumn(f)] = String(row[f]);
  return out;
}
