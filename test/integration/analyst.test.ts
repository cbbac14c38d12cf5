import { readFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../topology/config.js';
import { applyClickHouse } from '../../topology/apply.js';
import { createClickHouse } from '../../topology/runtime/clickhouse.js';
import { packagePath } from '../../topology/paths.js';
import { fabricTopology } from '../../app/fabric-topology.js';

/**
 * The read-only ClickHouse user `analyst` the local stack creates, on the configured fabric database
 * (the schema applied here, as `npm start` does): it can SELECT, neither INSERT nor DROP, sees no other
 * database, and every example query of the README's Analysts section runs as written.
 */
const config = loadConfig();
const db = config.clickhouseDatabase;
const other = `it_analyst_${randomBytes(4).toString('hex')}`;
const admin = createClickHouse(config);

/** Runs a query as analyst over HTTP, as the README shows; the text of ClickHouse's answer. */
async function asAnalyst(query: string): Promise<{ ok: boolean; text: string }> {
  const url = new URL(config.clickhouseUrl);
  url.searchParams.set('user', 'analyst');
  const res = await fetch(url, { method: 'POST', body: query });
  return { ok: res.ok, text: await res.text() };
}

beforeAll(async () => {
  await applyClickHouse(config, fabricTopology());
  await admin.command({ query: `CREATE DATABASE IF NOT EXISTS ${other}` });
  await admin.command({ query: `CREATE TABLE IF NOT EXISTS ${other}.t (a String) ENGINE = MergeTree ORDER BY a` });
});

afterAll(async () => {
  await admin.command({ query: `DROP DATABASE IF EXISTS ${other}` });
  await admin.close();
});

describe('the analyst user', () => {
  it('can SELECT from the fabric database', async () => {
    const r = await asAnalyst(`SELECT count() FROM ${db}.v_predictions`);
    expect(r).toMatchObject({ ok: true });
    expect(Number(r.text.trim())).toBeGreaterThanOrEqual(0);
  });

  it('can neither INSERT nor DROP, nor read another database', async () => {
    const insert = await asAnalyst(`INSERT INTO ${db}.alerts (kind) VALUES ('x')`);
    expect(insert.ok).toBe(false);
    expect(insert.text).toMatch(/readonly mode/);
    const drop = await asAnalyst(`DROP TABLE ${db}.alerts`);
    expect(drop.ok).toBe(false);
    expect(drop.text).toMatch(/readonly mode/);
    const elsewhere = await asAnalyst(`SELECT count() FROM ${other}.t`);
    expect(elsewhere.ok).toBe(false);
    expect(elsewhere.text).toMatch(/Access denied to database/);
    // The table is still there.
    expect((await (await admin.query({ query: `EXISTS TABLE ${db}.alerts`, format: 'TabSeparated' })).text()).trim()).toBe('1');
  });

  it('runs every example query of the README as written', async () => {
    const readme = readFileSync(packagePath('README.md'), 'utf8');
    const section = readme.slice(readme.indexOf('## Analysts'), readme.indexOf('\n## ', readme.indexOf('## Analysts') + 5));
    const queries = [...section.matchAll(/```sql\n([\s\S]*?)```/g)].map((m) => m[1]!.replaceAll('fabric.', `${db}.`));
    expect(queries.length).toBeGreaterThanOrEqual(6);
    for (const q of queries) {
      const r = await asAnalyst(q);
      expect(r.ok, `${q}\n${r.text.slice(0, 300)}`).toBe(true);
    }
  });
});
