import type { Kafka } from 'kafkajs';
import type { Redis } from 'ioredis';
import type { AvroSerde } from '../../schemas/serde.js';
import type { ClickHouseClient } from '../../topology/runtime/clickhouse.js';
import { retryOnBrokenSocket, sqlIdentifier } from '../../topology/runtime/clickhouse.js';
import { readToEnd } from '../../topology/runtime/topic-reader.js';
import type { FeatureGroup } from '../../topology/features/definition.js';
import { featureEvent } from '../../topology/features/engine.js';
import { featureTable, featureTableRow, type FeatureRow } from '../../topology/features/rows.js';
import { FabricError, messageOf } from '../../topology/errors.js';
import { EntityLog, eventRejection, trimBound } from './entity-log.js';
import { addMembers, groupKeys, latestFields } from '../../serving/features/redis-keys.js';

export interface BackfillOptions {
  readonly kafka: Kafka;
  readonly serde: AvroSerde;
  readonly group: FeatureGroup;
  /** The group's input topic: logical name (what rows record as source_topic) and physical name. */
  readonly topic: { readonly logical: string; readonly physical: string };
  readonly latenessMs: number;
  readonly maxClockSkewMs: number;
  /** Rows of events with from <= ts <= to are written (epoch ms). */
  readonly from: number;
  readonly to: number;
  readonly clickhouse: { readonly client: ClickHouseClient; readonly database: string };
  /** Rewrite the online state (windows and latest hashes) of every entity too. */
  readonly online?: { readonly redis: Redis; readonly keyPrefix: string };
  readonly onProgress?: (p: { phase: 'read' | 'compute' | 'write-offline' | 'write-online'; done: number; total: number }) => void;
}

export interface BackfillReport {
  readonly records: number;
  readonly admitted: number;
  readonly late: number;
  readonly duplicates: number;
  readonly invalid: number;
  readonly rowsWritten: number;
  readonly entitiesWritten: number;
}

/**
 * Recomputes a group's offline history (and with `online` its Redis state) from its input topic, by
 * running the stream processor's own logic (EntityLog: the same validation, redelivery, lateness,
 * corrections and versions) over every record of the topic in partition order. So the rows it writes
 * are the rows the stream wrote, same values and versions, and running it twice changes nothing
 * (ReplacingMergeTree(version) keeps one row per event; with equal versions the later insert, so a
 * feature added to the definition is filled in). Only the group's table is touched: other groups are
 * not replayed. The whole topic is read, as windows and `since_previous` need the events before `from`.
 *
 * One difference from the stream is possible, and only for redeliveries whose first occurrence is
 * more than a day plus the lateness plus 1 h behind the entity's newest event: the stream trims per batch, backfill per record, so
 * such a redelivery may be recognised by one and not the other; it is late for both, so no feature
 * changes either way.
 */
export async function backfill(options: BackfillOptions): Promise<BackfillReport> {
  const { group } = options;
  const records = await readToEnd(options.kafka, options.topic.physical, { groupPrefix: 'fabric-backfill', timeoutMs: 600_000 });
  options.onProgress?.({ phase: 'read', done: records.length, total: records.length });
  await options.serde.prefetch(records.map((r) => r.value));
  const byPartition = new Map<number, typeof records>();
  for (const r of records) {
    const list = byPartition.get(r.partition);
    if (list) list.push(r);
    else byPartition.set(r.partition, [r]);
  }
  const report = { records: records.length, admitted: 0, late: 0, duplicates: 0, invalid: 0, rowsWritten: 0, entitiesWritten: 0 };
  /** The last row per event (the greatest version wins, as in ReplacingMergeTree). */
  const rows = new Map<string, FeatureRow>();
  const logs: { log: EntityLog; bound: number }[] = [];
  let done = 0;
  for (const [partition, list] of [...byPartition].sort((a, b) => a[0] - b[0])) {
    list.sort((a, b) => (BigInt(a.offset) < BigInt(b.offset) ? -1 : 1));
    const entities = new Map<string, { log: EntityLog; bound: number }>();
    for (const record of list) {
      if (++done % 50_000 === 0) options.onProgress?.({ phase: 'compute', done, total: records.length });
      let value: Record<string, unknown>;
      try {
        if (!record.value) throw new Error('no value');
        value = options.serde.decode<Record<string, unknown>>(record.value);
      } catch {
        report.invalid++;
        continue;
      }
      if (eventRejection(group, value, record.timestamp, options.maxClockSkewMs)) {
        report.invalid++;
        continue;
      }
      const ts = value[group.timeField] as number;
      const entity = value[group.entity] as string;
      let state = entities.get(entity);
      if (!state) {
        state = { log: new EntityLog(group, entity, { topic: options.topic.logical, partition }), bound: -Infinity };
        entities.set(entity, state);
        logs.push(state);
      }
      // The stream trims before each batch relative to the newest event before it; here every record is a batch.
      if (Number.isFinite(state.log.newestTs)) {
        const bound = trimBound(group, state.log.newestTs, options.latenessMs);
        const trimmed = state.log.trimmed(bound);
        // Recorded: the greatest time removed (reads whose windows start at or after it are exact).
        if (trimmed.length > 0) {
          state.log.forget(trimmed);
          state.bound = Math.max(state.bound, trimmed[trimmed.length - 1]!.ts);
        }
      }
      const offer = state.log.offer(featureEvent(group, value[group.idField] as string, ts, Number(record.offset), value), options.latenessMs);
      if (offer.kind === 'duplicate') report.duplicates++;
      else if (offer.kind === 'late') report.late++;
      else {
        report.admitted++;
        for (const row of offer.rows) rows.set(`${row.source_partition}/${row.source_offset}`, row);
      }
      state.log.added = [];
    }
  }

  const selected = [...rows.values()].filter((r) => r.ts >= options.from && r.ts <= options.to);
  const table = `${sqlIdentifier(options.clickhouse.database)}.${featureTable(group)}`;
  for (let i = 0; i < selected.length; i += 20_000) {
    const chunk = selected.slice(i, i + 20_000);
    try {
      const values = chunk.map((r) => featureTableRow(group, r));
      // Idempotent (ReplacingMergeTree by version): a broken keep-alive socket is retried.
      await retryOnBrokenSocket(() => options.clickhouse.client.insert({ table, values, format: 'JSONEachRow' }));
    } catch (err) {
      throw new FabricError('FABRIC_SINK_FAILED', `inserting into ${table} failed: ${messageOf(err)}`, { cause: err });
    }
    report.rowsWritten += chunk.length;
    options.onProgress?.({ phase: 'write-offline', done: report.rowsWritten, total: selected.length });
  }

  if (options.online) {
    const { redis, keyPrefix } = options.online;
    const keys = groupKeys(keyPrefix, group);
    for (let i = 0; i < logs.length; i += 500) {
      const write = redis.multi();
      for (const { log, bound } of logs.slice(i, i + 500)) {
        if (log.events.length === 0) continue;
        const window = keys.window(log.entityId);
        const latest = keys.latest(log.entityId);
        write.del(window, latest);
        addMembers(write, window, group, log.events);
        const row = log.latestRow!;
        const fields = latestFields(group, row);
        if (Number.isFinite(bound)) fields.push('trim_bound', String(bound));
        write.hset(latest, ...fields);
        report.entitiesWritten++;
      }
      const result = await write.exec();
      const failed = result ? result.find(([err]) => err)?.[0] : new Error('the transaction was discarded');
      if (failed) throw new FabricError('FABRIC_SINK_FAILED', `writing the online state failed: ${messageOf(failed)}`, { cause: failed });
      options.onProgress?.({ phase: 'write-online', done: Math.min(i + 500, logs.length), total: logs.length });
    }
  }
  return report;
}
