/**
 * Window metrics at scale beside Evidently's data drift preset, on the same data in the same run: a
 * reference of 40,000 rows and 1,000,000 current rows of 17 numeric columns (lognormal, normal, count
 * and binary, as the fraud inputs are), cut into 10 windows, three columns shifted in the last five.
 * Ours: the reference profiles, then every value of every window folded into its bins as the drift
 * stage does (`foldValue`) and the window's measures (PSI, Jensen-Shannon, KS, Wasserstein). Evidently:
 * `DataDriftPreset()` (its default tests) on each window against the reference, run by
 * scripts/evidently_reference.py in .stack/evidently-venv (scripts/setup-peer-venv.sh evidently). Rows
 * per second of each, CSV reading excluded; the PSI of the shifted columns side by side (the binnings
 * differ: ours are the reference's deciles, Evidently's its own).
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { variableMetric } from '../../processors/drift/merge.js';
import { emptyVariable, foldValue } from '../../processors/drift/window.js';
import { numericProfile } from '../../serving/registry/reference.js';
import { Rng } from '../../sim/rng.js';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const VENV_PYTHON = join(ROOT, '.stack', 'evidently-venv', 'bin', 'python');

export interface EvidentlySizes {
  readonly reference: number;
  readonly current: number;
  readonly windows: number;
}

export interface EvidentlyResult {
  readonly oursRowsPerSec: number;
  readonly evidentlyRowsPerSec: number;
  readonly evidentlyPsiRowsPerSec: number;
  /** PSI of the shifted columns in the last window: ours, Evidently's. */
  readonly psi: Record<string, { ours: number; evidently: number }>;
}

const COLUMNS = 17;
const SHIFTED = [0, 5, 9];

function columns(rng: Rng, n: number, shift: boolean): Float64Array[] {
  return Array.from({ length: COLUMNS }, (_, c) => {
    const out = new Float64Array(n);
    const moved = shift && SHIFTED.includes(c);
    for (let i = 0; i < n; i++) {
      const kind = c % 4;
      out[i] = kind === 0 ? Math.round(rng.lognormal(4 + (moved ? 0.9 : 0), 1.1) * 100) / 100 : kind === 1 ? Math.round((rng.normal() * 15 + 100 + (moved ? 10 : 0)) * 1e4) / 1e4 : kind === 2 ? Math.floor(rng.exponential(1 / (3 + (moved ? 3 : 0)))) : rng.bernoulli(moved ? 0.35 : 0.1) ? 1 : 0;
    }
    return out;
  });
}

function writeCsv(path: string, cols: Float64Array[]): void {
  const n = cols[0]!.length;
  const lines: string[] = [cols.map((_, c) => `c${c}`).join(',')];
  for (let i = 0; i < n; i++) lines.push(cols.map((col) => String(col[i])).join(','));
  writeFileSync(path, `${lines.join('\n')}\n`);
}

/** Installs the Evidently venv when missing; returns why it could not, or null. */
function ensureVenv(): string | null {
  try {
    execFileSync('bash', [join(ROOT, 'scripts', 'setup-peer-venv.sh'), 'evidently'], { stdio: ['ignore', 'ignore', 'pipe'], timeout: 900_000 });
  } catch (err) {
    return `evidently does not install here: ${String((err as { stderr?: Buffer }).stderr ?? (err as Error).message).trim().split('\n').at(-1)}`;
  }
  return existsSync(VENV_PYTHON) ? null : 'evidently venv missing after install';
}

export async function evidentlyComparison(sizes: EvidentlySizes): Promise<EvidentlyResult> {
  const why = ensureVenv();
  if (why) throw new Error(why);
  const dir = join(ROOT, '.stack', 'bench', 'evidently');
  mkdirSync(dir, { recursive: true });
  const rng = new Rng(20_261_122);
  const reference = columns(rng, sizes.reference, false);
  const half = Math.floor(sizes.current / 2);
  const first = columns(rng, half, false);
  const second = columns(rng, sizes.current - half, true);
  const current = first.map((col, c) => {
    const all = new Float64Array(sizes.current);
    all.set(col, 0);
    all.set(second[c]!, half);
    return all;
  });
  writeCsv(join(dir, 'reference.csv'), reference);
  writeCsv(join(dir, 'current.csv'), current);

  // Ours: profiles once, then every window folded and measured.
  const profiles = reference.map((col) => numericProfile(Array.from(col)));
  const size = Math.floor(sizes.current / sizes.windows);
  const started = performance.now();
  const last: Record<string, number> = {};
  for (let w = 0; w < sizes.windows; w++) {
    for (let c = 0; c < COLUMNS; c++) {
      const profile = profiles[c]!;
      const agg = emptyVariable(profile);
      const col = current[c]!;
      for (let i = w * size; i < (w + 1) * size; i++) foldValue(agg, profile, col[i]);
      const m = variableMetric({ model: 'bench', version: '1', window_start: w, window_end: w + 1, total: size, late: 0 }, `c${c}`, agg, profile, 50);
      if (w === sizes.windows - 1) last[`c${c}`] = m.psi;
    }
  }
  const oursSec = (performance.now() - started) / 1000;

  const out = join(dir, 'evidently.json');
  execFileSync(VENV_PYTHON, [join(ROOT, 'scripts', 'evidently_reference.py'), '--reference', join(dir, 'reference.csv'), '--current', join(dir, 'current.csv'), '--windows', String(sizes.windows), '--out', out], { stdio: 'ignore', timeout: 1_800_000 });
  const ev = JSON.parse(readFileSync(out, 'utf8')) as { seconds_default: number; seconds_psi: number; psi: Record<string, number>[] };
  const psi: Record<string, { ours: number; evidently: number }> = {};
  for (const c of SHIFTED) psi[`c${c}`] = { ours: last[`c${c}`]!, evidently: ev.psi.at(-1)![`c${c}`]! };
  return { oursRowsPerSec: sizes.current / oursSec, evidentlyRowsPerSec: sizes.current / ev.seconds_default, evidentlyPsiRowsPerSec: sizes.current / ev.seconds_psi, psi };
}
