import { describe, expect, it } from 'vitest';
import { Rng } from '../../sim/rng.js';
import { auc, confidenceSequence, msprt, proportion, type ScoreCounts } from '../../serving/experiments/stats.js';

/** AUC by brute force over every positive-negative pair (ties one half): the definition. */
function pairwiseAuc(pos: number[], neg: number[]): number {
  let s = 0;
  for (const p of pos) for (const n of neg) s += p > n ? 1 : p === n ? 0.5 : 0;
  return s / (pos.length * neg.length);
}

function countsOf(pos: number[], neg: number[]): ScoreCounts[] {
  const m = new Map<number, { positives: number; negatives: number }>();
  for (const p of pos) (m.get(p) ?? m.set(p, { positives: 0, negatives: 0 }).get(p)!).positives++;
  for (const n of neg) (m.get(n) ?? m.set(n, { positives: 0, negatives: 0 }).get(n)!).negatives++;
  return [...m].map(([score, c]) => ({ score, ...c }));
}

/**
 * One simulated experiment looked at every `lookEvery` samples: true when any look after both arms
 * have `minSamples` declares a significant difference.
 */
function everSignificant(rng: Rng, draw: (arm: 'control' | 'treatment') => number, opts: { samples: number; lookEvery: number; split: number; minSamples: number; alpha: number; sd: number }): { any: boolean; final: ReturnType<typeof msprt> | null } {
  const n = { control: 0, treatment: 0 };
  const s = { control: 0, treatment: 0 };
  let final: ReturnType<typeof msprt> | null = null;
  for (let i = 1; i <= opts.samples; i++) {
    const arm = rng.uniform() < opts.split ? 'treatment' : 'control';
    n[arm]++;
    s[arm] += draw(arm);
    if (i % opts.lookEvery !== 0 || n.control < opts.minSamples || n.treatment < opts.minSamples) continue;
    final = msprt(proportion(s.control, n.control)!, proportion(s.treatment, n.treatment)!, opts.alpha, opts.sd);
    if (final.significant) return { any: true, final };
  }
  return { any: false, final };
}

describe('experiment statistics', () => {
  it('AUC from grouped scores equals the pairwise definition, ties included, with the Hanley-McNeil variance', () => {
    const rng = new Rng(7);
    const pos = Array.from({ length: 300 }, () => Math.round((0.3 + 0.7 * rng.uniform()) * 100) / 100);
    const neg = Array.from({ length: 900 }, () => Math.round(0.8 * rng.uniform() * 100) / 100);
    const e = auc(countsOf(pos, neg))!;
    expect(e.value).toBeCloseTo(pairwiseAuc(pos, neg), 12);
    const a = e.value;
    const q1 = a / (2 - a);
    const q2 = (2 * a * a) / (1 + a);
    expect(e.variance).toBeCloseTo((a * (1 - a) + 299 * (q1 - a * a) + 899 * (q2 - a * a)) / (300 * 900), 15);
    expect(e.samples).toBe(1200);
    expect(auc(countsOf([0.4, 0.5], []))).toBeNull();
    expect(auc(countsOf([0.5], [0.5]))!.value).toBe(0.5);
  });

  it('a proportion never claims zero variance', () => {
    expect(proportion(0, 50)!.variance).toBeGreaterThan(0);
    expect(proportion(50, 50)!.variance).toBeGreaterThan(0);
    expect(proportion(0, 0)).toBeNull();
    expect(proportion(30, 100)!.value).toBe(0.3);
  });

  it('the mSPRT matches its closed form and its interval is where Lambda crosses 1/alpha', () => {
    const c = { value: 0.1, variance: 0.0004, samples: 225 };
    const t = { value: 0.16, variance: 0.0006, samples: 224 };
    const r = msprt(c, t, 0.05, 0.05);
    const v = 0.001;
    const t2 = 0.0025;
    const lambda = Math.sqrt(v / (v + t2)) * Math.exp((t2 * 0.06 * 0.06) / (2 * v * (v + t2)));
    expect(r.difference).toBeCloseTo(0.06, 12);
    expect(r.lambda).toBeCloseTo(lambda, 9);
    expect(r.pValue).toBeCloseTo(Math.min(1, 1 / lambda), 9);
    expect(r.significant).toBe(lambda >= 20);
    // At the interval's edge the ratio against that difference is exactly 1/alpha.
    const [lo, hi] = r.interval;
    for (const edge of [lo, hi]) {
      const at = Math.sqrt(v / (v + t2)) * Math.exp((t2 * (0.06 - edge) ** 2) / (2 * v * (v + t2)));
      expect(at).toBeCloseTo(20, 6);
    }
    // Significant exactly when the interval excludes 0.
    expect(r.significant).toBe(lo > 0 || hi < 0);
    const [a, b] = confidenceSequence(0.5, 0.0001, 0.05, 0.1);
    expect((a + b) / 2).toBeCloseTo(0.5, 12);
  });

  it('A/A: looking after every 200 samples, at least 95% of 400 seeded runs never find a difference', () => {
    let falsePositives = 0;
    for (let seed = 1; seed <= 400; seed++) {
      const rng = new Rng(seed);
      const { any } = everSignificant(rng, () => (rng.uniform() < 0.1 ? 1 : 0), { samples: 20_000, lookEvery: 200, split: 0.2, minSamples: 100, alpha: 0.05, sd: 0.02 });
      if (any) falsePositives++;
    }
    expect(falsePositives / 400).toBeLessThanOrEqual(0.05);
  });

  it('A/A on AUC: at least 95% of 200 seeded runs never find a difference at any of 20 looks', () => {
    let falsePositives = 0;
    for (let seed = 1; seed <= 200; seed++) {
      const rng = new Rng(1000 + seed);
      const arms = { control: { pos: [] as number[], neg: [] as number[] }, treatment: { pos: [] as number[], neg: [] as number[] } };
      for (let look = 1; look <= 20; look++) {
        for (let i = 0; i < 250; i++) {
          const arm = rng.uniform() < 0.2 ? arms.treatment : arms.control;
          const fraud = rng.uniform() < 0.05;
          const score = Math.round(Math.min(1, Math.max(0, (fraud ? 0.6 : 0.3) + 0.25 * (rng.uniform() + rng.uniform() - 1))) * 1e4) / 1e4;
          (fraud ? arm.pos : arm.neg).push(score);
        }
        const c = auc(countsOf(arms.control.pos, arms.control.neg));
        const t = auc(countsOf(arms.treatment.pos, arms.treatment.neg));
        if (!c || !t || arms.treatment.pos.length < 10) continue;
        if (msprt(c, t, 0.05, 0.05).significant) {
          falsePositives++;
          break;
        }
      }
    }
    expect(falsePositives / 200).toBeLessThanOrEqual(0.05);
  });

  it('the same looks with a fixed-sample z-test would cross far more often: the reason for the sequential test', () => {
    let crossed = 0;
    for (let seed = 1; seed <= 200; seed++) {
      const rng = new Rng(seed);
      const n = { control: 0, treatment: 0 };
      const s = { control: 0, treatment: 0 };
      for (let i = 1; i <= 20_000; i++) {
        const arm = rng.uniform() < 0.2 ? 'treatment' : 'control';
        n[arm]++;
        s[arm] += rng.uniform() < 0.1 ? 1 : 0;
        if (i % 200 !== 0 || n.treatment < 100) continue;
        const c = proportion(s.control, n.control)!;
        const t = proportion(s.treatment, n.treatment)!;
        if (Math.abs(t.value - c.value) / Math.sqrt(c.variance + t.variance) > 1.96) {
          crossed++;
          break;
        }
      }
    }
    expect(crossed / 200).toBeGreaterThan(0.15);
  });

  it('a real difference is found: CTR 10% against 13% in at least 90% of 100 seeded runs, and in the right direction', () => {
    let found = 0;
    for (let seed = 1; seed <= 100; seed++) {
      const rng = new Rng(5000 + seed);
      const { any, final } = everSignificant(rng, (arm) => (rng.uniform() < (arm === 'treatment' ? 0.13 : 0.1) ? 1 : 0), { samples: 40_000, lookEvery: 500, split: 0.5, minSamples: 100, alpha: 0.05, sd: 0.02 });
      if (any) {
        found++;
        expect(final!.difference).toBeGreaterThan(0);
      }
    }
    expect(found).toBeGreaterThanOrEqual(90);
  });
});
