import type { ReferenceProfile } from '../../serving/registry/reference.js';

/** Index of the bin `value` falls in, given ascending inner edges (n edges -> n+1 bins). */
export function binOf(edges: readonly number[], value: number): number {
  let lo = 0;
  let hi = edges.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (value < edges[mid]!) hi = mid;
    else lo = mid + 1;
  }
  return lo;
}

/** Proportions below this are floored so an empty bin gives a large but finite PSI. */
const EPSILON = 1e-4;

/** Population stability index of observed bin counts against the reference proportions. */
export function psi(reference: ReferenceProfile, counts: readonly number[]): number {
  const total = counts.reduce((a, b) => a + b, 0);
  if (total === 0) return 0;
  let sum = 0;
  reference.proportions.forEach((expectedRaw, i) => {
    const expected = Math.max(expectedRaw, EPSILON);
    const actual = Math.max((counts[i] ?? 0) / total, EPSILON);
    sum += (actual - expected) * Math.log(actual / expected);
  });
  return Math.round(sum * 1e6) / 1e6;
}

export function driftStatus(value: number, count: number, minCount: number): 'ok' | 'warn' | 'drift' | 'low_count' {
  if (count < minCount) return 'low_count';
  if (value < 0.1) return 'ok';
  if (value < 0.25) return 'warn';
  return 'drift';
}
