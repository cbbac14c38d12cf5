/**
 * The fraud model's offline training set: simulated transactions with point-in-time features.
 *
 * Each row is the model input vector (fraudInputRow, the same function online scoring uses) of one
 * event, with the account features computed by the feature engine as of that event, from that
 * account's own events with ts <= t only. Events get increasing offsets in generation order, as if read from one
 * partition, so ties in the same millisecond are ordered as online. Per account only the last 24 h
 * of events are kept, plus the account's latest earlier event, which seconds_since_last_txn needs
 * however old it is (events are generated in event-time order, so that is the oldest one kept).
 *
 * CLI: tsx scripts/build-training-set.ts <out.csv> [--seed 42] [--count 200000]
 */
import { resolve } from 'node:path';
import { accountGroup } from '../topology/features/groups.js';
import { evaluate, featureEvent, type FeatureEvent } from '../topology/features/engine.js';
import { FRAUD_INPUT_NAMES, fraudInputRow } from '../serving/models/fraud-inputs.js';
import { generateTransactions, type TransactionSimOptions } from '../sim/transactions.js';
import { outPathArg, parseIntFlag, runIfMain, writeCsvLines } from './training-set-io.js';

/** Event time of the training stream's start: fixed so the set depends only on seed and count. */
export const TRAINING_START_TS = Date.UTC(2024, 0, 1);
/**
 * 0.4 events/s over the default 2000 accounts: ~35k events per day, ~17 per account per day (the
 * activity is skewed), so both the 1 h and the 24 h windows carry signal; 200k events span ~5.8 days.
 */
export const TRAINING_RATE_PER_SEC = 0.4;

export interface FraudTrainingSet {
  header: string[];
  rows: number[][];
  labels: number[];
  amounts: number[];
}

export interface FraudTrainingSetOptions {
  seed: number;
  count: number;
  /** Default TRAINING_RATE_PER_SEC (tests use a small population at a low rate to cover days quickly). */
  ratePerSec?: number;
  /** Default: the simulator's (2000). */
  accounts?: number;
}

/** The simulator options the training set uses (tests regenerate the same events from them). */
export function trainingSimOptions(opts: FraudTrainingSetOptions): TransactionSimOptions {
  return {
    seed: opts.seed,
    count: opts.count,
    startTs: TRAINING_START_TS,
    ratePerSec: opts.ratePerSec ?? TRAINING_RATE_PER_SEC,
    ...(opts.accounts === undefined ? {} : { accounts: opts.accounts }),
  };
}

export function buildFraudTrainingSet(opts: FraudTrainingSetOptions): FraudTrainingSet {
  const histories = new Map<string, FeatureEvent[]>();
  const rows: number[][] = [];
  const labels: number[] = [];
  const amounts: number[] = [];
  let offset = 0;
  for (const { event, isFraud } of generateTransactions(trainingSimOptions(opts))) {
    let history = histories.get(event.account_id);
    if (history === undefined) {
      history = [];
      histories.set(event.account_id, history);
    }
    // Events come in event-time order with increasing offsets: appending keeps the history sorted.
    const ref = featureEvent(accountGroup, event.event_id, event.ts, offset++, event as unknown as Record<string, unknown>);
    history.push(ref);
    // Expire events outside the longest window, but keep the latest event before this one.
    while (history.length > 2 && history[0]!.ts <= event.ts - accountGroup.maxWindowMs) history.shift();
    const features = evaluate(accountGroup, history, { event: ref })!;
    rows.push(fraudInputRow(event, features));
    labels.push(isFraud ? 1 : 0);
    amounts.push(event.amount);
  }
  return { header: [...FRAUD_INPUT_NAMES], rows, labels, amounts };
}

/** Writes the set as CSV: the input names, then `label`. */
export async function writeFraudTrainingCsv(path: string, set: FraudTrainingSet): Promise<void> {
  await writeCsvLines(path, [...set.header, 'label'], csvLines(set));
}

function* csvLines(set: FraudTrainingSet): Generator<string> {
  for (let i = 0; i < set.rows.length; i++) yield `${(set.rows[i] as number[]).join(',')},${set.labels[i] as number}`;
}

async function main(args: string[]): Promise<void> {
  const out = outPathArg(args, 'usage: build-training-set.ts <out.csv> [--seed 42] [--count 200000]');
  const seed = parseIntFlag(args, '--seed', 42);
  const count = parseIntFlag(args, '--count', 200_000);
  const set = buildFraudTrainingSet({ seed, count });
  await writeFraudTrainingCsv(resolve(out), set);
  const frauds = set.labels.reduce((s, l) => s + l, 0);
  console.log(`wrote ${set.rows.length} rows (${frauds} fraud) to ${out}`);
}

runIfMain(import.meta.url, 'build-training-set', main);
