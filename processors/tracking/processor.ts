import { EMPTY, Observable, from, mergeMap, toArray } from 'rxjs';
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
export function trackingProcessor(options: { sink: ClickHouseSink; topics: readonly string[] }): ProcessorLogic {
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
        mergeMap((records) => {
          const rejects: Output[] = [];
          const rows = new Map<string, Row[]>();
          for (const record of records) {
            const mapping = byTopic.get(record.topic);
            if (!mapping) {
              rejects.push(reject(record, new FabricError('FABRIC_RECORD_REJECTED', `tracking does not handle topic ${record.topic}`)));
              continue;
            }
            let row: Row;
            try {
              row = mapping.row(record);
            } catch (err) {
              rejects.push(reject(record, new FabricError('FABRIC_RECORD_REJECTED', `cannot map to ${mapping.table}: ${messageOf(err)}`)));
              continue;
            }
            const table = mapping.tableOf?.(record) ?? mapping.table;
            const list = rows.get(table);
            if (list) list.push(row);
            else rows.set(table, [row]);
          }
          for (const [table, list] of rows) options.sink.add(table, list, ctx.task);
          return rejects.length ? from(rejects) : EMPTY;
        }),
      );
    },
    flush: (task) => options.sink.flush(task),
    close: () => options.sink.close(),
  };
}
