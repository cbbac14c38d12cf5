import type { ClickHouseClient } from '../../topology/runtime/clickhouse.js';
import { sqlIdentifier } from '../../topology/runtime/clickhouse.js';
import { FabricError, messageOf } from '../../topology/errors.js';
import type { Metrics } from '../../topology/runtime/metrics.js';
import { taskKey, type TaskId } from '../../topology/runtime/processor.js';

export type Row = Record<string, unknown>;

/** A row ClickHouse refused for its content, with the server's message; `ref` is what the task added it with. */
export interface RejectedRow {
  readonly table: string;
  readonly ref: unknown;
  readonly message: string;
}

/**
 * ClickHouse error codes about a value in the data (cannot parse, type mismatch, out of range, unknown
 * enum element): the row, not the server, is at fault. Anything else (network, memory, too many
 * parts, an unknown column after a schema change) fails the round and the batch is retried.
 */
const ROW_ERROR_CODES = new Set([6, 26, 27, 33, 36, 38, 41, 53, 69, 70, 72, 117, 131]);

/** The server's exception code and text, from the client's error (both the 18.16 and current formats). */
export function serverError(err: unknown): { code: number; message: string } | null {
  const text = err instanceof Error ? err.message : String(err);
  const m = /Code: (\d+)[.,]\s*(?:e\.displayText\(\) = )?(.*)/s.exec(text);
  if (!m) return null;
  return { code: Number(m[1]), message: m[2]!.replace(/,?\s*e\.what\(\) = DB::Exception\s*$/, '').replace(/\s+/g, ' ').trim().slice(0, 2000) };
}

export interface ClickHouseSinkOptions {
  readonly database: string;
  /**
   * Most rows (all tables) one round holds: a full round is inserted at once, without waiting for the
   * linger, and further rows start the next round. Bounds the size of one insert.
   */
  readonly flushRows: number;
  /** How long a round waits, once a task needs it flushed, for other partitions' rows, so inserts are large and rare. */
  readonly lingerMs: number;
  /**
   * Rounds inserted at once (default 2; rounds start in order). In the ledger benchmark two in flight
   * gave 0.51x of clickhouse-client's rows/s, one at a time 0.27x.
   */
  readonly concurrency?: number;
  readonly metrics?: Metrics;
}

interface Round {
  /** Rows by table, each with its task and reference; released once the round is settled, whatever the outcome. */
  rows: Map<string, { rows: Row[]; owners: { task: string; ref: unknown }[] }>;
  count: number;
  /** Keys of the tasks with rows in this round. */
  readonly tasks: Set<string>;
  /** Resolves (never rejects) once the round is settled; `error` then tells the outcome. */
  readonly settled: Promise<void>;
  readonly settle: () => void;
  error?: FabricError;
}

/**
 * Group commit into ClickHouse: every task (input partition) adds its batch's rows with its TaskId and
 * awaits flush(task); the rows of all tasks that arrive within the linger form one round, written as one
 * JSONEachRow insert per table, so the server sees few large parts.
 *
 * flush(task) resolves only when every round holding rows of that task was inserted, and rejects if any
 * of them failed, even when another task fired the round or a later round succeeded: a task learns of
 * each failure of its rows once, so its offsets are never committed over lost rows. A failed round's
 * rows are dropped, not retried here: the runtime retries the task's batch, which adds them again, so
 * the sink only ever holds rows whose insert has not settled (`pending`). A row written twice (a round that failed on
 * its second table, a retried batch) is harmless: tables are ReplacingMergeTree versioned by source
 * offset, so the deduplicated views keep one row per event.
 *
 * A row ClickHouse refuses for its content (see ROW_ERROR_CODES) does not hold the others back: the
 * failed insert is split in halves until the refused rows are alone, every other row is inserted,
 * and the refused ones are returned by the flush of the task that added them, with the server's
 * message (tracking sends their records to the DLQ). When every row of an insert is refused, the
 * table and the rows disagree (a schema change): that fails the round instead, nothing is dead-lettered.
 */
export class ClickHouseSink {
  private round: Round | null = null;
  private timer: NodeJS.Timeout | null = null;
  /** Fired rounds waiting for an insert slot, in order, and the inserts in flight. */
  private readonly queue: Round[] = [];
  private readonly inFlight = new Set<Promise<void>>();
  /**
   * Per task key, the rounds holding its rows whose outcome no flush of the task has seen yet. A round
   * that succeeds leaves these sets when it settles; a failed one (its rows released) stays until a
   * flush reports it. A task revoked before that keeps its entry: should it come back, its first flush
   * rejects once, which costs one retry of a batch that was not committed anyway.
   */
  private readonly unreported = new Map<string, Set<Round>>();
  /** Per task key, rows refused since its last flush. */
  private readonly rejected = new Map<string, RejectedRow[]>();
  private pendingRows = 0;

  constructor(private readonly client: ClickHouseClient, private readonly options: ClickHouseSinkOptions) {
    sqlIdentifier(options.database);
    if (!Number.isInteger(options.flushRows) || options.flushRows < 1) throw new Error(`flushRows must be a positive integer, got ${options.flushRows}`);
  }

  /**
   * Rows added and not yet settled (buffered or being inserted). Bounded without a separate signal:
   * every task awaits flush(task) before its next batch, so the sink holds at most one batch per task
   * (the runtime pauses a task's partition while its flush keeps failing).
   */
  get pending(): number {
    return this.pendingRows;
  }

  /**
   * Buffers `task`'s rows for `table`. A round that fills up is inserted at once; otherwise rows wait
   * for a flush. `refs` (one per row) come back with a row ClickHouse refuses.
   */
  add(table: string, rows: readonly Row[], task: TaskId, refs?: readonly unknown[]): void {
    sqlIdentifier(table);
    const key = taskKey(task);
    let i = 0;
    while (i < rows.length) {
      const round = this.current();
      const end = Math.min(rows.length, i + this.options.flushRows - round.count);
      let list = round.rows.get(table);
      if (!list) {
        list = { rows: [], owners: [] };
        round.rows.set(table, list);
      }
      // A loop, not push(...rows): spreading a large batch overflows the call stack.
      for (let j = i; j < end; j++) {
        list.rows.push(rows[j]!);
        list.owners.push({ task: key, ref: refs?.[j] });
      }
      round.count += end - i;
      this.pendingRows += end - i;
      i = end;
      let rounds = this.unreported.get(key);
      if (!rounds) {
        rounds = new Set();
        this.unreported.set(key, rounds);
      }
      rounds.add(round);
      round.tasks.add(key);
      if (round.count >= this.options.flushRows) this.fire();
    }
  }

  /**
   * Resolves once every row `task` added before the call is inserted or refused, with the refused
   * ones; rejects with a retriable FABRIC_SINK_FAILED if any round holding its rows failed since its
   * last flush. The round still buffering is inserted after the linger, so other tasks' rows can join
   * it. Without a task (shutdown), the same for every task, and the buffered round is inserted at once.
   */
  async flush(task?: TaskId): Promise<RejectedRow[]> {
    const keys = task ? [taskKey(task)] : [...this.unreported.keys()];
    const rounds = new Set<Round>();
    for (const key of keys) for (const round of this.unreported.get(key) ?? []) rounds.add(round);
    if (this.round && rounds.has(this.round)) {
      if (task) this.timer ??= setTimeout(() => this.fire(), this.options.lingerMs);
      else this.fire();
    }
    await Promise.all([...rounds].map((round) => round.settled));
    let error: FabricError | undefined;
    for (const key of keys) {
      const open = this.unreported.get(key);
      if (!open) continue;
      for (const round of rounds) {
        if (!open.has(round)) continue;
        error ??= round.error;
        open.delete(round);
      }
      if (open.size === 0) this.unreported.delete(key);
    }
    if (error) throw error;
    const refused: RejectedRow[] = [];
    for (const key of keys) {
      for (const r of this.rejected.get(key) ?? []) refused.push(r);
      this.rejected.delete(key);
    }
    return refused;
  }

  /**
   * Inserts what is buffered and waits for every round to settle. Outcomes are reported by flush; a
   * failure left unreported here only concerns batches whose offsets were not committed.
   */
  async close(): Promise<void> {
    this.fire();
    while (this.inFlight.size > 0) await Promise.all([...this.inFlight]);
  }

  private current(): Round {
    if (!this.round) {
      let settle!: () => void;
      const settled = new Promise<void>((resolve) => (settle = resolve));
      this.round = { rows: new Map(), count: 0, tasks: new Set(), settled, settle };
    }
    return this.round;
  }

  private fire(): void {
    if (this.timer) {
      clearTimeout(this.timer);
      this.timer = null;
    }
    const round = this.round;
    if (!round) return;
    this.round = null;
    // At most `concurrency` inserts at once, started in order: a slow server delays the next ones
    // instead of facing more; the rows waiting meanwhile show in `pending`, for the runtime to stop adding.
    this.queue.push(round);
    this.startInserts();
  }

  private startInserts(): void {
    const limit = this.options.concurrency ?? 2;
    while (this.inFlight.size < limit && this.queue.length > 0) {
      const round = this.queue.shift()!;
      const running: Promise<void> = this.insert(round).finally(() => {
        this.inFlight.delete(running);
        this.startInserts();
      });
      this.inFlight.add(running);
    }
  }

  /**
   * Inserts rows[from, to); when ClickHouse refuses a row's content, splits the range in halves until
   * the refused rows are alone. Returns the refused rows' indexes and the server's messages; throws on
   * any other failure.
   */
  private async insertOrIsolate(table: string, rows: readonly Row[], from: number, to: number): Promise<{ index: number; message: string }[]> {
    try {
      await this.client.insert({ table: `${this.options.database}.${table}`, values: from === 0 && to === rows.length ? (rows as Row[]) : rows.slice(from, to), format: 'JSONEachRow' });
      this.options.metrics?.sinkRows.inc({ sink: 'clickhouse', table }, to - from);
      return [];
    } catch (err) {
      const server = serverError(err);
      if (!server || !ROW_ERROR_CODES.has(server.code)) throw err;
      if (to - from === 1) return [{ index: from, message: `Code: ${server.code}. ${server.message}` }];
      const mid = from + Math.floor((to - from) / 2);
      return [...(await this.insertOrIsolate(table, rows, from, mid)), ...(await this.insertOrIsolate(table, rows, mid, to))];
    }
  }

  /** Never rejects: the outcome goes to the round's waiters. */
  private async insert(round: Round): Promise<void> {
    try {
      const refused: (RejectedRow & { task: string })[] = [];
      for (const [table, { rows, owners }] of round.rows) {
        const bad = await this.insertOrIsolate(table, rows, 0, rows.length);
        if (bad.length === rows.length && rows.length > 1) {
          throw new Error(`ClickHouse refused every one of the ${rows.length} rows for ${table} (the table and the rows disagree: a schema change?): ${bad[0]!.message}`);
        }
        for (const { index, message } of bad) refused.push({ table, ref: owners[index]!.ref, message, task: owners[index]!.task });
      }
      for (const { task, ...row } of refused) {
        const list = this.rejected.get(task) ?? [];
        list.push(row);
        this.rejected.set(task, list);
      }
      for (const key of round.tasks) {
        const open = this.unreported.get(key);
        if (open?.delete(round) && open.size === 0) this.unreported.delete(key);
      }
    } catch (err) {
      round.error = new FabricError('FABRIC_SINK_FAILED', `ClickHouse insert failed: ${messageOf(err)}`, { cause: err });
    }
    round.rows = new Map();
    this.pendingRows -= round.count;
    round.settle();
  }
}
