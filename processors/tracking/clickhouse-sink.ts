import type { ClickHouseClient } from '../../topology/runtime/clickhouse.js';
import { sqlIdentifier } from '../../topology/runtime/clickhouse.js';
import { FabricError, messageOf } from '../../topology/errors.js';
import type { Metrics } from '../../topology/runtime/metrics.js';

export type Row = Record<string, unknown>;

export interface ClickHouseSinkOptions {
  readonly database: string;
  /** Rows buffered (all tables) that trigger an insert without waiting for the linger. */
  readonly flushRows: number;
  /** How long a flush waits for other partitions' rows, so inserts are large and rare. */
  readonly lingerMs: number;
  readonly metrics?: Metrics;
}

interface Round {
  readonly rows: Map<string, Row[]>;
  count: number;
  readonly done: Promise<void>;
  settle(err?: Error): void;
}

/**
 * Group commit into ClickHouse: every partition's batch adds its rows and awaits flush(); rows of all
 * partitions that arrive within the linger go into one JSONEachRow insert per table, so the server
 * sees few large parts. A failed insert fails every batch in the round; the runtime retries those
 * batches (re-adding their rows) and commits nothing meanwhile. Rows are deduplicated by event id
 * in ReplacingMergeTree, so a retried insert is harmless.
 */
export class ClickHouseSink {
  private round: Round | null = null;
  private timer: NodeJS.Timeout | null = null;
  private inFlight: Promise<void> = Promise.resolve();

  constructor(private readonly client: ClickHouseClient, private readonly options: ClickHouseSinkOptions) {
    sqlIdentifier(options.database);
  }

  /** Buffers rows for `table`; they are written by the next flush round. */
  add(table: string, rows: readonly Row[]): void {
    if (rows.length === 0) return;
    const round = this.current();
    let list = round.rows.get(table);
    if (!list) {
      list = [];
      round.rows.set(sqlIdentifier(table), list);
    }
    // A loop, not push(...rows): spreading a large batch overflows the call stack.
    for (const row of rows) list.push(row);
    round.count += rows.length;
  }

  /** Resolves once every row added before the call is inserted. */
  flush(): Promise<void> {
    const round = this.round;
    if (!round) return this.inFlight;
    if (round.count >= this.options.flushRows) this.fire();
    else this.timer ??= setTimeout(() => this.fire(), this.options.lingerMs);
    return round.done;
  }

  private current(): Round {
    if (!this.round) {
      let settle!: (err?: Error) => void;
      const done = new Promise<void>((resolve, reject) => (settle = (err) => (err ? reject(err) : resolve())));
      done.catch(() => undefined);
      this.round = { rows: new Map(), count: 0, done, settle };
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
    // Rounds are inserted one after another so parts arrive in order and memory stays bounded.
    this.inFlight = this.inFlight.then(() => this.insert(round)).catch(() => undefined);
  }

  private async insert(round: Round): Promise<void> {
    try {
      for (const [table, rows] of round.rows) {
        await this.client.insert({ table: `${this.options.database}.${table}`, values: rows, format: 'JSONEachRow' });
        this.options.metrics?.sinkRows.inc({ sink: 'clickhouse', table }, rows.length);
      }
      round.settle();
    } catch (err) {
      round.settle(new FabricError('FABRIC_SINK_FAILED', `ClickHouse insert failed: ${messageOf(err)}`, { cause: err }));
    }
  }

  /** Inserts what is buffered now. */
  async close(): Promise<void> {
    if (this.round) {
      const done = this.round.done;
      this.fire();
      await done.catch(() => undefined);
    }
    await this.inFlight;
  }
}
