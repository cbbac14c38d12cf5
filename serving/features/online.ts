import type { Redis } from 'ioredis';
import type { FeatureGroup } from '../../topology/features/definition.js';
import { compareEvents, evaluate, featureEvent, type FeatureEvent, type FeatureValues } from '../../topology/features/engine.js';
import { FabricError, messageOf } from '../../topology/errors.js';
import { decodeMembers, groupKeys, parseLatest, type LatestRow } from './redis-keys.js';

export interface OnlineFeatures {
  readonly entity: string;
  /** Features as of the read instant (counts 0 before the entity's first event); null for an entity without any event. */
  readonly values: FeatureValues | null;
  /**
   * False when the instant is older than what the online store keeps for the entity (events before
   * its trim bound may be gone): read the offline store (offline.ts) for such instants.
   */
  readonly exact: boolean;
}

/** At most this many entities per call (one pipelined round trip). */
export const MAX_ONLINE_ENTITIES = 1000;

// KEYS[1] the entity's window, KEYS[2] its latest hash; ARGV[1] the instant, ARGV[2] the start of the
// longest window (exclusive). Returns the members in (start, instant], the members at the greatest
// event time at or before the start (the anchor since_previous/last may need), the greatest event
// time trimmed (older windows may miss events)
// whether the entity has any event: one atomic snapshot per entity.
const ONLINE_READ = `
local win = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. ARGV[2], ARGV[1])
local anchor = {}
local top = redis.call('ZREVRANGEBYSCORE', KEYS[1], ARGV[2], '-inf', 'WITHSCORES', 'LIMIT', 0, 1)
if #top > 0 then anchor = redis.call('ZRANGEBYSCORE', KEYS[1], top[2], top[2]) end
local bound = redis.call('HGET', KEYS[2], 'trim_bound') or ''
local known = redis.call('ZCARD', KEYS[1])
return {win, anchor, bound, known}
`;

/** Registers the read script on the client once: pipelines then send EVALSHA (the script text only when Redis lacks it). */
function defineOnlineRead(redis: Redis): void {
  if (!('fabricOnlineRead' in redis)) redis.defineCommand('fabricOnlineRead', { numberOfKeys: 2, lua: ONLINE_READ });
}

/** The read script, for benchmarks that replay the exact command shape with redis-benchmark. */
export const ONLINE_READ_SCRIPT = ONLINE_READ;

/**
 * The group's features of up to 1,000 entities as of `asOf` (epoch ms; default now), in one pipelined
 * round trip, evaluated by the same engine as the stream and the offline store: events with
 * ts <= asOf count, so windows expire without a new event. May include the events of a batch whose
 * Kafka transaction is being retried (its retry admits exactly those events again).
 */
export async function readOnlineFeatures(redis: Redis, keyPrefix: string, group: FeatureGroup, entities: readonly string[], asOf: number = Date.now()): Promise<OnlineFeatures[]> {
  const snapshots = await readSnapshots(redis, keyPrefix, group, entities.map((entity) => ({ entity, asOf })));
  return snapshots.map(({ entity, events, known, exact }) => ({ entity, values: known ? evaluate(group, events, { instant: asOf }) : null, exact }));
}

/**
 * Features of (entity, instant) pairs, each as of its own instant: one snapshot per distinct entity
 * (covering its earliest instant's window to its latest instant), pipelined per 1,000 entities, then
 * evaluated per pair in process. Results in the order asked.
 */
export async function readOnlineFeaturesAt(redis: Redis, keyPrefix: string, group: FeatureGroup, reads: readonly { entity: string; asOf: number }[]): Promise<OnlineFeatures[]> {
  const spans = new Map<string, { from: number; asOf: number }>();
  for (const { entity, asOf } of reads) {
    const s = spans.get(entity);
    if (!s) spans.set(entity, { from: asOf, asOf });
    else {
      if (asOf < s.from) s.from = asOf;
      if (asOf > s.asOf) s.asOf = asOf;
    }
  }
  const list = [...spans].map(([entity, s]) => ({ entity, asOf: s.asOf, from: s.from }));
  const snapshots = new Map<string, Awaited<ReturnType<typeof readSnapshots>>[number]>();
  for (let i = 0; i < list.length; i += MAX_ONLINE_ENTITIES) {
    for (const snap of await readSnapshots(redis, keyPrefix, group, list.slice(i, i + MAX_ONLINE_ENTITIES))) snapshots.set(snap.entity, snap);
  }
  const memo = new Map<string, OnlineFeatures>();
  return reads.map(({ entity, asOf }) => {
    const key = `${entity}\u0000${asOf}`;
    let result = memo.get(key);
    if (!result) {
      const { events, known, exact } = snapshots.get(entity)!;
      result = { entity, values: known ? evaluate(group, events, { instant: asOf }) : null, exact };
      memo.set(key, result);
    }
    return result;
  });
}

/** An event to evaluate features at, as if it arrived now, after every event the online store holds. */
export interface EventProbe {
  readonly entity: string;
  readonly eventId: string;
  readonly ts: number;
  /** The event's fields (the group's stored fields and transform inputs). */
  readonly raw: Readonly<Record<string, unknown>>;
}

/**
 * Features as of events not yet (or already) in the online store: what the stream would compute for
 * each event arriving now as its entity's newest record. An event id the store already holds is
 * evaluated at that stored event (a replay of a scored event gets its own row, not a double count).
 * One pipelined round trip. `exact` is false when the store no longer holds all of the window.
 */
export async function readFeaturesAtEvents(redis: Redis, keyPrefix: string, group: FeatureGroup, probes: readonly EventProbe[]): Promise<{ values: FeatureValues; exact: boolean; stored: boolean }[]> {
  const snapshots = await readSnapshots(redis, keyPrefix, group, probes.map((p) => ({ entity: p.entity, asOf: p.ts })));
  return probes.map((probe, i) => {
    const { events, exact } = snapshots[i]!;
    const own = events.find((e) => e.eventId === probe.eventId);
    if (own) return { values: evaluate(group, events, { event: own }), exact, stored: true };
    const at = featureEvent(group, probe.eventId, probe.ts, Number.MAX_SAFE_INTEGER, probe.raw);
    return { values: evaluate(group, [...events, at], { event: at }), exact, stored: false };
  });
}

/**
 * Each entity's events in (from - longest window, asOf] plus the anchor before that (from defaults to
 * asOf), sorted, in one round trip: enough to evaluate the entity as of any instant in [from, asOf].
 */
async function readSnapshots(redis: Redis, keyPrefix: string, group: FeatureGroup, reads: readonly { entity: string; asOf: number; from?: number }[]): Promise<{ entity: string; events: FeatureEvent[]; known: boolean; exact: boolean }[]> {
  if (reads.length > MAX_ONLINE_ENTITIES) throw new FabricError('FABRIC_CLI_USAGE', `at most ${MAX_ONLINE_ENTITIES} entities per online read, got ${reads.length}`);
  if (reads.length === 0) return [];
  const keys = groupKeys(keyPrefix, group);
  defineOnlineRead(redis);
  const pipeline = redis.pipeline() as unknown as { fabricOnlineRead(...args: (string | number)[]): void; exec(): Promise<[Error | null, unknown][] | null> };
  for (const { entity, asOf, from } of reads) pipeline.fabricOnlineRead(keys.window(entity), keys.latest(entity), asOf, (from ?? asOf) - group.maxWindowMs);
  const results = await pipeline.exec();
  if (!results) throw new FabricError('FABRIC_SINK_FAILED', 'Redis returned nothing for the online read');
  return reads.map(({ entity, asOf, from }, i) => {
    const [err, reply] = results[i]!;
    if (err) throw new FabricError('FABRIC_SINK_FAILED', `Redis failed the online read of ${group.name} ${entity}: ${messageOf(err)}`, { cause: err });
    const [win, anchor, bound, known] = reply as [string[], string[], string, number];
    const events = decodeMembers(group, anchor);
    for (const e of decodeMembers(group, win)) events.push(e);
    // Members come ordered by time; only a same-millisecond tie may need ordering by offset.
    for (let k = 1; k < events.length; k++) {
      if (compareEvents(events[k - 1]!, events[k]!) > 0) {
        events.sort(compareEvents);
        break;
      }
    }
    return { entity, events, known: known > 0, exact: bound === '' || (from ?? asOf) - group.maxWindowMs >= Number(bound) };
  });
}

/** The entity's latest hash: features as of its greatest event, with that event's identity. */
export async function readLatestRow(redis: Redis, keyPrefix: string, group: FeatureGroup, entity: string): Promise<LatestRow | null> {
  return (await readLatestRows(redis, keyPrefix, group, [entity]))[0]!;
}

/** The latest hashes of many entities in one pipelined round trip, in the order asked. */
export async function readLatestRows(redis: Redis, keyPrefix: string, group: FeatureGroup, entities: readonly string[]): Promise<(LatestRow | null)[]> {
  if (entities.length === 0) return [];
  const keys = groupKeys(keyPrefix, group);
  const pipeline = redis.pipeline();
  for (const entity of entities) pipeline.hgetall(keys.latest(entity));
  const results = (await pipeline.exec()) ?? [];
  return entities.map((entity, i) => {
    const [err, raw] = results[i] ?? [new Error('no reply'), null];
    if (err) throw new FabricError('FABRIC_SINK_FAILED', `Redis failed reading the latest ${group.name} row of ${entity}: ${messageOf(err)}`, { cause: err });
    return parseLatest(group, raw as Record<string, string>);
  });
}
