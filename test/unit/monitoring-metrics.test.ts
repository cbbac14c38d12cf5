import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { chiSquare, gammaQ, jsDistance, ksStatistic, psi, wasserstein } from '../../processors/drift/metrics.js';
import { performanceOf, type ScoreGroup } from '../../processors/monitor/performance.js';
import { binOf, categoricalProfile, numericProfile, referenceOf, type ReferenceProfile } from '../../serving/registry/reference.js';

/** Computed once with scipy by scripts/monitoring_fixtures.py and committed. */
const METRICS = JSON.parse(readFileSync(new URL('../fixtures/monitoring/metrics.json', import.meta.url), 'utf8')) as {
  cases: { reference: number[]; counts: number[]; centers: number[]; psi: number; js: number; ks: number; wasserstein: number; chi2_statistic: number; chi2_p: number }[];
};
/** Data sets and the profiles scripts/reference_profile.py (the training side) makes of them. */
const PROFILES = JSON.parse(readFileSync(new URL('../fixtures/monitoring/profiles.json', import.meta.url), 'utf8')) as {
  data: Record<string, { values: (number | string | null)[]; nan_at: number[] }>;
  cases: { data: string; kind: 'numeric' | 'categorical'; bins?: number; min_count: number | null; profile: ReferenceProfile }[];
};

const proportions = (counts: readonly number[]): number[] => {
  const t = counts.reduce((a, b) => a + b, 0);
  return counts.map((c) => c / t);
};

describe('drift metrics against scipy (committed fixtures)', () => {
  it(`agree on ${METRICS.cases.length} cases within 1e-9`, () => {
    expect(METRICS.cases.length).toBeGreaterThan(60);
    for (const c of METRICS.cases) {
      const p = proportions(c.reference);
      expect(psi(p, c.counts)).toBeCloseTo(c.psi, 9);
      expect(jsDistance(p, c.counts)).toBeCloseTo(c.js, 9);
      expect(ksStatistic(p, c.counts)).toBeCloseTo(c.ks, 9);
      expect(wasserstein(c.centers, p, c.counts)).toBeCloseTo(c.wasserstein, 9);
      const chi = chiSquare(p, c.counts);
      expect(chi.statistic).toBeCloseTo(c.chi2_statistic, 6);
      expect(Math.abs(chi.pValue - c.chi2_p)).toBeLessThan(1e-9 + 1e-9 * c.chi2_p);
    }
  });

  it('are zero (p-value one) for a window shaped exactly like the reference, and spread for a shifted one', () => {
    const p = [0.1, 0.2, 0.3, 0.4];
    const same = [10, 20, 30, 40];
    expect([psi(p, same), jsDistance(p, same), ksStatistic(p, same), wasserstein([1, 2, 3, 4], p, same)].map((x) => Math.abs(x) < 1e-12)).toEqual([true, true, true, true]);
    expect(chiSquare(p, same).pValue).toBeCloseTo(1, 12);
    // All the mass moved to the last bin: KS = 1 - 0.4, Wasserstein = the mean moves from 3 to 4.
    expect(ksStatistic(p, [0, 0, 0, 7])).toBeCloseTo(0.6, 12);
    expect(wasserstein([1, 2, 3, 4], p, [0, 0, 0, 7])).toBeCloseTo(1, 12);
    expect(jsDistance(p, [0, 0, 0, 7])).toBeLessThanOrEqual(1);
  });

  it('chi-square survival matches known quantiles (df 1: 3.841 -> 0.05; df 10: 18.307 -> 0.05)', () => {
    expect(gammaQ(0.5, 3.841458820694124 / 2)).toBeCloseTo(0.05, 12);
    expect(gammaQ(5, 18.307038053275146 / 2)).toBeCloseTo(0.05, 12);
    expect(gammaQ(2, 0)).toBe(1);
  });

  it('an empty window measures nothing rather than dividing by zero', () => {
    expect([psi([0.5, 0.5], [0, 0]), jsDistance([0.5, 0.5], [0, 0]), ksStatistic([0.5, 0.5], [0, 0]), wasserstein([0, 1], [0.5, 0.5], [0, 0])]).toEqual([0, 0, 0, 0]);
    expect(chiSquare([0.5, 0.5], [0, 0]).pValue).toBe(1);
  });
});

describe('reference profiles: the same bins in training (Python) and online (TypeScript)', () => {
  const valuesOf = (name: string): (number | string | null)[] => {
    const d = PROFILES.data[name]!;
    const values = [...d.values];
    for (const i of d.nan_at) values[i] = Number.NaN;
    return values;
  };

  it(`equal scripts/reference_profile.py on ${PROFILES.cases.length} data sets (heavy values, missing, constant, tiny, categorical)`, () => {
    for (const c of PROFILES.cases) {
      const options = { ...(c.bins ? { bins: c.bins } : {}), ...(c.min_count !== null ? { minCount: c.min_count } : {}) };
      const mine = c.kind === 'numeric' ? numericProfile(valuesOf(c.data) as (number | null)[], options) : categoricalProfile(valuesOf(c.data) as (string | null)[], options);
      const theirs = c.profile as Record<string, unknown>;
      expect(Object.keys(mine).sort(), c.data).toEqual(Object.keys(theirs).sort());
      for (const [k, v] of Object.entries(mine)) {
        if (k === 'centers' || k === 'mean' || k === 'std') {
          const want = theirs[k];
          if (Array.isArray(v)) (v as number[]).forEach((x, i) => expect(x).toBeCloseTo((want as number[])[i]!, 9));
          else expect(v).toBeCloseTo(want as number, 9);
        } else expect(v, `${c.data} ${k}`).toEqual(theirs[k]);
      }
      // Every bin of a profile holds at least min_count reference values (unless one bin is all there is).
      if (c.kind === 'numeric' && mine.counts!.length > 1) expect(Math.min(...mine.counts!)).toBeGreaterThanOrEqual(c.min_count ?? Math.max(1, Math.ceil(mine.count! / 100)));
    }
  });

  it('gives a heavy value a bin of its own, so a mass on one value does not read as drift of its neighbours', () => {
    const values = [...new Array<number>(600).fill(0), ...Array.from({ length: 400 }, (_, i) => 1 + i)];
    const p = numericProfile(values);
    expect(p.edges[0]).toBe(0);
    expect(p.counts![0]).toBe(600);
    // The same mass with other values beside it: the zero bin still holds zeros alone.
    expect(binOf(p.edges, 0)).toBe(0);
    expect(binOf(p.edges, 0.5)).toBe(1);
  });

  it('bins are right-closed: a value equal to an edge falls in the bin the edge closes', () => {
    expect([binOf([1, 2], 0.5), binOf([1, 2], 1), binOf([1, 2], 1.5), binOf([1, 2], 2), binOf([1, 2], 5)]).toEqual([0, 0, 1, 1, 2]);
  });

  it('parses profiles made before v2 and refuses malformed ones with FABRIC_MODEL_INVALID', () => {
    const v1 = referenceOf({ name: 'm', version: '1', reference_json: JSON.stringify({ amount: { edges: [1, 2], proportions: [0.3, 0.3, 0.4], mean: 2 } }) });
    expect(v1.amount!.proportions).toEqual([0.3, 0.3, 0.4]);
    expect(() => referenceOf({ name: 'm', version: '1', reference_json: JSON.stringify({ amount: { edges: [2, 1], proportions: [0.3, 0.3, 0.4] } }) })).toThrow(/FABRIC_MODEL_INVALID|strictly ascending/);
    expect(() => referenceOf({ name: 'm', version: '1', reference_json: JSON.stringify({ t: { kind: 'categorical', categories: ['a'], proportions: [1] } }) })).toThrow(/one entry per category/);
  });
});

/** Labelled scores with scikit-learn's measures (scripts/monitoring_fixtures.py). */
const PERFORMANCE = JSON.parse(readFileSync(new URL('../fixtures/monitoring/performance.json', import.meta.url), 'utf8')) as {
  cases: { scores: number[]; labels: number[]; thresholds: Record<string, number>; auc: number; log_loss: number; ece: number; at: Record<string, { precision: number | null; recall: number; f1: number; flagged: number }> }[];
};

describe('performance with labels against scikit-learn (committed fixtures)', () => {
  const grouped = (scores: number[], labels: number[]): ScoreGroup[] => {
    const by = new Map<number, { n: number; positives: number }>();
    scores.forEach((s, i) => {
      const g = by.get(s) ?? { n: 0, positives: 0 };
      g.n++;
      g.positives += labels[i]!;
      by.set(s, g);
    });
    return [...by.entries()].map(([score, g]) => ({ score, ...g }));
  };

  it(`AUC (ties one half), log loss, ECE and precision/recall/F1 at the thresholds agree on ${PERFORMANCE.cases.length} cases`, () => {
    for (const c of PERFORMANCE.cases) {
      const got = performanceOf(grouped(c.scores, c.labels), c.thresholds);
      expect(got.labelled).toBe(c.scores.length);
      expect(got.positives).toBe(c.labels.reduce((a, b) => a + b, 0));
      expect(got.auc).toBeCloseTo(c.auc, 10);
      expect(got.log_loss).toBeCloseTo(c.log_loss, 9);
      expect(got.ece).toBeCloseTo(c.ece, 10);
      for (const t of got.thresholds) {
        const want = c.at[t.name]!;
        expect(t.flagged).toBe(want.flagged);
        if (want.precision === null) expect(t.precision).toBeNull();
        else expect(t.precision).toBeCloseTo(want.precision, 12);
        expect(t.recall).toBeCloseTo(want.recall, 12);
        expect(t.f1).toBeCloseTo(want.f1, 12);
      }
    }
  });

  it('leaves undefined what is undefined: no AUC with one class, no precision when nothing is flagged', () => {
    const got = performanceOf([{ score: 0.1, n: 10, positives: 0 }], { block: 0.5 });
    expect(got).toMatchObject({ labelled: 10, positives: 0, auc: null, base_rate: 0 });
    expect(got.thresholds).toEqual([{ name: 'block', threshold: 0.5, flagged: 0, precision: null, recall: null, f1: null }]);
    expect(performanceOf([], {})).toMatchObject({ labelled: 0, auc: null, log_loss: null, ece: null, base_rate: null });
  });
});
