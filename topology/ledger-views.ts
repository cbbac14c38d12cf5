import { loadAvroSchema } from '../schemas/catalog.js';
import type { StreamDef } from './graph.js';
import type { FeatureGroup } from './features/definition.js';
import { featureTable } from './features/rows.js';
import { sqlIdentifier, sqlLiteral } from './runtime/clickhouse.js';

/** `name=value` pairs of columns as one string (NULL shown as null). */
function pairs(columns: readonly string[]): string {
  if (columns.length === 0) return "''";
  return `concat(${columns.map((c, i) => `${sqlLiteral(`${i ? ' ' : ''}${c}=`)}, ifNull(toString(${sqlIdentifier(c)}), 'null')`).join(', ')})`;
}

/**
 * `v_entity_story`: everything the ledger knows about one entity (an account, a user, an item), in
 * time order: its events, its feature rows, the predictions and recommendations made for it, and the
 * outcomes observed. Generated from the streams and feature definitions (recreated on every apply, so
 * it follows them), for `SELECT * FROM fabric.v_entity_story WHERE entity_id = '...' ORDER BY ts_ms, kind`.
 */
export function entityStoryStatements(database: string, streams: readonly StreamDef[], groups: readonly FeatureGroup[]): string[] {
  const db = sqlIdentifier(database);
  const parts: string[] = [];
  for (const s of streams) {
    const fields = loadAvroSchema(s.schema).fields.map((f) => f.name).filter((n) => n !== 'event_id' && n !== s.keyField && n !== s.timeField);
    parts.push(`SELECT ${sqlIdentifier(s.keyField)} AS entity_id, ts_ms, 'event' AS kind, ${sqlLiteral(s.name)} AS source, event_id, ${pairs(fields)} AS detail FROM ${db}.${sqlIdentifier(`events_${s.name}`)} FINAL`);
  }
  for (const g of groups) {
    parts.push(`SELECT entity_id, ts_ms, 'features' AS kind, ${sqlLiteral(g.name)} AS source, event_id, ${pairs(g.features.map((f) => f.name))} AS detail FROM ${db}.${sqlIdentifier(featureTable(g))} FINAL`);
  }
  parts.push(
    `SELECT entity_id, event_ts_ms AS ts_ms, 'prediction' AS kind, model AS source, event_id, concat(model, '@', version, ' rules v', toString(rules_version), ': score ', ifNull(toString(score), 'null'), ' -> ', decision, ' [', arrayStringConcat(rules_fired, ', '), '] ', arrayStringConcat(reasons, '; ')) AS detail FROM ${db}.predictions FINAL`,
    `SELECT user_id AS entity_id, event_ts_ms AS ts_ms, 'recommendation' AS kind, model AS source, event_id, concat(model, '@', version, ' rules v', toString(rules_version), ': ', arrayStringConcat(groupArray(concat(toString(rank), '. ', item_id)), ', ')) AS detail FROM (SELECT * FROM ${db}.recommendations FINAL WHERE origin = 'stream' ORDER BY rank) GROUP BY user_id, event_ts_ms, model, version, rules_version, event_id`,
    `SELECT entity_id, ts_ms, 'outcome' AS kind, stream AS source, event_id, concat(label, ' ', toString(value), if(item_id = '', '', concat(' item ', item_id))) AS detail FROM ${db}.outcomes FINAL`,
  );
  return [`DROP TABLE IF EXISTS ${db}.v_entity_story`, `CREATE VIEW IF NOT EXISTS ${db}.v_entity_story AS\n${parts.join('\nUNION ALL\n')}`];
}
