import { createHash } from 'node:crypto';
import type { BatchContext, Output, ProcessorLogic, SourceRecord } from '../../topology/runtime/processor.js';
import { emit, reject, wholeBatch } from '../../topology/runtime/processor.js';
import { FabricError } from '../../topology/errors.js';
import type { Metrics } from '../../topology/runtime/metrics.js';
import type { Alert, DriftMetric, PerformanceMetric } from '../../schemas/types.generated.js';
import { PERFORMANCE_METRICS, breaches, ruleMatches, type AlertRule } from './rules.js';

export interface AlertsProcessorOptions {
  readonly rules: readonly AlertRule[];
  readonly metrics?: Metrics;
  /** Performance windows with fewer labelled predictions are not judged. Default 50. */
  readonly minLabels?: number;
  /** Default alerts. */
  readonly outputTopic?: string;
  /** Processor name (state owner). Default monitor-alerts. */
  readonly name?: string;
}

/** One (rule, model, version, variable): its run of consecutive windows and whether it fires. */
interface Track {
  /** Consecutive breaching windows (not firing) or clean windows (firing). */
  streak: number;
  firing: boolean;
  /** End of the last window judged: a window ending at or before it again (a replay) is not judged twice. */
  last: number;
  /** While firing: the window that fired it and the worst value since. */
  since?: number;
  worst?: number;
}

interface AlertState {
  readonly v: 1;
  readonly tracks: Record<string, Track>;
}

const DATA_QUALITY = new Set(['missing_rate', 'out_of_range_rate', 'unseen_rate', 'invalid', 'dead_letters']);

/** One judged thing of a window: a variable of a drift metric, or an arm or threshold of a performance metric. */
interface Observation {
  readonly model: string;
  readonly version: string;
  readonly variable: string;
  readonly window_start: number;
  readonly window_end: number;
  readonly values: Readonly<Record<string, number | null>>;
}

function isPerformance(m: DriftMetric | PerformanceMetric): m is PerformanceMetric {
  return typeof (m as PerformanceMetric).labelled === 'number';
}

/** What a drift or performance metric offers the rules (nothing for a window too small to judge). */
function observations(m: DriftMetric | PerformanceMetric, minLabels: number): Observation[] {
  const base = { model: m.model, version: m.version, window_start: m.window_start, window_end: m.window_end };
  if (!isPerformance(m)) {
    if (m.status === 'low_count' || m.status === 'no_reference') return [];
    const { psi, js, ks, wasserstein, chi2_p, missing_rate, out_of_range_rate, unseen_rate, invalid } = m;
    return [{ ...base, variable: m.variable, values: { psi, js, ks, wasserstein, chi2_p, missing_rate, out_of_range_rate, unseen_rate, invalid } }];
  }
  if (m.labelled < minLabels) return [];
  return [
    { ...base, variable: m.arm || 'model', values: { ...(m.thresholds.length || m.auc !== null ? { auc: m.auc, log_loss: m.log_loss, ece: m.ece } : { ctr: m.ctr, conversion: m.conversion }), dead_letters: m.dead_letters } },
    ...m.thresholds.map((t) => ({ ...base, variable: m.arm ? `${m.arm}/${t.name}` : t.name, values: { precision: t.precision, recall: t.recall, f1: t.f1 } })),
  ];
}

function parseState(saved: string | null): AlertState {
  if (saved === null) return { v: 1, tracks: {} };
  const parsed = JSON.parse(saved) as AlertState;
  if (parsed.v !== 1) throw new Error(`alert state has version ${String(parsed.v)}, this code reads 1`);
  return parsed;
}

const fmt = (x: number): string => (Math.abs(x) >= 100 ? x.toFixed(1) : Math.abs(x) >= 0.01 || x === 0 ? x.toFixed(3) : x.toExponential(2));

/**
 * Alerts from drift and performance metrics, with hysteresis: for every rule and (model, version,
 * variable) it applies to (for performance, the variable is the arm for auc, log_loss and ece, the
 * threshold for precision, recall and f1; windows with fewer than `minLabels` labels are not judged), an alert fires after `fire` consecutive breaching windows and clears (a `resolved`
 * alert) after `clear` consecutive clean ones. Windows too small to judge (low_count) or without a
 * reference profile neither breach nor clear. Alerts go to `alerts` (key: the subject), stored in
 * ClickHouse by tracking and POSTed to the webhook by `alert-webhook`.
 *
 * drift.metrics and performance.metrics have one partition each (a task each, with its own state),
 * and per (model, version, variable) their windows come in end order; the state (streaks) is saved with the batch and versioned by input position, like every processor
 * state, so a retried batch decides the same. An alert's id and time come from the window (never the
 * wall clock): a replay raises the same alerts, and the ledger keeps each once.
 */
export function alertsProcessor(options: AlertsProcessorOptions): ProcessorLogic {
  const name = options.name ?? 'monitor-alerts';
  const outputTopic = options.outputTopic ?? 'alerts';
  const minLabels = options.minLabels ?? 50;

  function alert(rule: AlertRule, m: Observation, state: 'firing' | 'resolved', value: number, track: Track): Alert {
    const subject = `${m.model}@${m.version}/${m.variable}/${rule.metric}`;
    const kind = DATA_QUALITY.has(rule.metric) ? 'data_quality' : PERFORMANCE_METRICS.has(rule.metric) ? 'performance' : 'drift';
    const windows = state === 'firing' ? rule.fire : rule.clear;
    const at = new Date(m.window_end).toISOString();
    const message =
      state === 'firing'
        ? `${m.model}@${m.version} ${m.variable}: ${rule.metric} ${fmt(value)} ${rule.op} ${rule.threshold} for ${windows} window${windows > 1 ? 's' : ''} (to ${at})`
        : `${m.model}@${m.version} ${m.variable}: ${rule.metric} back within ${rule.threshold} for ${windows} window${windows > 1 ? 's' : ''} (to ${at}; worst ${fmt(track.worst ?? value)})`;
    return {
      alert_id: createHash('sha256').update(`${subject}|${rule.text}|${m.window_end}|${state}`).digest('hex').slice(0, 32),
      ts: m.window_end,
      kind,
      severity: state === 'firing' ? rule.severity : 'info',
      model: m.model,
      version: m.version,
      subject,
      message,
      details: {
        state,
        rule: rule.text,
        metric: rule.metric,
        variable: m.variable,
        value: String(value),
        threshold: String(rule.threshold),
        windows: String(windows),
        window_start: String(m.window_start),
        window_end: String(m.window_end),
        ...(track.since !== undefined ? { firing_since: String(track.since) } : {}),
      },
    };
  }

  async function handle(records: SourceRecord[], ctx: BatchContext): Promise<Output[]> {
    const state = parseState(await ctx.state.load());
    const outputs: Output[] = [];
    for (const record of records) {
      const metric = record.value as DriftMetric | PerformanceMetric | null;
      if (!metric || typeof metric !== 'object' || typeof metric.model !== 'string' || !Number.isSafeInteger(metric.window_end)) {
        outputs.push(reject(record, new FabricError('FABRIC_RECORD_REJECTED', 'not a drift or performance metric')));
        continue;
      }
      for (const m of observations(metric, minLabels)) {
        for (const rule of options.rules) {
          if (!(rule.metric in m.values) || !ruleMatches(rule, m.variable)) continue;
          const key = `${rule.text}|${m.model}|${m.version}|${m.variable}`;
          const track = (state.tracks[key] ??= { streak: 0, firing: false, last: Number.MIN_SAFE_INTEGER });
          if (m.window_end <= track.last) continue;
          track.last = m.window_end;
          const value = m.values[rule.metric] ?? null;
          const breach = breaches(rule, value);
          if (!track.firing) {
            track.streak = breach ? track.streak + 1 : 0;
            if (track.streak >= rule.fire) {
              Object.assign(track, { firing: true, streak: 0, since: m.window_end, worst: value });
              const a = alert(rule, m, 'firing', value!, track);
              outputs.push(emit(outputTopic, a.subject, a));
              options.metrics?.alertsRaised.inc({ model: m.model, kind: a.kind, severity: a.severity, state: 'firing' });
            }
          } else {
            if (breach && value !== null && (rule.op === '>' ? value > (track.worst ?? -Infinity) : value < (track.worst ?? Infinity))) track.worst = value;
            track.streak = breach ? 0 : track.streak + 1;
            if (track.streak >= rule.clear) {
              const a = alert(rule, m, 'resolved', value ?? Number.NaN, track);
              outputs.push(emit(outputTopic, a.subject, a));
              options.metrics?.alertsRaised.inc({ model: m.model, kind: a.kind, severity: a.severity, state: 'resolved' });
              Object.assign(track, { firing: false, streak: 0, since: undefined, worst: undefined });
            }
          }
          // Quiet tracks need no state beyond the last window (kept so a replay is not judged twice).
          if (!track.firing && track.streak === 0) state.tracks[key] = { streak: 0, firing: false, last: track.last };
        }
      }
    }
    await ctx.state.save(JSON.stringify(state));
    return outputs;
  }

  return { name, process: wholeBatch(handle) };
}
