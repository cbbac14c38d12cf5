/**
 * `fabric simulate`: streams generated events through the gateway in real time (HTTP, batched, a
 * bounded number of requests in flight) and publishes outcomes to outcomes.<stream> after a delay:
 * for transactions the fraud labels, like a chargeback feed would; for interactions each view, click
 * and purchase as the feedback on the item (what recommendations are judged by), valued 1, a
 * purchase at the item's price.
 *
 * History (`historyMs`): the one generator starts historyMs before now, so its first events (all
 * those of the past historyMs, then rate x duration live ones) are in the past and all due at once. They go out as fast as the gateway takes them (full batches, no
 * tick between them), and live traffic starts only once every history event is acknowledged (or
 * given up on), so windows are warm before the first live event, and the events of one seed are
 * the same with or without history (only their times differ).
 *
 * Order: events are spread over `maxInFlight` lanes by their stream's key (the Kafka key), and a
 * lane has one request in flight at a time, retried in place on 429/503/network errors; so every
 * entity's events reach the gateway, and Kafka, in event-time order, retries included.
 */
import type { Outcome } from '../schemas/types.generated.js';
import { generateTransactions, outcomeFor, type SimulatedTransaction } from './transactions.js';
import { catalogueMetadata, generateInteractions, itemCatalog } from './interactions.js';

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
  /** Past event time sent first, as fast as the gateway takes it (default 0: none). */
  readonly historyMs?: number;
  /** Wall-clock instant live traffic starts at, epoch ms (default: now). */
  readonly startTs?: number;
  readonly tickMs?: number;
  /** Requests in flight at most (one per lane; default 8). */
  readonly maxInFlight?: number;
  /** Events per request at most (default 1000). */
  readonly maxBatch?: number;
  /**
   * How far apart in event time the events in flight across lanes may be (default 60 s). Lanes keep
   * each key's order, but a group keyed by another field (item features over interactions keyed by
   * user) sees the lanes interleaved: unbounded, a fast lane would make a slow lane's events late.
   */
  readonly maxSkewMs?: number;
  /** Attempts per request on 429/503/network errors before it counts as failed (default 10). */
  readonly maxAttempts?: number;
  /** First backoff after a 503 or network error without Retry-After, doubled per attempt up to 10 s (default 500). */
  readonly retryBaseMs?: number;
  readonly outcomeDelayMs?: number;
  /**
   * Interactions: publishes the seed's item catalogue (title, category, price) to the metadata store
   * before the first event, so recommendations can be enriched and diversified by category.
   */
  readonly publishCatalogue?: (items: ReturnType<typeof catalogueMetadata>) => Promise<void>;
  /** Publishes labels (outcomes.<stream>); omitted when the caller has no Kafka access. */
  readonly publishOutcomes?: (outcomes: Outcome[]) => Promise<void>;
  readonly onProgress?: (s: SimulationSummary) => void;
}

export interface SimulationSummary {
  sent: number;
  /** Of `sent`, the events of the history (event time at or before the live start). */
  history: number;
  accepted: number;
  rejected: number;
  /** Requests that failed for good (after their retries) or got a non-202 answer. */
  failedRequests: number;
  /** Attempts repeated after a 429, 503 or network error. */
  retries: number;
  fraud: number;
  outcomes: number;
  /** Catalogue items published (interactions). */
  catalogue: number;
  /** Ids of every event the gateway acknowledged. */
  acceptedIds: string[];
  errors: string[];
}

interface GeneratedEvent {
  readonly body: Record<string, unknown>;
  readonly label: SimulatedTransaction | null;
  /** Interactions: the outcome the event is, observed at the given instant. */
  readonly feedback?: (observedTs: number) => Outcome;
}

interface Lane {
  queue: GeneratedEvent[];
  busy: boolean;
  /** Smallest event time of the request in flight. */
  inFlightTs: number;
}

interface PendingOutcome {
  readonly due: number;
  readonly outcome: Outcome;
}

/** The Kafka key of each stream (fabric-topology's keyField): one entity's events share a lane. */
const KEY_FIELD: Record<SimulationOptions['stream'], string> = { transactions: 'account_id', interactions: 'user_id' };
const OUTCOME_CHUNK = 10_000;
const MAX_BACKOFF_MS = 10_000;
const MAX_RETRY_AFTER_MS = 60_000;

export async function runSimulation(options: SimulationOptions): Promise<SimulationSummary> {
  const tickMs = options.tickMs ?? 100;
  const nLanes = Math.max(1, Math.floor(options.maxInFlight ?? 8));
  const maxBatch = Math.max(1, Math.floor(options.maxBatch ?? 1000));
  const outcomeDelayMs = options.outcomeDelayMs ?? 5000;
  const historyMs = Math.max(0, options.historyMs ?? 0);
  const start = options.startTs ?? Date.now();
  const isHistory = (e: GeneratedEvent): boolean => historyMs > 0 && tsOf(e) <= start;
  // History: every event of the past historyMs (a Poisson count); live: exactly rate x duration, as without history.
  const events = generator(options, start - historyMs, Math.round(options.ratePerSec * options.durationSec), isHistory);
  const summary: SimulationSummary = { sent: 0, history: 0, accepted: 0, rejected: 0, failedRequests: 0, retries: 0, fraud: 0, outcomes: 0, catalogue: 0, acceptedIds: [], errors: [] };
  if (options.stream === 'interactions' && options.publishCatalogue) {
    const items = catalogueMetadata({ seed: options.seed });
    await options.publishCatalogue(items);
    summary.catalogue = items.length;
  }
  const outcomes = options.publishOutcomes ? new DueQueue() : null;
  const keyField = KEY_FIELD[options.stream];
  const lanes: Lane[] = Array.from({ length: nLanes }, () => ({ queue: [], busy: false, inFlightTs: Infinity }));
  const maxSkewMs = options.maxSkewMs ?? 60_000;
  /** The oldest event time queued or in flight: a new event may be at most maxSkewMs after it. */
  const oldestPending = (): number => Math.min(...lanes.map((l) => Math.min(l.busy ? l.inFlightTs : Infinity, l.queue.length ? tsOf(l.queue[0]!) : Infinity)));
  // Generated but not yet sent, across lanes: bounded, so the generator is never materialised.
  const maxQueued = 2 * maxBatch * nLanes;
  let queued = 0;
  // Until the first live event is released, only history goes out.
  let inHistory = historyMs > 0;
  let next = events.next();

  // Wakes the loop when a request finishes (a lane is free again).
  let wake: (() => void) | null = null;
  const notify = (): void => {
    const w = wake;
    wake = null;
    w?.();
  };
  const anyBusy = (): boolean => lanes.some((l) => l.busy);
  const idle = (): boolean => queued === 0 && !anyBusy();

  const pump = (): void => {
    for (const lane of lanes) {
      if (lane.busy || lane.queue.length === 0) continue;
      const batch = lane.queue.splice(0, maxBatch);
      queued -= batch.length;
      summary.sent += batch.length;
      for (const e of batch) if (isHistory(e)) summary.history++;
      lane.busy = true;
      lane.inFlightTs = tsOf(batch[0]!);
      void post(options, batch, summary, outcomes, outcomeDelayMs).finally(() => {
        lane.busy = false;
        notify();
      });
    }
  };

  const flushOutcomes = async (force: boolean): Promise<void> => {
    if (!options.publishOutcomes || !outcomes) return;
    const now = force ? Infinity : Date.now();
    for (;;) {
      const due = outcomes.popDue(now, OUTCOME_CHUNK);
      if (due.length === 0) return;
      await options.publishOutcomes(due);
      summary.outcomes += due.length;
    }
  };

  for (;;) {
    const now = Date.now();
    while (!next.done && queued < maxQueued && tsOf(next.value) <= now && tsOf(next.value) <= oldestPending() + maxSkewMs) {
      if (inHistory && !isHistory(next.value)) {
        // Live traffic waits for the whole history to be acknowledged.
        if (!idle()) break;
        inHistory = false;
      }
      const e = next.value;
      const lane = lanes[hashKey(String(e.body[keyField])) % nLanes] as Lane;
      lane.queue.push(e);
      queued++;
      next = events.next();
    }
    pump();
    await flushOutcomes(false);
    options.onProgress?.(summary);
    if (next.done && idle()) break;
    pump(); // lanes freed while publishing outcomes
    // A backlog (more due than the lanes take, or live waiting for history): wait for a free lane
    // rather than a tick. Otherwise tick (or a free lane, when events wait for it).
    const backlog = !next.done && tsOf(next.value) <= Date.now();
    if (backlog && !anyBusy()) continue;
    await new Promise<void>((resolve) => {
      const timer = backlog ? null : setTimeout(() => {
        wake = null;
        resolve();
      }, tickMs);
      wake = () => {
        if (timer) clearTimeout(timer);
        resolve();
      };
    });
  }
  if (outcomes && outcomes.size > 0) {
    await new Promise((r) => setTimeout(r, Math.max(0, outcomes.lastDue - Date.now())));
    await flushOutcomes(true);
  }
  options.onProgress?.(summary);
  return summary;
}

function tsOf(e: GeneratedEvent): number {
  return e.body.ts as number;
}

/** FNV-1a, 32 bits. */
function hashKey(key: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < key.length; i++) {
    h ^= key.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return h >>> 0;
}

/** Pending labels, a binary min-heap on due time: lanes finish out of order, and a day of history may leave many pending. */
class DueQueue {
  private readonly heap: PendingOutcome[] = [];
  lastDue = -Infinity;

  get size(): number {
    return this.heap.length;
  }

  push(item: PendingOutcome): void {
    const h = this.heap;
    h.push(item);
    if (item.due > this.lastDue) this.lastDue = item.due;
    let i = h.length - 1;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if ((h[parent] as PendingOutcome).due <= item.due) break;
      h[i] = h[parent] as PendingOutcome;
      i = parent;
    }
    h[i] = item;
  }

  /** Removes and returns, earliest first, at most `max` outcomes due at or before `now`. */
  popDue(now: number, max: number): Outcome[] {
    const out: Outcome[] = [];
    const h = this.heap;
    while (out.length < max && h.length > 0 && (h[0] as PendingOutcome).due <= now) {
      out.push((h[0] as PendingOutcome).outcome);
      const last = h.pop() as PendingOutcome;
      if (h.length === 0) break;
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        if (l >= h.length) break;
        const r = l + 1;
        const c = r < h.length && (h[r] as PendingOutcome).due < (h[l] as PendingOutcome).due ? r : l;
        if ((h[c] as PendingOutcome).due >= last.due) break;
        h[i] = h[c] as PendingOutcome;
        i = c;
      }
      h[i] = last;
    }
    return out;
  }
}

/** The stream from `start` on: the history events, then `live` more. */
function* generator(options: SimulationOptions, start: number, live: number, isHistory: (e: GeneratedEvent) => boolean): Generator<GeneratedEvent> {
  let left = live;
  for (const e of allEvents(options, start)) {
    if (!isHistory(e) && left-- <= 0) return;
    yield e;
  }
}

function* allEvents(options: SimulationOptions, start: number): Generator<GeneratedEvent> {
  if (options.stream === 'transactions') {
    for (const sim of generateTransactions({ seed: options.seed, startTs: start, ratePerSec: options.ratePerSec, drift: options.drift })) {
      const event = { ...sim.event, event_id: `${options.runId}-${sim.event.event_id}` };
      yield { body: event, label: { event, isFraud: sim.isFraud } };
    }
  } else {
    const price = new Map(itemCatalog({ seed: options.seed }).map((i) => [i.item_id, i.price]));
    for (const event of generateInteractions({ seed: options.seed, startTs: start, ratePerSec: options.ratePerSec, drift: options.drift })) {
      const body = { ...event, event_id: `${options.runId}-${event.event_id}` };
      const feedback = (ts: number): Outcome => ({ event_id: body.event_id, entity_id: event.user_id, item_id: event.item_id, label: event.action, value: event.action === 'purchase' ? (price.get(event.item_id) ?? 1) : 1, ts });
      yield { body, label: null, feedback };
    }
  }
}

function noteError(summary: SimulationSummary, message: string): void {
  if (summary.errors.length < 20) summary.errors.push(message);
}

/** Milliseconds of a Retry-After header (seconds or an HTTP date), or null without a usable one. */
function retryAfterMs(header: string | null): number | null {
  if (header === null || header.trim() === '') return null;
  const seconds = Number(header);
  const ms = Number.isFinite(seconds) ? seconds * 1000 : Date.parse(header) - Date.now();
  return Number.isFinite(ms) ? Math.min(MAX_RETRY_AFTER_MS, Math.max(0, ms)) : null;
}

/**
 * Posts one batch, retrying it in place on 429 (after Retry-After, default 1 s), 503 and network
 * errors (after Retry-After or an exponential backoff), maxAttempts times in all; then it counts as
 * a failed request. 202 and 400 count their per-event rejections; other answers fail the request.
 */
async function post(options: SimulationOptions, batch: GeneratedEvent[], summary: SimulationSummary, outcomes: DueQueue | null, delayMs: number): Promise<void> {
  const maxAttempts = Math.max(1, options.maxAttempts ?? 10);
  const baseMs = options.retryBaseMs ?? 500;
  const payload = JSON.stringify(batch.map((e) => e.body));
  let res: Response | null = null;
  let body: { accepted?: number; rejected?: { index: number }[]; error?: { code: string; message: string } } = {};
  for (let attempt = 1; ; attempt++) {
    let waitMs: number;
    let failure: string;
    try {
      res = await fetch(`${options.gatewayUrl}/v1/events/${options.stream}`, {
        method: 'POST',
        headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${options.apiKey}` },
        body: payload,
      });
      body = (await res.json().catch(() => ({}))) as typeof body;
      if (res.status !== 429 && res.status !== 503) break;
      failure = `${res.status} ${body.error?.code ?? ''} ${body.error?.message ?? ''}`.trim();
      waitMs = retryAfterMs(res.headers.get('retry-after')) ?? (res.status === 429 ? 1000 : Math.min(MAX_BACKOFF_MS, baseMs * 2 ** (attempt - 1)));
    } catch (err) {
      res = null;
      failure = (err as Error).message;
      waitMs = Math.min(MAX_BACKOFF_MS, baseMs * 2 ** (attempt - 1));
    }
    if (attempt >= maxAttempts) {
      summary.failedRequests++;
      noteError(summary, `${failure} (after ${attempt} attempts)`);
      return;
    }
    summary.retries++;
    await new Promise((r) => setTimeout(r, waitMs));
  }
  if (res.status !== 202) {
    summary.failedRequests++;
    noteError(summary, `${res.status} ${body.error?.code ?? ''} ${body.error?.message ?? ''}`.trim());
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
      // The label is due outcome-delay after the event time: at once for most history events.
      const ts = tsOf(e) + delayMs;
      outcomes?.push({ due: ts, outcome: outcomeFor(e.label, ts) });
    } else if (e.feedback) {
      const ts = tsOf(e) + delayMs;
      outcomes?.push({ due: ts, outcome: e.feedback(ts) });
    }
  });
}
