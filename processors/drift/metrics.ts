/**
 * Drift metrics of one window's bin counts against a reference profile's bins (p: reference
 * proportions, q: the window's counts divided by their total; both over the same bins). Every formula
 * is checked against scipy on committed fixtures (test/fixtures/monitoring/metrics.json, made by
 * scripts/monitoring_fixtures.py).
 *
 * - PSI: sum (q - p) ln(q / p), each proportion floored at 1e-4 so an empty bin gives a large but
 *   finite value. < 0.1 stable, 0.1-0.25 moderate shift, > 0.25 significant.
 * - Jensen-Shannon distance, base 2 (in [0, 1]): sqrt of (KL(p || m) + KL(q || m)) / 2 with m = (p + q) / 2;
 *   scipy.spatial.distance.jensenshannon(p, q, base=2).
 * - Kolmogorov-Smirnov statistic on the bins: the largest gap between the cumulative proportions at
 *   the bin edges, max_i |P_i - Q_i|. It is the two-sample KS statistic of the events with every value
 *   moved to its bin (so it never exceeds the KS of the raw values).
 * - Wasserstein-1 on the bins: each bin's mass sits at the bin's reference center (the mean of the
 *   reference values in it), so sum_i |P_i - Q_i| (c_{i+1} - c_i);
 *   scipy.stats.wasserstein_distance(c, c, p, q). In the variable's unit.
 * - chi-square p-value (categorical): Pearson's statistic of the observed counts against n p over the
 *   bins with p > 0 (an observed value in a bin the reference never saw is counted as unseen, not
 *   here), df = bins - 1; scipy.stats.chisquare(f_obs, f_exp).pvalue.
 */

const EPSILON = 1e-4;

function totalOf(counts: readonly number[]): number {
  let t = 0;
  for (const c of counts) t += c;
  return t;
}

/** Population stability index of observed bin counts against reference proportions (0 without observations). */
export function psi(reference: readonly number[], counts: readonly number[]): number {
  const total = totalOf(counts);
  if (total === 0) return 0;
  let sum = 0;
  for (let i = 0; i < reference.length; i++) {
    const expected = Math.max(reference[i]!, EPSILON);
    const actual = Math.max((counts[i] ?? 0) / total, EPSILON);
    sum += (actual - expected) * Math.log(actual / expected);
  }
  return sum;
}

/** Jensen-Shannon distance, base 2, of the two distributions (each normalised to sum 1). */
export function jsDistance(reference: readonly number[], counts: readonly number[]): number {
  const total = totalOf(counts);
  const refTotal = totalOf(reference);
  if (total === 0 || refTotal === 0) return 0;
  let d = 0;
  for (let i = 0; i < reference.length; i++) {
    const p = reference[i]! / refTotal;
    const q = (counts[i] ?? 0) / total;
    const m = (p + q) / 2;
    if (p > 0) d += p * Math.log(p / m);
    if (q > 0) d += q * Math.log(q / m);
  }
  return Math.sqrt(Math.max(0, d / 2) / Math.LN2);
}

/** Largest gap between the cumulative proportions (KS statistic on the bins). */
export function ksStatistic(reference: readonly number[], counts: readonly number[]): number {
  const total = totalOf(counts);
  const refTotal = totalOf(reference);
  if (total === 0 || refTotal === 0) return 0;
  let a = 0;
  let b = 0;
  let max = 0;
  for (let i = 0; i < reference.length; i++) {
    a += reference[i]! / refTotal;
    b += (counts[i] ?? 0) / total;
    max = Math.max(max, Math.abs(a - b));
  }
  return max;
}

/** Wasserstein-1 distance with each bin's mass at `centers[i]` (ascending). */
export function wasserstein(centers: readonly number[], reference: readonly number[], counts: readonly number[]): number {
  const total = totalOf(counts);
  const refTotal = totalOf(reference);
  if (total === 0 || refTotal === 0) return 0;
  let a = 0;
  let b = 0;
  let w = 0;
  for (let i = 0; i < reference.length - 1; i++) {
    a += reference[i]! / refTotal;
    b += (counts[i] ?? 0) / total;
    w += Math.abs(a - b) * (centers[i + 1]! - centers[i]!);
  }
  return w;
}

export interface ChiSquare {
  readonly statistic: number;
  readonly df: number;
  readonly pValue: number;
}

/** Pearson's chi-square test of observed counts against the reference proportions (bins with p = 0 left out). */
export function chiSquare(reference: readonly number[], counts: readonly number[]): ChiSquare {
  let n = 0;
  let refTotal = 0;
  for (let i = 0; i < reference.length; i++) {
    if (reference[i]! > 0) {
      n += counts[i] ?? 0;
      refTotal += reference[i]!;
    }
  }
  let statistic = 0;
  let bins = 0;
  for (let i = 0; i < reference.length; i++) {
    if (!(reference[i]! > 0)) continue;
    bins++;
    const e = (n * reference[i]!) / refTotal;
    const o = counts[i] ?? 0;
    statistic += ((o - e) * (o - e)) / e;
  }
  const df = bins - 1;
  if (n === 0 || df < 1) return { statistic: 0, df: Math.max(df, 0), pValue: 1 };
  return { statistic, df, pValue: gammaQ(df / 2, statistic / 2) };
}

/** ln Gamma(x), x > 0 (Lanczos, g = 7, n = 9; about 15 significant digits). */
function lnGamma(x: number): number {
  const c = [0.99999999999980993, 676.5203681218851, -1259.1392167224028, 771.32342877765313, -176.61502916214059, 12.507343278686905, -0.13857109526572012, 9.9843695780195716e-6, 1.5056327351493116e-7];
  if (x < 0.5) return Math.log(Math.PI / Math.sin(Math.PI * x)) - lnGamma(1 - x);
  const z = x - 1;
  let a = c[0]!;
  const t = z + 7.5;
  for (let i = 1; i < 9; i++) a += c[i]! / (z + i);
  return 0.5 * Math.log(2 * Math.PI) + (z + 0.5) * Math.log(t) - t + Math.log(a);
}

/** Regularised upper incomplete gamma Q(a, x) = Gamma(a, x) / Gamma(a): the chi-square survival function is Q(df/2, x/2). */
export function gammaQ(a: number, x: number): number {
  if (x <= 0) return 1;
  if (!Number.isFinite(x)) return 0;
  const lead = -x + a * Math.log(x) - lnGamma(a);
  if (x < a + 1) {
    // Series for P(a, x).
    let sum = 1 / a;
    let term = sum;
    for (let n = 1; n < 10_000; n++) {
      term *= x / (a + n);
      sum += term;
      if (Math.abs(term) < Math.abs(sum) * 1e-16) break;
    }
    return Math.min(1, Math.max(0, 1 - sum * Math.exp(lead)));
  }
  // Continued fraction for Q(a, x) (modified Lentz).
  const tiny = 1e-300;
  let b = x + 1 - a;
  let c = 1 / tiny;
  let d = 1 / b;
  let h = d;
  for (let i = 1; i < 10_000; i++) {
    const an = -i * (i - a);
    b += 2;
    d = an * d + b;
    if (Math.abs(d) < tiny) d = tiny;
    c = b + an / c;
    if (Math.abs(c) < tiny) c = tiny;
    d = 1 / d;
    const delta = d * c;
    h *= delta;
    if (Math.abs(delta - 1) < 1e-16) break;
  }
  return Math.min(1, Math.max(0, Math.exp(lead) * h));
}

export type DriftStatus = 'ok' | 'warn' | 'drift' | 'low_count' | 'no_reference';

/** Status of a window's PSI: ok (< 0.1), warn (< 0.25), drift; low_count below `minCount` values. */
export function driftStatus(value: number, count: number, minCount: number): DriftStatus {
  if (count < minCount) return 'low_count';
  if (value < 0.1) return 'ok';
  if (value < 0.25) return 'warn';
  return 'drift';
}
