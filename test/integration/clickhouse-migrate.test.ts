import { randomBytes } from 'node:crypto';
import { afterAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../topology/config.js';
import { applyClickHouse } from '../../topology/apply.js';
import { createClickHouse, sqlLiteral } from '../../topology/runtime/clickhouse.js';
import { chRows } from './harness.js';

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
