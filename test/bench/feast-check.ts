/**
 * One-off check of the Feast peer reference (not part of the vitest suite):
 *
 *   npx tsx test/bench/feast-check.ts [--labels 100000] [--history 50000] [--entities 2000] [--seed 7]
 *
 * Synthetic feature history (entities x ~history rows over 2 days, one null-heavy column, some entities
 * with no history at all) and labels at random instants (plus some exactly on a history event, and some
 * repeated), joined by Feast's get_historical_features and by a plain as-of join here; every cell must
 * match. Prints Feast's rows/s. Exits 1 on a mismatch, 0 with a note when Feast is skipped.
 */
import { feastReference, type FeastHistoryRow } from './feast.js';
import { seededUniform } from '../shared/seeded.js';

function flag(name: string, def: number): number {
  const i = process.argv.indexOf(name);
  const v = i >= 0 ? Number(process.argv[i + 1]) : def;
  if (!Number.isSafeInteger(v) || v < 0) throw new Error(`${name} must be a non-negative integer`);
  return v;
}

const rng = seededUniform;

const FEATURES = ['txn_count', 'amount_sum', 'last_amount', 'sparse_score'];
const DAY = 86_400_000;

function asOf(history: FeastHistoryRow[], labels: { entity: string; tsMs: number }[], width: number): (number | null)[][] {
  const by = new Map<string, FeastHistoryRow[]>();
  for (const h of history) {
    let a = by.get(h.entity);
    if (!a) by.set(h.entity, (a = []));
    a.push(h);
  }
  for (const a of by.values()) a.sort((x, y) => x.tsMs - y.tsMs);
  const none = (): (number | null)[] => new Array<number | null>(width).fill(null);
  return labels.map((l) => {
    const a = by.get(l.entity);
    if (!a) return none();
    let lo = 0;
    let hi = a.length; // first index with ts > label
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (a[mid]!.tsMs <= l.tsMs) lo = mid + 1;
      else hi = mid;
    }
    return lo === 0 ? none() : [...a[lo - 1]!.values];
  });
}

async function main(): Promise<void> {
  const nLabels = flag('--labels', 100_000);
  const nHistory = flag('--history', 50_000);
  const nEntities = flag('--entities', 2_000);
  const rand = rng(flag('--seed', 7));
  const t0 = Date.UTC(2025, 0, 6);
  const entity = (i: number): string => `cust-${String(i).padStart(5, '0')}`;

  // History: 97.5% of the entities have events; values are running per-entity aggregates.
  const withHistory = Math.max(1, Math.floor(nEntities * 0.975));
  const seen = new Set<string>();
  const events: { e: number; ts: number }[] = [];
  while (events.length < nHistory) {
    const e = Math.floor(rand() * withHistory);
    const ts = t0 + Math.floor(rand() * 2 * DAY);
    const k = `${e}@${ts}`;
    if (seen.has(k)) continue; // one row per (entity, ts): the as-of answer is then unambiguous
    seen.add(k);
    events.push({ e, ts });
  }
  events.sort((a, b) => a.ts - b.ts);
  const state = new Map<number, { count: number; sum: number }>();
  const history: FeastHistoryRow[] = events.map(({ e, ts }) => {
    const s = state.get(e) ?? { count: 0, sum: 0 };
    const amount = Math.round(rand() * 500_00) / 100;
    s.count += 1;
    s.sum = Math.round((s.sum + amount) * 100) / 100;
    state.set(e, s);
    const sparse = rand() < 0.3 ? rand() * 2 - 1 : null;
    return { entity: entity(e), tsMs: ts, values: [s.count, s.sum, amount, sparse] };
  });
  // Shuffle so nothing relies on the input being time-ordered.
  for (let i = history.length - 1; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1));
    [history[i], history[j]] = [history[j]!, history[i]!];
  }

  // Labels: mostly random instants over the 2 days +-1h; 2% exactly on a history event; 1% repeats.
  const labels: { entity: string; tsMs: number }[] = [];
  for (let i = 0; i < nLabels; i++) {
    const r = rand();
    if (r < 0.02 && history.length > 0) {
      const h = history[Math.floor(rand() * history.length)]!;
      labels.push({ entity: h.entity, tsMs: h.tsMs });
    } else if (r < 0.03 && labels.length > 0) {
      labels.push({ ...labels[Math.floor(rand() * labels.length)]! });
    } else {
      labels.push({ entity: entity(Math.floor(rand() * nEntities)), tsMs: t0 - 3_600_000 + Math.floor(rand() * (2 * DAY + 7_200_000)) });
    }
  }

  const tj = performance.now();
  const want = asOf(history, labels, FEATURES.length);
  const tsSeconds = (performance.now() - tj) / 1000;

  const tf = performance.now();
  const got = await feastReference({ history, featureNames: FEATURES, labels });
  const wallSeconds = (performance.now() - tf) / 1000;
  if ('skipped' in got) {
    console.log(`feast skipped: ${got.skipped}`);
    return;
  }

  let bad = 0;
  let nullRows = 0;
  for (let i = 0; i < labels.length; i++) {
    const w = want[i]!;
    const g = got.out[i]!;
    if (w.every((v) => v === null)) nullRows++;
    for (let k = 0; k < FEATURES.length; k++) {
      if (w[k] !== g[k]) {
        if (bad < 10) console.error(`mismatch row ${i} ${labels[i]!.entity}@${labels[i]!.tsMs} ${FEATURES[k]}: as-of ${w[k]} feast ${g[k]}`);
        bad++;
      }
    }
  }
  const summary = {
    feastVersion: got.version,
    labels: labels.length,
    historyRows: history.length,
    entities: nEntities,
    mismatchedCells: bad,
    asOfNullRows: nullRows,
    feastRowsReturned: got.feastRows,
    duplicateLabels: got.duplicateLabels,
    labelsMissingFromFeast: got.labelsMissingFromFeast,
    feastSeconds: +got.seconds.toFixed(3),
    feastRowsPerSec: Math.round(got.rowsPerSec),
    feastPrepareSeconds: +got.prepareSeconds.toFixed(3),
    feastApplySeconds: +got.applySeconds.toFixed(3),
    feastImportSeconds: +got.importSeconds.toFixed(3),
    feastWallSeconds: +wallSeconds.toFixed(3),
    tsAsOfSeconds: +tsSeconds.toFixed(3),
    tsAsOfRowsPerSec: Math.round(labels.length / tsSeconds),
  };
  console.log(JSON.stringify(summary, null, 2));
  if (bad > 0) {
    console.error(`FAIL: ${bad} cells differ`);
    process.exit(1);
  }
  console.log(`OK: Feast ${got.version} matches the as-of join on all ${labels.length} labels; ${Math.round(got.rowsPerSec)} rows/s`);
}

main().catch((err: unknown) => {
  console.error(err instanceof Error ? err.stack : String(err));
  process.exit(1);
});
