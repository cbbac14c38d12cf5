import type { Redis } from 'ioredis';
import type { Experiment, ModelVersion } from '../../schemas/types.generated.js';
import { messageOf } from '../../topology/errors.js';
import type { ClickHouseClient } from '../../topology/runtime/clickhouse.js';
import { LeasedLoop } from '../../topology/runtime/lease.js';
import type { Logger } from '../../topology/runtime/log.js';
import type { Metrics } from '../../topology/runtime/metrics.js';
import type { RegistryAdmin } from '../registry/admin.js';
import type { ArmLatency, RedisExperimentLatency } from './latency.js';
import { ledgerStats, type LedgerStats } from './ledger.js';
import { alertFor, type ExperimentRegistry, type ExperimentsAdmin } from './registry.js';
import { ended, guardrailText, keeps, type GuardrailMetric } from './spec.js';

export type Outcome = 'win' | 'loss' | 'guardrail' | 'no_difference' | 'inconclusive' | 'interrupted';
export type Action = 'promoted' | 'rolled_back' | 'none';

export interface Verdict {
  readonly outcome: Outcome;
  readonly action: Action;
  /** Whether the experiment ends (all traffic on one version) or keeps running with the decision reported. */
  readonly end: boolean;
  readonly reason: string;
  readonly severity: 'info' | 'warning' | 'critical';
}

export interface JudgeInputs {
  readonly experiment: Experiment;
  readonly stats: LedgerStats;
  readonly latency: Readonly<Record<string, ArmLatency>>;
  /** The model's version in production now. */
  readonly production: string | undefined;
  /** Why the treatment cannot load on some instance (its content is refused), if so. */
  readonly treatmentUnloadable?: string;
  readonly now: number;
}

/** Samples an arm's estimate needs (besides min_samples outcomes) before the test may conclude. */
export const MIN_METRIC_SAMPLES = 10;

/** Rows of the treatment a guardrail needs before it can breach (no verdict on a handful of events). */
export function guardrailFloor(e: Pick<Experiment, 'min_samples'>): number {
  return Math.min(e.min_samples, 100);
}

function fmt(x: number): string {
  return Number.isInteger(x) ? String(x) : x.toFixed(4);
}

/**
 * The decision on an experiment, from its statistics, in this order: a promotion by hand (or a
 * treatment that cannot load) interrupts it; a guardrail the treatment breaks rolls it back; the
 * sequential test, once both arms have min_samples, concludes a win (promote) or a loss (roll back);
 * at max duration it ends with no difference, or inconclusive when the samples never came. `auto`
 * says what acts: promote (wins and losses), rollback (losses and breaches; a win is reported), none
 * (everything reported; the experiment runs on until max duration or a stop). Pure: the judge and the
 * tests call it.
 */
export function judge(i: JudgeInputs): Verdict | null {
  const v = decide(i);
  const e = i.experiment;
  // A decision only reported (auto rollback or none) lets the experiment run on, to its max duration.
  if (v && !v.end && i.now - e.started_at >= e.max_duration_ms) return { ...v, end: true, reason: `${v.reason}; max duration reached: all traffic back on ${e.control}` };
  return v;
}

function decide(i: JudgeInputs): Verdict | null {
  const e = i.experiment;
  const { control, treatment } = i.stats.arms;
  if (i.production !== e.control) {
    const what = i.production === undefined ? 'no version of it is in production any more' : i.production === e.treatment ? `the treatment ${e.treatment} was promoted by hand` : `${e.model}@${i.production} was promoted by hand`;
    return { outcome: 'interrupted', action: 'none', end: true, reason: `${what} during the experiment; all traffic follows production`, severity: 'warning' };
  }
  if (i.treatmentUnloadable) return { outcome: 'interrupted', action: 'rolled_back', end: true, reason: `the treatment ${e.treatment} cannot be loaded: ${i.treatmentUnloadable}`, severity: 'critical' };
  const acts = (outcome: Outcome): boolean => (outcome === 'win' ? e.auto === 'promote' : e.auto !== 'none');
  const floor = guardrailFloor(e);
  const lat = i.latency.treatment;
  for (const g of e.guardrails) {
    let value: number | null = null;
    const metric = g.metric as GuardrailMetric;
    if (metric.endsWith('_latency_ms')) {
      if (lat && lat.rows >= floor) value = metric === 'p50_latency_ms' ? lat.p50Ms : metric === 'p99_latency_ms' ? lat.p99Ms : lat.meanMs;
    } else if (treatment.outputs >= floor) value = metric === 'fallback_rate' ? treatment.fallbackRate : treatment.blockRate;
    if (value === null || keeps(g, value)) continue;
    const act = acts('guardrail');
    return { outcome: 'guardrail', action: act ? 'rolled_back' : 'none', end: act, reason: `guardrail ${guardrailText(g)} breached: the treatment's ${g.metric} is ${fmt(value)}${act ? '' : ' (auto none: reported only)'}`, severity: 'critical' };
  }
  const test = i.stats.test;
  // min_samples outcomes per arm, and an estimate on at least MIN_METRIC_SAMPLES of them (the labelled
  // blocks of precision at block): a normal approximation on a handful is not trusted.
  const enough = control.samples >= e.min_samples && treatment.samples >= e.min_samples && control.metricSamples >= MIN_METRIC_SAMPLES && treatment.metricSamples >= MIN_METRIC_SAMPLES;
  if (test && enough && test.significant) {
    const outcome: Outcome = test.difference > 0 ? 'win' : 'loss';
    const act = acts(outcome);
    const summary = `${e.metric} ${fmt(treatment.metric!.value)} (treatment ${e.treatment}) against ${fmt(control.metric!.value)} (control ${e.control}), difference ${fmt(test.difference)} in [${fmt(test.interval[0])}, ${fmt(test.interval[1])}], always-valid p ${test.pValue.toPrecision(3)}`;
    if (outcome === 'win') return { outcome, action: act ? 'promoted' : 'none', end: act, reason: `treatment wins: ${summary}${act ? '' : `; auto ${e.auto}: promote it with fabric models promote ${e.model}@${e.treatment} --to production`}`, severity: 'info' };
    return { outcome, action: act ? 'rolled_back' : 'none', end: act, reason: `treatment loses: ${summary}${act ? '' : '; auto none: reported only'}`, severity: 'warning' };
  }
  if (i.now - e.started_at >= e.max_duration_ms) {
    const hours = (e.max_duration_ms / 3_600_000).toFixed(2).replace(/\.?0+$/, '');
    if (!enough) return { outcome: 'inconclusive', action: 'none', end: true, reason: `max duration ${hours} h reached with ${control.samples} control and ${treatment.samples} treatment samples (${e.min_samples} needed per arm); all traffic back on ${e.control}`, severity: 'warning' };
    return { outcome: 'no_difference', action: 'none', end: true, reason: `max duration ${hours} h reached without a significant difference${test ? ` (difference ${fmt(test.difference)} in [${fmt(test.interval[0])}, ${fmt(test.interval[1])}])` : ''}; all traffic back on ${e.control}`, severity: 'info' };
  }
  return null;
}

export interface JudgeDeps {
  readonly experiments: ExperimentRegistry;
  /** The production version of a model, as this instance's registry follower sees it. */
  production(model: string): string | undefined;
  readonly admin: ExperimentsAdmin;
  readonly registry: RegistryAdmin;
  readonly clickhouse: ClickHouseClient;
  readonly database: string;
  readonly latency: RedisExperimentLatency;
  readonly redis: Redis;
  readonly keyPrefix: string;
  readonly intervalMs: number;
  readonly windowMs: number;
  readonly log: Logger;
  readonly metrics?: Metrics;
  /** Load failures of a version reported by any instance (content refused), if any. */
  unloadable?(model: string, version: string, since: number): Promise<string | undefined>;
}

/**
 * Runs `judge` on every running experiment every interval, in one instance of the fleet at a time (a
 * Redis lease: it saves the others the ledger queries; correctness does not rest on it), and acts on the
 * verdict in one Kafka transaction under the model's lock, only if the record is still the one judged:
 * the experiment's next record, the promotion's registry records, and the alert. A crash between two
 * intervals loses nothing: the next holder of the lease judges again from the ledger, and an experiment
 * already decided is not decided twice (its record says so).
 */
export class ExperimentJudge {
  private readonly loop: LeasedLoop;
  /** Revisions this judge wrote: until its follower reads them back, the older record is not judged again. */
  private readonly written = new Map<string, number>();

  constructor(private readonly deps: JudgeDeps) {
    this.loop = new LeasedLoop({
      redis: deps.redis,
      key: `${deps.keyPrefix}experiments:judge`,
      intervalMs: deps.intervalMs,
      due: () => deps.experiments.list().some((e) => e.state === 'running'),
      run: () => this.runOnce(),
      log: deps.log,
      what: 'experiment judge round',
    });
  }

  start(): void {
    this.loop.start();
  }

  /** Judges every running experiment once; returns what was decided. */
  async runOnce(now = Date.now()): Promise<{ experiment: Experiment; verdict: Verdict }[]> {
    const decided: { experiment: Experiment; verdict: Verdict }[] = [];
    for (const e of this.deps.experiments.list().filter((x) => x.state === 'running')) {
      if ((this.written.get(e.id) ?? 0) > e.revision) continue;
      try {
        const stats = await ledgerStats(this.deps.clickhouse, this.deps.database, e, { windowMs: this.deps.windowMs, now });
        const latency = await this.deps.latency.read(e.id, ['control', 'treatment', 'shadow']);
        const unloadable = await this.deps.unloadable?.(e.model, e.treatment, e.started_at);
        const verdict = judge({ experiment: e, stats, latency, production: this.deps.production(e.model), ...(unloadable ? { treatmentUnloadable: unloadable } : {}), now });
        if (!verdict) continue;
        // A reported (not acted) decision is written once, not at every round.
        if (!verdict.end && e.decision?.outcome === verdict.outcome) continue;
        await this.act(e, verdict, stats, latency, now);
        decided.push({ experiment: e, verdict });
      } catch (err) {
        this.deps.log.warn({ experiment: e.id, err: messageOf(err) }, 'experiment not judged this round');
      }
    }
    return decided;
  }

  private async act(e: Experiment, verdict: Verdict, stats: LedgerStats, latency: Readonly<Record<string, ArmLatency>>, now: number): Promise<void> {
    const by = `fabric experiments judge (${this.loop.owner})`;
    const decision = { outcome: verdict.outcome, action: verdict.action, reason: verdict.reason, by, at: now, stats_json: JSON.stringify({ ...stats, latency }) };
    // Under the model's lock, and only if the record is still the one judged: an operator's stop (or
    // another judge) in between wins, and this decision is dropped (FABRIC_CONTROL_CONFLICT, next round).
    const next = await this.deps.admin.change(e.model, e.id, e.revision, async (current) => {
      const updated: Experiment = verdict.end ? ended(current, verdict.outcome === 'interrupted' ? 'stopped' : 'concluded', decision) : { ...current, revision: current.revision + 1, decision };
      let models: ModelVersion[] = [];
      if (verdict.action === 'promoted') {
        const entries = await this.deps.registry.entries();
        const entry = entries.find((x) => x.name === e.model && x.version === e.treatment);
        if (!entry) throw new Error(`treatment ${e.model}@${e.treatment} is no longer registered`);
        models = await this.deps.registry.planPromotion(entry, 'production', by, `experiment ${e.id}: ${verdict.reason}`, entries);
      }
      const alert = alertFor(updated, verdict.severity, `experiment ${e.id} on ${e.model}: ${verdict.outcome}${verdict.action !== 'none' ? `, ${verdict.action.replace('_', ' ')}` : ''}: ${verdict.reason}`, { control: e.control, treatment: e.treatment });
      return { experiment: updated, models, alert };
    });
    this.written.set(e.id, next.revision);
    this.deps.metrics?.experimentDecisions.inc({ model: e.model, outcome: verdict.outcome, action: verdict.action });
    this.deps.log.info({ experiment: e.id, outcome: verdict.outcome, action: verdict.action, reason: verdict.reason }, 'experiment decided');
  }

  close(): Promise<void> {
    return this.loop.close();
  }
}
