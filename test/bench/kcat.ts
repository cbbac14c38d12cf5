/**
 * kcat (librdkafka) as the reference producer and consumer. Times are wall-clock from spawn to exit:
 * the producer exits only once every delivery report is in (acks=all), the consumer once it has
 * reached the end of every partition.
 */
import { spawn } from 'node:child_process';
import type { KcatInput } from './data.js';

export interface KcatRun {
  readonly elapsedMs: number;
  readonly messages: number;
}

interface Exit {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
  readonly stderr: string;
}

function run(args: readonly string[], onStdout?: (chunk: Buffer) => void, timeoutMs = 120_000, signal?: AbortSignal): Promise<Exit> {
  return new Promise((resolve, reject) => {
    const child = spawn('kcat', args, { stdio: ['ignore', onStdout ? 'pipe' : 'ignore', 'pipe'] });
    let stderr = '';
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    signal?.addEventListener('abort', () => child.kill('SIGKILL'), { once: true });
    child.stderr!.setEncoding('utf8');
    child.stderr!.on('data', (s: string) => {
      if (stderr.length < 4000) stderr += s;
    });
    if (onStdout) child.stdout!.on('data', onStdout);
    child.once('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stderr });
    });
  });
}

function failure(what: string, exit: Exit): Error {
  const reason = exit.stderr.trim().split('\n').slice(-3).join(' / ') || `exit code ${exit.code ?? exit.signal}`;
  return new Error(`kcat ${what} failed: ${reason}`);
}

/** `kcat -V`'s first line, or null when kcat is not installed. */
export async function kcatVersion(): Promise<string | null> {
  let out = '';
  try {
    const exit = await run(['-V'], (c) => (out += c.toString('utf8')), 10_000);
    if (exit.code !== 0) return null;
  } catch {
    return null;
  }
  const lines = out.split('\n').map((l) => l.trim());
  const version = lines.find((l) => l.startsWith('kcat'))?.replace(/\s*-.*$/, '') ?? 'kcat';
  const librdkafka = lines.find((l) => /librdkafka/.test(l)) ?? '';
  return `${version}${librdkafka ? ` (${librdkafka})` : ''}`;
}

/**
 * Produces every record of `input` to `topic` with acks=all. librdkafka's linger and batching are
 * set explicitly; murmur2 is the Java (and kafkajs DefaultPartitioner) hash, so every key lands on
 * the same partition as when the project's producer sends it.
 */
export async function kcatProduce(brokers: string, topic: string, input: KcatInput): Promise<KcatRun> {
  const args = [
    '-P', '-b', brokers, '-t', topic,
    '-D', input.delimiter, '-K', input.keyDelimiter,
    '-X', 'request.required.acks=-1',
    '-X', 'linger.ms=5',
    '-X', 'batch.num.messages=10000',
    '-X', 'partitioner=murmur2_random',
    '-l', input.file,
  ];
  const started = performance.now();
  const exit = await run(args);
  const elapsedMs = performance.now() - started;
  if (exit.code !== 0) throw failure('produce', exit);
  return { elapsedMs, messages: input.count };
}

/**
 * Consumes `topic` from the beginning until it has `count` messages (-c; like the kafkajs consumer, it
 * stops on the last one instead of waiting for end-of-partition, which costs a fetch.wait.max.ms),
 * counting the messages it prints. -e still ends it should the topic hold fewer.
 */
export async function kcatConsume(brokers: string, topic: string, count: number): Promise<KcatRun> {
  let messages = 0;
  const args = ['-C', '-b', brokers, '-t', topic, '-o', 'beginning', '-c', String(count), '-e', '-q', '-f', '%o\\n'];
  const started = performance.now();
  const exit = await run(args, (chunk) => {
    for (let i = chunk.indexOf(10); i !== -1; i = chunk.indexOf(10, i + 1)) messages++;
  });
  const elapsedMs = performance.now() - started;
  if (exit.code !== 0) throw failure('consume', exit);
  return { elapsedMs, messages };
}

export interface KcatCount {
  /** performance.now() when kcat exited (it had seen `count` messages). */
  readonly exitedAt: number;
  readonly messages: number;
}

/**
 * A read_committed kcat consumer of every partition of `topic` from the beginning, started now and
 * exiting once it has printed `count` messages: the moment `count` records are visible to an
 * independent read_committed reader (aborted and open transactions are never shown; commit markers
 * are not messages). A separate process, so it does not share the event loop of the fabric it
 * watches. Rejects if kcat fails or has not seen `count` messages within `timeoutMs`.
 */
export function kcatAwaitCount(brokers: string, topic: string, count: number, timeoutMs: number): { done: Promise<KcatCount>; cancel: () => void } {
  let messages = 0;
  const args = ['-C', '-b', brokers, '-t', topic, '-o', 'beginning', '-c', String(count), '-q', '-f', '%o\\n', '-X', 'isolation.level=read_committed', '-X', 'fetch.wait.max.ms=20'];
  const abort = new AbortController();
  const done = run(
    args,
    (chunk) => {
      for (let i = chunk.indexOf(10); i !== -1; i = chunk.indexOf(10, i + 1)) messages++;
    },
    timeoutMs,
    abort.signal,
  ).then((exit) => {
    const exitedAt = performance.now();
    if (exit.code !== 0 || messages < count) {
      const reason = exit.signal ? `stopped (${exit.signal}) after ${messages} of ${count} messages` : failure('consume', exit).message;
      throw new Error(`read_committed count of ${topic}: ${reason}`);
    }
    return { exitedAt, messages };
  });
  return { done, cancel: () => abort.abort() };
}

/** How many records of `topic` a read_committed consumer sees from the beginning to the end (-e). */
export async function kcatCommittedCount(brokers: string, topic: string): Promise<number> {
  let messages = 0;
  const args = ['-C', '-b', brokers, '-t', topic, '-o', 'beginning', '-e', '-q', '-f', '%o\\n', '-X', 'isolation.level=read_committed'];
  const exit = await run(args, (chunk) => {
    for (let i = chunk.indexOf(10); i !== -1; i = chunk.indexOf(10, i + 1)) messages++;
  });
  if (exit.code !== 0) throw failure('consume', exit);
  return messages;
}
