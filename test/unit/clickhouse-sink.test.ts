import { describe, expect, it } from 'vitest';
import { ClickHouseSink } from '../../processors/tracking/clickhouse-sink.js';
import type { ClickHouseClient } from '../../topology/runtime/clickhouse.js';
import { sqlLiteral } from '../../topology/runtime/clickhouse.js';
import { isFabricError } from '../../topology/errors.js';
import type { TaskId } from '../../topology/runtime/processor.js';

const A: TaskId = { group: 'tracking', topic: 'predictions.fraud', partition: 0 };
const B: TaskId = { group: 'tracking', topic: 'predictions.fraud', partition: 1 };
const C: TaskId = { group: 'tracking', topic: 'events.transactions', partition: 0 };

/**
 * A client that records every insert call. The next `state.failNext` calls throw; `hold` keeps the
 * next call waiting until the returned function is called, so a test can act while a round is in flight.
 */
function fakeClient() {
  const inserts: { table: string; rows: number; ok: boolean }[] = [];
  const state = { failNext: 0 };
  let gate: Promise<void> | null = null;
  const client = {
    insert: async ({ table, values }: { table: string; values: unknown[] }) => {
      if (gate) await gate;
      const ok = state.failNext === 0;
      inserts.push({ table, rows: values.length, ok });
      if (!ok) {
        state.failNext--;
        throw new Error('connection refused');
      }
    },
  } as unknown as ClickHouseClient;
  const hold = (): (() => void) => {
    let open!: () => void;
    gate = new Promise((resolve) => (open = resolve));
    return () => {
      gate = null;
      open();
    };
  };
  return { client, inserts, state, hold };
}

const rows = (n: number, from = 0): Record<string, number>[] => Array.from({ length: n }, (_, i) => ({ i: from + i }));

async function outcome(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return 'ok';
  } catch (err) {
    return isFabricError(err, 'FABRIC_SINK_FAILED') && err.retriable ? 'FABRIC_SINK_FAILED (retriable)' : `unexpected: ${String(err)}`;
  }
}

describe('ClickHouse sink (group commit)', () => {
  it('merges the rows of every task flushed within the linger into one insert per table', async () => {
    const { client, inserts } = fakeClient();
    const sink = new ClickHouseSink(client, { database: 'fabric', flushRows: 1000, lingerMs: 20 });
    sink.add('predictions', rows(2), A);
    const p1 = sink.flush(A);
    sink.add('predictions', rows(1), B);
    sink.add('events_transactions', rows(1), C);
    sink.add('events_transactions', rows(4), A);
    const p2 = sink.flush(B);
    const p3 = sink.flush(C);
    await Promise.all([p1, p2, p3]);
    expect(inserts).toEqual([
      { table: 'fabric.predictions', rows: 3, ok: true },
      { table: 'fabric.events_transactions', rows: 5, ok: true },
    ]);
    expect(sink.pending).toBe(0);
  });

  it('inserts a full round at once and never puts more than flushRows rows in one round', async () => {
    const { client, inserts } = fakeClient();
    const sink = new ClickHouseSink(client, { database: 'fabric', flushRows: 3, lingerMs: 60_000 });
    sink.add('t', rows(7), A);
    expect(sink.pending).toBe(7);
    // The third round (1 row) is not full: the linger would hold it, so flush everything at once.
    await sink.flush();
    expect(inserts.map((i) => i.rows)).toEqual([3, 3, 1]);
    expect(sink.pending).toBe(0);
  });

  it('a full round goes without waiting for the linger', async () => {
    const { client, inserts } = fakeClient();
    const sink = new ClickHouseSink(client, { database: 'fabric', flushRows: 2, lingerMs: 60_000 });
    sink.add('t', rows(2), A);
    await sink.flush(A);
    expect(inserts).toEqual([{ table: 'fabric.t', rows: 2, ok: true }]);
  });

  it('takes batches far larger than the call stack allows spreading', async () => {
    const { client, inserts } = fakeClient();
    const sink = new ClickHouseSink(client, { database: 'fabric', flushRows: 1_000_000, lingerMs: 1 });
    sink.add('t', rows(300_000), A);
    sink.add('t', rows(300_000), B);
    await Promise.all([sink.flush(A), sink.flush(B)]);
    expect(inserts).toEqual([{ table: 'fabric.t', rows: 600_000, ok: true }]);
  });

  it('fails every task of a failed round, also a task that flushes after another task fired the round', async () => {
    const { client, inserts, state, hold } = fakeClient();
    const sink = new ClickHouseSink(client, { database: 'fabric', flushRows: 1000, lingerMs: 5 });
    state.failNext = 1;
    const release = hold();
    sink.add('t', rows(2), A);
    sink.add('t', rows(3), B);
    const a = outcome(sink.flush(A));
    // A's linger fires the round; B asks only once the round is in flight (no round is buffering).
    await new Promise((r) => setTimeout(r, 20));
    const b = outcome(sink.flush(B));
    release();
    expect(await a).toBe('FABRIC_SINK_FAILED (retriable)');
    expect(await b).toBe('FABRIC_SINK_FAILED (retriable)');
    expect(inserts).toEqual([{ table: 'fabric.t', rows: 5, ok: false }]);
    // The failed round's rows are dropped: the runtime retries the batches, which add them again.
    expect(sink.pending).toBe(0);
  });

  it('a later successful round of task A does not hide the earlier failure of task B', async () => {
    const { client, inserts, state } = fakeClient();
    const sink = new ClickHouseSink(client, { database: 'fabric', flushRows: 1000, lingerMs: 5 });
    state.failNext = 1;
    sink.add('t', rows(2), A);
    sink.add('t', rows(3), B);
    expect(await outcome(sink.flush(A))).toBe('FABRIC_SINK_FAILED (retriable)');
    // A retries its batch: its rows go in a new round, which succeeds.
    sink.add('t', rows(2), A);
    expect(await outcome(sink.flush(A))).toBe('ok');
    // B had not flushed yet when its rows were lost: its flush still fails, even with nothing new buffered.
    expect(await outcome(sink.flush(B))).toBe('FABRIC_SINK_FAILED (retriable)');
    // Each failure is reported once: B's retried batch then flushes normally.
    sink.add('t', rows(3), B);
    expect(await outcome(sink.flush(B))).toBe('ok');
    expect(inserts).toEqual([
      { table: 'fabric.t', rows: 5, ok: false },
      { table: 'fabric.t', rows: 2, ok: true },
      { table: 'fabric.t', rows: 3, ok: true },
    ]);
  });

  it('flush(task) waits for every round holding the task rows and fails if any of them failed', async () => {
    const { client, inserts, state, hold } = fakeClient();
    const sink = new ClickHouseSink(client, { database: 'fabric', flushRows: 2, lingerMs: 1 });
    state.failNext = 1;
    const release = hold();
    // A full round, in flight (held, then failing), and one row buffering in the next round.
    sink.add('t', rows(3), A);
    let settled = false;
    const a = outcome(sink.flush(A)).finally(() => (settled = true));
    await new Promise((r) => setTimeout(r, 20));
    expect(settled).toBe(false);
    release();
    expect(await a).toBe('FABRIC_SINK_FAILED (retriable)');
    expect(inserts).toEqual([
      { table: 'fabric.t', rows: 2, ok: false },
      { table: 'fabric.t', rows: 1, ok: true },
    ]);
  });

  it('flush() without a task (shutdown) reports every task\'s unreported failure and inserts at once', async () => {
    const { client, inserts, state } = fakeClient();
    const sink = new ClickHouseSink(client, { database: 'fabric', flushRows: 1000, lingerMs: 60_000 });
    state.failNext = 1;
    sink.add('t', rows(1), A);
    expect(await outcome(sink.flush())).toBe('FABRIC_SINK_FAILED (retriable)');
    sink.add('t', rows(1), B);
    expect(await outcome(sink.flush())).toBe('ok');
    expect(inserts).toEqual([
      { table: 'fabric.t', rows: 1, ok: false },
      { table: 'fabric.t', rows: 1, ok: true },
    ]);
  });

  it('a task with nothing added flushes at once', async () => {
    const { client, inserts } = fakeClient();
    const sink = new ClickHouseSink(client, { database: 'fabric', flushRows: 1000, lingerMs: 60_000 });
    await sink.flush(A);
    expect(inserts).toEqual([]);
  });

  it('close inserts what is buffered', async () => {
    const { client, inserts } = fakeClient();
    const sink = new ClickHouseSink(client, { database: 'fabric', flushRows: 1000, lingerMs: 60_000 });
    sink.add('t', rows(4), A);
    await sink.close();
    expect(inserts).toEqual([{ table: 'fabric.t', rows: 4, ok: true }]);
  });
});

describe('ClickHouse sink: concurrent rounds', () => {
  it('keeps at most `concurrency` inserts in flight, started in the order rounds filled', async () => {
    let inFlight = 0;
    let most = 0;
    const started: number[] = [];
    const release: (() => void)[] = [];
    const client = {
      insert: async ({ values }: { values: { i: number }[] }) => {
        started.push(values[0]!.i);
        inFlight++;
        most = Math.max(most, inFlight);
        await new Promise<void>((resolve) => release.push(resolve));
        inFlight--;
      },
    } as unknown as ClickHouseClient;
    const sink = new ClickHouseSink(client, { database: 'fabric', flushRows: 10, lingerMs: 1000, concurrency: 2 });
    // Four full rounds from four tasks: each fires at once, two are inserted at a time.
    const tasks = [A, B, C, { group: 'tracking', topic: 'outcomes.transactions', partition: 0 }];
    tasks.forEach((t, k) => sink.add('t', rows(10, k * 100), t));
    const flushes = tasks.map((t) => sink.flush(t));
    await new Promise((r) => setTimeout(r, 20));
    expect(started).toEqual([0, 100]);
    expect(sink.pending).toBe(40);
    while (release.length > 0 || started.length < 4) {
      release.shift()?.();
      await new Promise((r) => setTimeout(r, 5));
    }
    await Promise.all(flushes);
    expect(started).toEqual([0, 100, 200, 300]);
    expect(most).toBe(2);
    expect(sink.pending).toBe(0);
  });
});

describe('ClickHouse sink: rows the server refuses', () => {
  /** A client that refuses any insert holding a row with bad: true, as 18.16 answers (Code 27). */
  function picky() {
    const inserts: number[] = [];
    const client = {
      insert: async ({ values }: { values: { i: number; bad?: boolean }[] }) => {
        inserts.push(values.length);
        const bad = values.find((v) => v.bad);
        if (bad) throw new Error(`Code: 27, e.displayText() = DB::Exception: Cannot parse input: expected " before: abc (row ${bad.i}): (at row 1)\n, e.what() = DB::Exception`);
      },
    } as unknown as ClickHouseClient;
    return { client, inserts };
  }

  it('isolates refused rows by halving, inserts every other row, and returns each refused row to its own task with the server message', async () => {
    const { client, inserts } = picky();
    const sink = new ClickHouseSink(client, { database: 'fabric', flushRows: 1000, lingerMs: 5 });
    const a = Array.from({ length: 8 }, (_, i) => ({ i, ...(i === 5 ? { bad: true } : {}) }));
    const b = [{ i: 100 }, { i: 101, bad: true }];
    sink.add('t', a, A, a.map((r) => `a${r.i}`));
    sink.add('t', b, B, b.map((r) => `b${r.i}`));
    const [ra, rb] = await Promise.all([sink.flush(A), sink.flush(B)]);
    expect(ra).toEqual([{ table: 't', ref: 'a5', message: 'Code: 27. DB::Exception: Cannot parse input: expected " before: abc (row 5): (at row 1)' }]);
    expect(rb.map((r) => r.ref)).toEqual(['b101']);
    // 10 rows, two refused: one insert of all, then halves down to each refused row alone.
    const written = inserts.reduce((n, x) => n + x, 0);
    expect(inserts[0]).toBe(10);
    expect(inserts.filter((x) => x === 1).length).toBeGreaterThanOrEqual(2);
    // Every good row was inserted exactly once among the successful inserts: 8 good rows.
    expect(written).toBeGreaterThan(10);
    expect(await sink.flush(A)).toEqual([]);
  });

  it('fails the round (retriable, nothing refused) when the server refuses every row: the table and the rows disagree', async () => {
    const client = { insert: async () => Promise.reject(new Error('Code: 27. DB::Exception: Cannot parse input')) } as unknown as ClickHouseClient;
    const sink = new ClickHouseSink(client, { database: 'fabric', flushRows: 1000, lingerMs: 1 });
    sink.add('t', rows(4), A, [1, 2, 3, 4]);
    expect(await outcome(sink.flush(A))).toBe('FABRIC_SINK_FAILED (retriable)');
  });

  it('does not split on errors that are not about a row (memory, network): the round fails and is retried', async () => {
    let calls = 0;
    const client = { insert: async () => { calls++; throw new Error('Code: 241. DB::Exception: Memory limit (for query) exceeded'); } } as unknown as ClickHouseClient;
    const sink = new ClickHouseSink(client, { database: 'fabric', flushRows: 1000, lingerMs: 1 });
    sink.add('t', rows(4), A);
    expect(await outcome(sink.flush(A))).toBe('FABRIC_SINK_FAILED (retriable)');
    expect(calls).toBe(1);
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
