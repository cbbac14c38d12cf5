import { createHash } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import type { Experiment, ModelVersion } from '../../schemas/types.generated.js';
import { armOf, newExperiment, parseGuardrail, runningOf, supersedes, type StartRequest } from '../../serving/experiments/spec.js';
import { judge, type JudgeInputs } from '../../serving/experiments/judge.js';
import type { ArmStats, LedgerStats } from '../../serving/experiments/ledger.js';
import { bucketEdge, bucketOf, quantileOf, summarize } from '../../serving/experiments/latency.js';
import { msprt, proportion } from '../../serving/experiments/stats.js';
import { isFabricError } from '../../topology/errors.js';
import { demoModel } from '../shared/models.js';

const fraud = demoModel('fraud').entry;
const recs = demoModel('recs').entry;
const v = (entry: ModelVersion, version: string, stage: ModelVersion['stage'] = 'none'): ModelVersion => ({ ...entry, version, stage });
const entries = [v(fraud, '1.0.0', 'production'), v(fraud, '1.1.0'), v(fraud, '1.2.0'), v(recs, '1.0.0', 'production'), v(recs, '2.0.0')];
const NOW = Date.UTC(2026, 10, 22, 12);

function start(request: Partial<StartRequest>, running: Experiment[] = []): Experiment {
  const model = request.model ?? 'fraud';
  return newExperiment({ model, control: '1.0.0', treatment: model === 'recs' ? '2.0.0' : '1.1.0', split: 20, ...request }, { entries, production: entries.find((e) => e.name === model && e.stage === 'production'), running, existingIds: new Set(running.map((e) => e.id)), by: 'test', now: NOW });
}

function refusal(request: Partial<StartRequest>, running: Experiment[] = []): string {
  try {
    start(request, running);
  } catch (err) {
    expect(isFabricError(err, 'FABRIC_EXPERIMENT_INVALID') || isFabricError(err, 'FABRIC_MODEL_UNKNOWN')).toBe(true);
    return (err as Error).message;
  }
  throw new Error('not refused');
}

describe('starting an experiment', () => {
  it('builds the first record with the defaults of the model\'s output kind', () => {
    const e = start({ shadow: '1.2.0', guardrails: ['p99_latency_ms<20', 'fallback_rate <= 0.05'] });
    expect(e).toMatchObject({ id: 'fraud_20261122_120000', model: 'fraud', control: '1.0.0', treatment: '1.1.0', split: 20, shadow: '1.2.0', metric: 'auc', min_samples: 200, max_duration_ms: 86_400_000, auto: 'promote', alpha: 0.05, mixture_sd: 0.05, state: 'running', revision: 1, started_at: NOW, decision: null });
    expect(e.guardrails).toEqual([{ metric: 'p99_latency_ms', op: '<', threshold: 20 }, { metric: 'fallback_rate', op: '<=', threshold: 0.05 }]);
    expect(start({ model: 'recs' })).toMatchObject({ metric: 'ctr', mixture_sd: 0.02, outcome_horizon_ms: 3_600_000 });
  });

  it('refuses bad input, naming every problem', () => {
    expect(refusal({ split: 0 })).toMatch(/split 0 is outside 0-100/);
    expect(refusal({ split: 100 })).toMatch(/split 100 is outside 0-100/);
    expect(refusal({ split: -5 })).toMatch(/split -5/);
    expect(refusal({ split: Number.NaN })).toMatch(/split NaN/);
    const many = refusal({ treatment: '9.9.9', shadow: '8.8.8', split: 101, metric: 'ctr', guardrails: ['latency<5', 'p99_latency_ms=3'], auto: 'maybe', maxDuration: '3 days', minSamples: 0, id: 'Bad-Id' });
    for (const problem of [/treatment version 9\.9\.9 of fraud is not registered \(versions: 1\.0\.0, 1\.1\.0, 1\.2\.0\)/, /shadow version 8\.8\.8/, /split 101/, /metric ctr does not judge a decision model \(one of auc, precision_at_block\)/, /unknown metric latency/, /"p99_latency_ms=3" is not <metric><op><number>/, /auto "maybe"/, /max-duration: "3 days" is not a duration/, /min-samples 0/, /id "Bad-Id"/]) expect(many).toMatch(problem);
    expect(refusal({ control: '1.1.0' })).toMatch(/the control must be the version in production \(1\.0\.0\), not 1\.1\.0/);
    expect(refusal({ treatment: '1.0.0' })).toMatch(/the treatment is the control version/);
    expect(refusal({ shadow: '1.1.0' })).toMatch(/the shadow 1\.1\.0 is already an arm/);
    expect(refusal({ model: 'nope' })).toMatch(/model nope is not registered/);
    expect(refusal({ model: 'recs', guardrails: ['block_rate<0.1'] })).toMatch(/block_rate applies to decision models only/);
  });

  it('refuses a second experiment on the same model, and an id already used', () => {
    const first = start({ id: 'one' });
    expect(refusal({ id: 'two' }, [first])).toMatch(/experiment one is already running on fraud/);
    expect(() => start({ model: 'recs', id: 'other' }, [first])).not.toThrow();
    expect(refusal({ id: 'one' }, [{ ...first, state: 'concluded' }])).toMatch(/experiment one already exists/);
  });

  it('parses guardrails strictly', () => {
    expect(parseGuardrail(' mean_latency_ms >= 1.5 ')).toEqual({ metric: 'mean_latency_ms', op: '>=', threshold: 1.5 });
    expect(() => parseGuardrail('p99_latency_ms<')).toThrow(/is not <metric><op><number>/);
  });
});

describe('sticky assignment', () => {
  it('is sha256(id:entity) read as a fraction, below split/100 in the treatment, independent per experiment', () => {
    const e = { id: 'exp_a', split: 20 };
    let treated = 0;
    let agree = 0;
    for (let i = 0; i < 20_000; i++) {
      const entity = `C${i}`;
      const h = createHash('sha256').update(`exp_a:${entity}`).digest('hex');
      const expected = parseInt(h.slice(0, 8), 16) / 2 ** 32 < 0.2 ? 'treatment' : 'control';
      expect(armOf(e, entity)).toBe(expected);
      if (expected === 'treatment') treated++;
      if (armOf({ id: 'exp_b', split: 20 }, entity) === expected) agree++;
    }
    // 20% within four standard deviations; another experiment's split is independent (0.8^2 + 0.2^2 agree).
    expect(Math.abs(treated / 20_000 - 0.2)).toBeLessThan(4 * Math.sqrt(0.16 / 20_000));
    expect(Math.abs(agree / 20_000 - 0.68)).toBeLessThan(0.02);
  });
});

describe('the experiments topic', () => {
  it('a record never replaces one with a greater revision; a race that started two runs the earlier', () => {
    const a = start({ id: 'a' });
    const stopped = { ...a, state: 'stopped', revision: 2 };
    expect(supersedes(stopped, a)).toBe(true);
    expect(supersedes(a, stopped)).toBe(false);
    const b = { ...start({ id: 'b' }), started_at: NOW + 1 };
    expect(runningOf([b, a], 'fraud')?.id).toBe('a');
    expect(runningOf([b, stopped], 'fraud')?.id).toBe('b');
    expect(runningOf([b], 'recs')).toBeUndefined();
  });
});

function arm(name: 'control' | 'treatment', version: string, samples: number, value: number | null, extra: Partial<ArmStats> = {}): ArmStats {
  return { arm: name, version, outputs: samples * 10, samples, metricSamples: samples, metric: value === null ? null : { value, interval: [value - 0.01, value + 0.01] }, fallbackRate: 0, blockRate: 0.01, ...extra };
}

function inputs(e: Experiment, c: ArmStats, t: ArmStats, over: Partial<JudgeInputs> = {}): JudgeInputs {
  const ce = c.metric ? proportion(Math.round(c.metric.value * c.samples), c.samples) : null;
  const te = t.metric ? proportion(Math.round(t.metric.value * t.samples), t.samples) : null;
  const stats: LedgerStats = { at: NOW, metric: 'precision_at_block', windowMs: 600_000, arms: { control: c, treatment: t }, test: ce && te ? msprt(ce, te, e.alpha, e.mixture_sd) : null, windows: [], shadow: null };
  return { experiment: e, stats, latency: { treatment: { rows: 1000, calls: 10, meanMs: 1, p50Ms: 1, p99Ms: 3, totalMs: 10 } }, production: e.control, now: NOW + 60_000, ...over };
}

describe('the judge', () => {
  const e = start({ metric: 'precision_at_block', minSamples: 200, guardrails: ['p99_latency_ms<20'] });

  it('promotes a significant win, rolls back a significant loss, and says nothing before min samples or significance', () => {
    expect(judge(inputs(e, arm('control', '1.0.0', 2000, 0.5), arm('treatment', '1.1.0', 500, 0.7)))).toMatchObject({ outcome: 'win', action: 'promoted', end: true, severity: 'info' });
    expect(judge(inputs(e, arm('control', '1.0.0', 2000, 0.5), arm('treatment', '1.1.0', 500, 0.3)))).toMatchObject({ outcome: 'loss', action: 'rolled_back', end: true });
    expect(judge(inputs(e, arm('control', '1.0.0', 2000, 0.5), arm('treatment', '1.1.0', 150, 0.9)))).toBeNull();
    expect(judge(inputs(e, arm('control', '1.0.0', 2000, 0.5), arm('treatment', '1.1.0', 500, 0.51)))).toBeNull();
    // Enough outcomes, but the estimate stands on 5 labelled blocks: not yet.
    expect(judge(inputs(e, arm('control', '1.0.0', 2000, 0.5), { ...arm('treatment', '1.1.0', 500, 0.0), metricSamples: 5 }))).toBeNull();
  });

  it('acts as auto says: rollback reports a win, none reports everything and keeps running', () => {
    const r = { ...e, auto: 'rollback' };
    expect(judge(inputs(r, arm('control', '1.0.0', 2000, 0.5), arm('treatment', '1.1.0', 500, 0.7)))).toMatchObject({ outcome: 'win', action: 'none', end: false });
    expect(judge(inputs(r, arm('control', '1.0.0', 2000, 0.5), arm('treatment', '1.1.0', 500, 0.3)))).toMatchObject({ outcome: 'loss', action: 'rolled_back', end: true });
    const n = { ...e, auto: 'none' };
    expect(judge(inputs(n, arm('control', '1.0.0', 2000, 0.5), arm('treatment', '1.1.0', 500, 0.3)))).toMatchObject({ outcome: 'loss', action: 'none', end: false });
    // Reported only, it runs on to its max duration, then ends with that outcome.
    expect(judge(inputs(n, arm('control', '1.0.0', 2000, 0.5), arm('treatment', '1.1.0', 500, 0.3), { now: n.started_at + n.max_duration_ms }))).toMatchObject({ outcome: 'loss', action: 'none', end: true, reason: expect.stringMatching(/max duration reached/) });
  });

  it('rolls back on a guardrail breach once the treatment has enough rows, before any test', () => {
    const slow = { rows: 1000, calls: 10, meanMs: 5, p50Ms: 4, p99Ms: 25, totalMs: 50 };
    expect(judge(inputs(e, arm('control', '1.0.0', 0, null), arm('treatment', '1.1.0', 0, null), { latency: { treatment: slow } }))).toMatchObject({ outcome: 'guardrail', action: 'rolled_back', end: true, severity: 'critical', reason: expect.stringMatching(/p99_latency_ms<20 breached: the treatment's p99_latency_ms is 25/) });
    expect(judge(inputs(e, arm('control', '1.0.0', 0, null), arm('treatment', '1.1.0', 0, null), { latency: { treatment: { ...slow, rows: 50 } } }))).toBeNull();
    const fallbacks = start({ metric: 'precision_at_block', guardrails: ['fallback_rate<0.1'] });
    expect(judge(inputs(fallbacks, arm('control', '1.0.0', 100, null), arm('treatment', '1.1.0', 100, null, { fallbackRate: 0.2 })))).toMatchObject({ outcome: 'guardrail' });
  });

  it('is interrupted by a promotion by hand or a treatment that cannot load', () => {
    expect(judge(inputs(e, arm('control', '1.0.0', 10, 0.5), arm('treatment', '1.1.0', 10, 0.5), { production: '1.2.0' }))).toMatchObject({ outcome: 'interrupted', action: 'none', end: true, reason: expect.stringMatching(/fraud@1\.2\.0 was promoted by hand/) });
    expect(judge(inputs(e, arm('control', '1.0.0', 10, 0.5), arm('treatment', '1.1.0', 10, 0.5), { production: '1.1.0' }))?.reason).toMatch(/the treatment 1\.1\.0 was promoted by hand/);
    expect(judge(inputs(e, arm('control', '1.0.0', 10, 0.5), arm('treatment', '1.1.0', 10, 0.5), { treatmentUnloadable: 'bad bytes' }))).toMatchObject({ outcome: 'interrupted', action: 'rolled_back', reason: expect.stringMatching(/cannot be loaded: bad bytes/) });
  });

  it('ends at max duration: inconclusive without the samples (labels never came), else no difference', () => {
    const late = { now: e.started_at + e.max_duration_ms };
    expect(judge(inputs(e, arm('control', '1.0.0', 0, null), arm('treatment', '1.1.0', 0, null), late))).toMatchObject({ outcome: 'inconclusive', action: 'none', end: true, reason: expect.stringMatching(/with 0 control and 0 treatment samples \(200 needed per arm\)/) });
    expect(judge(inputs(e, arm('control', '1.0.0', 2000, 0.5), arm('treatment', '1.1.0', 500, 0.51), late))).toMatchObject({ outcome: 'no_difference', action: 'none', end: true });
  });
});

describe('latency histograms', () => {
  it('buckets grow by 10% and a quantile is the upper edge of its bucket (at most 10% high)', () => {
    for (const ms of [0.005, 0.02, 0.5, 3, 17, 250, 4000]) {
      const b = bucketOf(ms);
      expect(bucketEdge(b)).toBeGreaterThanOrEqual(ms * 0.999999);
      if (b > 0) expect(bucketEdge(b - 1)).toBeLessThan(ms);
    }
    const h = new Map<number, number>([[bucketOf(1), 98], [bucketOf(50), 2]]);
    expect(quantileOf(h, 0.5)).toBeCloseTo(bucketEdge(bucketOf(1)), 3);
    expect(quantileOf(h, 0.99)).toBeCloseTo(bucketEdge(bucketOf(50)), 3);
    const s = summarize({ [`b${bucketOf(2)}`]: '300', rows: '300', calls: '3', total_ms: '6', row_ms: '600' });
    expect(s).toMatchObject({ rows: 300, calls: 3, meanMs: 2, totalMs: 6 });
    expect(s.p99Ms).toBeGreaterThanOrEqual(2);
    expect(s.p99Ms).toBeLessThan(2.2);
  });
});
