import type { Experiment } from '../../schemas/types.generated.js';
import { retryOnBrokenSocket, sqlIdentifier, sqlLiteral, type ClickHouseClient } from '../../topology/runtime/clickhouse.js';
import { FabricError, messageOf } from '../../topology/errors.js';
import { auc, confidenceSequence, msprt, normalInterval, proportion, type Estimate, type ScoreCounts, type SequentialResult } from './stats.js';
import { experimentView, type Arm, type Metric } from './spec.js';

/** Whether a metric judges decisions (the predictions table) or rankings (recommendations). */
export function isRankingMetric(metric: string): boolean {
  return metric === 'ctr' || metric === 'conversion';
}

/** The outcomes stream whose labels judge a model's outputs. */
function outcomesStreamOf(experiment: Experiment): string {
  return isRankingMetric(experiment.metric) ? 'interactions' : 'transactions';
}

/**
 * The experiment's view in the ClickHouse ledger, `v_experiment_<id>`: decision models, one row per
 * prediction of the stream under the experiment with its label once it arrived (`labelled`,
 * `label_value`); ranking models, one row per item shown with whether the user clicked or bought it
 * within the outcome horizon. Created at start (and by the judge if missing); kept after the end.
 */
export function experimentViewSql(db: string, e: Experiment): string {
  const d = sqlIdentifier(db);
  const view = `${d}.${experimentView(e.id)}`;
  const model = sqlLiteral(e.model);
  const id = sqlLiteral(e.id);
  const stream = sqlLiteral(outcomesStreamOf(e));
  if (isRankingMetric(e.metric)) {
    const h = sqlLiteral(e.outcome_horizon_ms);
    return `CREATE VIEW IF NOT EXISTS ${view} AS
SELECT event_id, user_id, arm, version, item_id, rank, score, event_ts_ms,
  max(o_label = 'click' AND o_ts > event_ts_ms AND o_ts <= event_ts_ms + ${h}) AS clicked,
  max(o_label = 'purchase' AND o_ts > event_ts_ms AND o_ts <= event_ts_ms + ${h}) AS purchased
FROM (SELECT event_id, user_id, arm, version, item_id, rank, score, event_ts_ms FROM ${d}.recommendations FINAL WHERE model = ${model} AND origin = 'stream' AND experiment = ${id})
ALL LEFT JOIN (SELECT entity_id AS user_id, item_id, ts_ms AS o_ts, label AS o_label FROM ${d}.outcomes FINAL WHERE stream = ${stream}) USING (user_id, item_id)
GROUP BY event_id, user_id, arm, version, item_id, rank, score, event_ts_ms`;
  }
  return `CREATE VIEW IF NOT EXISTS ${view} AS
SELECT p.event_id AS event_id, p.entity_id AS entity_id, p.arm AS arm, p.version AS version, p.score AS score, p.decision AS decision, p.fallback AS fallback, p.event_ts_ms AS event_ts_ms, o.labelled AS labelled, o.label_value AS label_value
FROM (SELECT event_id, entity_id, arm, version, score, decision, fallback, event_ts_ms FROM ${d}.predictions FINAL WHERE model = ${model} AND experiment = ${id}) AS p
ANY LEFT JOIN (SELECT event_id, toUInt8(1) AS labelled, value AS label_value FROM ${d}.outcomes FINAL WHERE stream = ${stream}) AS o USING event_id`;
}

export async function ensureExperimentView(client: ClickHouseClient, db: string, e: Experiment): Promise<void> {
  await retryOnBrokenSocket(() => client.command({ query: experimentViewSql(db, e) }));
}

/** One arm's figures from the ledger. */
export interface ArmStats {
  readonly arm: Arm;
  readonly version: string;
  /** Outputs under the experiment (predictions, or items shown). */
  readonly outputs: number;
  /** Outcomes observed: labelled predictions (decision models); items shown whose horizon has passed (ranking). */
  readonly samples: number;
  /** Of them, those the metric's estimate stands on (precision at block: the labelled blocks; otherwise all). */
  readonly metricSamples: number;
  readonly metric: { readonly value: number; readonly interval: readonly [number, number] } | null;
  readonly fallbackRate: number | null;
  readonly blockRate: number | null;
}

export interface WindowStats {
  readonly start: number;
  readonly arms: Record<Arm, { samples: number; value: number | null; interval: readonly [number, number] | null }>;
}

export interface ShadowStats {
  readonly version: string;
  readonly outputs: number;
  /** Events whose shadow decision differs from the one served. */
  readonly changedDecisions: number | null;
  readonly meanScoreDelta: number | null;
}

export interface LedgerStats {
  readonly at: number;
  readonly metric: Metric;
  /** Length of the windows (event time). */
  readonly windowMs: number;
  readonly arms: Record<Arm, ArmStats>;
  /** The sequential test on treatment - control, once both arms have an estimate. */
  readonly test: SequentialResult | null;
  readonly windows: readonly WindowStats[];
  readonly shadow: ShadowStats | null;
}

async function rows<T>(client: ClickHouseClient, query: string): Promise<T[]> {
  try {
    return await retryOnBrokenSocket(async () => (await client.query({ query, format: 'JSONEachRow' })).json<T>());
  } catch (err) {
    throw new FabricError('FABRIC_SINK_FAILED', `ClickHouse: ${messageOf(err)} (query: ${query.replace(/\s+/g, ' ').slice(0, 160)})`, { cause: err });
  }
}

const ARMS: readonly Arm[] = ['control', 'treatment'];

function clip(interval: readonly [number, number], lo: number, hi: number): [number, number] {
  return [Math.max(lo, interval[0]), Math.min(hi, interval[1])];
}

/**
 * The experiment's statistics from its ledger view: per arm the metric with its always-valid interval,
 * the fallback and block rates; the mSPRT on the difference; per window (event time) each arm's metric
 * with a fixed-sample 95% interval; the shadow's agreement with what was served. Labels that have not
 * arrived are not samples: fraud labels come late, and an item shown counts for CTR only once its
 * outcome horizon has passed the latest outcome seen.
 */
export async function ledgerStats(client: ClickHouseClient, db: string, e: Experiment, options: { windowMs: number; maxWindows?: number; now?: number }): Promise<LedgerStats> {
  await ensureExperimentView(client, db, e);
  const d = sqlIdentifier(db);
  const view = `${d}.${experimentView(e.id)}`;
  const metric = e.metric as Metric;
  const w = sqlLiteral(Math.max(1, Math.round(options.windowMs)));
  const estimates = new Map<string, Estimate | null>();
  const windowEstimates = new Map<string, Estimate | null>();
  const counts = new Map<Arm, { version: string; outputs: number; samples: number; fallbackRate: number | null; blockRate: number | null }>();

  if (isRankingMetric(metric)) {
    const wm = await rows<{ wm: string }>(client, `SELECT max(ts_ms) AS wm FROM ${d}.outcomes FINAL WHERE stream = ${sqlLiteral(outcomesStreamOf(e))}`);
    const ripe = `event_ts_ms + ${sqlLiteral(e.outcome_horizon_ms)} <= ${sqlLiteral(Number(wm[0]?.wm ?? 0))}`;
    const hit = metric === 'ctr' ? 'clicked' : 'purchased';
    const perArm = await rows<{ arm: string; arm_version: string; outputs: string; samples: string; hits: string }>(client, `SELECT arm, any(version) AS arm_version, count() AS outputs, countIf(${ripe}) AS samples, countIf(${ripe} AND ${hit} = 1) AS hits FROM ${view} GROUP BY arm`);
    for (const r of perArm) {
      counts.set(r.arm as Arm, { version: r.arm_version, outputs: Number(r.outputs), samples: Number(r.samples), fallbackRate: null, blockRate: null });
      estimates.set(r.arm, proportion(Number(r.hits), Number(r.samples)));
    }
    const perWindow = await rows<{ arm: string; w: string; samples: string; hits: string }>(client, `SELECT arm, intDiv(event_ts_ms, ${w}) * ${w} AS w, countIf(${ripe}) AS samples, countIf(${ripe} AND ${hit} = 1) AS hits FROM ${view} GROUP BY arm, w`);
    for (const r of perWindow) windowEstimates.set(`${r.arm}|${r.w}`, proportion(Number(r.hits), Number(r.samples)));
  } else {
    const perArm = await rows<{ arm: string; arm_version: string; outputs: string; n_labelled: string; fallback_rate: number; block_rate: number; blocked: string; blocked_frauds: string }>(client,
      `SELECT arm, any(version) AS arm_version, count() AS outputs, sum(labelled) AS n_labelled, avg(fallback) AS fallback_rate, avg(decision = 'block') AS block_rate,
        countIf(labelled = 1 AND decision = 'block') AS blocked, countIf(labelled = 1 AND decision = 'block' AND label_value = 1) AS blocked_frauds
       FROM ${view} GROUP BY arm`);
    const scoreCounts = metric === 'auc'
      ? await rows<{ arm: string; w: string; s: number; pos: string; neg: string }>(client, `SELECT arm, intDiv(event_ts_ms, ${w}) * ${w} AS w, round(assumeNotNull(score), 4) AS s, countIf(label_value = 1) AS pos, countIf(label_value != 1) AS neg FROM ${view} WHERE labelled = 1 AND isNotNull(score) GROUP BY arm, w, s`)
      : [];
    for (const r of perArm) {
      const arm = r.arm as Arm;
      if (metric === 'auc') {
        const mine = scoreCounts.filter((c) => c.arm === arm);
        const all = new Map<number, { positives: number; negatives: number }>();
        for (const c of mine) {
          const slot = all.get(c.s) ?? { positives: 0, negatives: 0 };
          slot.positives += Number(c.pos);
          slot.negatives += Number(c.neg);
          all.set(c.s, slot);
        }
        estimates.set(arm, auc([...all].map(([score, c]) => ({ score, ...c }))));
        counts.set(arm, { version: r.arm_version, outputs: Number(r.outputs), samples: Number(r.n_labelled), fallbackRate: Number(r.fallback_rate), blockRate: Number(r.block_rate) });
      } else {
        estimates.set(arm, proportion(Number(r.blocked_frauds), Number(r.blocked)));
        counts.set(arm, { version: r.arm_version, outputs: Number(r.outputs), samples: Number(r.n_labelled), fallbackRate: Number(r.fallback_rate), blockRate: Number(r.block_rate) });
      }
    }
    if (metric === 'auc') {
      const byWindow = new Map<string, ScoreCounts[]>();
      for (const c of scoreCounts) {
        const key = `${c.arm}|${c.w}`;
        (byWindow.get(key) ?? byWindow.set(key, []).get(key)!).push({ score: c.s, positives: Number(c.pos), negatives: Number(c.neg) });
      }
      for (const [key, list] of byWindow) windowEstimates.set(key, auc(list));
    } else {
      const perWindow = await rows<{ arm: string; w: string; blocked: string; frauds: string }>(client, `SELECT arm, intDiv(event_ts_ms, ${w}) * ${w} AS w, countIf(labelled = 1 AND decision = 'block') AS blocked, countIf(labelled = 1 AND decision = 'block' AND label_value = 1) AS frauds FROM ${view} GROUP BY arm, w`);
      for (const r of perWindow) windowEstimates.set(`${r.arm}|${r.w}`, proportion(Number(r.frauds), Number(r.blocked)));
    }
  }

  const arms = {} as Record<Arm, ArmStats>;
  for (const arm of ARMS) {
    const c = counts.get(arm);
    const est = estimates.get(arm) ?? null;
    arms[arm] = {
      arm,
      version: c?.version ?? (arm === 'control' ? e.control : e.treatment),
      outputs: c?.outputs ?? 0,
      samples: c?.samples ?? 0,
      metricSamples: est?.samples ?? 0,
      metric: est ? { value: est.value, interval: clip(confidenceSequence(est.value, est.variance, e.alpha, e.mixture_sd), 0, 1) } : null,
      fallbackRate: c?.fallbackRate ?? null,
      blockRate: c?.blockRate ?? null,
    };
  }
  const ce = estimates.get('control');
  const te = estimates.get('treatment');
  const raw = ce && te ? msprt(ce, te, e.alpha, e.mixture_sd) : null;
  // Every metric is a rate in [0, 1]: its interval, and the difference's in [-1, 1], are cut there.
  const test = raw ? { ...raw, interval: clip(raw.interval, -1, 1) } : null;

  const starts = [...new Set([...windowEstimates.keys()].map((k) => Number(k.split('|')[1])))].sort((a, b) => a - b).slice(-(options.maxWindows ?? 12));
  const windows: WindowStats[] = starts.map((start) => {
    const out = {} as WindowStats['arms'];
    for (const arm of ARMS) {
      const est = windowEstimates.get(`${arm}|${start}`) ?? null;
      out[arm] = { samples: est?.samples ?? 0, value: est?.value ?? null, interval: est ? clip(normalInterval(est), 0, 1) : null };
    }
    return { start, arms: out };
  });

  let shadow: ShadowStats | null = null;
  if (e.shadow !== null) {
    if (isRankingMetric(metric)) {
      const [r] = await rows<{ outputs: string; changed: string }>(client,
        `SELECT count() AS outputs, countIf(s_item != p_item) AS changed FROM (SELECT event_id, item_id AS s_item FROM ${d}.recommendations_shadow FINAL WHERE model = ${sqlLiteral(e.model)} AND experiment = ${sqlLiteral(e.id)} AND rank = 1)
         ANY LEFT JOIN (SELECT event_id, item_id AS p_item FROM ${d}.recommendations FINAL WHERE model = ${sqlLiteral(e.model)} AND origin = 'stream' AND rank = 1) USING event_id`);
      shadow = { version: e.shadow, outputs: Number(r?.outputs ?? 0), changedDecisions: r ? Number(r.changed) : null, meanScoreDelta: null };
    } else {
      const [r] = await rows<{ outputs: string; changed: string; delta: number | null }>(client,
        `SELECT count() AS outputs, countIf(shadow_decision != served_decision) AS changed, avgIf(assumeNotNull(shadow_score) - assumeNotNull(served_score), isNotNull(shadow_score) AND isNotNull(served_score)) AS delta
         FROM ${d}.v_shadow_comparison WHERE model = ${sqlLiteral(e.model)} AND experiment = ${sqlLiteral(e.id)} AND shadow_version = ${sqlLiteral(e.shadow)}`);
      shadow = { version: e.shadow, outputs: Number(r?.outputs ?? 0), changedDecisions: r ? Number(r.changed) : null, meanScoreDelta: r && r.delta !== null && Number.isFinite(Number(r.delta)) ? Number(r.delta) : null };
    }
  }
  return { at: options.now ?? Date.now(), metric, windowMs: Math.max(1, Math.round(options.windowMs)), arms, test, windows, shadow };
}
