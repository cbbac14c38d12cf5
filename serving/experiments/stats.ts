/**
 * The statistics of an experiment: per-arm estimates with their variances, and the mixture sequential
 * probability ratio test (mSPRT) on the treatment-minus-control difference, whose p-values and
 * confidence intervals are valid at every look (Johari, Koomen, Pekelis & Walsh, "Peeking at A/B Tests:
 * Why it matters, and what to do about it", KDD 2017; Johari, Koomen, Pekelis & Walsh, "Always Valid
 * Inference: Continuous Monitoring of A/B Tests", Operations Research 70(3), 2022). Looking after every
 * batch of labels does not raise the false-positive rate above alpha, unlike a fixed-sample z-test
 * repeated at every look.
 *
 * With the estimate d of the difference, its variance V (the sum of the arms' variances of their
 * means) and a normal mixture N(0, tau^2) over the effect, the mixture likelihood ratio against no
 * difference is
 *
 *   Lambda = sqrt(V / (V + tau^2)) * exp(tau^2 d^2 / (2 V (V + tau^2)))
 *
 * and the test rejects when Lambda >= 1/alpha; the always-valid p-value is min(1, 1/Lambda), and the
 * always-valid (1 - alpha) interval is d +- sqrt(V (V + tau^2) / tau^2 * (ln((V + tau^2) / V) - 2 ln alpha)).
 * The variances are plug-in estimates (normal approximation), valid as samples grow, so a decision also
 * needs min_samples per arm.
 */

/** One arm's estimate of the metric: its value, the variance of that value, and the samples behind it. */
export interface Estimate {
  readonly value: number;
  readonly variance: number;
  readonly samples: number;
}

/**
 * A proportion (precision at block, CTR, conversion): successes of n. The variance uses the estimate
 * shrunk half a success towards one half (Agresti-Coull style), so 0 of n or n of n never claims
 * certainty.
 */
export function proportion(successes: number, n: number): Estimate | null {
  if (!(n > 0)) return null;
  const shrunk = (successes + 0.5) / (n + 1);
  return { value: successes / n, variance: (shrunk * (1 - shrunk)) / n, samples: n };
}

/** Counts of scores by label: the positives' and the negatives' scores (rounded), each with its count. */
export interface ScoreCounts {
  readonly score: number;
  readonly positives: number;
  readonly negatives: number;
}

/**
 * The area under the ROC curve from scores grouped by value (ties count one half: the Mann-Whitney U
 * statistic over positives times negatives), with the Hanley & McNeil (1982) variance. Null unless both
 * classes are present.
 */
export function auc(counts: readonly ScoreCounts[]): Estimate | null {
  const sorted = [...counts].sort((a, b) => a.score - b.score);
  let nPos = 0;
  let nNeg = 0;
  for (const c of sorted) {
    nPos += c.positives;
    nNeg += c.negatives;
  }
  if (nPos === 0 || nNeg === 0) return null;
  let negativesBelow = 0;
  let u = 0;
  for (const c of sorted) {
    u += c.positives * (negativesBelow + c.negatives / 2);
    negativesBelow += c.negatives;
  }
  const a = u / (nPos * nNeg);
  const q1 = a / (2 - a);
  const q2 = (2 * a * a) / (1 + a);
  const variance = Math.max((a * (1 - a) + (nPos - 1) * (q1 - a * a) + (nNeg - 1) * (q2 - a * a)) / (nPos * nNeg), 1e-12);
  return { value: a, variance, samples: nPos + nNeg };
}

export interface SequentialResult {
  /** Treatment minus control. */
  readonly difference: number;
  /** The always-valid (1 - alpha) interval of the difference. */
  readonly interval: readonly [number, number];
  readonly lambda: number;
  /** min(1, 1/Lambda): valid at this look whatever looks came before. */
  readonly pValue: number;
  readonly significant: boolean;
}

/** The mSPRT on treatment - control (see the module's comment). */
export function msprt(control: Estimate, treatment: Estimate, alpha: number, mixtureSd: number): SequentialResult {
  const d = treatment.value - control.value;
  const v = Math.max(control.variance + treatment.variance, 1e-12);
  const t2 = mixtureSd * mixtureSd;
  const logLambda = 0.5 * Math.log(v / (v + t2)) + (t2 * d * d) / (2 * v * (v + t2));
  const lambda = Math.exp(Math.min(logLambda, 700));
  return { difference: d, interval: confidenceSequence(d, v, alpha, mixtureSd), lambda, pValue: Math.min(1, 1 / lambda), significant: logLambda >= -Math.log(alpha) };
}

/** The always-valid (1 - alpha) interval around an estimate with variance v (the same mixture). */
export function confidenceSequence(value: number, variance: number, alpha: number, mixtureSd: number): [number, number] {
  const v = Math.max(variance, 1e-12);
  const t2 = mixtureSd * mixtureSd;
  const half = Math.sqrt(((v * (v + t2)) / t2) * (Math.log((v + t2) / v) - 2 * Math.log(alpha)));
  return [value - half, value + half];
}

/** A fixed-sample normal interval (for one window's estimate, which is not a sequential statement). */
export function normalInterval(e: Estimate, z = 1.959964): [number, number] {
  const half = z * Math.sqrt(e.variance);
  return [e.value - half, e.value + half];
}
