import { randomBytes } from 'node:crypto';
import { afterAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../topology/config.js';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { join } from 'node:path';
import { applyClickHouse, clickhouseMigrations, migrateClickHouse, splitStatements } from '../../topology/apply.js';
import { fabricTopology } from '../../app/fabric-topology.js';
import { createClickHouse, sqlLiteral } from '../../topology/runtime/clickhouse.js';
import { packagePath } from '../../topology/paths.js';
import { chRows } from './harness.js';

const execFileP = promisify(execFile);

/** Applying the schema over a database an older version created: nothing silent, nothing lost. */
const db = `it_migrate_${randomBytes(4).toString('hex')}`;
const config = { ...loadConfig(), clickhouseDatabase: db };
const client = createClickHouse(config);

afterAll(async () => {
  await client.command({ query: `DROP DATABASE IF EXISTS ${db}` });
  await client.close();
});

describe('feature tables brought up to their definitions', () => {
  it('sets an old-engine table aside with its rows and recreates it; adds a column a definition gained; then changes nothing', async () => {
    await client.command({ query: `CREATE DATABASE ${db}` });
    // features_account as the previous version created it: versioned by source offset, no stored fields.
    await client.command({ query: `CREATE TABLE ${db}.features_account (event_id String, entity_id String, ts_ms UInt64, txn_count_1h UInt64, source_topic String, source_partition Int32, source_offset UInt64) ENGINE = ReplacingMergeTree(source_offset) PARTITION BY toYYYYMMDD(toDateTime(intDiv(ts_ms, 1000))) ORDER BY (entity_id, ts_ms, event_id)` });
    await client.command({ query: `INSERT INTO ${db}.features_account VALUES ('e-1', 'a-1', 1700000000000, 3, 'events.transactions', 0, 7)` });
    const first = await applyClickHouse(config);
    expect(first.notices).toHaveLength(1);
    expect(first.notices[0]).toMatch(new RegExp(`^${db}\\.features_account had engine ReplacingMergeTree\\(source_offset\\) .* kept as ${db}\\.features_account_legacy_\\d{14} .* fabric features backfill --group account`));
    const tables = await chRows<{ name: string; engine_full: string }>(client, `SELECT name, engine_full FROM system.tables WHERE database = ${sqlLiteral(db)} AND name LIKE 'features_account%' ORDER BY name`);
    expect(tables.map((t) => t.name.replace(/\d{14}$/, 'N'))).toEqual(['features_account', 'features_account_legacy_N']);
    expect(tables[0]!.engine_full).toMatch(/^ReplacingMergeTree\(version\)/);
    expect(await chRows(client, `SELECT event_id, txn_count_1h FROM ${db}.${tables[1]!.name}`)).toEqual([{ event_id: 'e-1', txn_count_1h: '3' }]);
    expect(await chRows(client, `SELECT count() AS n FROM ${db}.v_features_account`)).toEqual([{ n: '0' }]);

    // A feature added to a definition (here: its column missing) becomes a new column, with a notice.
    await client.command({ query: `ALTER TABLE ${db}.features_user DROP COLUMN user_ctr_24h` });
    const second = await applyClickHouse(config);
    expect(second.notices).toEqual([`${db}.features_user: added column user_ctr_24h; run fabric features backfill --group user to fill it`]);
    const columns = await chRows<{ name: string; type: string }>(client, `SELECT name, type FROM system.columns WHERE database = ${sqlLiteral(db)} AND table = 'features_user' AND name IN ('user_clicks_24h', 'user_ctr_24h', 'user_distinct_items_24h')`);
    expect(columns).toEqual([
      { name: 'user_clicks_24h', type: 'Int64' },
      { name: 'user_ctr_24h', type: 'Nullable(Float64)' },
      { name: 'user_distinct_items_24h', type: 'Int64' },
    ]);

    expect((await applyClickHouse(config)).notices).toEqual([]);
  });
});

describe('versioned migrations (deploy/clickhouse/migrations)', () => {
  const mdb = `it_migrations_${randomBytes(4).toString('hex')}`;
  let dir: string;
  const after: string[] = [];
  afterAll(async () => {
    for (const d of [mdb, ...after]) await client.command({ query: `DROP DATABASE IF EXISTS ${d}` });
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('applies each migration once, in order, recorded with its checksum; again changes nothing', async () => {
    const migrations = await clickhouseMigrations(mdb);
    expect(migrations.map((m) => m.name).slice(0, 3)).toEqual(['0001_base', '0002_ledger', '0003_partition_by_day']);
    const first = await migrateClickHouse(client, mdb);
    expect(first.applied).toEqual(migrations.map((m) => m.name));
    const recorded = await chRows<{ version: number; name: string; checksum: string }>(client, `SELECT version, name, checksum FROM ${mdb}.schema_migrations ORDER BY version`);
    expect(recorded).toEqual(migrations.map((m) => ({ version: m.version, name: m.name, checksum: m.checksum })));
    expect(await migrateClickHouse(client, mdb)).toEqual({ applied: [], statements: 0 });
    // Partitioned by day, every table.
    const keys = await chRows<{ name: string; partition_key: string }>(client, `SELECT name, partition_key FROM system.tables WHERE database = ${sqlLiteral(mdb)} AND engine LIKE '%MergeTree' AND name != 'schema_migrations' ORDER BY name`);
    for (const k of keys) expect(k.partition_key, k.name).toMatch(/^toYYYYMMDD\(/);
  });

  it('refuses a recorded migration whose file changed, and records nothing of a migration that fails (it runs whole again, ADD COLUMN of an existing column counting as done)', async () => {
    dir = await mkdtemp(join(tmpdir(), 'fabric-migrations-'));
    const mdb = `it_migrations_t_${randomBytes(4).toString('hex')}`;
    after.push(mdb);
    await writeFile(join(dir, '0001_t.sql'), 'CREATE TABLE IF NOT EXISTS {db}.t (a String) ENGINE = MergeTree ORDER BY a;\n');
    await migrateClickHouse(client, mdb, await clickhouseMigrations(mdb, dir));
    // 0002 adds a column, then fails on its second statement.
    await writeFile(join(dir, '0002_u.sql'), 'ALTER TABLE {db}.t ADD COLUMN b UInt8 DEFAULT 1;\nCREATE TABLE {db}.t (a String) ENGINE = MergeTree ORDER BY a;\n');
    await expect(migrateClickHouse(client, mdb, await clickhouseMigrations(mdb, dir))).rejects.toThrow(/^migration 0002_u, statement 2 \(CREATE TABLE it_migrations_\w+\.t .*already exists/);
    expect((await chRows<{ name: string }>(client, `SELECT name FROM ${mdb}.schema_migrations WHERE name = '0002_u'`)).length).toBe(0);
    // Fixed, it runs whole again: the ADD COLUMN of the column added last time counts as done.
    await writeFile(join(dir, '0002_u.sql'), 'ALTER TABLE {db}.t ADD COLUMN b UInt8 DEFAULT 1;\nCREATE TABLE IF NOT EXISTS {db}.t2 (a String) ENGINE = MergeTree ORDER BY a;\n');
    expect((await migrateClickHouse(client, mdb, await clickhouseMigrations(mdb, dir))).applied).toEqual(['0002_u']);
    // History is never rewritten.
    await writeFile(join(dir, '0001_t.sql'), 'CREATE TABLE IF NOT EXISTS {db}.t (a String, c String) ENGINE = MergeTree ORDER BY a;\n');
    await expect(migrateClickHouse(client, mdb, await clickhouseMigrations(mdb, dir))).rejects.toMatchObject({ code: 'FABRIC_SCHEMA_MIGRATION_FAILED', message: expect.stringMatching(/migration 0001_t was applied .* with checksum \w+, but the file now has \w+: an applied migration is never edited/) });
  });

  it('survives every process applying the schema at the same moment (as a fleet starting does), and recreates the generated view only when it changed', async () => {
    const race = `it_race_${randomBytes(4).toString('hex')}`;
    after.push(race);
    const results = await Promise.allSettled(Array.from({ length: 8 }, () => applyClickHouse({ ...config, clickhouseDatabase: race }, fabricTopology())));
    expect(results.filter((r) => r.status === 'rejected').map((r) => String((r as PromiseRejectedResult).reason))).toEqual([]);
    const views = await chRows<{ name: string }>(client, `SELECT name FROM system.tables WHERE database = ${sqlLiteral(race)} AND engine = 'View' ORDER BY name`);
    expect(views.map((v) => v.name)).toContain('v_entity_story');
    expect(views.map((v) => v.name)).toContain('v_predictions');
    const before = await chRows<{ t: string }>(client, `SELECT toString(metadata_modification_time) AS t FROM system.tables WHERE database = ${sqlLiteral(race)} AND name = 'v_entity_story'`);
    const again = await applyClickHouse({ ...config, clickhouseDatabase: race }, fabricTopology());
    expect(again.migrations).toEqual([]);
    expect(await chRows(client, `SELECT toString(metadata_modification_time) AS t FROM system.tables WHERE database = ${sqlLiteral(race)} AND name = 'v_entity_story'`)).toEqual(before);
  });

  it('brings a database the pre-migration schema created (no schema_migrations) up to date, keeping its rows', async () => {
    const old = `it_oldschema_${randomBytes(4).toString('hex')}`;
    try {
      await client.command({ query: `CREATE DATABASE ${old}` });
      await client.command({ query: `CREATE TABLE ${old}.predictions (event_id String, entity_id String, model String, version String, score Nullable(Float64), decision String, reasons Array(String), fallback UInt8, provider String, event_ts_ms UInt64, feature_names Array(String), feature_values Array(Nullable(Float64)), source_topic String, source_partition Int32, source_offset UInt64) ENGINE = ReplacingMergeTree(source_offset) PARTITION BY toYYYYMMDD(toDateTime(intDiv(event_ts_ms, 1000))) ORDER BY (model, event_id)` });
      await client.command({ query: `INSERT INTO ${old}.predictions (event_id, entity_id, model, version, score, decision, event_ts_ms) VALUES ('e1', 'a', 'fraud', '1', 0.5, 'review', 1700000000000)` });
      await applyClickHouse({ ...config, clickhouseDatabase: old });
      expect(await chRows(client, `SELECT event_id, decision, rules_version, rules_fired FROM ${old}.v_predictions`)).toEqual([{ event_id: 'e1', decision: 'review', rules_version: 0, rules_fired: [] }]);
    } finally {
      await client.command({ query: `DROP DATABASE IF EXISTS ${old}` });
    }
  });
});

describe('a database the pre-migration schema.sql created (drift_metrics and alerts by month)', () => {
  const dbs: string[] = [];
  afterAll(async () => {
    for (const d of dbs) await client.command({ query: `DROP DATABASE IF EXISTS ${d}` });
  });
  const DAY = 86_400_000;
  // Rows of two months, so the old tables hold two month partitions and the new ones four days.
  const drift = [
    { model: 'fraud', version: '1', variable: 'amount', window_start_ms: Date.UTC(2025, 9, 30, 12), window_end_ms: Date.UTC(2025, 9, 30, 12, 1), count: '10', psi: 0.5, mean: 12.5, status: 'drift', source_topic: 'drift.metrics', source_partition: 0, source_offset: '1' },
    { model: 'fraud', version: '1', variable: 'amount', window_start_ms: Date.UTC(2025, 10, 2), window_end_ms: Date.UTC(2025, 10, 2, 0, 1), count: '3', psi: 0.01, mean: null, status: 'ok', source_topic: 'drift.metrics', source_partition: 0, source_offset: '2' },
    { model: 'recs', version: '2', variable: 'score', window_start_ms: Date.UTC(2025, 10, 2) + DAY, window_end_ms: Date.UTC(2025, 10, 3, 0, 1), count: '7', psi: 0.2, mean: 0.25, status: 'warn', source_topic: 'drift.metrics', source_partition: 0, source_offset: '3' },
  ].map((r) => ({ ...r, window_start_ms: String(r.window_start_ms), window_end_ms: String(r.window_end_ms) }));
  const alerts = [
    { ts_ms: String(Date.UTC(2025, 9, 31, 23, 59)), kind: 'drift', model: 'fraud', message: 'psi 0.5 on amount', source_topic: 'alerts', source_partition: 0, source_offset: '4' },
    { ts_ms: String(Date.UTC(2025, 10, 1)), kind: 'processor', model: '', message: "it's back", source_topic: 'alerts', source_partition: 0, source_offset: '5' },
  ];
  const partitions = (table: string, database: string) => chRows<{ partition_id: string }>(client, `SELECT DISTINCT partition_id FROM system.parts WHERE active AND database = ${sqlLiteral(database)} AND table = ${sqlLiteral(table)} ORDER BY partition_id`);

  /** A database as the old schema.sql left it, with rows in drift_metrics and alerts. */
  async function oldDatabase(prefix: string): Promise<string> {
    const name = `${prefix}_${randomBytes(4).toString('hex')}`;
    dbs.push(name);
    const sql = await readFile(packagePath('test', 'fixtures', 'clickhouse', 'schema-before-migrations.sql'), 'utf8');
    for (const query of splitStatements(sql, name)) await client.command({ query });
    await client.insert({ table: `${name}.drift_metrics`, values: drift, format: 'JSONEachRow' });
    await client.insert({ table: `${name}.alerts`, values: alerts, format: 'JSONEachRow' });
    expect(await partitions('drift_metrics', name)).toEqual([{ partition_id: '202510' }, { partition_id: '202511' }]);
    return name;
  }

  /** Every table partitioned by day, the rows unchanged (through the v_ views, which read the new tables), nothing left aside. */
  async function expectMigrated(name: string): Promise<void> {
    const keys = await chRows<{ name: string; partition_key: string }>(client, `SELECT name, partition_key FROM system.tables WHERE database = ${sqlLiteral(name)} AND engine LIKE '%MergeTree' AND name != 'schema_migrations' ORDER BY name`);
    expect(keys.map((k) => k.name)).toContain('drift_metrics');
    for (const k of keys) expect(k.partition_key, k.name).toMatch(/^toYYYYMMDD\(/);
    expect(await chRows(client, `SELECT name FROM system.tables WHERE database = ${sqlLiteral(name)} AND (name LIKE '%0003%' OR name LIKE '%0005%')`)).toEqual([]);
    // Columns added by 0005 (the drift measures beside PSI) and 0008 (final) take their defaults on the old rows.
    const monitoring = { kind: 'numeric', total: '0', js: null, ks: null, wasserstein: null, chi2_p: null, missing_rate: 0, invalid: '0', out_of_range_rate: 0, unseen_rate: 0, late: '0', final: 1 };
    expect(await chRows(client, `SELECT * FROM ${name}.v_drift_metrics ORDER BY window_start_ms`)).toEqual(drift.map((d) => ({ ...d, ...monitoring })));
    const key = await chRows<{ sorting_key: string }>(client, `SELECT sorting_key FROM system.tables WHERE database = ${sqlLiteral(name)} AND name = 'drift_metrics'`);
    expect(key).toEqual([{ sorting_key: 'model, version, variable, window_end_ms, window_start_ms' }]);
    // Columns added since (0004: alert_id, severity, version, subject, details) take their defaults.
    expect(await chRows(client, `SELECT * FROM ${name}.v_alerts ORDER BY ts_ms`)).toEqual(alerts.map((a) => ({ ...a, alert_id: '', severity: '', version: '', subject: '', detail_names: [], detail_values: [] })));
    expect(await partitions('drift_metrics', name)).toEqual([{ partition_id: '20251030' }, { partition_id: '20251102' }, { partition_id: '20251103' }]);
    expect(await partitions('alerts', name)).toEqual([{ partition_id: '20251031' }, { partition_id: '20251101' }]);
  }

  it('migrates cleanly: every migration applied and recorded, every table by day, every row kept; again changes nothing', async () => {
    const name = await oldDatabase('it_oldschema_full');
    expect(await chRows(client, `EXISTS TABLE ${name}.schema_migrations`)).toEqual([{ result: 0 }]);
    const report = await applyClickHouse({ ...config, clickhouseDatabase: name }, fabricTopology());
    const names = (await clickhouseMigrations(name)).map((m) => m.name);
    expect(report.migrations).toEqual(names);
    expect(await chRows(client, `SELECT name FROM ${name}.schema_migrations WHERE version > 0 ORDER BY version`)).toEqual(names.map((n) => ({ name: n })));
    await expectMigrated(name);
    // Writers insert into the new tables by name.
    await client.insert({ table: `${name}.alerts`, values: [{ ...alerts[0], ts_ms: String(Date.UTC(2025, 10, 5)), source_offset: '6' }], format: 'JSONEachRow' });
    expect(await partitions('alerts', name)).toEqual([{ partition_id: '20251031' }, { partition_id: '20251101' }, { partition_id: '20251105' }]);
    const again = await applyClickHouse({ ...config, clickhouseDatabase: name }, fabricTopology());
    expect(again.migrations).toEqual([]);
    expect(await chRows(client, `SELECT count() AS n FROM ${name}.v_alerts`)).toEqual([{ n: '3' }]);
  });

  it.each([
    [3, '0003_partition_by_day', 2],
    [5, '0005_monitoring', 1],
  ])('%i run again after it failed at any statement (even between the two renames) loses no row and leaves nothing aside', async (version, migration, renameStatements) => {
    const migrations = await clickhouseMigrations('x');
    const repartition = migrations.find((m) => m.name === migration)!;
    const renames = repartition.statements.flatMap((q, i) => (q.startsWith('RENAME TABLE') ? [i] : []));
    expect(renames).toHaveLength(renameStatements);
    // A failure after each statement; -1: after the first rename of a RENAME statement but before its second.
    const failures: { after: number; halfRename?: boolean }[] = [...repartition.statements.keys()].map((i) => ({ after: i })).concat(renames.map((i) => ({ after: i - 1, halfRename: true })));
    for (const failure of failures) {
      const name = await oldDatabase('it_rerun0003');
      await migrateClickHouse(client, name, (await clickhouseMigrations(name)).filter((m) => m.version < version));
      const statements = (await clickhouseMigrations(name)).find((m) => m.version === version)!.statements;
      for (const query of statements.slice(0, failure.after + 1)) await client.command({ query });
      if (failure.halfRename) await client.command({ query: statements[failure.after + 1]!.split(',')[0]! });
      expect((await migrateClickHouse(client, name)).applied, `failed after statement ${failure.after + 1}${failure.halfRename ? ' and half of the next' : ''}`).toContain(migration);
      await expectMigrated(name);
      await client.command({ query: `DROP DATABASE ${name}` });
    }
  });
});

describe('fabric retention apply', () => {
  const rdb = `it_retention_${randomBytes(4).toString('hex')}`;
  afterAll(async () => {
    await client.command({ query: `DROP DATABASE IF EXISTS ${rdb}` });
  });

  it('drops exactly the day partitions older than their retention; --dry-run drops nothing', async () => {
    await migrateClickHouse(client, rdb);
    const day = 86_400_000;
    const now = Date.now();
    const at = (daysAgo: number) => now - daysAgo * day;
    const row = (id: string, ts: number) => ({ event_id: id, user_id: 'u', item_id: 'i', action: 'view', ts_ms: ts, source_topic: 't', source_partition: 0, source_offset: 1 });
    await client.insert({ table: `${rdb}.events_interactions`, values: [row('old-1', at(40)), row('old-2', at(31)), row('new-1', at(29)), row('new-2', at(1))], format: 'JSONEachRow' });
    await client.insert({ table: `${rdb}.alerts`, values: [{ ts_ms: at(400), kind: 'k', model: 'm', message: 'x', source_topic: 't', source_partition: 0, source_offset: 1 }], format: 'JSONEachRow' });
    const env = { ...process.env, FABRIC_CLICKHOUSE_DATABASE: rdb, FABRIC_CLICKHOUSE_RETENTION: 'events_*=30d,alerts=keep', FABRIC_LOG_LEVEL: 'warn' };
    const run = async (...args: string[]) => JSON.parse((await execFileP('npx', ['tsx', 'app/cli/main.ts', 'retention', 'apply', ...args, '--json'], { env, timeout: 120_000 })).stdout) as { dryRun: boolean; planned: { table: string; rows: number }[]; dropped: unknown[] };
    const dry = await run('--dry-run');
    expect(dry.dryRun).toBe(true);
    expect(dry.planned.map((p) => [p.table, p.rows])).toEqual([['events_interactions', 1], ['events_interactions', 1]]);
    expect(await chRows(client, `SELECT count() AS n FROM ${rdb}.events_interactions`)).toEqual([{ n: '4' }]);
    const done = await run();
    expect(done.dropped).toHaveLength(2);
    expect(await chRows(client, `SELECT event_id FROM ${rdb}.events_interactions ORDER BY event_id`)).toEqual([{ event_id: 'new-1' }, { event_id: 'new-2' }]);
    expect(await chRows(client, `SELECT count() AS n FROM ${rdb}.alerts`)).toEqual([{ n: '1' }]);
    expect((await run()).planned).toEqual([]);
  });
});
