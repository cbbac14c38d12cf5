import { Observable, from, mergeMap, toArray } from 'rxjs';
import type { Metrics } from '../../topology/runtime/metrics.js';
import type { BatchContext, Output, ProcessorLogic, SourceRecord } from '../../topology/runtime/processor.js';
import { reject } from '../../topology/runtime/processor.js';
import { FabricError, messageOf } from '../../topology/errors.js';
import type { ClickHouseSink, Row } from './clickhouse-sink.js';
import { mappingFor, type TableMapping } from './rows.js';

/**
 * Tracking: writes every tracked topic to its ClickHouse table through the shared group-commit sink.
 * Rows are added with the batch's task and the processor's flush is the sink's flush for that task, so
 * a partition's offsets are committed only once its own rows are inserted.
 */
export function trackingProcessor(options: { sink: ClickHouseSink; topics: readonly string[]; metrics?: Metrics }): ProcessorLogic {
  const byTopic = new Map<string, TableMapping>();
  for (const topic of options.topics) {
    const mapping = mappingFor(topic);
    if (!mapping) throw new Error(`tracking has no ClickHouse table for topic ${topic}`);
    byTopic.set(topic, mapping);
  }
  return {
    name: 'tracking',
    process(records$: Observable<SourceRecord>, ctx: BatchContext): Observable<Output> {
      return records$.pipe(
        toArray(),
        mergeMap(async (records) => {
          const rejects: Output[] = [];
          const rows = new Map<string, { rows: Row[]; refs: SourceRecord[] }>();
          for (const record of records) {
            const mapping = byTopic.get(record.topic);
            if (!mapping) {
              rejects.push(reject(record, new FabricError('FABRIC_RECORD_REJECTED', `tracking does not handle topic ${record.topic}`)));
              continue;
            }
            let mapped: Row[];
            try {
              mapped = mapping.rows(record);
            } catch (err) {
              rejects.push(reject(record, new FabricError('FABRIC_RECORD_REJECTED', `cannot map to ${mapping.table}: ${messageOf(err)}`)));
              continue;
            }
            const table = mapping.tableOf?.(record) ?? mapping.table;
            let list = rows.get(table);
            if (!list) rows.set(table, (list = { rows: [], refs: [] }));
            for (const row of mapped) {
              list.rows.push(row);
              list.refs.push(record);
            }
          }
          for (const [table, list] of rows) options.sink.add(table, list.rows, ctx.task, list.refs);
          // The batch's rows are inserted (with every other partition's rows of the round) before its
          // outputs go out, so a row ClickHouse refuses goes to the DLQ in the batch's own transaction.
          const refused = await options.sink.flush(ctx.task);
          const seen = new Set<SourceRecord>();
          for (const r of refused) {
            const record = r.ref as SourceRecord;
            if (seen.has(record)) continue;
            seen.add(record);
            options.metrics?.sinkRejected.inc({ sink: 'clickhouse', table: r.table });
            rejects.push(reject(record, new FabricError('FABRIC_SINK_REJECTED', `ClickHouse refused the row for ${r.table}: ${r.message}`)));
          }
          return rejects;
        }),
        mergeMap((rejects) => from(rejects)),
      );
    },
    flush: async (task) => {
      await options.sink.flush(task);
    },
    close: () => options.sink.close(),
  };
}
