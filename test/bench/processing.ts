/**
 * Processing throughput of the features→scoring task (one chain: features, then scoring, in one
 * consumer group) with exactly-once (a Kafka transaction per batch of one input partition, offsets
 * committed inside it) against at-least-once (outputs acknowledged, then offsets committed): the
 * cost of transactions on the same data, broker and machine.
 *
 * Each sample runs in a fresh namespace (topic prefix, Redis prefix, so fresh groups and state):
 * the topology is applied and N seeded transactions are pre-produced to events.transactions (not
 * timed); a read_committed kcat consumer of predictions.fraud is started; then the clock starts,
 * the chain is started (startFabric with processors ['features'], no gateway, apply on), and the
 * clock stops once both hold: the features group's committed offsets reach the end of the input
 * topic, and predictions.fraud holds N records for a read_committed consumer. Afterwards (not
 * timed) every prediction is read back read_committed and checked: N records, N distinct event ids,
 * exactly the input's.
 */
import type { Admin, Kafka } from 'kafkajs';
import { prefixed, type FabricConfig } from '../../topology/config.js';
import { applyTopology } from '../../topology/apply.js';
import { createKafka } from '../../topology/runtime/kafka.js';
import type { Logger } from '../../topology/runtime/log.js';
import type { Metrics } from '../../topology/runtime/metrics.js';
import { readToEnd } from '../../topology/runtime/topic-reader.js';
import { startFabric, type FabricHandle } from '../../app/fabric.js';
import { fabricTopology } from '../../app/fabric-topology.js';
import { AvroSerde } from '../../schemas/serde.js';
import { loadAvroSchema } from '../../schemas/catalog.js';
import type { Prediction, Transaction } from '../../schemas/types.generated.js';
import { kcatAwaitCount, kcatCommittedCount } from './kcat.js';
import { topicEnd, withTimeout, type Sample } from './throughput.js';

export type Guarantee = 'exactly_once' | 'at_least_once';

export interface ProcessingSample extends Sample {
  readonly guarantee: Guarantee;
  readonly topicPrefix: string;
  /** startFabric() until it resolved: apply (idempotent here), model load, worker start, group join. */
  readonly startupMs: number;
  /** From startFabric() resolved (consumer running, partitions assigned) to done. */
  readonly processingMs: number;
  /** messages / processingMs */
  readonly processingRate: number;
  /** From the clock's start until the group's committed offsets covered the input, and until N predictions were visible read_committed. */
  readonly offsetsCommittedMs: number;
  readonly predictionsVisibleMs: number;
  /** End offsets of predictions.fraud (records plus, under exactly-once, one commit marker per transaction and partition). */
  readonly predictionsEndOffsets: number;
  /** Batches the chain committed (from its batch-time histogram): under exactly-once, one transaction each. */
  readonly batches: number;
  readonly fallbacks: number;
}

async function batchesOf(metrics: Metrics, processor: string): Promise<number> {
  let batches = 0;
  for (const v of (await metrics.processorBatchSeconds.get()).values) if (v.labels.processor === processor && v.metricName?.endsWith('_count')) batches += v.value;
  return batches;
}

const POLL_MS = 25;

async function committed(admin: Admin, groupId: string, topic: string): Promise<number> {
  const [entry] = await admin.fetchOffsets({ groupId, topics: [topic] });
  return (entry?.partitions ?? []).reduce((s, p) => s + Math.max(0, Number(p.offset)), 0);
}

async function produceInput(kafka: Kafka, serde: AvroSerde, topic: string, events: readonly Transaction[]): Promise<void> {
  const writer = await serde.writer<Transaction>(`${topic}-value`, loadAvroSchema('transaction'));
  const producer = kafka.producer({ idempotent: true, maxInFlightRequests: 1, allowAutoTopicCreation: false });
  await producer.connect();
  try {
    const chunk = 1000;
    for (let i = 0; i < events.length; i += chunk) {
      await producer.send({ topic, acks: -1, messages: events.slice(i, i + chunk).map((e) => ({ key: e.account_id, value: writer.encode(e) })) });
    }
  } finally {
    await producer.disconnect();
  }
}

/**
 * One measurement in the namespace of `config` (which must be fresh: its own topic and Redis
 * prefixes) with `config.processingGuarantee`. Throws when the outputs are not exactly one
 * prediction per input event.
 */
export async function processingSample(config: FabricConfig, log: Logger, events: readonly Transaction[], timeoutMs = 300_000): Promise<ProcessingSample> {
  const guarantee = config.processingGuarantee;
  const n = events.length;
  const kafka = createKafka(config, log, 'bench-processing');
  const serde = new AvroSerde({ url: config.registryUrl });
  const input = prefixed(config, 'events.transactions');
  const predictions = prefixed(config, 'predictions.fraud');
  const group = prefixed(config, fabricTopology().processor('features').group);
  await applyTopology(fabricTopology(), config, kafka, serde);
  await produceInput(kafka, serde, input, events);
  const admin = kafka.admin();
  await admin.connect();
  let fabric: FabricHandle | null = null;
  const polling = new AbortController();
  const visible = kcatAwaitCount(config.kafkaBrokers, predictions, n, timeoutMs);
  // Observed (and reported) below; keeps an early failure from being an unhandled rejection.
  visible.done.catch(() => undefined);
  try {
    const produced = await topicEnd(admin, input);
    if (produced !== n) throw new Error(`${input} holds ${produced} records after pre-producing ${n}`);

    const t0 = performance.now();
    fabric = await startFabric(config, log, { processors: ['features'], gateway: false, apply: true });
    const started = performance.now();
    const failed = fabric.fatal.then((err) => Promise.reject(new Error(`the features chain failed: ${err.message}`)));
    failed.catch(() => undefined);
    const offsetsDone = (async (): Promise<number> => {
      const deadline = t0 + timeoutMs;
      for (;;) {
        if (polling.signal.aborted) throw new Error('stopped');
        if ((await committed(admin, group, input)) >= n) return performance.now();
        if (performance.now() > deadline) throw new Error(`group ${group} committed ${await committed(admin, group, input)} of ${n} input offsets within ${timeoutMs / 1000} s`);
        await new Promise((r) => setTimeout(r, POLL_MS));
      }
    })();
    offsetsDone.catch(() => undefined);
    const [offsetsAt, seen] = await Promise.race([Promise.all([offsetsDone, visible.done]), failed]);
    const doneAt = Math.max(offsetsAt, seen.exitedAt);
    const batches = await batchesOf(fabric.metrics, 'features');
    await fabric.stop();
    fabric = null;

    // Not timed: exactly one prediction per input event, visible read_committed.
    const records = await readToEnd(kafka, predictions, { groupPrefix: prefixed(config, 'bench.processing.verify') });
    const ids = new Set(events.map((e) => e.event_id));
    const seenIds = new Set<string>();
    let fallbacks = 0;
    let foreign = 0;
    for (const r of records) {
      if (!r.value) continue;
      const p = await serde.decodeAsync<Prediction>(r.value);
      if (!ids.has(p.event_id)) foreign++;
      seenIds.add(p.event_id);
      if (p.fallback) fallbacks++;
    }
    const committedCount = await kcatCommittedCount(config.kafkaBrokers, predictions);
    if (records.length !== n || seenIds.size !== n || foreign > 0 || committedCount !== n) {
      throw new Error(`${guarantee}: predictions.fraud holds ${records.length} records read_committed (kcat: ${committedCount}) for ${seenIds.size} distinct events (${foreign} not in the input), expected ${n}`);
    }
    const elapsedMs = doneAt - t0;
    const processingMs = doneAt - started;
    return {
      elapsedMs,
      messages: n,
      rate: n / (elapsedMs / 1000),
      guarantee,
      topicPrefix: config.topicPrefix,
      startupMs: started - t0,
      processingMs,
      processingRate: n / (processingMs / 1000),
      offsetsCommittedMs: offsetsAt - t0,
      predictionsVisibleMs: seen.exitedAt - t0,
      predictionsEndOffsets: await topicEnd(admin, predictions),
      batches,
      fallbacks,
    };
  } finally {
    polling.abort();
    visible.cancel();
    if (fabric) await withTimeout(fabric.stop(), 60_000, 'stopping the features chain').catch(() => undefined);
    await admin.disconnect().catch(() => undefined);
  }
}
