import type { Redis } from 'ioredis';
import type { ProcessorLogic, Output, SourceRecord } from '../../topology/runtime/processor.js';
import { emit, wholeBatch } from '../../topology/runtime/processor.js';
import type { AccountFeatureUpdate } from '../../schemas/types.generated.js';
import { ACCOUNT_FEATURE_NAMES, ACCOUNT_HISTORY_MS, HOUR_MS, computeAccountFeatures, type AccountEventRef, type AccountFeatures } from './account.js';
import { accountKeys, decodeMember, encodeMember } from './redis-keys.js';
import { splitTransactions } from '../shared/validate.js';

export interface FeaturesProcessorOptions {
  readonly redis: Redis;
  readonly keyPrefix: string;
  readonly snapshotTtlSec: number;
  readonly outputTopic?: string;
}

/**
 * The `account` feature group online: each account's last 24 h of events live in a Redis sorted set
 * (member = event id, so replays are idempotent); features are computed point-in-time by the same
 * pure function the offline training set uses, written as the latest hash and a per-event snapshot,
 * and emitted to features.account. Per batch: one pipelined read, one MULTI write.
 */
export function featuresProcessor(options: FeaturesProcessorOptions): ProcessorLogic {
  const keys = accountKeys(options.keyPrefix);
  const outputTopic = options.outputTopic ?? 'features.account';
  const { redis } = options;

  async function handle(records: SourceRecord[]): Promise<Output[]> {
    const { valid, rejects: outputs } = splitTransactions(records);
    if (valid.length === 0) return outputs;

    // One read round trip: each account's window from (earliest event in batch - 24h) and its latest ts.
    const accounts = new Map<string, { minTs: number; maxTs: number }>();
    for (const { txn } of valid) {
      const a = accounts.get(txn.account_id);
      if (!a) accounts.set(txn.account_id, { minTs: txn.ts, maxTs: txn.ts });
      else {
        a.minTs = Math.min(a.minTs, txn.ts);
        a.maxTs = Math.max(a.maxTs, txn.ts);
      }
    }
    const read = redis.pipeline();
    for (const [account, { minTs }] of accounts) {
      read.zrangebyscore(keys.window(account), minTs - ACCOUNT_HISTORY_MS, '+inf', 'WITHSCORES');
      read.hmget(keys.latest(account), 'ts', 'event_id');
    }
    const results = await read.exec();
    if (!results) throw new Error('Redis pipeline returned nothing');
    const histories = new Map<string, Map<string, AccountEventRef>>();
    const latestTs = new Map<string, number>();
    let i = 0;
    for (const account of accounts.keys()) {
      const [zErr, zRes] = results[i++]!;
      const [hErr, hRes] = results[i++]!;
      if (zErr) throw zErr;
      if (hErr) throw hErr;
      const history = new Map<string, AccountEventRef>();
      const flat = zRes as string[];
      for (let j = 0; j + 1 < flat.length; j += 2) {
        const ref = decodeMember(flat[j]!, flat[j + 1]!);
        if (ref) history.set(ref.eventId, ref);
      }
      const [ts, eventId] = hRes as [string | null, string | null];
      // The window keeps 24 h (+1 h); the account's newest event may be older. It still defines
      // seconds_since_last_txn, as offline, and lies outside every window so it adds to no aggregate.
      if (ts !== null && eventId !== null && !history.has(eventId)) history.set(eventId, { eventId, ts: Number(ts), amount: 0, counterpartyId: '' });
      histories.set(account, history);
      latestTs.set(account, ts === null ? -Infinity : Number(ts));
    }

    const write = redis.multi();
    for (const { record, txn } of valid) {
      const history = histories.get(txn.account_id)!;
      const ref: AccountEventRef = { eventId: txn.event_id, ts: txn.ts, amount: txn.amount, counterpartyId: txn.counterparty_id };
      history.set(ref.eventId, ref);
      const features = computeAccountFeatures(history.values(), txn.ts, ref);
      write.zadd(keys.window(txn.account_id), txn.ts, encodeMember(txn.event_id, txn.amount, txn.counterparty_id));
      write.set(keys.snapshot(txn.event_id), JSON.stringify({ ts: txn.ts, ...features }), 'EX', options.snapshotTtlSec);
      // The latest hash only moves forward in event time, so a late or replayed event cannot regress it.
      if (txn.ts >= latestTs.get(txn.account_id)!) {
        latestTs.set(txn.account_id, txn.ts);
        write.hset(keys.latest(txn.account_id), { ...stringify(features), ts: String(txn.ts), event_id: txn.event_id });
      }
      const update: AccountFeatureUpdate = {
        event_id: txn.event_id,
        entity_id: txn.account_id,
        ts: txn.ts,
        ...features,
        source_topic: record.topic,
        source_partition: record.partition,
        source_offset: Number(record.offset),
      };
      outputs.push(emit(outputTopic, txn.account_id, update, record));
    }
    for (const [account, { maxTs }] of accounts) {
      // Keep an hour beyond the longest window for late events; idle accounts expire on their own.
      write.zremrangebyscore(keys.window(account), '-inf', `(${maxTs - ACCOUNT_HISTORY_MS - HOUR_MS}`);
      write.pexpire(keys.window(account), 2 * ACCOUNT_HISTORY_MS);
    }
    const written = await write.exec();
    const failed = written?.find(([err]) => err);
    if (!written || failed) throw failed?.[0] ?? new Error('Redis transaction was discarded');
    return outputs;
  }

  return {
    name: 'features',
    process: wholeBatch(handle),
  };
}

function stringify(features: AccountFeatures): Record<string, string> {
  const out: Record<string, string> = {};
  for (const name of ACCOUNT_FEATURE_NAMES) out[name] = features[name] === null ? '' : String(features[name]);
  return out;
}

/** Parses a latest-features hash or a snapshot back into features (empty string = null). */
export function parseFeatures(raw: Record<string, string | number | null>): AccountFeatures {
  const out: Record<string, number | null> = {};
  for (const name of ACCOUNT_FEATURE_NAMES) {
    const v = raw[name];
    out[name] = v === '' || v === null || v === undefined ? null : Number(v);
  }
  return out as unknown as AccountFeatures;
}
