import { createHash } from 'node:crypto';
import { readFile, readdir } from 'node:fs/promises';
import { packagePath } from './paths.js';
import type { Kafka, ITopicConfig } from 'kafkajs';
import type { ClickHouseSettings } from '@clickhouse/client';
import { AvroSerde } from '../schemas/serde.js';
import { loadAvroSchema } from '../schemas/catalog.js';
import { prefixed, type FabricConfig } from './config.js';
import type { Topology, TopicDef } from './graph.js';
import { createClickHouse, sqlIdentifier, sqlLiteral } from './runtime/clickhouse.js';
import { FabricError, messageOf } from './errors.js';
import { FEATURE_GROUPS } from './features/groups.js';
import { featureColumns, featureTable, featureTableStatements } from './features/rows.js';
import { entityStoryStatements } from './ledger-views.js';
import type { Partition, PlannedDrop } from './retention.js';
import type { ClickHouseClient } from './runtime/clickhouse.js';

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
  const ch = options.clickhouse === false ? { statements: 0, notices: [] } : await applyClickHouse(config, topology);
  return { topicsCreated: created, topicsExisting: existing, subjects, clickhouseStatements: ch.statements, notices: ch.notices };
}

/** One versioned migration: deploy/clickhouse/migrations/NNNN_name.sql. */
export interface Migration {
  readonly version: number;
  readonly name: string;
  readonly checksum: string;
  /** Statements with {db} replaced, in order. */
  readonly statements: readonly string[];
}

const MIGRATION_FILE = /^(\d{4})_([a-z0-9_]+)\.sql$/;

/** Splits a migration's SQL into statements: "--" comment lines dropped, ";" at a line end separates. */
export function splitStatements(sql: string, database: string): string[] {
  return sql
    .split('\n')
    .filter((line) => !line.trimStart().startsWith('--'))
    .join('\n')
    .split(/;\s*(?:\n|$)/)
    .map((x) => x.trim())
    .filter(Boolean)
    .map((x) => x.replaceAll('{db}', sqlIdentifier(database)));
}

/** Every migration in version order (the folder deploy/clickhouse/migrations). */
export async function clickhouseMigrations(database: string, dir = packagePath('deploy', 'clickhouse', 'migrations')): Promise<Migration[]> {
  const files = (await readdir(dir)).filter((f) => f.endsWith('.sql')).sort();
  const out: Migration[] = [];
  for (const file of files) {
    const m = MIGRATION_FILE.exec(file);
    if (!m) throw new FabricError('FABRIC_SCHEMA_MIGRATION_FAILED', `${file}: a migration is named NNNN_name.sql (four digits, lower-case name)`);
    const version = Number(m[1]);
    if (out.some((x) => x.version === version)) throw new FabricError('FABRIC_SCHEMA_MIGRATION_FAILED', `two migrations have version ${m[1]}`);
    const text = await readFile(`${dir}/${file}`, 'utf8');
    out.push({ version, name: `${m[1]}_${m[2]}`, checksum: createHash('sha256').update(text).digest('hex'), statements: splitStatements(text, database) });
  }
  return out;
}

/**
 * The migrations to run, in version order, given those a database recorded (version -> checksum): the
 * ones not recorded. A recorded migration whose file changed is refused (history is never rewritten);
 * a recorded version with no file (a database a newer release migrated) is left alone.
 */
export function planMigrations(migrations: readonly Migration[], recorded: ReadonlyMap<number, string>, database: string): Migration[] {
  const pending: Migration[] = [];
  for (const m of [...migrations].sort((a, b) => a.version - b.version)) {
    const checksum = recorded.get(m.version);
    if (checksum === undefined) pending.push(m);
    else if (checksum !== m.checksum) throw new FabricError('FABRIC_SCHEMA_MIGRATION_FAILED', `migration ${m.name} was applied to ${database} with checksum ${checksum.slice(0, 12)}, but the file now has ${m.checksum.slice(0, 12)}: an applied migration is never edited; add a new one`);
  }
  return pending;
}

/**
 * Settings the migrations run with, where the server has them (18.16 refuses a setting it does not
 * know): a migration copying a table (INSERT ... SELECT) writes rows of many days in one block, which
 * servers since 19.x refuse beyond max_partitions_per_insert_block (100) by default.
 */
async function migrationSettings(client: ReturnType<typeof createClickHouse>): Promise<ClickHouseSettings> {
  const rs = await client.query({ query: `SELECT name FROM system.settings WHERE name = 'max_partitions_per_insert_block'`, format: 'JSONEachRow' });
  return (await rs.json<{ name: string }>()).length > 0 ? { max_partitions_per_insert_block: '0' } : {};
}

/** Recorded migrations of a database (version -> checksum); none when it has no schema_migrations table yet. */
async function appliedMigrations(client: ReturnType<typeof createClickHouse>, database: string): Promise<Map<number, string>> {
  const rs = await client.query({ query: `SELECT version, any(checksum) AS checksum FROM ${sqlIdentifier(database)}.schema_migrations GROUP BY version`, format: 'JSONEachRow' });
  return new Map((await rs.json<{ version: number; checksum: string }>()).map((r) => [Number(r.version), r.checksum]));
}

/**
 * Runs one DDL statement that is meant to be idempotent, tolerating what another process applying the
 * same statement at the same moment causes (every fabric process applies the schema at start): a
 * DROP ... IF EXISTS of what the other just dropped (18.16 answers "doesn't exist", code 60), a
 * CREATE ... IF NOT EXISTS of what the other just created ("already exists", code 57), and an ALTER
 * TABLE ... ADD COLUMN of a column that is there (18.16 has no ADD COLUMN IF NOT EXISTS).
 */
async function runIdempotent(client: ReturnType<typeof createClickHouse>, query: string, settings: ClickHouseSettings = {}): Promise<void> {
  for (let attempt = 1; ; attempt++) {
    try {
      await client.command({ query, clickhouse_settings: settings });
      return;
    } catch (err) {
      const message = messageOf(err);
      if (/^DROP\s+(TABLE|VIEW|DATABASE)\s+IF\s+EXISTS\s/i.test(query) && /doesn't exist|Code: (60|81)\b/.test(message)) return;
      if (/^CREATE\s+(TABLE|VIEW|DATABASE)\s+IF\s+NOT\s+EXISTS\s/i.test(query) && /already exists|Code: (57|82)\b/.test(message)) return;
      if (/^ALTER\s+TABLE\s+\S+\s+ADD\s+COLUMN\s/i.test(query) && /already exists|Code: (15|44)\b/.test(message)) return;
      // A view being created over one another process has just dropped to recreate it: it is back in a moment.
      if (/doesn't exist|Code: 60\b/.test(message) && attempt < 10) {
        await new Promise((resolve) => setTimeout(resolve, 50 * attempt));
        continue;
      }
      throw err;
    }
  }
}

/**
 * Applies the migrations a database lacks, in order, each recorded once it fully succeeded (version,
 * name, checksum, statements, time). A recorded migration whose file changed is refused: history is
 * not rewritten. A failure names the migration and the statement and records nothing: the migration
 * runs again whole next time (its statements are written to be re-run). Returns the statements run.
 */
export async function migrateClickHouse(client: ReturnType<typeof createClickHouse>, database: string, migrations?: readonly Migration[]): Promise<{ applied: string[]; statements: number }> {
  const db = sqlIdentifier(database);
  const all = migrations ?? (await clickhouseMigrations(database));
  await runIdempotent(client, `CREATE DATABASE IF NOT EXISTS ${db}`);
  await runIdempotent(client, `CREATE TABLE IF NOT EXISTS ${db}.schema_migrations (version UInt32, name String, checksum String, statements UInt32, applied_at DateTime) ENGINE = MergeTree ORDER BY version`);
  const pending = planMigrations(all, await appliedMigrations(client, database), database);
  const settings = pending.length > 0 ? await migrationSettings(client) : {};
  const applied: string[] = [];
  let statements = 0;
  for (const m of pending) {
    for (const [i, query] of m.statements.entries()) {
      try {
        await runIdempotent(client, query, settings);
      } catch (err) {
        throw new FabricError('FABRIC_SCHEMA_MIGRATION_FAILED', `migration ${m.name}, statement ${i + 1} (${query.replace(/\s+/g, ' ').slice(0, 120)}): ${messageOf(err)}`, { cause: err });
      }
      statements++;
    }
    await client.insert({ table: `${db}.schema_migrations`, values: [{ version: m.version, name: m.name, checksum: m.checksum, statements: m.statements.length, applied_at: Math.floor(Date.now() / 1000) }], format: 'JSONEachRow' });
    applied.push(m.name);
  }
  return { applied, statements };
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

/**
 * Applies the pending migrations, then the generated part: the feature tables (created, or brought up
 * to their definitions, see migrateFeatureTables) and the entity story view over them.
 */
export async function applyClickHouse(config: Pick<FabricConfig, 'clickhouseUrl' | 'clickhouseUser' | 'clickhousePassword' | 'clickhouseDatabase'>, topology?: Pick<Topology, 'streams'>): Promise<{ statements: number; notices: string[]; migrations: string[] }> {
  const client = createClickHouse(config);
  try {
    const db = sqlIdentifier(config.clickhouseDatabase);
    await runIdempotent(client, `CREATE DATABASE IF NOT EXISTS ${db}`);
    const apply = () =>
      withSchemaLock(client, config.clickhouseDatabase, async () => {
        const { applied, statements } = await migrateClickHouse(client, config.clickhouseDatabase);
        const generated = FEATURE_GROUPS.flatMap((g) => featureTableStatements(g, db));
        for (const query of generated) await runIdempotent(client, query);
        const { altered, notices } = await migrateFeatureTables(client, config.clickhouseDatabase);
        const story = topology ? await applyGenerated(client, config.clickhouseDatabase, 'v_entity_story', entityStoryStatements(config.clickhouseDatabase, topology.streams, FEATURE_GROUPS)) : [];
        return { statements: statements + generated.length + altered + story.length, notices, migrations: applied };
      });
    // The lock is a table name, and ClickHouse 18.16 can let two creates of one name race: should two
    // appliers overlap, one meets the other's DROP/CREATE pairs ("doesn't exist", "already exists"). Every
    // migration runs whole again after a failure, so the apply is simply run again, up to 3 times.
    for (let attempt = 1; ; attempt++) {
      try {
        return await apply();
      } catch (err) {
        if (attempt >= 3 || !/doesn't exist|already exists|Code: (57|60|81|82)\b/.test(messageOf(err))) throw err;
        await new Promise((resolve) => setTimeout(resolve, 200 * attempt + Math.floor(Math.random() * 200)));
      }
    }
  } catch (err) {
    if (err instanceof FabricError) throw err;
    throw new FabricError('FABRIC_SINK_FAILED', `applying the ClickHouse schema failed: ${messageOf(err)}`, { cause: err });
  } finally {
    await client.close();
  }
}

/** A schema lock older than this is from an applier that died holding it. */
const SCHEMA_LOCK_STALE_SEC = 120;

/**
 * Runs `apply` holding the database's schema lock, so processes starting together (a fleet, a
 * deployment's replicas) apply migrations one after another instead of racing their DROP/CREATE pairs.
 * The lock is a table created without IF NOT EXISTS (ClickHouse creates a name once: the others get
 * "already exists" and wait); its holder drops it when done, and one older than
 * SCHEMA_LOCK_STALE_SEC (a holder that died) is broken.
 */
async function withSchemaLock<T>(client: ReturnType<typeof createClickHouse>, database: string, apply: () => Promise<T>): Promise<T> {
  const lock = `${sqlIdentifier(database)}.schema_lock`;
  const deadline = Date.now() + 5 * 60_000;
  for (let attempt = 0; ; attempt++) {
    try {
      await client.command({ query: `CREATE TABLE ${lock} (holder String) ENGINE = Memory` });
      break;
    } catch (err) {
      // "already exists": held; "doesn't exist": 18.16 answers a create racing the holder's drop so. Both: wait.
      if (!/already exists|Code: 57\b|doesn't exist|Code: 60\b/.test(messageOf(err))) throw err;
      if (Date.now() > deadline) throw new FabricError('FABRIC_SCHEMA_MIGRATION_FAILED', `the schema lock ${lock} is still held after 5 minutes (another process applying the schema); drop the table if no one is`);
      const rs = await client.query({ query: `SELECT now() - metadata_modification_time AS age FROM system.tables WHERE database = ${sqlLiteral(database)} AND name = 'schema_lock'`, format: 'JSONEachRow' });
      const [held] = await rs.json<{ age: number | string }>();
      if (held && Number(held.age) > SCHEMA_LOCK_STALE_SEC) await runIdempotent(client, `DROP TABLE IF EXISTS ${lock}`);
      else await new Promise((resolve) => setTimeout(resolve, Math.min(1000, 50 * (attempt + 1))));
    }
  }
  try {
    return await apply();
  } finally {
    await runIdempotent(client, `DROP TABLE IF EXISTS ${lock}`).catch(() => undefined);
  }
}

/**
 * A view generated from the definitions (the entity story): recreated only when its statements
 * changed, as recorded by fingerprint in schema_migrations (version 0, name the view's), so a
 * process starting does not drop a view analysts are reading. Returns the statements run.
 */
async function applyGenerated(client: ReturnType<typeof createClickHouse>, database: string, name: string, statements: readonly string[]): Promise<string[]> {
  const db = sqlIdentifier(database);
  const fingerprint = createHash('sha256').update(statements.join(';\n')).digest('hex');
  const rs = await client.query({ query: `SELECT (SELECT count() FROM ${db}.schema_migrations WHERE version = 0 AND name = ${sqlLiteral(`generated:${name}`)} AND checksum = ${sqlLiteral(fingerprint)}) AS recorded, (SELECT count() FROM system.tables WHERE database = ${sqlLiteral(database)} AND name = ${sqlLiteral(name)}) AS present`, format: 'JSONEachRow' });
  const [state] = await rs.json<{ recorded: string | number; present: string | number }>();
  if (Number(state?.recorded) > 0 && Number(state?.present) > 0) return [];
  for (const query of statements) {
    try {
      await runIdempotent(client, query);
    } catch (err) {
      throw new FabricError('FABRIC_SCHEMA_MIGRATION_FAILED', `generated ${name} (${query.replace(/\s+/g, ' ').slice(0, 80)}): ${messageOf(err)}`, { cause: err });
    }
  }
  await client.insert({ table: `${db}.schema_migrations`, values: [{ version: 0, name: `generated:${name}`, checksum: fingerprint, statements: statements.length, applied_at: Math.floor(Date.now() / 1000) }], format: 'JSONEachRow' });
  return [...statements];
}

/** Active partitions of the database's tables (views and the migrations record left out). */
export async function listPartitions(client: ClickHouseClient, database: string): Promise<Partition[]> {
  const rs = await client.query({
    query: `SELECT table, partition_id, sum(rows) AS rows FROM system.parts WHERE active AND database = ${sqlLiteral(database)} AND table != 'schema_migrations' GROUP BY table, partition_id ORDER BY table, partition_id`,
    format: 'JSONEachRow',
  });
  return (await rs.json<{ table: string; partition_id: string; rows: string | number }>()).map((r) => ({ table: r.table, partition: r.partition_id, rows: Number(r.rows) }));
}

/** Drops the planned partitions, one statement each. */
export async function dropPartitions(client: ClickHouseClient, database: string, drops: readonly PlannedDrop[]): Promise<void> {
  const db = sqlIdentifier(database);
  for (const d of drops) await client.command({ query: `ALTER TABLE ${db}.${sqlIdentifier(d.table)} DROP PARTITION ID ${sqlLiteral(d.partition)}` });
}
