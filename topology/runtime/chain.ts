import { from, lastValueFrom, toArray } from 'rxjs';
import type { BatchContext, Output, ProcessorLogic, SourceRecord } from './processor.js';

/**
 * Runs processors chained in one task, the way Flink chains operators that share a partitioning: the
 * head gets the batch's records; each next processor gets the records the previous one did not
 * reject, with what it emitted for each of them (`ctx.upstream`, by source offset). A record passes
 * from one to the next as a function call, not through the broker, so what the second processor sees
 * is decided by the record's position in its partition, never by how fast another consumer ran.
 */
export async function runChain(links: readonly ProcessorLogic[], records: readonly SourceRecord[], ctxFor: (index: number, upstream: ReadonlyMap<string, readonly Output[]> | undefined) => BatchContext): Promise<Output[]> {
  const all: Output[] = [];
  let input = records;
  let upstream: Map<string, Output[]> | undefined;
  for (let i = 0; i < links.length; i++) {
    const outputs = input.length ? await lastValueFrom(links[i]!.process(from(input), ctxFor(i, upstream)).pipe(toArray()), { defaultValue: [] as Output[] }) : [];
    for (const o of outputs) all.push(o);
    if (i === links.length - 1) break;
    const rejected = new Set<string>();
    const next = new Map<string, Output[]>();
    for (const r of input) next.set(r.offset, []);
    for (const o of outputs) {
      if (o.kind === 'reject') rejected.add(o.record.offset);
      else if (o.source) next.get(o.source.offset)?.push(o);
    }
    input = input.filter((r) => !rejected.has(r.offset));
    for (const offset of rejected) next.delete(offset);
    upstream = next;
  }
  return all;
}
