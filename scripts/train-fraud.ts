/**
 * `npm run train`: builds the fraud training set and trains + exports the model.
 *
 *   1. a Python venv at .stack/venv-train with scripts/requirements-train.txt (created once; reinstalled
 *      when the requirements file changes; scripts/train-venv.ts),
 *   2. the point-in-time training CSV at .stack/train/fraud.csv (scripts/build-training-set.ts),
 *   3. scripts/train_fraud.py -> models/fraud/model.onnx + models/fraud/model.json (its signature from
 *      FRAUD_INPUT_SOURCES, its training window from the rows' event times, both passed in
 *      .stack/train/fraud.meta.json), and the parity fixture test/fixtures/parity/fraud.json.
 *
 * Flags: --seed (default 42), --count (default 200000). PYTHON overrides the interpreter used to
 * create the venv (default python3). Exits non-zero with a one-line reason on failure.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { FRAUD_INPUT_NAMES, FRAUD_INPUT_SOURCES } from '../serving/models/fraud-inputs.js';
import { generateTransactions } from '../sim/transactions.js';
import { TRAINING_RATE_PER_SEC, buildFraudTrainingSet, trainingSimOptions, writeFraudTrainingCsv } from './build-training-set.js';
import { parseIntFlag, runIfMain } from './training-set-io.js';
import { ROOT, TrainError, VENV_PYTHON, ensureVenv, run } from './train-venv.js';

const CSV = join(ROOT, '.stack', 'train', 'fraud.csv');
const META = join(ROOT, '.stack', 'train', 'fraud.meta.json');
const FIXTURE = join(ROOT, 'test', 'fixtures', 'parity', 'fraud.json');
const OUT_DIR = join(ROOT, 'models', 'fraud');

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

runIfMain(import.meta.url, 'train', main);
