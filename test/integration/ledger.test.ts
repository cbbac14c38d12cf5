import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { chRows, isolatedConfig, post, readAll, startTestFabric, transaction, waitFor, type TestFabric } from './harness.js';
import { DLQ_HEADERS } from '../../topology/runtime/dlq.js';

/**
 * The tracking sink when ClickHouse refuses rows: the refused ones go to the DLQ with the server's
 * message, every other row of the same inserts is written, and the processor goes on.
 */
let f: TestFabric;

beforeAll(async () => {
  f = await startTestFabric(isolatedConfig({ clickhouseLingerMs: 200 }), { processors: ['tracking'] });
  // An operator narrowed a column: ClickHouse now refuses amounts that are not whole numbers.
  await f.clickhouse.command({ query: `ALTER TABLE ${f.config.clickhouseDatabase}.events_transactions MODIFY COLUMN amount UInt64` });
});

afterAll(async () => {
  await f?.cleanup();
});

describe('rows ClickHouse refuses', () => {
  it('go to dlq.<topic> with the server\'s message; the other rows of the insert are written, once', async () => {
    const events = Array.from({ length: 12 }, (_, i) => transaction(i, { amount: i % 5 === 3 ? 10.5 + i : 100 + i }));
    const res = await post(f.url, '/v1/events/transactions', JSON.stringify(events));
    expect(res.status).toBe(202);
    const refused = events.filter((e) => !Number.isInteger(e.amount));
    expect(refused).toHaveLength(2);
    const dlq = await waitFor(() => readAll(f.kafka, f.config, 'dlq.events.transactions'), (r) => r.length >= refused.length, { what: 'the refused rows in the DLQ', timeoutMs: 60_000 });
    expect(dlq).toHaveLength(refused.length);
    for (const d of dlq) {
      expect(d.headers[DLQ_HEADERS.code]).toBe('FABRIC_SINK_REJECTED');
      expect(d.headers[DLQ_HEADERS.processor]).toBe('tracking');
      expect(d.headers[DLQ_HEADERS.message]).toMatch(/^ClickHouse refused the row for events_transactions: Code: 27\. DB::Exception: Cannot parse input: expected , before: \.5/);
    }
    const db = f.config.clickhouseDatabase;
    const rows = await waitFor(() => chRows<{ event_id: string; amount: string }>(f.clickhouse, `SELECT event_id, amount FROM ${db}.v_events_transactions ORDER BY amount`), (r) => r.length >= events.length - refused.length, { what: 'the accepted rows' });
    expect(rows.map((r) => r.event_id).sort()).toEqual(events.filter((e) => Number.isInteger(e.amount)).map((e) => String(e.event_id)).sort());
    expect(await chRows(f.clickhouse, `SELECT count() AS n FROM ${db}.events_transactions`)).toEqual([{ n: String(events.length - refused.length) }]);
  });
});
