import type { Redis } from 'ioredis';
import type { BatchContext, ProcessorLogic, Output, SourceRecord } from '../../topology/runtime/processor.js';
import { emit, reject, wholeBatch } from '../../topology/runtime/processor.js';
import { FabricError, messageOf } from '../../topology/errors.js';
import type { AccountFeatureUpdate, Transaction } from '../../schemas/types.generated.js';
import { ACCOUNT_FEATURE_NAMES, ACCOUNT_HISTORY_MS, HOUR_MS, compareEvents, computeAccountFeatures, type AccountEventRef, type AccountFeatures } from './account.js';
import { accountKeys, decodeMember, encodeMember } from './redis-keys.js';
import { splitTransactions } from '../shared/validate.js';

export interface FeaturesProcessorOptions {
  readonly redis: Redis;
  readonly keyPrefix: string;
  /** How far an event's ts may be ahead of its record's Kafka timestamp (FABRIC_MAX_CLOCK_SKEW_SEC). */
  readonly maxClockSkewMs: number;
  /** How far behind its partition's watermark an event may be and still count (FABRIC_FEATURES_LATENESS_SEC). */
  readonly latenessMs: number;
  readonly outputTopic?: string;
  /** Where events beyond the lateness go, unchanged (default late.transactions). */
  readonly lateTopic?: string;
}

/** The task state of one input partition, saved after every batch. */
interface PartitionState {
  /** Greatest ts of the partition's admitted events before the batch; null before the first one. */
  readonly watermark: number | null;
}

/**
 * The `account` feature group online.
 *
 * Per batch of one partition: the partition's event-time watermark comes from the task state (which
 * the runtime versions by input position, so a retried batch starts from exactly the state its first
 * attempt started from). Each record, in offset order: a ts too far in the future is dead-lettered
 * (FABRIC_EVENT_TIME_SKEW); then an event id its account already holds (a client retry or redelivery:
 * a member before the batch's first offset, or admitted earlier in the batch) is a no-op, whatever its
 * lateness: no output, no write, the watermark unchanged (its first occurrence's outputs stand, so
 * scoring never scores the event twice); then a ts at or below watermark - lateness goes to the late
 * topic, unchanged; the others are admitted, and only they move the watermark. Each account's events
 * live in one Redis sorted set (score = ts, member = offset, id, amount, counterparty); the features of
 * an event are computed from the members at smaller offsets only, by the pure function the offline
 * training set uses, and emitted with the record as source (what a chained scoring processor reads).
 * One pipelined read of the set of the account of every record not dead-lettered (late ones included:
 * the redelivery check comes first), one MULTI with the writes of the accounts the batch admitted
 * events to (none when it admits nothing), then the state save.
 *
 * What makes a batch's effect a pure function of the partition's records, whatever crashed before:
 * - members carry their offset, so members written by an attempt whose transaction aborted (at or past
 *   this batch's first offset) are ignored and re-derived; re-adding them writes the same member, as
 *   the events an attempt admits depend only on the records, the loaded watermark and the configuration
 *   (changing the skew or lateness settings while a batch is in doubt is the one way to diverge). The
 *   redelivery check also reads the members before the batch, but a redelivery whose first occurrence
 *   they no longer hold (trimmed: see trimBound()) is late, so it is admitted in neither case; only
 *   whether it goes to the late topic or nowhere can differ, and neither writes anything;
 * - the latest hash is only overwritten by a greater (ts, offset) (a Lua compare-and-set), so late,
 *   replayed or zombie writes never regress it, and the values written for an event never differ;
 * - trimming is relative to the watermark the batch loaded, never to the batch's contents (see trim()).
 * An account's events must all come from one partition (topics are keyed by account id): offsets of two
 * partitions do not order anything.
 *
 * The sets have no TTL. A wall-clock TTL would be unsafe: after an outage or a lag longer than it, or
 * for an account idle longer than it, the next event would find its window or its previous event
 * (seconds_since_last_txn has no horizon) gone and differ from the offline recomputation. Memory stays
 * bounded per account instead: a set holds the events from trimBound() of the watermark loaded by the
 * last batch that admitted an event of the account (max(24 h, lateness) + lateness + 1 h behind it) on,
 * plus one anchor, and memory grows with the number of accounts, as it does for the latest hashes.
 */
export function featuresProcessor(options: FeaturesProcessorOptions): ProcessorLogic {
  const keys = accountKeys(options.keyPrefix);
  const outputTopic = options.outputTopic ?? 'features.account';
  const lateTopic = options.lateTopic ?? 'late.transactions';
  const { redis, maxClockSkewMs, latenessMs } = options;
  const tooFarAhead = ({ record, txn }: { record: SourceRecord; txn: Transaction }): boolean => txn.ts > record.timestamp + maxClockSkewMs;

  async function handle(records: SourceRecord[], ctx: BatchContext): Promise<Output[]> {
    const startWatermark = parseState(await ctx.state.load()).watermark ?? -Infinity;
    const { valid, rejects: outputs } = splitTransactions(records);
    const timely = valid.filter((v) => !tooFarAhead(v));

    // Every account a timely record names is read, late ones included: a record is recognised as a
    // redelivery before it is judged late (the decision below needs the account's event ids).
    const firstOffset = Number(ctx.firstOffset);
    const accounts = timely.length > 0 ? await readAccounts(redis, keys.window, [...new Set(timely.map((v) => v.txn.account_id))], firstOffset) : new Map<string, AccountWindow>();

    // In offset order: too far ahead -> DLQ; an event id the account already holds -> nothing at all;
    // at or below watermark - lateness -> late topic; else admitted (it alone moves the watermark).
    let watermark = startWatermark;
    for (const v of valid) {
      const { record, txn } = v;
      if (tooFarAhead(v)) {
        outputs.push(reject(record, skewError(txn.ts, record.timestamp, maxClockSkewMs)));
        continue;
      }
      const account = accounts.get(txn.account_id)!;
      // A redelivery (a client retry) whatever its lateness: its first occurrence's outputs stand;
      // routing it late would make scoring emit a second (fallback) prediction for the event.
      if (account.byId.has(txn.event_id)) continue;
      if (txn.ts <= watermark - latenessMs) {
        outputs.push(emit(lateTopic, txn.account_id, txn, record));
        continue;
      }
      watermark = Math.max(watermark, txn.ts);
      const event = account.admit({ eventId: txn.event_id, ts: txn.ts, offset: Number(record.offset), amount: txn.amount, counterpartyId: txn.counterparty_id });
      const features = computeAccountFeatures(account.events.values(), event.ts, event);
      if (!account.newest || compareEvents(event, account.newest.event) > 0) account.newest = { event, features };
      const update: AccountFeatureUpdate = {
        event_id: event.eventId,
        entity_id: txn.account_id,
        ts: event.ts,
        ...features,
        source_topic: record.topic,
        source_partition: record.partition,
        source_offset: event.offset,
      };
      outputs.push(emit(outputTopic, txn.account_id, update, record));
    }

    // Only the accounts the batch admitted to are written (and trimmed): a late or redelivered record
    // changes nothing in Redis, and a batch that admits nothing writes nothing.
    const touched = [...accounts].filter(([, account]) => account.added.length > 0);
    if (touched.length > 0) {
      const write = redis.multi();
      const bound = trimBound(startWatermark, latenessMs);
      for (const [accountId, account] of touched) {
        const key = keys.window(accountId);
        write.zadd(key, ...account.added.flatMap((e) => [e.ts, encodeMember(e)]));
        const trimmed = trim(account.events.values(), bound);
        if (trimmed.length > 0) write.zrem(key, ...trimmed.map(encodeMember));
        const { event, features } = account.newest!;
        write.eval(SET_LATEST, 1, keys.latest(accountId), event.ts, event.offset, ...Object.entries({ ...stringify(features), ts: String(event.ts), offset: String(event.offset), event_id: event.eventId }).flat());
      }
      // Every write is idempotent (same members, compare-and-set hash), so a failed MULTI is retried whole.
      const written = await write.exec();
      const failed = written ? written.find(([err]) => err)?.[0] : new Error('the transaction was discarded');
      if (failed) throw sinkFailed('writing the account windows', failed);
    }

    const state: PartitionState = { watermark: Number.isFinite(watermark) ? watermark : null };
    await ctx.state.save(JSON.stringify(state));
    return outputs;
  }

  return {
    name: 'features',
    process: wholeBatch(handle),
  };
}

/**
 * Features of an account as of the read instant `asOf` (epoch ms) from its window in Redis: every
 * event with ts <= asOf counts, so a 1 h count falls to 0 an hour after the last event even without a
 * new event. Null when the account has no events. Exact for instants from about watermark - lateness -
 * 1 h on (older events have been trimmed; the offline store answers for the past). It may include the
 * events of a batch whose transaction is being retried: the retry admits exactly those events again.
 */
export async function readOnlineAccountFeatures(redis: Redis, keyPrefix: string, accountId: string, asOf: number): Promise<AccountFeatures | null> {
  const flat = await redis.zrange(accountKeys(keyPrefix).window(accountId), 0, -1, 'WITHSCORES');
  const events = decodeMembers(flat);
  return events.length === 0 ? null : computeAccountFeatures(events, asOf);
}

/** One account's events as the batch sees them. */
class AccountWindow {
  /** By offset: the stored members before the batch, then the events the batch admits. */
  readonly events = new Map<number, AccountEventRef>();
  /** First occurrence of each event id. */
  readonly byId = new Map<string, AccountEventRef>();
  /** Events this batch admits, in offset order. */
  readonly added: AccountEventRef[] = [];
  /** This batch's greatest admitted event by (ts, offset) and its features (for the latest hash). */
  newest: { event: AccountEventRef; features: AccountFeatures } | undefined;

  remember(e: AccountEventRef): void {
    this.events.set(e.offset, e);
    const first = this.byId.get(e.eventId);
    if (!first || e.offset < first.offset) this.byId.set(e.eventId, e);
  }

  admit(e: AccountEventRef): AccountEventRef {
    this.remember(e);
    this.added.push(e);
    return e;
  }
}

/** One pipelined read of every account's whole set, keeping only members before the batch. */
async function readAccounts(redis: Redis, windowKey: (account: string) => string, accountIds: readonly string[], firstOffset: number): Promise<Map<string, AccountWindow>> {
  const read = redis.pipeline();
  for (const id of accountIds) read.zrange(windowKey(id), 0, -1, 'WITHSCORES');
  const results = await read.exec();
  if (!results) throw sinkFailed('reading the account windows', new Error('the pipeline returned nothing'));
  const accounts = new Map<string, AccountWindow>();
  accountIds.forEach((id, i) => {
    const [err, flat] = results[i]!;
    if (err) throw sinkFailed('reading the account windows', err);
    const account = new AccountWindow();
    // Members at or past the batch's first offset were written by an attempt whose transaction
    // aborted (or by a zombie): this batch derives them again from its own records.
    for (const e of decodeMembers(flat as string[])) if (e.offset < firstOffset) account.remember(e);
    accounts.set(id, account);
  });
  return accounts;
}

function decodeMembers(flat: readonly string[]): AccountEventRef[] {
  const events: AccountEventRef[] = [];
  for (let j = 0; j + 1 < flat.length; j += 2) {
    const e = decodeMember(flat[j]!, flat[j + 1]!);
    if (e) events.push(e);
  }
  return events;
}

/**
 * Events older than this bound (relative to the watermark the batch loaded) are trimmed, but for one
 * anchor. Let W be the watermark at the batch's start and L the lateness; every event processed from
 * now on (this batch, its retries with any boundaries, later batches) has a watermark W' >= W before it.
 * - An admitted event at ts t is not late: t > W' - L >= W - L, so its windows (ts > t - 24 h) lie
 *   above W - L - 24 h, well above the bound: trimming never removes a member any window needs.
 * - Its previous event (seconds_since_last_txn) is either above the bound too, or the greatest member
 *   below it, which is the anchor kept: no event admitted later can sit below the bound (it too is
 *   not late), so the anchor stays the greatest member below every later bound, until a greater one
 *   takes its place.
 * - A redelivery (same event id, same ts t1) is recognised by its first occurrence's member. Every trim
 *   so far used a bound <= this one, so a first occurrence with t1 >= the bound is always still there:
 *   its redeliveries produce nothing, late or not. Below that horizon, max(24 h, L) + L + 1 h behind W
 *   (25 h + L for L <= 24 h), the member may be gone (it stays if it is the anchor, or if no batch
 *   has written its account since a bound passed it): a redelivery is then no longer recognised and,
 *   being late (t1 < W - L), goes to the late topic, where scoring gives the event a second (fallback)
 *   prediction. It changes no state either way.
 * A late event (a replay of old data included) never reaches the window, so it needs nothing below
 * the bound. A replay from an earlier offset (a reset) re-adds every member it needs from its own
 * records; what the first run left at those offsets is the same members, or below its anchors. So is
 * what a zombie may re-add after a trim: members below an anchor, which change no value and go at the
 * next trim. The 1 h margin keeps the trim away from the edge of the windows.
 */
function trimBound(watermark: number, latenessMs: number): number {
  return watermark - Math.max(ACCOUNT_HISTORY_MS, latenessMs) - latenessMs - HOUR_MS;
}

/** The members to remove: every event below the bound but the greatest one by (ts, offset). */
function trim(events: Iterable<AccountEventRef>, bound: number): AccountEventRef[] {
  const below: AccountEventRef[] = [];
  let anchor: AccountEventRef | undefined;
  for (const e of events) {
    if (e.ts >= bound) continue;
    if (!anchor) anchor = e;
    else if (compareEvents(e, anchor) > 0) {
      below.push(anchor);
      anchor = e;
    } else below.push(e);
  }
  return below;
}

// KEYS[1] the latest hash; ARGV: ts, offset, then field/value pairs. Overwrites only with a greater
// (ts, offset), so the hash always holds the features of the account's greatest event whatever order
// (late events, retries, a zombie instance) writes arrive in. Offsets and ms timestamps fit in doubles.
const SET_LATEST = `
local cur = redis.call('HMGET', KEYS[1], 'ts', 'offset')
local ts, off = tonumber(cur[1]), tonumber(cur[2])
local nts, noff = tonumber(ARGV[1]), tonumber(ARGV[2])
if ts and off and (nts < ts or (nts == ts and noff <= off)) then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
return 1
`;

function sinkFailed(what: string, cause: unknown): FabricError {
  return new FabricError('FABRIC_SINK_FAILED', `Redis failed ${what}: ${messageOf(cause)}`, { cause });
}

function skewError(ts: number, recordTs: number, maxClockSkewMs: number): FabricError {
  const hint = ts > recordTs * 100 ? '; it looks like microseconds or nanoseconds, ts must be epoch milliseconds' : '';
  return new FabricError('FABRIC_EVENT_TIME_SKEW', `ts ${ts} is ${ts - recordTs} ms ahead of the record's Kafka timestamp ${recordTs} (at most ${maxClockSkewMs} ms allowed)${hint}`);
}

function parseState(raw: string | null): PartitionState {
  if (raw === null) return { watermark: null };
  const state = JSON.parse(raw) as Partial<PartitionState>;
  if (state.watermark !== null && typeof state.watermark !== 'number') throw new Error(`features task state is not {"watermark": number|null}: ${raw}`);
  return { watermark: state.watermark };
}

function stringify(features: AccountFeatures): Record<string, string> {
  const out: Record<string, string> = {};
  for (const name of ACCOUNT_FEATURE_NAMES) out[name] = features[name] === null ? '' : String(features[name]);
  return out;
}

/** Parses a latest-features hash back into features (empty string = null). */
export function parseFeatures(raw: Record<string, string | number | null>): AccountFeatures {
  const out: Record<string, number | null> = {};
  for (const name of ACCOUNT_FEATURE_NAMES) {
    const v = raw[name];
    out[name] = v === '' || v === null || v === undefined ? null : Number(v);
  }
  return out as unknown as AccountFeatures;
}
