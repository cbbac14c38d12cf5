import type { DriftVariablePartial, DriftVersionPartial, DriftWindowPartial, Prediction } from '../../schemas/types.generated.js';
import { binCount, binOf, categoryBin, isCategorical, type ReferenceProfile, type References } from '../../serving/registry/reference.js';

/**
 * The aggregates drift keeps per pane (a hop-long slice of event time), shared by the per-partition
 * processor (which folds predictions into them) and the merge (which adds partitions' panes up into
 * windows). They are the Avro `DriftWindowPartial` as is, per model version and variable: integers
 * (bin counts, n, missing, ...) add up exactly in any order, and the one floating sum is always added
 * in a fixed order (records in partition order, then partitions by number, then panes by time), so
 * the result never depends on batching or interleaving. State is O(bins) per pane, version and
 * variable, never O(events).
 */
export type PaneAggregate = DriftWindowPartial;
export type VersionAggregate = DriftVersionPartial;
export type VariableAggregate = DriftVariablePartial;
export type { References };

/** The reference profiles of a model version; null when the version has none (or is unknown). */
export type ReferenceLookup = (version: string) => References | null;

/** Start of the pane `ts` falls in: panes are [start, start + paneMs). */
export function paneStartOf(ts: number, paneMs: number): number {
  return Math.floor(ts / paneMs) * paneMs;
}

export function emptyPane(start: number, end: number): PaneAggregate {
  return { window_start: start, window_end: end, count: 0, late: 0, closed: false, versions: {} };
}

export function emptyVariable(profile: ReferenceProfile | undefined): VariableAggregate {
  return { bins: new Array<number>(profile ? binCount(profile) : 0).fill(0), sum: 0, n: 0, missing: 0, invalid: 0, out_of_range: 0, unseen: 0 };
}

/** Adds one value of one variable: binned when it fits the profile, else counted as missing or invalid. */
export function foldValue(agg: VariableAggregate, profile: ReferenceProfile | undefined, x: unknown): void {
  if (x === null || x === undefined) {
    agg.missing++;
    return;
  }
  if (profile && isCategorical(profile)) {
    if (typeof x !== 'string' && !(typeof x === 'number' && Number.isFinite(x))) {
      agg.invalid++;
      return;
    }
    const bin = categoryBin(profile, String(x));
    if (bin === profile.categories.length) agg.unseen++;
    agg.bins[bin]!++;
    agg.n++;
    return;
  }
  if (typeof x !== 'number' || !Number.isFinite(x)) {
    agg.invalid++;
    return;
  }
  if (profile) {
    agg.bins[binOf(profile.edges, x)]!++;
    if ((profile.min !== undefined && x < profile.min) || (profile.max !== undefined && x > profile.max)) agg.out_of_range++;
  }
  agg.sum += x;
  agg.n++;
}

/** A profiled variable with what folding its values needs, resolved once per profile. */
interface Slot {
  readonly name: string;
  readonly profile: ReferenceProfile;
  /** Numeric profiles: the edges and bounds (null for categorical). */
  readonly edges: readonly number[] | null;
  readonly min: number;
  readonly max: number;
}

const slotsOf = new WeakMap<References, readonly Slot[]>();

function slots(reference: References): readonly Slot[] {
  let s = slotsOf.get(reference);
  if (!s) {
    s = Object.entries(reference).map(([name, profile]) => (isCategorical(profile) ? { name, profile, edges: null, min: -Infinity, max: Infinity } : { name, profile, edges: profile.edges, min: profile.min ?? -Infinity, max: profile.max ?? Infinity }));
    slotsOf.set(reference, s);
  }
  return s;
}

/** What drift measures of a prediction (or of one item of a recommendation). */
export type DriftUnit = Pick<Prediction, 'version' | 'score' | 'features'>;

/**
 * Adds one unit to a pane: its version's count, and its value of every variable measured for the
 * version: the profile's, the score, and every input it carries (the ones without a profile too).
 */
export function foldPrediction(pane: PaneAggregate, p: DriftUnit, reference: References | null): void {
  pane.count++;
  const version = (pane.versions[p.version] ??= { count: 0, variables: {} });
  version.count++;
  const vars = version.variables;
  const features = p.features;
  // The hot path: the profile's variables, with their edges at hand; then the score and any input
  // without a profile (none when the inputs are the profile's: counted, not looked up one by one).
  let profiledInputs = 0;
  let scoreProfiled = false;
  for (const slot of reference ? slots(reference) : []) {
    const isScore = slot.name === 'score';
    if (isScore) scoreProfiled = true;
    const x = isScore ? p.score : features[slot.name];
    if (!isScore && x !== undefined) profiledInputs++;
    const agg = (vars[slot.name] ??= emptyVariable(slot.profile));
    if (slot.edges !== null && typeof x === 'number' && Number.isFinite(x)) {
      agg.bins[binOf(slot.edges, x)]!++;
      if (x < slot.min || x > slot.max) agg.out_of_range++;
      agg.sum += x;
      agg.n++;
    } else foldValue(agg, slot.profile, x);
  }
  if (!scoreProfiled) foldValue((vars.score ??= emptyVariable(undefined)), undefined, p.score);
  let inputs = 0;
  for (const _ in features) inputs++;
  if (inputs === profiledInputs) return;
  for (const v in features) {
    if (reference?.[v] || v === 'score') continue;
    foldValue((vars[v] ??= emptyVariable(undefined)), undefined, features[v]);
  }
}

function addVariable(into: VariableAggregate, part: VariableAggregate): void {
  for (let i = 0; i < into.bins.length; i++) into.bins[i]! += part.bins[i] ?? 0;
  into.sum += part.sum;
  into.n += part.n;
  into.missing += part.missing;
  into.invalid += part.invalid;
  into.out_of_range += part.out_of_range;
  into.unseen += part.unseen;
}

/**
 * Adds `part` into `into` (panes checked with `misfit` first). Callers add in one fixed order
 * (partitions ascending, then panes by time) so the floating sums are always added the same way.
 */
export function addPane(into: PaneAggregate, part: PaneAggregate, reference: ReferenceLookup): void {
  into.count += part.count;
  into.late += part.late;
  for (const version of Object.keys(part.versions).sort()) {
    const p = part.versions[version]!;
    const mine = (into.versions[version] ??= { count: 0, variables: {} });
    mine.count += p.count;
    const ref = reference(version);
    for (const v of Object.keys(p.variables).sort()) addVariable((mine.variables[v] ??= emptyVariable(ref?.[v])), p.variables[v]!);
  }
}

/** Why a partition's pane cannot be merged (against the versions' profiles), or null when it can. */
export function misfit(part: PaneAggregate, paneMs: number | undefined, reference: ReferenceLookup): string | null {
  if (!Number.isSafeInteger(part.window_start) || !Number.isSafeInteger(part.window_end) || part.window_end <= part.window_start) return `pane [${part.window_start}, ${part.window_end}) is not a pane`;
  if (paneMs !== undefined && (part.window_end - part.window_start !== paneMs || part.window_start % paneMs !== 0)) return `pane [${part.window_start}, ${part.window_end}) is not a ${paneMs} ms pane`;
  const counts = [part.count, part.late];
  for (const [version, agg] of Object.entries(part.versions)) {
    counts.push(agg.count);
    const ref = reference(version);
    for (const [v, p] of Object.entries(agg.variables)) {
      const profile = ref?.[v];
      const bins = profile ? binCount(profile) : 0;
      if (p.bins.length !== bins) return `variable ${v} of version ${version} in pane ${part.window_start} has ${p.bins.length} bins, its reference has ${bins}`;
      if (!Number.isFinite(p.sum)) return `variable ${v} of version ${version} in pane ${part.window_start} has a non-finite sum`;
      counts.push(...p.bins, p.n, p.missing, p.invalid, p.out_of_range, p.unseen);
    }
  }
  if (counts.some((c) => !Number.isSafeInteger(c) || c < 0)) return `pane ${part.window_start} has invalid counts`;
  return null;
}
