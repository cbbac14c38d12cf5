/**
 * The recs model's offline training set: simulated interactions, one query per interaction, one
 * labelled row per (query, candidate item), every input point in time.
 *
 * Interactions come from sim/interactions.ts (fixed start ts, seed, count, rate; 1000 users, 500
 * items); offsets are the generation order, as if read from one partition, so ties in the same
 * millisecond are ordered as online. For the n-th interaction e of user u (query n, asOf = (e.ts, n)):
 *
 * - candidates: recsCandidates(u's events, asOf) (the distinct items u touched in the last 24 h up to
 *   e, e's item included, most recent first, at most RECS_MAX_CANDIDATES), as the recs processor does;
 * - user features: the feature engine over u's events with the event cut e (as features-user emits);
 * - item features of candidate c: the engine over c's events with the instant cut e.ts (as the online
 *   store is read), so events of the same millisecond generated after e count, later ones never: the
 *   query is completed only once an event with a greater ts arrives (or the stream ends);
 * - cross features: recsCrossFeatures(u's events, c, asOf);
 * - label: 1 if u clicks or purchases c in (e.ts, e.ts + 30 min], else 0. A query is emitted once its
 *   label window has closed (an event past it arrived); queries whose window reaches the end of the
 *   generated stream are dropped (their labels would be censored).
 *
 * No input uses an event with ts > e.ts. Memory stays bounded: per user and per item only the last
 * 24 h of events are kept, plus the latest earlier event (which since_previous needs however old it
 * is), and only queries less than 30 min old wait for their labels; rows are streamed out.
 *
 * Sizes (the defaults): 150 000 interactions at 0.1 events/s over 1000 users and 500 items span ~17.4
 * days (~8 600 interactions a day, ~9 per user per day, skewed by activity), so 24 h windows fill and
 * expire many times and the 1 h windows are not empty. That gives 1.77 M rows (11.8 candidates per
 * query on average; the most active users reach the cap of 50), 18.5 k positive rows (1.0 %) and
 * 18.2 k queries with a positive (12 %): enough to train and to rank with. The set builds in ~25 s and
 * the model trains in ~15 s on 2 cores (`npm run train:recs` ~50 s in all). At 0.05/s the lists are
 * short (max 34, 7 on average), so top-10 metrics say little; at 0.2/s the set has 2.9 M rows and
 * builds in ~50 s for little more signal (candidates grow with the rate, the build cost with its square).
 *
 * CSV (`query,ts,item,<RECS_INPUT_NAMES>,label`, in query order = event-time order; `item` is the
 * number of the simulator's item id, so rankings can break score ties by item id as serving does):
 *   tsx scripts/build-recs-training-set.ts <out.csv> [--seed 42] [--count 150000]
 */
import { resolve } from 'node:path';
import { itemGroup, userGroup } from '../topology/features/groups.js';
import { evaluate, featureEvent, type FeatureEvent, type FeatureValues } from '../topology/features/engine.js';
import { RECS_INPUT_NAMES, RECS_MAX_CANDIDATES, recsCandidates, recsCrossFeatures, recsInputRow, type RecsCrossFeatures, type RecsUserEvent } from '../serving/models/recs-inputs.js';
import { generateInteractions, type InteractionSimOptions } from '../sim/interactions.js';
import { outPathArg, parseIntFlag, runIfMain, writeCsvLines } from './training-set-io.js';

/** Event time of the training stream's start: fixed so the set depends only on seed and count. */
export const RECS_TRAINING_START_TS = Date.UTC(2024, 0, 1);
/** See the sizes above. */
export const RECS_TRAINING_RATE_PER_SEC = 0.1;
export const RECS_TRAINING_COUNT = 150_000;
/** A candidate is positive when the user clicks or purchases it within this time after the query. */
export const RECS_LABEL_HORIZON_MS = 30 * 60_000;

export interface RecsTrainingSetOptions {
  seed: number;
  count: number;
  /** Default RECS_TRAINING_RATE_PER_SEC. */
  ratePerSec?: number;
  /** Default: the simulator's (1000). */
  users?: number;
  /** Default: the simulator's (500). */
  items?: number;
  /** Default RECS_LABEL_HORIZON_MS (tests shorten it to cover busy milliseconds in a short stream). */
  labelHorizonMs?: number;
}

/** The simulator options the training set uses (tests regenerate the same events from them). */
export function recsTrainingSimOptions(opts: RecsTrainingSetOptions): InteractionSimOptions {
  return {
    seed: opts.seed,
    count: opts.count,
    startTs: RECS_TRAINING_START_TS,
    ratePerSec: opts.ratePerSec ?? RECS_TRAINING_RATE_PER_SEC,
    ...(opts.users === undefined ? {} : { users: opts.users }),
    ...(opts.items === undefined ? {} : { items: opts.items }),
  };
}

/** One row: the candidate `itemId` of query `query` (the index of the user's interaction). */
export interface RecsExample {
  query: number;
  ts: number;
  userId: string;
  itemId: string;
  row: number[];
  label: 0 | 1;
}

export interface RecsTrainingStats {
  events: number;
  queries: number;
  rows: number;
  positives: number;
  queriesWithPositive: number;
  /** Queries without candidates never happen (the event's own item is one); counted for the check. */
  emptyQueries: number;
  /** Queries dropped at the end of the stream (label window not closed). */
  censored: number;
  fromTs: number | null;
  toTs: number | null;
}

export function emptyRecsStats(): RecsTrainingStats {
  return { events: 0, queries: 0, rows: 0, positives: 0, queriesWithPositive: 0, emptyQueries: 0, censored: 0, fromTs: null, toTs: null };
}

interface Query {
  query: number;
  ts: number;
  userId: string;
  user: FeatureValues;
  candidates: string[];
  cross: RecsCrossFeatures[];
  rows: number[][];
  labels: Uint8Array;
}

/** Drops events the next evaluation at or after `ts` cannot need: outside the 24 h window, except the latest such one. */
function trim<T extends { ts: number }>(history: T[], ts: number, keepOneOlder: boolean): void {
  const edge = ts - userGroup.maxWindowMs;
  if (keepOneOlder) while (history.length > 1 && history[1]!.ts <= edge) history.shift();
  else while (history.length > 0 && history[0]!.ts <= edge) history.shift();
}

/** The examples in query order (event-time order); `stats` is filled as they are produced. */
export function* recsTrainingExamples(opts: RecsTrainingSetOptions, stats: RecsTrainingStats = emptyRecsStats()): Generator<RecsExample> {
  if (userGroup.maxWindowMs !== itemGroup.maxWindowMs) throw new Error('build-recs-training-set: user and item groups must share their longest window');
  const horizon = opts.labelHorizonMs ?? RECS_LABEL_HORIZON_MS;
  const userHistory = new Map<string, FeatureEvent[]>();
  const userEvents = new Map<string, RecsUserEvent[]>();
  const itemHistory = new Map<string, FeatureEvent[]>();
  /** Queries of the current millisecond, whose item features wait for every event at that instant. */
  let buffered: Query[] = [];
  /** Completed queries waiting for their label window to close, in query order; also by user. */
  const waiting: Query[] = [];
  let waitingHead = 0;
  const waitingByUser = new Map<string, Query[]>();

  const complete = (): void => {
    if (buffered.length === 0) return;
    const t = buffered[0]!.ts;
    const itemFeatures = new Map<string, FeatureValues>();
    for (const q of buffered) {
      q.candidates.forEach((item, k) => {
        let f = itemFeatures.get(item);
        if (f === undefined) {
          f = evaluate(itemGroup, itemHistory.get(item) ?? [], { instant: t });
          itemFeatures.set(item, f);
        }
        q.rows.push(recsInputRow(q.user, f, q.cross[k]!));
      });
      waiting.push(q);
      let mine = waitingByUser.get(q.userId);
      if (mine === undefined) waitingByUser.set(q.userId, (mine = []));
      mine.push(q);
    }
    buffered = [];
  };

  function* release(q: Query): Generator<RecsExample> {
    const mine = waitingByUser.get(q.userId)!;
    mine.shift(); // per user the queue is in query order too
    if (mine.length === 0) waitingByUser.delete(q.userId);
    stats.queries++;
    if (q.candidates.length === 0) stats.emptyQueries++;
    let positives = 0;
    for (let k = 0; k < q.candidates.length; k++) {
      const label = q.labels[k] === 1 ? 1 : 0;
      positives += label;
      yield { query: q.query, ts: q.ts, userId: q.userId, itemId: q.candidates[k]!, row: q.rows[k]!, label };
    }
    stats.rows += q.candidates.length;
    stats.positives += positives;
    if (positives > 0) stats.queriesWithPositive++;
    stats.fromTs ??= q.ts;
    stats.toTs = q.ts;
  }

  let offset = 0;
  let lastTs = -Infinity;
  for (const event of generateInteractions(recsTrainingSimOptions(opts))) {
    const ts = event.ts;
    if (ts < lastTs) throw new Error(`build-recs-training-set: the simulator went back in time (${ts} < ${lastTs})`);
    lastTs = ts;
    stats.events++;
    // Every event at the buffered instant has arrived: complete those queries.
    if (buffered.length > 0 && ts > buffered[0]!.ts) complete();
    // Labels: a click or purchase of an item marks the user's queries of the last 30 min that had it.
    if (event.action !== 'view') {
      for (const q of waitingByUser.get(event.user_id) ?? []) {
        if (!(q.ts < ts && ts <= q.ts + horizon)) continue;
        const k = q.candidates.indexOf(event.item_id);
        if (k >= 0) q.labels[k] = 1;
      }
    }
    // Queries whose label window closed before this event are final.
    while (waitingHead < waiting.length && waiting[waitingHead]!.ts + horizon < ts) yield* release(waiting[waitingHead++]!);
    if (waitingHead > 4096 && waitingHead * 2 > waiting.length) {
      waiting.splice(0, waitingHead);
      waitingHead = 0;
    }

    const raw = event as unknown as Record<string, unknown>;
    const uRef = featureEvent(userGroup, event.event_id, ts, offset, raw);
    const iRef = featureEvent(itemGroup, event.event_id, ts, offset, raw);
    const asOf = { ts, offset };
    offset++;
    // Events come in event-time order with increasing offsets: appending keeps every history sorted.
    let uh = userHistory.get(event.user_id);
    if (uh === undefined) userHistory.set(event.user_id, (uh = []));
    uh.push(uRef);
    trim(uh, ts, true);
    let ue = userEvents.get(event.user_id);
    if (ue === undefined) userEvents.set(event.user_id, (ue = []));
    ue.push({ itemId: event.item_id, action: event.action, ts, offset: asOf.offset });
    trim(ue, ts, false);
    let ih = itemHistory.get(event.item_id);
    if (ih === undefined) itemHistory.set(event.item_id, (ih = []));
    ih.push(iRef);
    trim(ih, ts, true);

    const candidates = recsCandidates(ue, asOf, RECS_MAX_CANDIDATES);
    buffered.push({
      query: asOf.offset,
      ts,
      userId: event.user_id,
      user: evaluate(userGroup, uh, { event: uRef }),
      candidates,
      cross: candidates.map((item) => recsCrossFeatures(ue, item, asOf)),
      rows: [],
      labels: new Uint8Array(candidates.length),
    });
  }
  complete();
  // The stream ends at lastTs: a window (q.ts, q.ts + 30 min] is complete only if it ends before it.
  while (waitingHead < waiting.length) {
    const q = waiting[waitingHead++]!;
    if (q.ts + horizon < lastTs) yield* release(q);
    else stats.censored++;
  }
}

export interface RecsTrainingSet {
  header: string[];
  examples: RecsExample[];
  stats: RecsTrainingStats;
}

/** The whole set in memory (tests and small sets; the CLI streams). */
export function buildRecsTrainingSet(opts: RecsTrainingSetOptions): RecsTrainingSet {
  const stats = emptyRecsStats();
  const examples = [...recsTrainingExamples(opts, stats)];
  return { header: [...RECS_INPUT_NAMES], examples, stats };
}

/** The number of a simulator item id (I00042 -> 42): ids and numbers sort alike. */
export function itemNumber(itemId: string): number {
  const m = /^I(\d+)$/.exec(itemId);
  if (m === null) throw new Error(`build-recs-training-set: ${JSON.stringify(itemId)} is not a simulator item id`);
  return Number(m[1]);
}

/** Writes examples as CSV: `query`, `ts`, `item`, the input names, then `label`. */
export async function writeRecsTrainingCsv(path: string, examples: Iterable<RecsExample>): Promise<void> {
  await writeCsvLines(path, ['query', 'ts', 'item', ...RECS_INPUT_NAMES, 'label'], csvLines(examples));
}

function* csvLines(examples: Iterable<RecsExample>): Generator<string> {
  for (const e of examples) yield `${e.query},${e.ts},${itemNumber(e.itemId)},${e.row.join(',')},${e.label}`;
}

async function main(args: string[]): Promise<void> {
  const out = outPathArg(args, 'usage: build-recs-training-set.ts <out.csv> [--seed 42] [--count 150000]');
  const seed = parseIntFlag(args, '--seed', 42);
  const count = parseIntFlag(args, '--count', RECS_TRAINING_COUNT);
  const stats = emptyRecsStats();
  await writeRecsTrainingCsv(resolve(out), recsTrainingExamples({ seed, count }, stats));
  console.log(`wrote ${stats.rows} rows (${stats.positives} positive) of ${stats.queries} queries (${stats.queriesWithPositive} with a positive, ${stats.censored} censored at the end) to ${out}`);
}

runIfMain(import.meta.url, 'build-recs-training-set', main);
