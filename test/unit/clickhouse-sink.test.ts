import { describe, expect, it } from 'vitest';
import { ClickHouseSink } from '../../processors/tracking/clickhouse-sink.js';
import type { ClickHouseClient } from '../../topology/runtime/clickhouse.js';
import { sqlLiteral } from '../../topology/runtime/clickhouse.js';
import { isFabricError } from '../../topology/errors.js';

function fakeClient(fail = false) {
  const inserts: { table: string; rows: number }[] = [];
  const client = {
    insert: async ({ table, values }: { table: string; values: unknown[] }) => {
      if (fail) throw new Error('connection refused');
      inserts.push({ table, rows: values.length });
    },
  } as unknown as ClickHouseClient;
  return { client, inserts };
}

describe('ClickHouse sink (group commit)', () => {
  it('merges the rows of every partition flushed within the linger into one insert per table', async () => {
    const { client, inserts } = fakeClient();
    const sink = new ClickHouseSink(client, { database: 'fabric', flushRows: 1000, lingerMs: 20 });
    sink.add('predictions', [{ a: 1 }, { a: 2 }]);
    const p1 = sink.flush();
    sink.add('predictions', [{ a: 3 }]);
    sink.add('events_transactions', [{ b: 1 }]);
    const p2 = sink.flush();
    await Promise.all([p1, p2]);
    expect(inserts).toEqual([{ table: 'fabric.predictions', rows: 3 }, { table: 'fabric.events_transactions', rows: 1 }]);
  });

  it('inserts at once when the row threshold is reached', async () => {
    const { client, inserts } = fakeClient();
    const sink = new ClickHouseSink(client, { database: 'fabric', flushRows: 2, lingerMs: 60_000 });
    sink.add('t', [{ a: 1 }, { a: 2 }]);
    await sink.flush();
    expect(inserts).toHaveLength(1);
  });

  it('takes batches far larger than the call stack allows spreading', async () => {
    const { client, inserts } = fakeClient();
    const sink = new ClickHouseSink(client, { database: 'fabric', flushRows: 1_000_000, lingerMs: 1 });
    sink.add('t', Array.from({ length: 300_000 }, (_, i) => ({ i })));
    sink.add('t', Array.from({ length: 300_000 }, (_, i) => ({ i })));
    await sink.flush();
    expect(inserts).toEqual([{ table: 'fabric.t', rows: 600_000 }]);
  });

  it('fails every waiter of a failed round with a retriable FABRIC_SINK_FAILED', async () => {
    const { client } = fakeClient(true);
    const sink = new ClickHouseSink(client, { database: 'fabric', flushRows: 1000, lingerMs: 5 });
    sink.add('t', [{ a: 1 }]);
    const err = await sink.flush().catch((e: unknown) => e);
    expect(isFabricError(err, 'FABRIC_SINK_FAILED')).toBe(true);
    expect((err as { retriable: boolean }).retriable).toBe(true);
  });
});

describe('SQL literals', () => {
  it('escapes quotes, backslashes and control characters', () => {
    expect(sqlLiteral("it's")).toBe("'it\\'s'");
    expect(sqlLiteral('a\\b\nc')).toBe("'a\\\\b\\nc'");
    expect(sqlLiteral(3)).toBe('3');
    expect(() => sqlLiteral(Number.NaN)).toThrow();
  });
});
