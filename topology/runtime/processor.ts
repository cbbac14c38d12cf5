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
  | { readonly kind: 'emit'; readonly topic: string; readonly key: string; readonly value: unknown; readonly source?: SourceRecord; readonly headers?: Readonly<Record<string, string>> }
  /** Send the record's original bytes to dlq.<topic> with the error in headers; processing goes on. */
  | { readonly kind: 'reject'; readonly record: SourceRecord; readonly error: FabricError };

/** The unit of work and of state: one input partition of one processor's consumer group. */
export interface TaskId {
  readonly group: string;
  /** Logical input topic. */
  readonly topic: string;
  readonly partition: number;
}

export function taskKey(task: TaskId): string {
  return `${task.group}/${task.topic}/${task.partition}`;
}

/**
 * The durable state of one task, as of the position the batch starts from. The runtime binds it to
 * the batch: `load` returns the state saved by the batch that ended just before this one (never a
 * state saved by a batch whose Kafka transaction then aborted), and `save` records the state after
 * this batch, keeping the previous version until the batch's transaction commits. A writer that lost
 * the task to another instance (a zombie) is refused with a retriable error.
 */
export interface TaskState {
  load(): Promise<string | null>;
  save(state: string): Promise<void>;
}

export interface BatchContext {
  /** Bound to processor, topic and partition. */
  readonly log: Logger;
  /** The processor's clock (wall clock in production, controllable in the test driver). Never use it for outputs. */
  now(): number;
  /** The input partition this batch comes from: state is scoped to it. */
  readonly task: TaskId;
  /** Offset of the batch's first record (decimal string). */
  readonly firstOffset: string;
  /** Offset after the batch's last record: the position the batch's commit moves to. */
  readonly nextOffset: string;
  /** The task's durable state (see TaskState). */
  readonly state: TaskState;
  /**
   * For a processor chained after another in the same task (`after` in its definition): what the
   * upstream processor output for each source record, by source offset. Records the upstream
   * rejected are not passed on; records it emitted nothing for map to an empty list.
   */
  readonly upstream?: ReadonlyMap<string, readonly Output[]>;
}

export interface ProcessorLogic {
  readonly name: string;
  /** Opens the sinks the processor owns. Called once before consuming. */
  open?(): Promise<void>;
  /** Pure mapping of one batch of one partition to outputs. Throwing means "retry the batch" (sink failure). */
  process(records: Observable<SourceRecord>, ctx: BatchContext): Observable<Output>;
  /**
   * Makes every sink write of `task`'s batches processed so far durable; the runtime calls it after
   * each batch of the task and commits the task's offsets only if it resolves. It rejects when any of
   * those writes failed, even one that another task's batch triggered. Without a task (shutdown):
   * every task's writes.
   */
  flush?(task?: TaskId): Promise<void>;
  /**
   * Whether the logic can do its work now (e.g. its model worker is up). A processor whose logic is
   * not ready reports that state (restarting, failed) in /readyz and `fabric status`.
   */
  readiness?(): { readonly ready: boolean; readonly state: string; readonly detail?: string };
  /** Closes the sinks. Called once after the last flush. */
  close?(): Promise<void>;
}

export function emit(topic: string, key: string, value: unknown, source?: SourceRecord, headers?: Readonly<Record<string, string>>): Output {
  return { kind: 'emit', topic, key, value, ...(source ? { source } : {}), ...(headers ? { headers } : {}) };
}

export function reject(record: SourceRecord, error: FabricError): Output {
  return { kind: 'reject', record, error };
}

/** For processors whose logic works on the whole batch at once (one Redis round trip, one model run). */
export function wholeBatch(handle: (records: SourceRecord[], ctx: BatchContext) => Output[] | Promise<Output[]>): (records: Observable<SourceRecord>, ctx: BatchContext) => Observable<Output> {
  return (records$, ctx) =>
    records$.pipe(
      toArray(),
      mergeMap((records) => from(Promise.resolve(handle(records, ctx)))),
      mergeMap((outputs) => from(outputs)),
    );
}
