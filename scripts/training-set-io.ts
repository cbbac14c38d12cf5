/**
 * The plumbing the training-set builders (scripts/build-training-set.ts, scripts/build-recs-training-set.ts)
 * and the training CLIs share: integer flags, the output path argument, running a module's main
 * when it is the entry point, and streaming CSV lines to a file.
 */
import { createWriteStream } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';

/** The positive integer after flag `name` in args, or `fallback` when the flag is absent. */
export function parseIntFlag(args: readonly string[], name: string, fallback: number): number {
  const i = args.indexOf(name);
  if (i < 0) return fallback;
  const raw = args[i + 1];
  const v = raw === undefined ? NaN : Number(raw);
  if (!Number.isInteger(v) || v <= 0) throw new Error(`${name} needs a positive integer, got ${raw ?? 'nothing'}`);
  return v;
}

/** The first argument that is neither a flag nor a flag's value; throws `usage` when there is none. */
export function outPathArg(args: readonly string[], usage: string): string {
  const out = args.find((a, i) => !a.startsWith('--') && !(i > 0 && (args[i - 1] as string).startsWith('--')));
  if (out === undefined) throw new Error(usage);
  return out;
}

/**
 * Runs main(argv) when the module at `moduleUrl` (its import.meta.url) is the process's entry point;
 * on failure prints `<name>: <reason>` and exits 1.
 */
export function runIfMain(moduleUrl: string, name: string, main: (args: string[]) => Promise<void>): void {
  if (process.argv[1] === undefined || moduleUrl !== pathToFileURL(resolve(process.argv[1])).href) return;
  main(process.argv.slice(2)).catch((err: unknown) => {
    console.error(`${name}: ${err instanceof Error ? err.message : String(err)}`);
    process.exit(1);
  });
}

/** Writes `header` (joined by commas) and then every line to `path`, each ending in a newline, in chunks of 5000 lines. */
export async function writeCsvLines(path: string, header: readonly string[], lines: Iterable<string>): Promise<void> {
  await mkdir(dirname(path), { recursive: true });
  const out = createWriteStream(path);
  const done = new Promise<void>((ok, fail) => {
    out.on('finish', ok);
    out.on('error', fail);
  });
  out.write(`${header.join(',')}\n`);
  const chunk: string[] = [];
  const flush = async (): Promise<void> => {
    if (chunk.length === 0) return;
    const ok = out.write(`${chunk.join('\n')}\n`);
    chunk.length = 0;
    if (!ok) await new Promise<void>((resume) => out.once('drain', () => resume()));
  };
  for (const line of lines) {
    chunk.push(line);
    if (chunk.length === 5000) await flush();
  }
  await flush();
  out.end();
  await done;
}
