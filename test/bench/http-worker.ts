/**
 * The HTTP load generator, run in a worker thread so that building requests and reading answers does
 * not share the event loop with the gateway under test. Bodies are loaded once; each command answers
 * with timings taken here, so the transfer of commands and results is outside the measurement.
 */
import { parentPort } from 'node:worker_threads';
import type { WorkerCommand, WorkerReply, BurstResult, PacedResult } from './http-client.js';

const bodies = new Map<string, readonly string[]>();
const now = (): number => performance.timeOrigin + performance.now();

async function post(url: string, apiKey: string, body: string): Promise<{ status: number; accepted: number; error: string | null }> {
  try {
    const res = await fetch(url, { method: 'POST', headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${apiKey}` }, body });
    const text = await res.text();
    let accepted = 0;
    let error: string | null = null;
    try {
      const parsed = JSON.parse(text) as { accepted?: number; error?: { code?: string; message?: string } };
      accepted = parsed.accepted ?? 0;
      if (res.status !== 202) error = `${res.status} ${parsed.error?.code ?? ''} ${parsed.error?.message ?? ''}`.trim();
    } catch {
      if (res.status !== 202) error = `${res.status} ${text.slice(0, 200)}`;
    }
    return { status: res.status, accepted, error };
  } catch (err) {
    return { status: 0, accepted: 0, error: (err as Error).message };
  }
}

async function burst(url: string, apiKey: string, list: readonly string[], concurrency: number): Promise<BurstResult> {
  let next = 0;
  let accepted = 0;
  let failed = 0;
  const errors: string[] = [];
  const started = performance.now();
  const lane = async (): Promise<void> => {
    while (next < list.length) {
      const r = await post(url, apiKey, list[next++]!);
      accepted += r.accepted;
      if (r.status !== 202) {
        failed++;
        if (r.error && errors.length < 5) errors.push(r.error);
      }
    }
  };
  await Promise.all(Array.from({ length: concurrency }, lane));
  return { elapsedMs: performance.now() - started, requests: list.length, accepted, failed, errors };
}

/** One body per tick of `intervalMs`, without waiting for earlier answers (a bounded number in flight). */
async function paced(url: string, apiKey: string, list: readonly string[], intervalMs: number, maxInFlight: number): Promise<PacedResult> {
  const sendTimes: number[] = new Array<number>(list.length).fill(Number.NaN);
  const ackTimes: number[] = new Array<number>(list.length).fill(Number.NaN);
  const statuses: number[] = new Array<number>(list.length).fill(0);
  const errors: string[] = [];
  const inFlight = new Set<Promise<void>>();
  const t0 = performance.now();
  for (let i = 0; i < list.length; i++) {
    const due = t0 + i * intervalMs;
    const wait = due - performance.now();
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
    while (inFlight.size >= maxInFlight) await Promise.race(inFlight);
    sendTimes[i] = now();
    const p = post(url, apiKey, list[i]!).then((r) => {
      ackTimes[i] = now();
      statuses[i] = r.status;
      if (r.error && errors.length < 5) errors.push(r.error);
    });
    const tracked = p.finally(() => inFlight.delete(tracked));
    inFlight.add(tracked);
  }
  await Promise.all(inFlight);
  return { sendTimes, ackTimes, statuses, errors, elapsedMs: performance.now() - t0 };
}

async function handle(cmd: WorkerCommand): Promise<WorkerReply> {
  switch (cmd.kind) {
    case 'load':
      bodies.set(cmd.key, cmd.bodies);
      return { id: cmd.id, kind: 'loaded' };
    case 'burst': {
      const list = bodies.get(cmd.key);
      if (!list) throw new Error(`no bodies loaded under ${cmd.key}`);
      return { id: cmd.id, kind: 'burst', result: await burst(cmd.url, cmd.apiKey, cmd.limit === undefined ? list : list.slice(0, cmd.limit), cmd.concurrency) };
    }
    case 'paced': {
      const list = bodies.get(cmd.key);
      if (!list) throw new Error(`no bodies loaded under ${cmd.key}`);
      return { id: cmd.id, kind: 'paced', result: await paced(cmd.url, cmd.apiKey, list, cmd.intervalMs, cmd.maxInFlight) };
    }
  }
}

const port = parentPort;
if (!port) throw new Error('http-worker must run in a worker thread');
port.on('message', (cmd: WorkerCommand) => {
  handle(cmd).then(
    (reply) => port.postMessage(reply),
    (err: unknown) => port.postMessage({ id: cmd.id, kind: 'error', message: (err as Error).message } satisfies WorkerReply),
  );
});
