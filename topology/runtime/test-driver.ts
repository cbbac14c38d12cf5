import { from, lastValueFrom, toArray } from 'rxjs';
import { pino } from 'pino';
import type { Output, ProcessorLogic, SourceRecord } from './processor.js';

/**
 * Runs a processor's logic without Kafka (like Kafka Streams' TopologyTestDriver): records are
 * piped in as batches per topic-partition with increasing offsets, outputs are collected, sinks are
 * flushed after every batch as the runtime would, and the clock is under the test's control.
 */
export class TestDriver {
  private readonly offsets = new Map<string, bigint>();
  private time: number;
  readonly outputs: Output[] = [];
  private readonly log = pino({ level: 'silent' });

  constructor(private readonly logic: ProcessorLogic, options: { startTime?: number } = {}) {
    this.time = options.startTime ?? 0;
  }

  now(): number {
    return this.time;
  }

  advance(ms: number): void {
    this.time += ms;
  }

  setTime(ms: number): void {
    this.time = ms;
  }

  async open(): Promise<this> {
    await this.logic.open?.();
    return this;
  }

  /** Pipes one batch into `topic`/`partition`, returning this batch's outputs. */
  async pipe(topic: string, values: readonly unknown[], options: { partition?: number; key?: (value: unknown) => string | null; timestamp?: number } = {}): Promise<Output[]> {
    const partition = options.partition ?? 0;
    const slot = `${topic}/${partition}`;
    let next = this.offsets.get(slot) ?? 0n;
    const records: SourceRecord[] = values.map((value) => ({
      topic,
      partition,
      offset: (next++).toString(),
      key: options.key ? options.key(value) : null,
      value,
      timestamp: options.timestamp ?? this.time,
      headers: {},
    }));
    this.offsets.set(slot, next);
    const outputs = await lastValueFrom(this.logic.process(from(records), { log: this.log, now: () => this.time }).pipe(toArray()), { defaultValue: [] as Output[] });
    await this.logic.flush?.();
    this.outputs.push(...outputs);
    return outputs;
  }

  /** Values emitted to `topic` so far. */
  emitted<T = unknown>(topic: string): T[] {
    return this.outputs.flatMap((o) => (o.kind === 'emit' && o.topic === topic ? [o.value as T] : []));
  }

  rejected(): Extract<Output, { kind: 'reject' }>[] {
    return this.outputs.filter((o): o is Extract<Output, { kind: 'reject' }> => o.kind === 'reject');
  }

  async close(): Promise<void> {
    await this.logic.close?.();
  }
}
