import { pino } from 'pino';
import type { Output, ProcessorLogic, SourceRecord, TaskId } from './processor.js';
import { runChain } from './chain.js';
import { MemoryStateStore, taskState, type PartitionStateStore } from './state-store.js';

export interface PipeOptions {
  readonly partition?: number;
  readonly key?: (value: unknown) => string | null;
  /** Kafka record timestamp of every record (default: the driver's clock). */
  readonly timestamp?: number;
  /**
   * false: the batch's transaction aborts after the processor ran (its state saves and sink writes
   * happened, its outputs are discarded and its offsets are not committed), so the next pipe to the
   * same partition re-delivers from the same offset, as after a crash. Default true.
   */
  readonly commit?: boolean;
}

/**
 * Runs a processor's logic (or a chain of processors sharing one task) without Kafka, like Kafka
 * Streams' TopologyTestDriver: records are piped in as batches per topic-partition with increasing
 * offsets, outputs of committed batches are collected, sinks are flushed after every batch as the
 * runtime would, task state lives in a MemoryStateStore, and the clock is under the test's control.
 */
export class TestDriver {
  private readonly offsets = new Map<string, bigint>();
  private readonly claims = new Map<string, number>();
  private time: number;
  readonly outputs: Output[] = [];
  readonly store: PartitionStateStore;
  private readonly log = pino({ level: 'silent' });
  private readonly links: readonly ProcessorLogic[];
  private readonly group: string;

  constructor(logic: ProcessorLogic | readonly ProcessorLogic[], options: { startTime?: number; store?: PartitionStateStore; group?: string } = {}) {
    this.links = Array.isArray(logic) ? logic : [logic as ProcessorLogic];
    this.time = options.startTime ?? 0;
    this.store = options.store ?? new MemoryStateStore();
    this.group = options.group ?? this.links[0]!.name;
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
    for (const l of this.links) await l.open?.();
    return this;
  }

  /** Hands the partition to a new owner (as a rebalance or restart would): earlier claims are fenced. */
  async reassign(topic: string, partition = 0): Promise<void> {
    for (const l of this.links) this.claims.delete(`${topic}/${partition}/${l.name}`);
  }

  /** Pipes one batch into `topic`/`partition`, returning this batch's outputs. */
  async pipe(topic: string, values: readonly unknown[], options: PipeOptions = {}): Promise<Output[]> {
    const partition = options.partition ?? 0;
    const slot = `${topic}/${partition}`;
    const first = this.offsets.get(slot) ?? 0n;
    let next = first;
    const records: SourceRecord[] = values.map((value) => ({
      topic,
      partition,
      offset: (next++).toString(),
      key: options.key ? options.key(value) : null,
      value,
      timestamp: options.timestamp ?? this.time,
      headers: {},
    }));
    const task: TaskId = { group: this.group, topic, partition };
    const claims: number[] = [];
    for (const l of this.links) {
      const claimKey = `${slot}/${l.name}`;
      let claim = this.claims.get(claimKey);
      if (claim === undefined) {
        claim = await this.store.claim(l.name, task);
        this.claims.set(claimKey, claim);
      }
      claims.push(claim);
    }
    const outputs = await runChain(this.links, records, (i, upstream) => ({
      log: this.log,
      now: () => this.time,
      task,
      firstOffset: first.toString(),
      nextOffset: next.toString(),
      state: taskState(this.store, this.links[i]!.name, task, claims[i]!, first.toString(), next.toString()),
      ...(upstream ? { upstream } : {}),
    }));
    for (const l of this.links) await l.flush?.();
    if (options.commit === false) return outputs;
    this.offsets.set(slot, next);
    this.outputs.push(...outputs);
    return outputs;
  }

  /** Values emitted to `topic` so far (committed batches only). */
  emitted<T = unknown>(topic: string): T[] {
    return this.outputs.flatMap((o) => (o.kind === 'emit' && o.topic === topic ? [o.value as T] : []));
  }

  rejected(): Extract<Output, { kind: 'reject' }>[] {
    return this.outputs.filter((o): o is Extract<Output, { kind: 'reject' }> => o.kind === 'reject');
  }

  async close(): Promise<void> {
    for (const l of [...this.links].reverse()) await l.close?.();
  }
}
