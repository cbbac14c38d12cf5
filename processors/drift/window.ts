import type { DriftVariablePartial, DriftWindowPartial, Prediction } from '../../schemas/types.generated.js';
import type { ReferenceProfile } from '../../serving/registry/reference.js';
import { binOf } from './psi.js';

/**
 * The aggregates drift keeps per tumbling event-time window, shared by the per-partition processor
 * (which folds predictions into them) and the merge (which adds partitions' aggregates up). They are
 * the Avro `DriftWindowPartial` as is: integers (bin counts, n) add up exactly in any order, and the
 * one floating sum is always added in a fixed order (records in partition order, then partitions by
 * number), so the result never depends on batching or interleaving.
 */
export type WindowAggregate = DriftWindowPartial;
export type VariableAggregate = DriftVariablePartial;

export type References = Readonly<Record<string, ReferenceProfile>>;

/** Variables in the one order every output uses. */
export function variablesOf(reference: References): string[] {
  return Object.keys(reference).sort();
}

/** Start of the tumbling window `ts` falls in: windows are [start, start + windowMs). */
export function windowStartOf(ts: number, windowMs: number): number {
  return Math.floor(ts / windowMs) * windowMs;
}

export function emptyWindow(start: number, end: number, reference: References): WindowAggregate {
  const variables: Record<string, VariableAggregate> = {};
  for (const v of variablesOf(reference)) variables[v] = { bins: new Array<number>(reference[v]!.proportions.length).fill(0), sum: 0, n: 0 };
  return { window_start: start, window_end: end, count: 0, late: 0, variables };
}

function valueOf(p: Prediction, variable: string): number | null {
  if (variable === 'score') return p.score;
  const v = p.features[variable];
  return v === undefined ? null : v;
}

/** Adds one prediction: count, and per variable with a finite value its bin, sum and n. */
export function foldPrediction(w: WindowAggregate, p: Prediction, reference: References): void {
  w.count++;
  for (const v of variablesOf(reference)) {
    const x = valueOf(p, v);
    if (x === null || !Number.isFinite(x)) continue;
    const agg = w.variables[v]!;
    agg.bins[binOf(reference[v]!.edges, x)]!++;
    agg.sum += x;
    agg.n++;
  }
}

/**
 * Adds `part` into `into` (same window; check it with `misfit` first). Callers add partitions in
 * ascending partition order so the floating sums are added in one fixed order.
 */
export function mergeWindow(into: WindowAggregate, part: WindowAggregate): void {
  into.count += part.count;
  into.late += part.late;
  for (const [v, agg] of Object.entries(into.variables)) {
    const p = part.variables[v];
    if (!p) continue;
    for (let i = 0; i < agg.bins.length; i++) agg.bins[i]! += p.bins[i] ?? 0;
    agg.sum += p.sum;
    agg.n += p.n;
  }
}

/** Why a partial window cannot be merged against `reference`, or null when it can. */
export function misfit(part: WindowAggregate, windowMs: number | undefined, reference: References): string | null {
  if (!Number.isSafeInteger(part.window_start) || !Number.isSafeInteger(part.window_end) || part.window_end <= part.window_start) return `window [${part.window_start}, ${part.window_end}) is not a window`;
  if (windowMs !== undefined && (part.window_end - part.window_start !== windowMs || part.window_start % windowMs !== 0)) return `window [${part.window_start}, ${part.window_end}) is not a ${windowMs} ms tumbling window`;
  if (!Number.isSafeInteger(part.count) || part.count < 0 || !Number.isSafeInteger(part.late) || part.late < 0) return `window ${part.window_start} has invalid counts`;
  for (const v of variablesOf(reference)) {
    const p = part.variables[v];
    if (!p) continue;
    const bins = reference[v]!.proportions.length;
    if (p.bins.length !== bins) return `variable ${v} of window ${part.window_start} has ${p.bins.length} bins, the reference has ${bins}`;
    if (!Number.isFinite(p.sum) || p.bins.some((b) => !Number.isSafeInteger(b) || b < 0)) return `variable ${v} of window ${part.window_start} has invalid aggregates`;
  }
  return null;
}
