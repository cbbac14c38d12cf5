import { hostname } from 'node:os';
import type { Redis } from 'ioredis';
import { messageOf } from '../errors.js';
import type { Logger } from './log.js';

export interface LeasedLoopOptions {
  readonly redis: Redis;
  /** The lease's Redis key (already prefixed). */
  readonly key: string;
  readonly intervalMs: number;
  /** One round, run only while this instance holds the lease. */
  readonly run: () => Promise<unknown>;
  /** Whether a round has anything to do; when not, the round is skipped without taking the lease. */
  readonly due?: () => boolean;
  readonly log: Logger;
  /** What failed, for the log ("experiment judge round", ...). */
  readonly what: string;
}

/**
 * Runs `run` every `intervalMs` in one instance of the fleet at a time: a Redis lease (SET NX PX, three
 * intervals long, renewed by its holder each round) picks the instance; the others skip their rounds
 * until it lapses (its holder gone). The lease saves work, it is not what makes a round safe: rounds
 * must be correct when two overlap (a holder paused past its lease). A failed round is logged and the
 * next one retries. `close` waits for the round in flight.
 */
export class LeasedLoop {
  private timer: NodeJS.Timeout | null = null;
  private running: Promise<unknown> = Promise.resolve();
  /** This instance's name in the lease (host:pid:random). */
  readonly owner = `${hostname()}:${process.pid}:${Math.random().toString(36).slice(2, 8)}`;
  private closed = false;

  constructor(private readonly options: LeasedLoopOptions) {}

  start(): void {
    const tick = (): void => {
      if (this.closed) return;
      this.running = this.leaseAndRun()
        .catch((err: unknown) => this.options.log.warn({ err: messageOf(err) }, `${this.options.what} failed; the next round retries`))
        .finally(() => {
          if (!this.closed) this.timer = setTimeout(tick, this.options.intervalMs);
        });
    };
    this.timer = setTimeout(tick, Math.min(this.options.intervalMs, 2000));
  }

  private async leaseAndRun(): Promise<void> {
    if (this.options.due && !this.options.due()) return;
    const { redis, key } = this.options;
    const ttl = Math.max(3 * this.options.intervalMs, 10_000);
    if ((await redis.set(key, this.owner, 'PX', ttl, 'NX')) !== 'OK') {
      if ((await redis.get(key)) !== this.owner) return;
      await redis.pexpire(key, ttl);
    }
    await this.options.run();
  }

  async close(): Promise<void> {
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
    await this.running.catch(() => undefined);
  }
}
