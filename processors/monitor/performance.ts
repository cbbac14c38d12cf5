import type { ClickHouseClient } from '@clickhouse/client';
import type { Redis } from 'ioredis';
import type { Logger } from 'pino';
import type { PerformanceMetric, ThresholdPerformance } from '../../schemas/types.generated.js';
import { sqlLiteral } from '../../topology/runtime/clickhouse.js';
import { LeasedLoop } from '../../topology/runtime/lease.js';

/** Scored predictions of one score value in one (version, experiment, arm) group: how many, how many positive. */
export interface ScoreGroup {
  readonly score: number;
  readonly n: number;
  readonly positives: number;
}

const EPS = 1e-15;
export const CALIBRATION_BINS = 10;

/**
 * The performance measures of labelled predictions given grouped by score (exact: ties are a group).
 * - AUC: the probability that a positive outscores a negative, ties counting one half (Mann-Whitney);
 *   null without both classes.
 * - log loss: mean of -(y ln p + (1 - y) ln(1 - p)), p clipped to [1e-15, 1 - 1e-15] (scikit-learn's).
 * - ECE: 10 equal-width bins of the score over [0, 1] (a score of exactly 1 in the last), the sum over
 *   bins of (n_b / n) |mean label - mean score|.
 * - at each threshold (score >= threshold flags): flagged, precision (null when nothing is flagged),
 *   recall (null without positives), F1 (null unless both are defined; 0 when both are 0).
 */
export function performanceOf(groups: readonly ScoreGroup[], thresholds: Readonly<Record<string, number>>): Pick<PerformanceMetric, 'labelled' | 'positives' | 'auc' | 'log_loss' | 'ece' | 'base_rate' | 'thresholds'> {
  const sorted = [...groups].filter((g) => g.n > 0).sort((a, b) => a.score - b.score);
  let n = 0;
  let pos = 0;
  for (const g of sorted) {
    n += g.n;
    pos += g.positives;
  }
  const neg = n - pos;
  // AUC: for each group, its positives beat every negative below and tie with its own negatives.
  let auc: number | null = null;
  if (pos > 0 && neg > 0) {
    let negBelow = 0;
    let wins = 0;
    for (const g of sorted) {
      const gNeg = g.n - g.positives;
      wins += g.positives * (negBelow + gNeg / 2);
      negBelow += gNeg;
    }
    auc = wins / (pos * neg);
  }
  let loss = 0;
  const binN = new Array<number>(CALIBRATION_BINS).fill(0);
  const binPos = new Array<number>(CALIBRATION_BINS).fill(0);
  const binScore = new Array<number>(CALIBRATION_BINS).fill(0);
  for (const g of sorted) {
    const p = Math.min(1 - EPS, Math.max(EPS, g.score));
    loss += -(g.positives * Math.log(p) + (g.n - g.positives) * Math.log(1 - p));
    const b = Math.min(CALIBRATION_BINS - 1, Math.max(0, Math.floor(g.score * CALIBRATION_BINS)));
    binN[b]! += g.n;
    binPos[b]! += g.positives;
    binScore[b]! += g.score * g.n;
  }
  let ece = 0;
  for (let b = 0; b < CALIBRATION_BINS; b++) if (binN[b]! > 0) ece += (binN[b]! / n) * Math.abs(binPos[b]! / binN[b]! - binScore[b]! / binN[b]!);
  const at: ThresholdPerformance[] = Object.keys(thresholds)
    .sort()
    .map((name) => {
      const t = thresholds[name]!;
      let flagged = 0;
      let tp = 0;
      for (const g of sorted) {
        if (g.score >= t) {
          flagged += g.n;
          tp += g.positives;
        }
      }
      const precision = flagged > 0 ? tp / flagged : null;
      const recall = pos > 0 ? tp / pos : null;
      const f1 = precision === null || recall === null ? null : precision + recall === 0 ? 0 : (2 * precision * recall) / (precision + recall);
      return { name, threshold: t, flagged, precision, recall, f1 };
    });
  return { labelled: n, positives: pos, auc, log_loss: n ? loss / n : null, ece: n ? ece : null, base_rate: n ? pos / n : null, thresholds: at };
}

/**
 * The query of one window: the model's stream predictions with event time in [start, end), each with
 * its outcome (stream `stream`, joined by event id) as joined (arrived within the horizon of the
 * prediction's event time), late (after it) or none, grouped by version, experiment, arm, score and
 * that state. Runs on ClickHouse 18.16 and current releases.
 */
export function windowQuery(database: string, model: string, stream: string, start: number, end: number, horizonMs: number): string {
  return `SELECT version, experiment, arm, score, state, count() AS n, sum(positive) AS positives
FROM (
  SELECT p.version AS version, p.experiment AS experiment, p.arm AS arm, p.score AS score,
    multiIf(o.event_id = '', 'none', o.ts_ms <= p.event_ts_ms + ${Math.floor(horizonMs)}, 'joined', 'late') AS state,
    if(o.value > 0, 1, 0) AS positive
  FROM (SELECT event_id, version, experiment, arm, score, event_ts_ms FROM ${database}.predictions FINAL WHERE model = ${sqlLiteral(model)} AND event_ts_ms >= ${Math.floor(start)} AND event_ts_ms < ${Math.floor(end)}) AS p
  ANY LEFT JOIN (SELECT event_id, value, ts_ms FROM ${database}.outcomes FINAL WHERE stream = ${sqlLiteral(stream)} AND ts_ms >= ${Math.floor(start)}) AS o USING event_id
)
GROUP BY version, experiment, arm, score, state
ORDER BY version, experiment, arm, score, state`;
}

interface Row {
  version: string;
  experiment: string;
  arm: string;
  score: number | null;
  state: 'joined' | 'late' | 'none';
  n: string;
  positives: string;
}

/** The PerformanceMetric of every (version, experiment, arm) with predictions in the window. */
export async function windowPerformance(clickhouse: ClickHouseClient, options: { database: string; model: string; stream: string; start: number; end: number; horizonMs: number; thresholds: (version: string) => Readonly<Record<string, number>> }): Promise<PerformanceMetric[]> {
  const rs = await clickhouse.query({ query: windowQuery(options.database, options.model, options.stream, options.start, options.end, options.horizonMs), format: 'JSONEachRow' });
  const rows = await rs.json<Row>();
  const groups = new Map<string, { version: string; experiment: string; arm: string; predictions: number; scored: number; late: number; joined: ScoreGroup[] }>();
  for (const r of rows) {
    const key = `${r.version}\u0000${r.experiment}\u0000${r.arm}`;
    let g = groups.get(key);
    if (!g) groups.set(key, (g = { version: r.version, experiment: r.experiment, arm: r.arm, predictions: 0, scored: 0, late: 0, joined: [] }));
    const n = Number(r.n);
    g.predictions += n;
    if (r.score === null) continue;
    g.scored += n;
    if (r.state === 'late') g.late += n;
    else if (r.state === 'joined') g.joined.push({ score: Number(r.score), n, positives: Number(r.positives) });
  }
  return [...groups.values()].map((g) => ({
    model: options.model,
    version: g.version,
    experiment: g.experiment,
    arm: g.arm,
    window_start: options.start,
    window_end: options.end,
    horizon_ms: options.horizonMs,
    predictions: g.predictions,
    scored: g.scored,
    late_labels: g.late,
    ...performanceOf(g.joined, options.thresholds(g.version)),
    items: 0,
    clicks: 0,
    purchases: 0,
    ctr: null,
    conversion: null,
    dead_letters: 0,
  }));
}

/**
 * The query of one window of a ranking model: every item shown in its stream recommendations with
 * event time in [start, end), joined with the user's outcomes on that item (stream `stream`): clicked
 * or purchased after the recommendation and within the horizon, or only later (late); grouped by
 * version, experiment and arm.
 */
export function rankingWindowQuery(database: string, model: string, stream: string, start: number, end: number, horizonMs: number): string {
  const h = Math.floor(horizonMs);
  return `SELECT version, experiment, arm, uniqExact(event_id) AS requests, count() AS items, sum(clicked) AS clicks, sum(purchased) AS purchases, sum(late) AS late
FROM (
  SELECT event_id, version, experiment, arm, item_id,
    max(o_label = 'click' AND o_ts > event_ts_ms AND o_ts <= event_ts_ms + ${h}) AS clicked,
    max(o_label = 'purchase' AND o_ts > event_ts_ms AND o_ts <= event_ts_ms + ${h}) AS purchased,
    max(o_label IN ('click', 'purchase') AND o_ts > event_ts_ms + ${h}) AND NOT max(o_label IN ('click', 'purchase') AND o_ts > event_ts_ms AND o_ts <= event_ts_ms + ${h}) AS late
  FROM (SELECT event_id, user_id, version, experiment, arm, item_id, event_ts_ms FROM ${database}.recommendations FINAL WHERE model = ${sqlLiteral(model)} AND origin = 'stream' AND event_ts_ms >= ${Math.floor(start)} AND event_ts_ms < ${Math.floor(end)})
  ALL LEFT JOIN (SELECT entity_id AS user_id, item_id, ts_ms AS o_ts, label AS o_label FROM ${database}.outcomes FINAL WHERE stream = ${sqlLiteral(stream)} AND ts_ms >= ${Math.floor(start)}) USING (user_id, item_id)
  GROUP BY event_id, version, experiment, arm, item_id
)
GROUP BY version, experiment, arm
ORDER BY version, experiment, arm`;
}

/** The PerformanceMetric (CTR, conversion) of every (version, experiment, arm) of a ranking model with items shown in the window. */
export async function rankingWindowPerformance(clickhouse: ClickHouseClient, options: { database: string; model: string; stream: string; start: number; end: number; horizonMs: number }): Promise<PerformanceMetric[]> {
  const rs = await clickhouse.query({ query: rankingWindowQuery(options.database, options.model, options.stream, options.start, options.end, options.horizonMs), format: 'JSONEachRow' });
  const rows = await rs.json<{ version: string; experiment: string; arm: string; requests: string; items: string; clicks: string; purchases: string; late: string }>();
  return rows.map((r) => {
    const items = Number(r.items);
    const clicks = Number(r.clicks);
    const purchases = Number(r.purchases);
    return {
      model: options.model, version: r.version, experiment: r.experiment, arm: r.arm, window_start: options.start, window_end: options.end, horizon_ms: options.horizonMs,
      predictions: Number(r.requests), scored: Number(r.requests), labelled: items, positives: clicks, late_labels: Number(r.late),
      auc: null, log_loss: null, ece: null, base_rate: items ? clicks / items : null, thresholds: [],
      items, clicks, purchases, ctr: items ? clicks / items : null, conversion: items ? purchases / items : null, dead_letters: 0,
    };
  });
}

export interface PerformanceMonitorDeps {
  readonly clickhouse: ClickHouseClient;
  readonly database: string;
  readonly redis: Redis;
  readonly keyPrefix: string;
  /** Models with labels: the model, the outcome stream its labels come on, and whether it decides (predictions) or ranks (recommendations). */
  readonly models: readonly { readonly model: string; readonly stream: string; readonly kind: 'decision' | 'ranking' }[];
  readonly thresholds: (model: string, version: string) => Readonly<Record<string, number>>;
  readonly windowMs: number;
  readonly horizonMs: number;
  /** Extra wait after window end + horizon before a window is measured (outcomes still on their way into the ledger). */
  readonly graceMs: number;
  /** How far back a monitor with no progress yet starts. */
  readonly lookbackMs: number;
  readonly intervalMs: number;
  readonly publish: (metrics: readonly PerformanceMetric[]) => Promise<void>;
  readonly log: Logger;
}

/**
 * Measures model performance with delayed labels, window by window: once a window's predictions can
 * have every outcome that counts (its end plus the horizon plus a grace period), it is computed from
 * the ledger (`windowPerformance`) and published to performance.metrics, then marked done in Redis. One
 * instance of the fleet at a time (a Redis lease); a crash between publishing and marking publishes
 * the same window again, with the same values (a deterministic function of the ledger), which
 * ClickHouse keeps once and the alert rules judge once (they skip windows already judged).
 */
export class PerformanceMonitor {
  private readonly loop: LeasedLoop;

  constructor(private readonly deps: PerformanceMonitorDeps) {
    this.loop = new LeasedLoop({ redis: deps.redis, key: `${deps.keyPrefix}monitor:performance:lease`, intervalMs: deps.intervalMs, run: () => this.runOnce(), log: deps.log, what: 'performance round' });
  }

  start(): void {
    this.loop.start();
  }

  /** Measures every window that is ready and not done yet; returns what it published. */
  async runOnce(now = Date.now()): Promise<PerformanceMetric[]> {
    const published: PerformanceMetric[] = [];
    const { windowMs } = this.deps;
    const ready = Math.floor((now - this.deps.horizonMs - this.deps.graceMs) / windowMs) * windowMs;
    for (const { model, stream, kind } of this.deps.models) {
      const doneKey = `${this.deps.keyPrefix}monitor:performance:done:${model}`;
      const done = Number((await this.deps.redis.get(doneKey)) ?? Number.NaN);
      let start = Number.isFinite(done) ? done : Math.floor((now - this.deps.lookbackMs) / windowMs) * windowMs;
      // At most 100 windows with predictions per round (a long outage catches up over several rounds).
      for (let i = 0; start + windowMs <= ready && i < 100; i++) {
        // Windows without predictions are skipped in one query: the next window is the next prediction's.
        const next = await this.nextOutput(model, kind, start, ready);
        if (next === null) {
          start = ready;
          await this.deps.redis.set(doneKey, String(start));
          break;
        }
        start = Math.max(start, Math.floor(next / windowMs) * windowMs);
        const window = { database: this.deps.database, model, stream, start, end: start + windowMs, horizonMs: this.deps.horizonMs };
        const measured = kind === 'ranking' ? await rankingWindowPerformance(this.deps.clickhouse, window) : await windowPerformance(this.deps.clickhouse, { ...window, thresholds: (v) => this.deps.thresholds(model, v) });
        const deadLetters = await this.deadLetters(`events.${stream}`, start, start + windowMs);
        const metrics = measured.map((m) => ({ ...m, dead_letters: deadLetters }));
        if (metrics.length) await this.deps.publish(metrics);
        start += windowMs;
        await this.deps.redis.set(doneKey, String(start));
        published.push(...metrics);
      }
    }
    return published;
  }

  /** Dead letters of an input topic whose original record time is in [from, to). */
  private async deadLetters(topic: string, from: number, to: number): Promise<number> {
    const rs = await this.deps.clickhouse.query({ query: `SELECT count() AS n FROM ${this.deps.database}.dead_letters FINAL WHERE original_topic = ${sqlLiteral(topic)} AND original_ts_ms >= ${Math.floor(from)} AND original_ts_ms < ${Math.floor(to)}`, format: 'JSONEachRow' });
    const [row] = await rs.json<{ n: string }>();
    return Number(row?.n ?? 0);
  }

  /** Event time of the model's first stream output in [from, before), or null. */
  private async nextOutput(model: string, kind: 'decision' | 'ranking', from: number, before: number): Promise<number | null> {
    // Stream outputs only: predictions holds the stream's (answers of POST /v1/predict are in predictions_online).
    const source = kind === 'ranking' ? `${this.deps.database}.recommendations WHERE origin = 'stream' AND` : `${this.deps.database}.predictions WHERE`;
    const rs = await this.deps.clickhouse.query({ query: `SELECT count() AS n, min(event_ts_ms) AS ts FROM ${source} model = ${sqlLiteral(model)} AND event_ts_ms >= ${Math.floor(from)} AND event_ts_ms < ${Math.floor(before)}`, format: 'JSONEachRow' });
    const [row] = await rs.json<{ n: string; ts: string }>();
    return row && Number(row.n) > 0 ? Number(row.ts) : null;
  }

  close(): Promise<void> {
    return this.loop.close();
  }
}
