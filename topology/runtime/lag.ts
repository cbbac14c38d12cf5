import type { Admin } from 'kafkajs';
import { prefixed, type FabricConfig } from '../config.js';
import type { ProcessorDef } from '../graph.js';

export interface PartitionLag {
  readonly processor: string;
  /** Logical input topic. */
  readonly topic: string;
  readonly partition: number;
  /** Committed offset, '-1' when the group committed none. */
  readonly committed: string;
  readonly end: string;
  readonly lag: number;
}

/**
 * Committed offset against the end of every input partition, once per consumer group (a processor
 * chained in another's task shares its head's group and offsets). Under exactly-once the end counts
 * transaction markers: a caught-up group's committed offset reaches it.
 */
export async function consumerLag(admin: Admin, config: Pick<FabricConfig, 'topicPrefix'>, processors: readonly ProcessorDef<unknown>[]): Promise<PartitionLag[]> {
  const rows: PartitionLag[] = [];
  for (const p of processors.filter((d) => d.after === undefined)) {
    for (const input of p.inputs) {
      const topic = prefixed(config, input);
      const ends = await admin.fetchTopicOffsets(topic);
      const [committed] = await admin.fetchOffsets({ groupId: prefixed(config, p.group), topics: [topic] });
      for (const e of ends) {
        const c = committed?.partitions.find((x) => x.partition === e.partition)?.offset ?? '-1';
        rows.push({ processor: p.name, topic: input, partition: e.partition, committed: c, end: e.high, lag: Number(BigInt(e.high) - (c === '-1' ? BigInt(e.low) : BigInt(c))) });
      }
    }
  }
  return rows;
}
