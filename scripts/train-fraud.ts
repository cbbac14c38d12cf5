/**
 * `npm run train`: builds the fraud training set and trains + exports the model.
 *
 *   1. a Python venv at .stack/venv-train with scripts/requirements-train.txt (created once; reinstalled
 *      when the requirements file changes),
 *   2. the point-in-time training CSV at .stack/train/fraud.csv (scripts/build-training-set.ts),
 *   3. scripts/train_fraud.py -> models/fraud/model.onnx + models/fraud/model.json (its signature from
 *      FRAUD_INPUT_SOURCES, its training window from the rows' event times, both passed in
 *      .stack/train/fraud.meta.json), and the parity fixture test/fixtures/parity/fraud.json.
 *
 * Flags: --seed (default 42), --count (default 200000). PYTHON overrides the interpreter used to
 * create the venv (default python3). Exits non-zero with a one-line reason on failure.
 */
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { FRAUD_INPUT_NAMES, FRAUD_INPUT_SOURCES } from '../serving/models/fraud-inputs.js';
import { generateTransactions } from '../sim/transactions.js';
import { TRAINING_RATE_PER_SEC, buildFraudTrainingSet, parseIntFlag, trainingSimOptions, writeFraudTrainingCsv } from './build-training-set.js';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const VENV = join(ROOT, '.stack', 'venv-train');
const VENV_PYTHON = join(VENV, 'bin', 'python');
const REQUIREMENTS = join(ROOT, 'scripts', 'requirements-train.txt');
const STAMP = join(VENV, '.requirements.sha256');
const CSV = join(ROOT, '.stack', 'train', 'fraud.csv');
const META = join(ROOT, '.stack', 'train', 'fraud.meta.json');
const FIXTURE = join(ROOT, 'test', 'fixtures', 'parity', 'fraud.json');
const OUT_DIR = join(ROOT, 'models', 'fraud');

class TrainError extends Error {}

function run(cmd: string, args: string[], what: string): void {
  const r = spawnSync(cmd, args, { cwd: ROOT, stdio: 'inherit' });
  if (r.error) throw new TrainError(`${what}: ${r.error.message}`);
  if (r.status !== 0) throw new TrainError(`${what} failed (${r.signal ?? `exit ${r.status}`})`);
}

function ensureVenv(): void {
  const want = createHash('sha256').update(readFileSync(REQUIREMENTS)).digest('hex');
  if (!existsSync(VENV_PYTHON)) {
    // Missing or broken (e.g. .stack partly removed): start over.
    const python = process.env.PYTHON ?? 'python3';
    console.log(`creating ${relative(ROOT, VENV)} with ${python}`);
    run(python, ['-m', 'venv', '--clear', VENV], `${python} -m venv`);
  } else if (existsSync(STAMP) && readFileSync(STAMP, 'utf8').trim() === want) {
    return;
  }
  console.log(`installing ${relative(ROOT, REQUIREMENTS)}`);
  run(VENV_PYTHON, ['-m', 'pip', 'install', '--disable-pip-version-check', '--quiet', '-r', REQUIREMENTS], 'pip install');
  run(VENV_PYTHON, ['-c', 'import numpy, sklearn, skl2onnx, onnx, onnxruntime'], 'checking the training venv');
  writeFileSync(STAMP, `${want}\n`);
}

async function main(args: string[]): Promise<void> {
  const started = Date.now();
  const seed = parseIntFlag(args, '--seed', 42);
  const count = parseIntFlag(args, '--count', 200_000);

  ensureVenv();

  const t = Date.now();
  const set = buildFraudTrainingSet({ seed, count });
  await writeFraudTrainingCsv(CSV, set);
  const frauds = set.labels.reduce((s, l) => s + l, 0);
  console.log(`training set: ${set.rows.length} rows, ${frauds} fraud (${((100 * frauds) / set.rows.length).toFixed(2)}%) -> ${relative(ROOT, CSV)} in ${((Date.now() - t) / 1000).toFixed(1)}s`);

  // One row per generated event, in generation order: the rows' event times.
  const rowTs = Array.from(generateTransactions(trainingSimOptions({ seed, count })), (s) => s.event.ts);
  if (rowTs.length !== set.rows.length) throw new TrainError(`${rowTs.length} events for ${set.rows.length} rows`);
  const meta = {
    signature_inputs: FRAUD_INPUT_SOURCES,
    row_ts: rowTs,
    source: `sim/transactions.ts seed ${seed}, ${count} transactions at ${TRAINING_RATE_PER_SEC}/s; one row per transaction with point-in-time account features (event cut); label: the simulator's fraud flag`,
  };
  mkdirSync(dirname(META), { recursive: true });
  writeFileSync(META, `${JSON.stringify(meta)}\n`);

  run(
    VENV_PYTHON,
    [
      join(ROOT, 'scripts', 'train_fraud.py'),
      '--csv',
      CSV,
      '--out-dir',
      OUT_DIR,
      '--seed',
      String(seed),
      '--count',
      String(count),
      '--expected-inputs',
      FRAUD_INPUT_NAMES.join(','),
      '--meta',
      META,
      '--parity-fixture',
      FIXTURE,
    ],
    'train_fraud.py',
  );
  console.log(`npm run train: done in ${((Date.now() - started) / 1000).toFixed(1)}s`);
}

main(process.argv.slice(2)).catch((err: unknown) => {
  console.error(`train: ${err instanceof Error ? err.message : String(err)}`);
  process.exit(1);
});
