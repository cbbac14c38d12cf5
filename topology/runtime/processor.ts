import { from, mergeMap, toArray, type Observable } from 'rxjs';
import type { IHeaders } from 'kafkajs';
import type { Logger } from './log.js';
import type { FabricError } from '../errors.js';

/**
 * The contract between the runtime and a processor. A processor is pure logic over records plus
 * the sinks it owns: the runtime decodes records, hands each batch to `process` as an rxjs stream,
 * produces what it emits, calls `flush` so sinks are durable, and only then commits offsets.
 */
export interface SourceRecord<T = unknown> {
  /** Logical topic name (without FABRIC_TOPIC_PREFIX). */
  readonly topic: string;
  readonly partition: number;
  /** Kafka offset as a decimal string (64-bit). */
  readonly offset: string;
  readonly key: string | null;
  readonly value: T;
  /** Kafka record timestamp, epoch ms. */
  readonly timestamp: number;
  readonly headers: IHeaders;
}

export type Output =
  /** Produce `value` (encoded with the topic's schema) to a logical topic. */
  | { readonly kind: 'emit'; readonly topic: string; readonly key: string; readonly value: unknown; readonly source?: SourceRecord }
  /** Send the record's original bytes to dlq.<topic> with the error in headers; processing goes on. */
  | { readonly kind: 'reject'; readonly record: SourceRecord; readonly error: FabricError };

export interface BatchContext {
  /** Bound to processor, topic and partition. */
  readonly log: Logger;
  /** The processor's clock (wall clock in production, controllable in the test driver). */
  now(): number;
}

export interface ProcessorLogic {
  readonly name: string;
  /** Opens the sinks the processor owns. Called once before consuming. */
  open?(): Promise<void>;
  /** Pure mapping of one batch of one partition to outputs. Throwing means "retry the batch" (sink failure). */
  process(records: Observable<SourceRecord>, ctx: BatchContext): Observable<Output>;
  /** Makes every sink write of the batches processed so far durable. Offsets are committed after it resolves. */
  flush?(): Promise<void>;
  /** Closes the sinks. Called once after the last flush. */
  close?(): Promise<void>;
}

export function emit(topic: string, key: string, value: unknown, source?: SourceRecord): Output {
  return source ? { kind: 'emit', topic, key, value, source } : { kind: 'emit', topic, key, value };
}

export function reject(record: SourceRecord, error: FabricError): Output {
  return { kind: 'reject', record, error };
}

/** For processors whose logic works on the whole batch at once (one Redis round trip, one model run). */
export function wholeBatch(handle: (records: SourceRecord[]) => Output[] | Promise<Output[]>): (records: Observable<SourceRecord>) => Observable<Output> {
  return (records$) =>
    records$.pipe(
      toArray(),
      mergeMap((records) => from(Promise.resolve(handle(records)))),
      mergeMap((outputs) => from(outputs)),
    );
}
