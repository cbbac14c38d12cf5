import type { ClickHouseClient } from '../../topology/runtime/clickhouse.js';
import { sqlIdentifier } from '../../topology/runtime/clickhouse.js';
import { FabricError, messageOf } from '../../topology/errors.js';
import type { Metrics } from '../../topology/runtime/metrics.js';
import { taskKey, type TaskId } from '../../topology/runtime/processor.js';

export type Row = Record<string, unknown>;

export interface ClickHouseSinkOptions {
  readonly database: string;
  /**
   * Most rows (all tables) one round holds: a full round is inserted at once, without waiting for the
   * linger, and further rows start the next round. Bounds the size of one insert.
   */
  readonly flushRows: number;
  /** How long a round waits, once a task needs it flushed, for other partitions' rows, so inserts are large and rare. */
  readonly lingerMs: number;
  readonly metrics?: Metrics;
}

interface Round {
  /** Rows by table; released once the round is settled, whatever the outcome. */
  rows: Map<string, Row[]>;
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
 */
export class ClickHouseSink {
  private round: Round | null = null;
  private timer: NodeJS.Timeout | null = null;
  /** Rounds are inserted one after another, in order: the last fired round's settlement. */
  private chain: Promise<void> = Promise.resolve();
  /**
   * Per task key, the rounds holding its rows whose outcome no flush of the task has seen yet. A round
   * that succeeds leaves these sets when it settles; a failed one (its rows released) stays until a
   * flush reports it. A task revoked before that keeps its entry: should it come back, its first flush
   * rejects once, which costs one retry of a batch that was not committed anyway.
   */
  private readonly unreported = new Map<string, Set<Round>>();
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

  /** Buffers `task`'s rows for `table`. A round that fills up is inserted at once; otherwise rows wait for a flush. */
  add(table: string, rows: readonly Row[], task: TaskId): void {
    sqlIdentifier(table);
    const key = taskKey(task);
    let i = 0;
    while (i < rows.length) {
      const round = this.current();
      const end = Math.min(rows.length, i + this.options.flushRows - round.count);
      let list = round.rows.get(table);
      if (!list) {
        list = [];
        round.rows.set(table, list);
      }
      // A loop, not push(...rows): spreading a large batch overflows the call stack.
      for (let j = i; j < end; j++) list.push(rows[j]!);
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
   * Resolves once every row `task` added before the call is inserted; rejects with a retriable
   * FABRIC_SINK_FAILED if any round holding its rows failed since its last flush. The round still
   * buffering is inserted after the linger, so other tasks' rows can join it. Without a task (shutdown),
   * the same for every task, and the buffered round is inserted at once.
   */
  async flush(task?: TaskId): Promise<void> {
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
  }

  /**
   * Inserts what is buffered and waits for every round to settle. Outcomes are reported by flush; a
   * failure left unreported here only concerns batches whose offsets were not committed.
   */
  async close(): Promise<void> {
    this.fire();
    await this.chain;
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
    // One round at a time, in order: a slow server delays the next insert instead of facing concurrent
    // ones; the rows waiting meanwhile show in `pending`, for the runtime to stop adding.
    this.chain = this.chain.then(() => this.insert(round));
  }

  /** Never rejects: the outcome goes to the round's waiters. */
  private async insert(round: Round): Promise<void> {
    try {
      for (const [table, rows] of round.rows) {
        await this.client.insert({ table: `${this.options.database}.${table}`, values: rows, format: 'JSONEachRow' });
        this.options.metrics?.sinkRows.inc({ sink: 'clickhouse', table }, rows.length);
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
