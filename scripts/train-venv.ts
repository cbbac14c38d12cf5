/**
 * The Python venv the training scripts (scripts/train-fraud.ts, scripts/train-recs.ts) share:
 * .stack/venv-train with scripts/requirements-train.txt, created once and reinstalled when the
 * requirements file changes (its sha256 is stamped in the venv). PYTHON overrides the interpreter
 * used to create the venv (default python3). Importing this module runs nothing.
 */
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const VENV = join(ROOT, '.stack', 'venv-train');
export const VENV_PYTHON = join(VENV, 'bin', 'python');
const REQUIREMENTS = join(ROOT, 'scripts', 'requirements-train.txt');
const STAMP = join(VENV, '.requirements.sha256');

/** A training step failed; its message is the one-line reason the CLIs print. */
export class TrainError extends Error {}

/** Runs `cmd args` in ROOT with inherited stdio; throws a TrainError naming `what` unless it exits 0. */
export function run(cmd: string, args: string[], what: string): void {
  const r = spawnSync(cmd, args, { cwd: ROOT, stdio: 'inherit' });
  if (r.error) throw new TrainError(`${what}: ${r.error.message}`);
  if (r.status !== 0) throw new TrainError(`${what} failed (${r.signal ?? `exit ${r.status}`})`);
}

/** Creates the venv if missing and (re)installs the requirements unless the stamp matches them. */
export function ensureVenv(): void {
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
