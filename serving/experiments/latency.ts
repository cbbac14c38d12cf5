import type { Redis } from 'ioredis';

/** Where scoring paths report the model time of each arm of an experiment, per engine call. */
export interface ExperimentLatency {
  /** One batch's calls: each arm's wall time and the rows it scored (each row waited that long). */
  observe(model: string, experiment: string, calls: readonly { arm: string; ms: number; rows: number }[]): void;
}

export interface ArmLatency {
  /** Rows observed. */
  readonly rows: number;
  readonly calls: number;
  readonly meanMs: number;
  readonly p50Ms: number;
  readonly p99Ms: number;
  /** Sum of the calls' wall time: an arm's (or the shadow's) cost. */
  readonly totalMs: number;
}

/** Bucket upper edges: 0.01 ms growing by 10% (a quantile read from them is at most 10% high), up to ~2 min. */
const GROWTH = 1.1;
const FIRST_MS = 0.01;
const BUCKETS = 175;

export function bucketOf(ms: number): number {
  if (!(ms > FIRST_MS)) return 0;
  return Math.min(BUCKETS, Math.ceil(Math.log(ms / FIRST_MS) / Math.log(GROWTH)));
}

export function bucketEdge(bucket: number): number {
  return FIRST_MS * GROWTH ** bucket;
}

/** The quantile q of a histogram (bucket -> rows): the upper edge of the bucket that holds it. */
export function quantileOf(histogram: ReadonlyMap<number, number>, q: number): number {
  const total = [...histogram.values()].reduce((a, b) => a + b, 0);
  if (total === 0) return 0;
  const rank = q * total;
  let seen = 0;
  for (const bucket of [...histogram.keys()].sort((a, b) => a - b)) {
    seen += histogram.get(bucket)!;
    if (seen >= rank) return Number(bucketEdge(bucket).toFixed(4));
  }
  return Number(bucketEdge(BUCKETS).toFixed(4));
}

/**
 * Per experiment and arm, a histogram of the rows' model time in Redis (one hash per arm: bucket ->
 * rows, plus the rows, calls and total time), shared by every scoring instance, so the judge and
 * `fabric experiments status` see the latency of the whole fleet. Timing is kept here, not in the
 * prediction records: a retried batch or a replay writes the same records, and counts its time again
 * here (what it cost). Writes are fire-and-forget, one pipeline per batch: telemetry never holds a
 * batch up or fails it.
 */
export class RedisExperimentLatency implements ExperimentLatency {
  constructor(private readonly redis: Redis, private readonly keyPrefix: string, private readonly onError?: (err: Error) => void) {}

  key(experiment: string, arm: string): string {
    return `${this.keyPrefix}experiments:latency:{${experiment}}:${arm}`;
  }

  observe(_model: string, experiment: string, calls: readonly { arm: string; ms: number; rows: number }[]): void {
    if (calls.length === 0) return;
    const p = this.redis.pipeline();
    for (const c of calls) {
      const key = this.key(experiment, c.arm);
      p.hincrby(key, `b${bucketOf(c.ms)}`, c.rows);
      p.hincrby(key, 'rows', c.rows);
      p.hincrby(key, 'calls', 1);
      p.hincrbyfloat(key, 'total_ms', c.ms);
      p.hincrbyfloat(key, 'row_ms', c.ms * c.rows);
      p.expire(key, 90 * 86_400);
    }
    p.exec().catch((err: Error) => this.onError?.(err));
  }

  async read(experiment: string, arms: readonly string[]): Promise<Record<string, ArmLatency>> {
    const p = this.redis.pipeline();
    for (const arm of arms) p.hgetall(this.key(experiment, arm));
    const results = (await p.exec()) ?? [];
    const out: Record<string, ArmLatency> = {};
    arms.forEach((arm, i) => {
      const [err, raw] = results[i] ?? [null, {}];
      if (err) throw err;
      out[arm] = summarize(raw as Record<string, string>);
    });
    return out;
  }
}

export function summarize(raw: Readonly<Record<string, string>>): ArmLatency {
  const histogram = new Map<number, number>();
  for (const [field, value] of Object.entries(raw)) if (field.startsWith('b')) histogram.set(Number(field.slice(1)), Number(value));
  const rows = Number(raw.rows ?? 0);
  return {
    rows,
    calls: Number(raw.calls ?? 0),
    meanMs: rows > 0 ? Number((Number(raw.row_ms ?? 0) / rows).toFixed(4)) : 0,
    p50Ms: quantileOf(histogram, 0.5),
    p99Ms: quantileOf(histogram, 0.99),
    totalMs: Number(Number(raw.total_ms ?? 0).toFixed(3)),
  };
}
