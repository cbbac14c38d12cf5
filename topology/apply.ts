import { readFile } from 'node:fs/promises';
import { packagePath } from './paths.js';
import type { Kafka, ITopicConfig } from 'kafkajs';
import { AvroSerde } from '../schemas/serde.js';
import { loadAvroSchema } from '../schemas/catalog.js';
import { prefixed, type FabricConfig } from './config.js';
import type { Topology, TopicDef } from './graph.js';
import { createClickHouse, sqlIdentifier, sqlLiteral } from './runtime/clickhouse.js';
import { FabricError, messageOf } from './errors.js';
import { FEATURE_GROUPS } from './features/groups.js';
import { featureColumns, featureTable, featureTableStatements } from './features/rows.js';

export interface ApplyReport {
  readonly topicsCreated: string[];
  readonly topicsExisting: string[];
  readonly subjects: { subject: string; id: number }[];
  readonly clickhouseStatements: number;
  /** What applying changed that needs an operator (a table set aside, a column to backfill). */
  readonly notices: string[];
}

function topicConfig(t: TopicDef): ITopicConfig['configEntries'] {
  const entries = [{ name: 'cleanup.policy', value: t.compacted ? 'compact' : 'delete' }];
  entries.push({ name: 'retention.ms', value: t.retentionMs === null ? '-1' : String(t.retentionMs) });
  if (t.compacted) entries.push({ name: 'min.cleanable.dirty.ratio', value: '0.1' });
  return entries;
}

/** Creates missing topics, registers every value schema (BACKWARD) and applies the ClickHouse DDL. Idempotent. */
export async function applyTopology(topology: Topology, config: FabricConfig, kafka: Kafka, serde: AvroSerde, options: { clickhouse?: boolean } = {}): Promise<ApplyReport> {
  const admin = kafka.admin();
  const created: string[] = [];
  const existing: string[] = [];
  try {
    await admin.connect();
    const present = new Set(await admin.listTopics());
    const missing = topology.topics.filter((t) => !present.has(prefixed(config, t.name)));
    existing.push(...topology.topics.filter((t) => present.has(prefixed(config, t.name))).map((t) => prefixed(config, t.name)));
    if (missing.length > 0) {
      await admin.createTopics({
        waitForLeaders: true,
        topics: missing.map((t) => ({ topic: prefixed(config, t.name), numPartitions: t.partitions, replicationFactor: -1, configEntries: topicConfig(t) })),
      });
      created.push(...missing.map((t) => prefixed(config, t.name)));
    }
  } catch (err) {
    throw new FabricError('FABRIC_KAFKA_UNAVAILABLE', `creating topics failed: ${messageOf(err)}`, { cause: err });
  } finally {
    await admin.disconnect().catch(() => undefined);
  }
  const subjects: { subject: string; id: number }[] = [];
  for (const t of topology.topics) {
    if (!t.schema) continue;
    const subject = `${prefixed(config, t.name)}-value`;
    try {
      const writer = await serde.writer(subject, loadAvroSchema(t.schema));
      subjects.push({ subject, id: writer.id });
    } catch (err) {
      throw new FabricError('FABRIC_REGISTRY_UNAVAILABLE', `registering ${subject} failed: ${messageOf(err)}`, { cause: err });
    }
  }
  const ch = options.clickhouse === false ? { statements: 0, notices: [] } : await applyClickHouse(config);
  return { topicsCreated: created, topicsExisting: existing, subjects, clickhouseStatements: ch.statements, notices: ch.notices };
}

export async function clickhouseStatements(database: string): Promise<string[]> {
  const sql = await readFile(packagePath('deploy', 'clickhouse', 'schema.sql'), 'utf8');
  return sql
    .split('\n')
    .filter((line) => !line.trimStart().startsWith('--'))
    .join('\n')
    .split(/;\s*(?:\n|$)/)
    .map((s) => s.trim())
    .filter(Boolean)
    .map((s) => s.replaceAll('{db}', sqlIdentifier(database)))
    .concat(FEATURE_GROUPS.flatMap((g) => featureTableStatements(g, sqlIdentifier(database))));
}

/**
 * Brings existing features_<group> tables up to their definitions: a feature added to a definition
 * becomes a new column (fill it with `fabric features backfill`). A table with another engine (from
 * before rows were versioned) is renamed aside, kept for reference, and the table recreated empty:
 * the notice returned says so and how to refill it (`fabric features backfill`), never silently.
 */
async function migrateFeatureTables(client: ReturnType<typeof createClickHouse>, database: string): Promise<{ altered: number; notices: string[] }> {
  let altered = 0;
  const notices: string[] = [];
  const db = sqlIdentifier(database);
  for (const g of FEATURE_GROUPS) {
    const table = featureTable(g);
    const engine = await client.query({ query: `SELECT engine_full FROM system.tables WHERE database = ${sqlLiteral(database)} AND name = ${sqlLiteral(table)}`, format: 'JSONEachRow' });
    const [current] = await engine.json<{ engine_full: string }>();
    if (current && !current.engine_full.startsWith('ReplacingMergeTree(version)')) {
      const aside = `${table}_legacy_${new Date().toISOString().replace(/\D/g, '').slice(0, 14)}`;
      await client.command({ query: `DROP TABLE IF EXISTS ${db}.v_${table}` });
      await client.command({ query: `RENAME TABLE ${db}.${table} TO ${db}.${aside}` });
      for (const query of featureTableStatements(g, db)) await client.command({ query });
      notices.push(`${database}.${table} had engine ${current.engine_full.split(' ')[0]} (rows from before versions); it is kept as ${database}.${aside} and ${table} was recreated empty: run fabric features backfill --group ${g.name} to refill it from Kafka`);
      continue;
    }
    const rs = await client.query({ query: `SELECT name, type FROM system.columns WHERE database = ${sqlLiteral(database)} AND table = ${sqlLiteral(table)}`, format: 'JSONEachRow' });
    const present = new Map((await rs.json<{ name: string; type: string }>()).map((c) => [c.name, c.type]));
    let after = 'ts_ms';
    for (const c of featureColumns(g)) {
      if (!present.has(c.name)) {
        await client.command({ query: `ALTER TABLE ${db}.${table} ADD COLUMN ${c.name} ${c.type} AFTER ${after}` });
        altered++;
        notices.push(`${database}.${table}: added column ${c.name}; run fabric features backfill --group ${g.name} to fill it`);
      }
      after = c.name;
    }
  }
  return { altered, notices };
}

/** Applies the ClickHouse DDL and brings the feature tables up to their definitions (see migrateFeatureTables). */
export async function applyClickHouse(config: Pick<FabricConfig, 'clickhouseUrl' | 'clickhouseUser' | 'clickhousePassword' | 'clickhouseDatabase'>): Promise<{ statements: number; notices: string[] }> {
  const client = createClickHouse(config);
  try {
    const statements = await clickhouseStatements(config.clickhouseDatabase);
    for (const query of statements) await client.command({ query });
    const { altered, notices } = await migrateFeatureTables(client, config.clickhouseDatabase);
    return { statements: statements.length + altered, notices };
  } catch (err) {
    if (err instanceof FabricError) throw err;
    throw new FabricError('FABRIC_SINK_FAILED', `applying the ClickHouse schema failed: ${messageOf(err)}`, { cause: err });
  } finally {
    await client.close();
  }
}
