/**
 * `fabric simulate`: streams generated events through the gateway in real time (HTTP, batched per
 * tick, a bounded number of requests in flight) and, for transactions, publishes the fraud labels
 * to outcomes.<stream> after a delay, like a chargeback feed would.
 */
import type { Outcome } from '../schemas/types.generated.js';
import { generateTransactions, outcomeFor, type SimulatedTransaction } from './transactions.js';
import { generateInteractions } from './interactions.js';

export interface SimulationOptions {
  readonly stream: 'transactions' | 'interactions';
  readonly gatewayUrl: string;
  readonly apiKey: string;
  readonly ratePerSec: number;
  readonly durationSec: number;
  readonly seed: number;
  readonly drift: boolean;
  /** Prefix of event ids, so two runs with one seed do not collide; fixed for reproducible ids. */
  readonly runId: string;
  readonly tickMs?: number;
  readonly maxInFlight?: number;
  readonly outcomeDelayMs?: number;
  /** Publishes labels (outcomes.<stream>); omitted when the caller has no Kafka access. */
  readonly publishOutcomes?: (outcomes: Outcome[]) => Promise<void>;
  readonly onProgress?: (s: SimulationSummary) => void;
}

export interface SimulationSummary {
  sent: number;
  accepted: number;
  rejected: number;
  failedRequests: number;
  fraud: number;
  outcomes: number;
  /** Ids of every event the gateway acknowledged. */
  acceptedIds: string[];
  errors: string[];
}

interface GeneratedEvent {
  readonly body: Record<string, unknown>;
  readonly label: SimulatedTransaction | null;
}

export async function runSimulation(options: SimulationOptions): Promise<SimulationSummary> {
  const tickMs = options.tickMs ?? 100;
  const maxInFlight = options.maxInFlight ?? 8;
  const outcomeDelayMs = options.outcomeDelayMs ?? 5000;
  const start = Date.now();
  const total = Math.round(options.ratePerSec * options.durationSec);
  const events = generator(options, start, total);
  const summary: SimulationSummary = { sent: 0, accepted: 0, rejected: 0, failedRequests: 0, fraud: 0, outcomes: 0, acceptedIds: [], errors: [] };
  const pendingOutcomes: { due: number; outcome: Outcome }[] = [];
  const inFlight = new Set<Promise<void>>();
  let next = events.next();

  const flushOutcomes = async (force: boolean): Promise<void> => {
    if (!options.publishOutcomes || pendingOutcomes.length === 0) return;
    const now = Date.now();
    const due = force ? pendingOutcomes.splice(0) : spliceDue(pendingOutcomes, now);
    if (due.length === 0) return;
    await options.publishOutcomes(due.map((d) => d.outcome));
    summary.outcomes += due.length;
  };

  while (!next.done) {
    const now = Date.now();
    const batch: GeneratedEvent[] = [];
    // Everything whose (rebased) event time has come goes out in this tick.
    while (!next.done && (next.value.body.ts as number) <= now) {
      batch.push(next.value);
      next = events.next();
    }
    if (batch.length > 0) {
      while (inFlight.size >= maxInFlight) await Promise.race(inFlight);
      const p = post(options, batch, summary, pendingOutcomes, outcomeDelayMs).finally(() => inFlight.delete(p));
      inFlight.add(p);
    }
    await flushOutcomes(false);
    options.onProgress?.(summary);
    await new Promise((r) => setTimeout(r, tickMs));
  }
  await Promise.all(inFlight);
  if (pendingOutcomes.length > 0 && options.publishOutcomes) {
    const lastDue = Math.max(...pendingOutcomes.map((p) => p.due));
    await new Promise((r) => setTimeout(r, Math.max(0, lastDue - Date.now())));
    await flushOutcomes(true);
  }
  return summary;
}

function spliceDue(list: { due: number; outcome: Outcome }[], now: number): { due: number; outcome: Outcome }[] {
  const due = list.filter((p) => p.due <= now);
  const rest = list.filter((p) => p.due > now);
  list.length = 0;
  list.push(...rest);
  return due;
}

function* generator(options: SimulationOptions, start: number, total: number): Generator<GeneratedEvent> {
  if (options.stream === 'transactions') {
    for (const sim of generateTransactions({ seed: options.seed, startTs: start, ratePerSec: options.ratePerSec, count: total, drift: options.drift })) {
      const event = { ...sim.event, event_id: `${options.runId}-${sim.event.event_id}` };
      yield { body: event, label: { event, isFraud: sim.isFraud } };
    }
  } else {
    for (const event of generateInteractions({ seed: options.seed, startTs: start, ratePerSec: options.ratePerSec, count: total, drift: options.drift })) {
      yield { body: { ...event, event_id: `${options.runId}-${event.event_id}` }, label: null };
    }
  }
}

async function post(options: SimulationOptions, batch: GeneratedEvent[], summary: SimulationSummary, outcomes: { due: number; outcome: Outcome }[], delayMs: number): Promise<void> {
  summary.sent += batch.length;
  let res: Response;
  try {
    res = await fetch(`${options.gatewayUrl}/v1/events/${options.stream}`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${options.apiKey}` },
      body: JSON.stringify(batch.map((e) => e.body)),
    });
  } catch (err) {
    summary.failedRequests++;
    if (summary.errors.length < 20) summary.errors.push((err as Error).message);
    return;
  }
  const body = (await res.json().catch(() => ({}))) as { accepted?: number; rejected?: { index: number }[]; error?: { code: string; message: string } };
  if (res.status !== 202) {
    summary.failedRequests++;
    if (summary.errors.length < 20) summary.errors.push(`${res.status} ${body.error?.code ?? ''} ${body.error?.message ?? ''}`.trim());
    if (res.status !== 400) return;
  }
  const rejected = new Set((body.rejected ?? []).map((r) => r.index));
  summary.rejected += rejected.size;
  batch.forEach((e, i) => {
    if (rejected.has(i)) return;
    summary.accepted++;
    summary.acceptedIds.push(e.body.event_id as string);
    if (e.label) {
      if (e.label.isFraud) summary.fraud++;
      const due = Date.now() + delayMs;
      outcomes.push({ due, outcome: outcomeFor(e.label, (e.body.ts as number) + delayMs) });
    }
  });
}
