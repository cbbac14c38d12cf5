/**
 * Feast as the peer reference for the training-set benchmark: the same point-in-time join (per label,
 * the latest history row of its entity at or before the label time; null when there is none) computed
 * by Feast's `FeatureStore.get_historical_features` on its default local (dask) offline store.
 *
 * Runs scripts/feast_reference.py with the venv at .stack/feast-venv, which scripts/setup-feast.sh
 * installs from scripts/requirements-feast.txt when it is missing. If that install fails (no Python
 * 3.11, no PyPI, a broken resolve) the result is `{ skipped: reason }`; a failure of the reference run
 * itself once Feast is installed throws.
 *
 * `seconds` covers get_historical_features + to_df only (no interpreter start, no `import feast`, no
 * CSV -> parquet conversion, no registry apply; those are in `prepareSeconds`/`applySeconds`/...).
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const VENV = join(ROOT, '.stack', 'feast-venv');
const VENV_PYTHON = join(VENV, 'bin', 'python');
const STAMP = join(VENV, '.requirements.sha256');
const SETUP = join(ROOT, 'scripts', 'setup-feast.sh');
const REQUIREMENTS = join(ROOT, 'scripts', 'requirements-feast.txt');
const SCRIPT = join(ROOT, 'scripts', 'feast_reference.py');

const SETUP_TIMEOUT_MS = 20 * 60_000;
const RUN_TIMEOUT_MS = 30 * 60_000;
const RESERVED = new Set(['entity_id', 'event_timestamp', 'event_ts', 'event_ts_ms', 'ts_ms', '__row']);

export interface FeastHistoryRow {
  entity: string;
  tsMs: number;
  values: (number | null)[];
}

export interface FeastReferenceOptions {
  history: FeastHistoryRow[];
  featureNames: string[];
  labels: { entity: string; tsMs: number }[];
}

export interface FeastReferenceResult {
  rowsPerSec: number;
  seconds: number;
  version: string;
  /** One row per label, in label order: the feature values in `featureNames` order, null for none. */
  out: (number | null)[][];
  /** CSV -> parquet and entity frame (untimed in `seconds`). */
  prepareSeconds: number;
  /** Registry apply of the entity and feature view. */
  applySeconds: number;
  /** `import feast` in the child. */
  importSeconds: number;
  /** Rows Feast itself returned (fewer than the labels; see scripts/feast_reference.py). */
  feastRows: number;
  duplicateLabels: number;
  labelsMissingFromFeast: number;
}

interface Exec {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
  readonly error?: string;
}

function exec(cmd: string, args: string[], timeoutMs: number): Promise<Exec> {
  return new Promise((done) => {
    execFile(cmd, args, { cwd: ROOT, timeout: timeoutMs, killSignal: 'SIGKILL', maxBuffer: 64 * 1024 * 1024, encoding: 'utf8' }, (err, stdout, stderr) => {
      if (!err) return done({ code: 0, stdout, stderr });
      const e = err as NodeJS.ErrnoException & { code?: number | string; killed?: boolean; signal?: string };
      const why = e.killed ? `killed after ${timeoutMs / 1000}s` : typeof e.code === 'number' ? `exit ${e.code}` : (e.signal ?? e.message);
      done({ code: typeof e.code === 'number' ? e.code : null, stdout, stderr, error: why });
    });
  });
}

function tail(s: string, lines = 8): string {
  return s.trim().split('\n').slice(-lines).join('\n');
}

/** True when the venv exists and was installed from the current requirements file. */
function venvCurrent(): boolean {
  if (!existsSync(VENV_PYTHON) || !existsSync(STAMP)) return false;
  const want = createHash('sha256').update(readFileSync(REQUIREMENTS)).digest('hex');
  return readFileSync(STAMP, 'utf8').trim() === want;
}

/**
 * Installs .stack/feast-venv via scripts/setup-feast.sh when it is missing (or was installed from other
 * pins); returns a reason on failure.
 */
async function ensureVenv(): Promise<string | undefined> {
  if (venvCurrent()) return undefined;
  const r = await exec('bash', [SETUP], SETUP_TIMEOUT_MS);
  if (r.error) return `feast install failed (${r.error}): ${tail(r.stderr || r.stdout, 4)}`;
  if (!existsSync(VENV_PYTHON)) return 'feast install reported success but .stack/feast-venv/bin/python is missing';
  return undefined;
}

function csvField(s: string): string {
  return /[",\r\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
}

function csvNumber(v: number | null): string {
  if (v === null || Number.isNaN(v)) return '';
  if (v === Infinity) return 'inf';
  if (v === -Infinity) return '-inf';
  return String(v);
}

function parseNumber(s: string): number | null {
  if (s === '') return null;
  if (s === 'inf') return Infinity;
  if (s === '-inf') return -Infinity;
  const n = Number(s);
  if (Number.isNaN(n)) throw new Error(`feast reference: not a number in the output: ${JSON.stringify(s)}`);
  return n;
}

/** RFC 4180 records (pandas quotes only when needed, with doubled quotes). */
function parseCsv(text: string): string[][] {
  const rows: string[][] = [];
  let row: string[] = [];
  let field = '';
  let i = 0;
  let quoted = false;
  while (i < text.length) {
    const c = text[i]!;
    if (quoted) {
      if (c === '"') {
        if (text[i + 1] === '"') {
          field += '"';
          i += 2;
          continue;
        }
        quoted = false;
      } else {
        field += c;
      }
      i++;
      continue;
    }
    if (c === '"') quoted = true;
    else if (c === ',') {
      row.push(field);
      field = '';
    } else if (c === '\n' || c === '\r') {
      if (c === '\r' && text[i + 1] === '\n') i++;
      row.push(field);
      rows.push(row);
      row = [];
      field = '';
    } else field += c;
    i++;
  }
  if (field !== '' || row.length > 0) {
    row.push(field);
    rows.push(row);
  }
  return rows;
}

function validate(opts: FeastReferenceOptions): void {
  const { featureNames: names } = opts;
  if (names.length === 0) throw new Error('feast reference: no feature names');
  for (const n of names) {
    if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(n)) throw new Error(`feast reference: feature name ${JSON.stringify(n)} is not a plain identifier`);
    if (RESERVED.has(n)) throw new Error(`feast reference: feature name ${n} is reserved`);
  }
  if (new Set(names).size !== names.length) throw new Error('feast reference: duplicate feature names');
  for (const h of opts.history) {
    if (h.values.length !== names.length) throw new Error(`feast reference: history row of ${h.entity} has ${h.values.length} values, want ${names.length}`);
    if (!Number.isSafeInteger(h.tsMs)) throw new Error(`feast reference: history tsMs ${h.tsMs} is not an integer`);
  }
  for (const l of opts.labels) if (!Number.isSafeInteger(l.tsMs)) throw new Error(`feast reference: label tsMs ${l.tsMs} is not an integer`);
}

export async function feastReference(opts: FeastReferenceOptions): Promise<FeastReferenceResult | { skipped: string }> {
  validate(opts);
  const reason = await ensureVenv();
  if (reason) return { skipped: reason };

  const dir = await mkdtemp(join(tmpdir(), 'feast-ref-'));
  try {
    const historyCsv = join(dir, 'history.csv');
    const labelsCsv = join(dir, 'labels.csv');
    const outCsv = join(dir, 'out.csv');

    const h: string[] = [['entity_id', 'event_ts_ms', ...opts.featureNames].join(',')];
    for (const r of opts.history) h.push(`${csvField(r.entity)},${r.tsMs},${r.values.map(csvNumber).join(',')}`);
    await writeFile(historyCsv, h.join('\n') + '\n');
    const l: string[] = ['entity_id,ts_ms'];
    for (const r of opts.labels) l.push(`${csvField(r.entity)},${r.tsMs}`);
    await writeFile(labelsCsv, l.join('\n') + '\n');

    const r = await exec(
      VENV_PYTHON,
      [SCRIPT, '--history', historyCsv, '--labels', labelsCsv, '--out', outCsv, '--features', opts.featureNames.join(',')],
      RUN_TIMEOUT_MS,
    );
    if (r.error) throw new Error(`feast reference failed (${r.error}): ${tail(r.stderr || r.stdout)}`);
    const line = r.stdout.trim().split('\n').reverse().find((s) => s.startsWith('{'));
    if (!line) throw new Error(`feast reference printed no result line: ${tail(r.stdout + r.stderr)}`);
    const j = JSON.parse(line) as Record<string, unknown>;
    const num = (k: string): number => {
      const v = j[k];
      if (typeof v !== 'number' || !Number.isFinite(v)) throw new Error(`feast reference: result has no numeric ${k}: ${line}`);
      return v;
    };

    const rows = parseCsv(await readFile(outCsv, 'utf8'));
    const header = rows.shift();
    const want = ['entity_id', 'ts_ms', ...opts.featureNames];
    if (!header || header.join(',') !== want.join(',')) throw new Error(`feast reference: output header ${JSON.stringify(header)} != ${JSON.stringify(want)}`);
    if (rows.length !== opts.labels.length) throw new Error(`feast reference: ${rows.length} output rows for ${opts.labels.length} labels`);
    const out = rows.map((row, i) => {
      const label = opts.labels[i]!;
      if (row[0] !== label.entity || Number(row[1]) !== label.tsMs) throw new Error(`feast reference: output row ${i} is ${row[0]}@${row[1]}, label is ${label.entity}@${label.tsMs}`);
      return opts.featureNames.map((_, k) => parseNumber(row[k + 2] ?? ''));
    });

    const seconds = num('seconds');
    const version = j.feast_version;
    return {
      rowsPerSec: seconds > 0 ? opts.labels.length / seconds : Infinity,
      seconds,
      version: typeof version === 'string' ? version : 'unknown',
      out,
      prepareSeconds: num('prepare_seconds'),
      applySeconds: num('apply_seconds'),
      importSeconds: num('import_seconds'),
      feastRows: num('feast_rows'),
      duplicateLabels: num('duplicate_labels'),
      labelsMissingFromFeast: num('labels_missing_from_feast'),
    };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
