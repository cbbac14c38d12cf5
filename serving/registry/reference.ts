import { z } from 'zod';
import type { ModelVersion } from '../../schemas/types.generated.js';
import { FabricError } from '../../topology/errors.js';

/**
 * Reference profiles: what a model input (or the score) looked like when the model was made, per
 * variable, stored with the registry entry (`reference_json`). Drift is measured against them.
 *
 * The bin convention, the same in training (scripts/train_common.py) and online (`binOf`):
 * right-closed bins. With inner edges e[0] < ... < e[k-1] there are k+1 bins: bin 0 holds
 * x <= e[0], bin i holds e[i-1] < x <= e[i], bin k holds x > e[k-1].
 *
 * Numeric profiles (`numericProfile`), from the finite values (nulls, NaN and infinities count as
 * missing), sorted ascending as s[0..n-1], with `bins` wanted (default 10) and a minimum count per
 * bin `minCount` (default max(1, ceil(n / 100))):
 * 1. quantile edges: s[ceil(i n / bins) - 1] for i = 1..bins-1 (the inverted-CDF quantile: a data
 *    value, so the same in every language), duplicates removed;
 * 2. a heavy value v (at least n / bins of the values equal to it) gets a bin of its own: v and the
 *    largest value below it become edges, so bin (below, v] holds v alone. A large mass on one value
 *    (a count that is mostly 0, a one-hot input) thus sits in its own bin, and values beside it are
 *    not mixed into that bin, where any shift of the mass would read as drift;
 * 3. bins holding fewer than `minCount` reference values are merged, the first such bin (lowest
 *    index) with its smaller neighbour (the left one on a tie, the only one at the ends), until none
 *    is left or one bin remains. An empty bin never reaches the profile.
 * `centers` are the mean of the reference values in each bin (what the Wasserstein distance puts each
 * bin's mass at); `min`/`max` bound the values seen (a live value outside them is out of range).
 *
 * Categorical profiles (`categoricalProfile`): the categories holding at least `minCount` values, in
 * descending count then ascending name, each with its proportion, plus one last proportion for every
 * other value (rare in the reference, or unseen); a live value not among `categories` is unseen.
 *
 * Profiles made before v2 (`{ edges, proportions, mean }`, deciles with the same right-closed
 * convention) still parse as numeric profiles; without `centers` their Wasserstein distance is not
 * reported.
 */
export const BIN_CONVENTION = 'right-closed: bin 0 holds x <= edges[0], bin i holds edges[i-1] < x <= edges[i], the last bin x > edges[-1]';

const numeric = z
  .object({
    kind: z.literal('numeric').optional(),
    edges: z.array(z.number()),
    proportions: z.array(z.number().min(0)).min(1),
    counts: z.array(z.number().int().min(0)).optional(),
    centers: z.array(z.number()).optional(),
    min: z.number().optional(),
    max: z.number().optional(),
    mean: z.number().optional(),
    std: z.number().optional(),
    count: z.number().int().min(0).optional(),
    missing: z.number().min(0).max(1).optional(),
  })
  .refine((p) => p.proportions.length === p.edges.length + 1, 'proportions must have one more entry than edges')
  .refine((p) => p.edges.every((e, i) => i === 0 || e > p.edges[i - 1]!), 'edges must be strictly ascending')
  .refine((p) => !p.centers || p.centers.length === p.proportions.length, 'centers must have one entry per bin')
  .refine((p) => !p.counts || p.counts.length === p.proportions.length, 'counts must have one entry per bin');

const categorical = z
  .object({
    kind: z.literal('categorical'),
    categories: z.array(z.string()),
    proportions: z.array(z.number().min(0)).min(1),
    counts: z.array(z.number().int().min(0)).optional(),
    count: z.number().int().min(0).optional(),
    missing: z.number().min(0).max(1).optional(),
  })
  .refine((p) => p.proportions.length === p.categories.length + 1, 'proportions must have one entry per category plus one for the others')
  .refine((p) => new Set(p.categories).size === p.categories.length, 'categories must be distinct');

const profile = z.union([categorical, numeric]);

export type NumericProfile = z.infer<typeof numeric>;
export type CategoricalProfile = z.infer<typeof categorical>;
export type ReferenceProfile = NumericProfile | CategoricalProfile;
export type References = Readonly<Record<string, ReferenceProfile>>;

export function isCategorical(p: ReferenceProfile): p is CategoricalProfile {
  return p.kind === 'categorical';
}

/** Number of bins of a profile (numeric bins, or categories plus the others). */
export function binCount(p: ReferenceProfile): number {
  return p.proportions.length;
}

/** Index of the bin `value` falls in, right-closed (see BIN_CONVENTION): the number of edges strictly below it. */
export function binOf(edges: readonly number[], value: number): number {
  let lo = 0;
  let hi = edges.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (edges[mid]! < value) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/** Index of a category's bin; the last bin (others) for a value not among the categories. */
export function categoryBin(p: CategoricalProfile, value: string): number {
  const i = p.categories.indexOf(value);
  return i < 0 ? p.categories.length : i;
}

export interface ProfileOptions {
  /** Bins wanted before merging (numeric). Default 10. */
  readonly bins?: number;
  /** Minimum reference values per bin (numeric) or per named category. Default max(1, ceil(n / 100)). */
  readonly minCount?: number;
}

function minCountOf(n: number, options: ProfileOptions): number {
  const m = options.minCount ?? Math.max(1, Math.ceil(n / 100));
  if (!(Number.isSafeInteger(m) && m >= 1)) throw new FabricError('FABRIC_CONFIG_INVALID', `profile minCount must be a positive integer, got ${m}`);
  return m;
}

const round = (x: number): number => Math.round(x * 1e12) / 1e12;

/** The numeric profile of `values` (see the module comment for the algorithm). */
export function numericProfile(values: readonly (number | null | undefined)[], options: ProfileOptions = {}): NumericProfile {
  const bins = options.bins ?? 10;
  if (!(Number.isSafeInteger(bins) && bins >= 2)) throw new FabricError('FABRIC_CONFIG_INVALID', `profile bins must be an integer >= 2, got ${bins}`);
  const s: number[] = [];
  for (const v of values) if (typeof v === 'number' && Number.isFinite(v)) s.push(v);
  s.sort((a, b) => a - b);
  const n = s.length;
  const missing = values.length === 0 ? 0 : round((values.length - n) / values.length);
  if (n === 0) return { kind: 'numeric', edges: [], proportions: [1], counts: [0], centers: [0], count: 0, missing };
  const minCount = minCountOf(n, options);

  const candidates = new Set<number>();
  for (let i = 1; i < bins; i++) candidates.add(s[Math.floor((i * n + bins - 1) / bins) - 1]!);
  // Heavy values: at least n / bins equal values (count * bins >= n, in integers).
  for (let i = 0; i < n; ) {
    let j = i;
    while (j < n && s[j] === s[i]) j++;
    if ((j - i) * bins >= n) {
      candidates.add(s[i]!);
      if (i > 0) candidates.add(s[i - 1]!);
    }
    i = j;
  }
  const edges = [...candidates].sort((a, b) => a - b);
  // The last edge would leave the top bin empty when it is the maximum: the merge below removes it.
  const counts = new Array<number>(edges.length + 1).fill(0);
  for (const x of s) counts[binOf(edges, x)]!++;
  while (counts.length > 1) {
    const i = counts.findIndex((c) => c < minCount);
    if (i < 0) break;
    const j = i === 0 ? 1 : i === counts.length - 1 ? i - 1 : counts[i - 1]! <= counts[i + 1]! ? i - 1 : i + 1;
    const lo = Math.min(i, j);
    counts[lo]! += counts[lo + 1]!;
    counts.splice(lo + 1, 1);
    edges.splice(lo, 1);
  }
  // Sums in ascending order, one bin after the other: the same floating result as the Python side.
  const sums = new Array<number>(counts.length).fill(0);
  let total = 0;
  for (const x of s) {
    sums[binOf(edges, x)]! += x;
    total += x;
  }
  const mean = total / n;
  let sq = 0;
  for (const x of s) sq += (x - mean) * (x - mean);
  return {
    kind: 'numeric',
    edges,
    proportions: counts.map((c) => round(c / n)),
    counts,
    centers: sums.map((sum, i) => sum / counts[i]!),
    min: s[0]!,
    max: s[n - 1]!,
    mean,
    std: Math.sqrt(sq / n),
    count: n,
    missing,
  };
}

/** The categorical profile of `values` (nulls are missing). */
export function categoricalProfile(values: readonly (string | null | undefined)[], options: ProfileOptions = {}): CategoricalProfile {
  const freq = new Map<string, number>();
  let n = 0;
  for (const v of values) {
    if (typeof v !== 'string') continue;
    n++;
    freq.set(v, (freq.get(v) ?? 0) + 1);
  }
  const missing = values.length === 0 ? 0 : round((values.length - n) / values.length);
  const minCount = minCountOf(n, options);
  const named = [...freq.entries()].filter(([, c]) => c >= minCount).sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
  const other = n - named.reduce((s, [, c]) => s + c, 0);
  const counts = [...named.map(([, c]) => c), other];
  return { kind: 'categorical', categories: named.map(([k]) => k), proportions: counts.map((c) => (n ? round(c / n) : 0)), counts, count: n, missing };
}

/** The reference profiles an entry carries (reference_json), by variable; `{}` when it has none. */
export function referenceOf(entry: Pick<ModelVersion, 'name' | 'version' | 'reference_json'>): References {
  let raw: unknown;
  try {
    raw = JSON.parse(entry.reference_json || '{}');
  } catch (err) {
    throw new FabricError('FABRIC_MODEL_INVALID', `model ${entry.name}@${entry.version}: reference profile is not JSON: ${(err as Error).message}`);
  }
  const parsed = z.record(profile).safeParse(raw);
  if (!parsed.success) throw new FabricError('FABRIC_MODEL_INVALID', `model ${entry.name}@${entry.version}: reference profile is invalid: ${parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ')}`);
  return Object.freeze(parsed.data);
}
