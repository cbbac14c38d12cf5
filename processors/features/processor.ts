import type { Redis } from 'ioredis';
import type { BatchContext, ProcessorLogic, Output, SourceRecord } from '../../topology/runtime/processor.js';
import { emit, reject, taskKey, wholeBatch } from '../../topology/runtime/processor.js';
import { FabricError, messageOf } from '../../topology/errors.js';
import type { FeatureGroup } from '../../topology/features/definition.js';
import { featureEvent, type FeatureEvent } from '../../topology/features/engine.js';
import { featureTopic } from '../../topology/features/rows.js';
import type { Metrics } from '../../topology/runtime/metrics.js';
import { EntityLog, eventRejection, trimBound } from './entity-log.js';
import { addMembers, decodeMembers, encodeMember, groupKeys, latestFields } from '../../serving/features/redis-keys.js';

export interface FeaturesProcessorOptions {
  readonly group: FeatureGroup;
  readonly redis: Redis;
  readonly keyPrefix: string;
  /** How far an event's ts may be ahead of its record's Kafka timestamp (FABRIC_MAX_CLOCK_SKEW_SEC). */
  readonly maxClockSkewMs: number;
  /** How far behind its entity's newest event an event may be and still count (the group's, else FABRIC_FEATURES_LATENESS_SEC). */
  readonly latenessMs: number;
  readonly outputTopic?: string;
  /** Where events beyond the lateness go, unchanged, with the reason in headers (default late.<stream>). */
  readonly lateTopic?: string;
  /**
   * Forward every valid event, keyed by another field, to a repartition topic in the same
   * transaction: the input of a group keyed by that field (item features over interactions keyed by user).
   */
  readonly repartition?: { readonly topic: string; readonly by: string };
  readonly metrics?: Metrics;
  /** Entities whose events a task keeps in memory between batches (default 50,000 per input partition). */
  readonly cacheEntities?: number;
}

/** Header names on records routed to late.<stream>. */
export const LATE_HEADERS = { group: 'fabric.late.group', reason: 'fabric.late.reason', newestTs: 'fabric.late.newest_ts' } as const;

/**
 * A feature group online, for any definition.
 *
 * Per batch of one partition, in offset order: an invalid event (no entity key, a non-finite number,
 * a ts that is not epoch ms) or one whose ts is too far ahead of its record's timestamp goes to the
 * DLQ; the others are offered to their entity's EntityLog (see entity-log.ts: redelivery -> nothing,
 * beyond the lateness -> late.<stream> with the reason, else admitted with its row and the rows it
 * corrects, emitted to features.<group>). A chained scoring processor finds the event's own row
 * among the record's outputs by event id.
 *
 * Redis: each entity's events live in one sorted set (score = ts, member = offset, id and stored
 * fields). One pipelined read of the sets of the batch's entities keeps the members before the
 * batch's first offset only (members at or past it were written by an attempt whose transaction
 * aborted, or a zombie: the batch derives them again from its own records); one MULTI writes the
 * admitted members, trims, and compare-and-sets the latest hash. What a batch does is therefore a pure
 * function of the partition's records and the configuration, whatever crashed before:
 * - every write is idempotent: the same members, a latest hash overwritten only by a greater
 *   (ts, offset, version), a trim bound that only grows;
 * - the late decision, the trim bound and redelivery recognition use the entity's events before the
 *   batch, which every attempt of the batch sees alike (see trimBound()).
 * An entity's events must all come from one partition (topics are keyed by the entity; the item group
 * reads a repartition topic keyed by item): offsets of two partitions order nothing.
 *
 * The sets have no TTL: a wall-clock TTL would make the next event of an idle entity (or any event
 * after an outage) differ from the offline recomputation. Memory is bounded per entity by trimming
 * instead, and grows with the number of entities.
 */
export function featuresProcessor(options: FeaturesProcessorOptions): ProcessorLogic {
  const { group, redis, maxClockSkewMs, latenessMs } = options;
  const keys = groupKeys(options.keyPrefix, group);
  const outputTopic = options.outputTopic ?? featureTopic(group);
  const lateTopic = options.lateTopic ?? `late.${group.stream}`;
  // EVALSHA in the MULTI (the script text goes only when Redis does not have it).
  if (!('fabricSetLatest' in redis)) redis.defineCommand('fabricSetLatest', { numberOfKeys: 1, lua: SET_LATEST });

  const cacheLimit = options.cacheEntities ?? 50_000;
  /**
   * Per task, the entity logs as of the end of its last batch that wrote Redis, so a hot entity's
   * events are not read and decoded again for every batch. Valid only for the batch that starts
   * exactly there (the previous batch committed); any other start (a retry, a rebalance, a restart)
   * drops the task's cache and reads Redis, which stays the source of truth.
   */
  const caches = new Map<string, { nextOffset: string | null; logs: Map<string, EntityLog> }>();

  async function handle(records: SourceRecord[], ctx: BatchContext): Promise<Output[]> {
    const outputs: Output[] = [];
    const valid: { record: SourceRecord; value: Record<string, unknown>; entity: string }[] = [];
    for (const record of records) {
      const value = record.value as Record<string, unknown>;
      const rejection = eventRejection(group, value, record.timestamp, maxClockSkewMs);
      if (rejection) {
        outputs.push(reject(record, rejection));
        continue;
      }
      valid.push({ record, value, entity: value[group.entity] as string });
    }
    const firstOffset = Number(ctx.firstOffset);
    const taskId = taskKey(ctx.task);
    let cache = caches.get(taskId);
    if (!cache || cache.nextOffset !== ctx.firstOffset) {
      cache = { nextOffset: null, logs: new Map() };
      caches.set(taskId, cache);
    }
    // Until this batch's writes succeed, the cache does not describe any committed position.
    cache.nextOffset = null;
    const needed = [...new Set(valid.map((v) => v.entity))];
    const logs = new Map<string, EntityLog>();
    const missing: string[] = [];
    for (const id of needed) {
      const log = cache.logs.get(id);
      if (log) {
        log.resetBatch();
        logs.set(id, log);
      } else missing.push(id);
    }
    if (missing.length > 0) for (const [id, log] of await readLogs(missing, firstOffset, ctx)) logs.set(id, log);
    const newestBefore = new Map([...logs].map(([id, log]) => [id, log.newestTs]));

    let late = 0;
    let corrections = 0;
    for (const { record, value, entity } of valid) {
      if (options.repartition) outputs.push(emit(options.repartition.topic, String(value[options.repartition.by]), value, record));
      const log = logs.get(entity)!;
      const event = featureEvent(group, value[group.idField] as string, value[group.timeField] as number, Number(record.offset), value);
      const offer = log.offer(event, latenessMs);
      if (offer.kind === 'duplicate') continue;
      if (offer.kind === 'late') {
        late++;
        const reason = `ts ${event.ts} is ${offer.newestTs - event.ts} ms behind the newest event (${offer.newestTs}) of ${group.entity} ${entity}; the ${group.name} group allows ${latenessMs} ms`;
        outputs.push(emit(lateTopic, entity, value, record, { [LATE_HEADERS.group]: group.name, [LATE_HEADERS.reason]: reason, [LATE_HEADERS.newestTs]: String(offer.newestTs) }));
        continue;
      }
      corrections += offer.rows.length - 1;
      for (const row of offer.rows) outputs.push(emit(outputTopic, entity, row, record));
    }
    if (late) options.metrics?.featuresLate.inc({ group: group.name }, late);
    if (corrections) options.metrics?.featuresCorrections.inc({ group: group.name }, corrections);

    // Only the entities the batch admitted to are written: a late or redelivered record changes nothing.
    const touched = [...logs].filter(([, log]) => log.added.length > 0);
    const trims: [EntityLog, FeatureEvent[]][] = [];
    if (touched.length > 0) {
      const write = redis.multi();
      for (const [entity, log] of touched) {
        const key = keys.window(entity);
        addMembers(write, key, group, log.added);
        const before = newestBefore.get(entity)!;
        const bound = Number.isFinite(before) ? trimBound(group, before, latenessMs) : -Infinity;
        const trimmed = Number.isFinite(bound) ? log.trimmed(bound) : [];
        // Arrays, not spread arguments: a trim after a long outage can remove more members than a call takes arguments.
        if (trimmed.length > 0) write.zrem(key, trimmed.map((e) => encodeMember(group, e)));
        trims.push([log, trimmed]);
        const row = log.latestRow;
        const fields = row ? latestFields(group, row) : [];
        (write as unknown as { fabricSetLatest(...args: (string | number)[]): void }).fabricSetLatest(keys.latest(entity), row?.ts ?? 0, row?.source_offset ?? 0, row?.version ?? 0, trimmed.length > 0 ? trimmed[trimmed.length - 1]!.ts : '', ...fields);
      }
      // Every write is idempotent (same members, compare-and-set hash), so a failed MULTI is retried whole.
      const written = await write.exec();
      const failed = written ? written.find(([err]) => err)?.[0] : new Error('the transaction was discarded');
      if (failed) throw sinkFailed('writing the feature windows', failed);
    }
    // Redis now holds what the logs hold: keep them for the batch that starts where this one ends.
    for (const [log, trimmed] of trims) log.forget(trimmed);
    for (const [id, log] of logs) {
      cache.logs.delete(id);
      cache.logs.set(id, log);
    }
    for (const id of cache.logs.keys()) {
      if (cache.logs.size <= cacheLimit) break;
      cache.logs.delete(id);
    }
    cache.nextOffset = ctx.nextOffset;
    return outputs;
  }

  /** One pipelined read of every entity's whole set, keeping only members before the batch. */
  async function readLogs(entities: readonly string[], firstOffset: number, ctx: BatchContext): Promise<Map<string, EntityLog>> {
    const read = redis.pipeline();
    for (const id of entities) read.zrange(keys.window(id), 0, -1);
    const results = await read.exec();
    if (!results) throw sinkFailed('reading the feature windows', new Error('the pipeline returned nothing'));
    const logs = new Map<string, EntityLog>();
    entities.forEach((id, i) => {
      const [err, flat] = results[i]!;
      if (err) throw sinkFailed('reading the feature windows', err);
      const log = new EntityLog(group, id, { topic: ctx.task.topic, partition: ctx.task.partition });
      log.load(decodeMembers(group, flat as string[]).filter((e) => e.offset < firstOffset));
      logs.set(id, log);
    });
    return logs;
  }

  return {
    name: `features-${group.name}`,
    process: wholeBatch(handle),
  };
}


// KEYS[1] the latest hash; ARGV: ts, offset, version, the greatest time trimmed ('' = none), then field/value pairs
// (none: only the bound). The row is written only over a smaller (ts, offset, version), so the hash
// holds the newest computation of the entity's greatest event whatever order late events, retries or
// a zombie instance write in; the bound only grows. Offsets and ms timestamps fit in doubles.
const SET_LATEST = `
if ARGV[4] ~= '' then
  local b = tonumber(redis.call('HGET', KEYS[1], 'trim_bound'))
  if not b or tonumber(ARGV[4]) > b then redis.call('HSET', KEYS[1], 'trim_bound', ARGV[4]) end
end
if #ARGV < 5 then return 0 end
local cur = redis.call('HMGET', KEYS[1], 'ts', 'offset', 'version')
local ts, off, ver = tonumber(cur[1]), tonumber(cur[2]), tonumber(cur[3]) or -1
local nts, noff, nver = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
if ts and off and (nts < ts or (nts == ts and (noff < off or (noff == off and nver <= ver)))) then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 5))
return 1
`;

function sinkFailed(what: string, cause: unknown): FabricError {
  return new FabricError('FABRIC_SINK_FAILED', `Redis failed ${what}: ${messageOf(cause)}`, { cause });
}
