/**
 * `npm run train:recs`: builds the recs training set and trains + exports the model.
 *
 *   1. the Python venv at .stack/venv-train with scripts/requirements-train.txt (shared with
 *      `npm run train` through scripts/train-venv.ts; created once, reinstalled when the requirements
 *      file changes),
 *   2. the point-in-time training CSV at .stack/train/recs.csv (scripts/build-recs-training-set.ts)
 *      and its metadata (the signature's input sources, top-k, candidates cap, how the set was made),
 *   3. scripts/train_recs.py -> models/recs/model.onnx + models/recs/model.json, and the parity
 *      fixture test/fixtures/parity/recs.json (checked by test/unit/parity.test.ts).
 *
 * Flags: --seed (default 42), --count (default 150000). PYTHON overrides the interpreter used to
 * create the venv (default python3). Exits non-zero with a one-line reason on failure.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { RECS_INPUT_SOURCES, RECS_MAX_CANDIDATES, RECS_TOP_K } from '../serving/models/recs-inputs.js';
import { DEFAULT_ITEMS, DEFAULT_USERS } from '../sim/interactions.js';
import { RECS_LABEL_HORIZON_MS, RECS_TRAINING_COUNT, RECS_TRAINING_RATE_PER_SEC, RECS_TRAINING_START_TS, emptyRecsStats, recsTrainingExamples, writeRecsTrainingCsv } from './build-recs-training-set.js';
import { parseIntFlag, runIfMain } from './training-set-io.js';
import { ROOT, TrainError, VENV_PYTHON, ensureVenv, run } from './train-venv.js';

const CSV = join(ROOT, '.stack', 'train', 'recs.csv');
const META = join(ROOT, '.stack', 'train', 'recs.meta.json');
const OUT_DIR = join(ROOT, 'models', 'recs');
const FIXTURE = join(ROOT, 'test', 'fixtures', 'parity', 'recs.json');

async function main(args: string[]): Promise<void> {
  const started = Date.now();
  const seed = parseIntFlag(args, '--seed', 42);
  const count = parseIntFlag(args, '--count', RECS_TRAINING_COUNT);

  ensureVenv();

  const t = Date.now();
  const stats = emptyRecsStats();
  await writeRecsTrainingCsv(CSV, recsTrainingExamples({ seed, count }, stats));
  if (stats.emptyQueries > 0) throw new TrainError(`${stats.emptyQueries} queries without candidates (each query's own item should be one)`);
  console.log(
    `training set: ${stats.rows} rows of ${stats.queries} queries (${(stats.rows / stats.queries).toFixed(1)} candidates each), ` +
      `${stats.positives} positive (${((100 * stats.positives) / stats.rows).toFixed(2)}%), ${stats.queriesWithPositive} queries with a positive, ` +
      `${stats.censored} censored at the end -> ${relative(ROOT, CSV)} in ${((Date.now() - t) / 1000).toFixed(1)}s`,
  );

  const trainedOn = {
    seed,
    count,
    rate_per_sec: RECS_TRAINING_RATE_PER_SEC,
    users: DEFAULT_USERS,
    items: DEFAULT_ITEMS,
    start_ts: RECS_TRAINING_START_TS,
    label_horizon_ms: RECS_LABEL_HORIZON_MS,
    generator: 'sim/interactions.ts via scripts/build-recs-training-set.ts',
  };
  const meta = {
    signature_inputs: RECS_INPUT_SOURCES,
    top_k: RECS_TOP_K,
    max_candidates: RECS_MAX_CANDIDATES,
    trained_on: trainedOn,
    source:
      `sim/interactions.ts seed ${seed}, ${count} interactions at ${RECS_TRAINING_RATE_PER_SEC}/s (${DEFAULT_USERS} users, ${DEFAULT_ITEMS} items); ` +
      'one query per interaction, one row per candidate (recsCandidates), point-in-time user (event cut), item (instant cut) and cross features; ' +
      `label: click or purchase of the candidate within ${RECS_LABEL_HORIZON_MS / 60_000} min`,
  };
  mkdirSync(dirname(META), { recursive: true });
  writeFileSync(META, `${JSON.stringify(meta, null, 2)}\n`);

  run(VENV_PYTHON, [join(ROOT, 'scripts', 'train_recs.py'), '--csv', CSV, '--out-dir', OUT_DIR, '--meta', META, '--parity-fixture', FIXTURE], 'train_recs.py');
  console.log(`npm run train:recs: done in ${((Date.now() - started) / 1000).toFixed(1)}s`);
}

runIfMain(import.meta.url, 'train:recs', main);
