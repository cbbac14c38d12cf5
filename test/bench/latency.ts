/**
 * End-to-end latency: the whole fabric (gateway and every processor) fed at a fixed rate over HTTP.
 * Each event's send time is the moment its request was issued; independent read_committed kafkajs
 * consumers on the input topic (the Kafka hop floor, the reference), on features.account and on
 * predictions.fraud record when each event id shows up. Arrival minus send is the latency of that
 * stage. Event times start just before the fabric starts and advance at the send rate, so they stay
 * within the allowed clock skew and track the wall clock as live traffic does.
 */
import type { Consumer, Kafka } from 'kafkajs';
import { prefixed, type FabricConfig } from '../../topology/config.js';
import type { Logger } from '../../topology/runtime/log.js';
import { createKafka } from '../../topology/runtime/kafka.js';
import { startFabric } from '../../app/fabric.js';
import { AvroSerde } from '../../schemas/serde.js';
import type { Prediction } from '../../schemas/types.generated.js';
import { makeEvents } from './data.js';
import type { HttpLoadClient } from './http-client.js';
import type { Metrics } from '../../topology/runtime/metrics.js';
import { distribution, type Distribution } from './stats.js';

const now = (): number => performance.timeOrigin + performance.now();

class ArrivalRecorder {
  readonly arrivals = new Map<string, number>();
  readonly fallbacks = new Set<string>();
  /** Records whose event id had already arrived (a read_committed reader must see none). */
  duplicates = 0;
  private readonly consumer: Consumer;
  private readonly joined: Promise<void>;

  constructor(kafka: Kafka, groupId: string, readonly topic: string, private readonly serde: AvroSerde, maxWaitMs: number) {
    // read_committed (kafkajs' default, stated because the measurement relies on it): a prediction counts once its transaction committed.
    this.consumer = kafka.consumer({ groupId, allowAutoTopicCreation: false, maxWaitTimeInMs: maxWaitMs, readUncommitted: false });
    this.joined = new Promise((resolve) => this.consumer.on(this.consumer.events.GROUP_JOIN, () => resolve()));
  }

  async start(): Promise<void> {
    await this.consumer.connect();
    await this.consumer.subscribe({ topic: this.topic, fromBeginning: true });
    await this.consumer.run({
      autoCommit: false,
      eachBatch: async ({ batch }) => {
        // One arrival time per fetched batch, taken before decoding.
        const at = now();
        for (const m of batch.messages) {
          if (!m.value) continue;
          const value = await this.serde.decodeAsync<{ event_id: string } & Partial<Pick<Prediction, 'fallback'>>>(m.value);
          if (this.arrivals.has(value.event_id)) {
            this.duplicates++;
            continue;
          }
          this.arrivals.set(value.event_id, at);
          if (value.fallback === true) this.fallbacks.add(value.event_id);
        }
      },
    });
    await this.joined;
  }

  async waitFor(ids: readonly string[], timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline && !ids.every((id) => this.arrivals.has(id))) await new Promise((r) => setTimeout(r, 100));
  }

  stop(): Promise<void> {
    return this.consumer.disconnect();
  }
}

interface Totals {
  /** processor → summed batch seconds, batches, records */
  readonly processors: Map<string, { seconds: number; batches: number; records: number }>;
  readonly modelSeconds: number;
  readonly modelRuns: number;
}

/** Sums of the fabric's own histograms and counters, to attribute time inside the processors. */
async function totals(metrics: Metrics): Promise<Totals> {
  const processors = new Map<string, { seconds: number; batches: number; records: number }>();
  const entry = (p: string): { seconds: number; batches: number; records: number } => {
    let e = processors.get(p);
    if (!e) processors.set(p, (e = { seconds: 0, batches: 0, records: 0 }));
    return e;
  };
  for (const v of (await metrics.processorBatchSeconds.get()).values) {
    const e = entry(String(v.labels.processor));
    if (v.metricName?.endsWith('_sum')) e.seconds += v.value;
    else if (v.metricName?.endsWith('_count')) e.batches += v.value;
  }
  for (const v of (await metrics.processorRecords.get()).values) entry(String(v.labels.processor)).records += v.value;
  let modelSeconds = 0;
  let modelRuns = 0;
  for (const v of (await metrics.servingRunSeconds.get()).values) {
    if (v.metricName?.endsWith('_sum')) modelSeconds += v.value;
    else if (v.metricName?.endsWith('_count')) modelRuns += v.value;
  }
  return { processors, modelSeconds, modelRuns };
}

export interface ProcessorShare {
  readonly processor: string;
  readonly batches: number;
  readonly recordsPerBatch: number;
  /** Mean time from batch start to offset commit. */
  readonly meanBatchMs: number;
}

export interface StageLatency extends Distribution {
  readonly received: number;
}

export interface LatencyResult {
  readonly ratePerSec: number;
  readonly durationSec: number;
  readonly sent: number;
  readonly accepted: number;
  readonly requestErrors: string[];
  /** Achieved send rate (events/s) of the paced client. */
  readonly achievedRate: number;
  /** POST until 202 (Kafka acks=all) per request. */
  readonly gatewayAck: Distribution;
  /** Send until visible on events.transactions (the reference). */
  readonly input: StageLatency;
  /** Send until the features processor's update is visible on features.account. */
  readonly features: StageLatency;
  /** Send until the prediction is visible on predictions.fraud. */
  readonly predictions: StageLatency;
  /** Predictions that carry the fallback decision (features missing, model timeout). */
  readonly fallbacks: number;
  /** Prediction records for an event id already seen (warm-up included): must be 0 read_committed. */
  readonly duplicatePredictions: number;
  /** From the fabric's metrics over the measured run. */
  readonly processors: ProcessorShare[];
  readonly meanModelRunMs: number;
  readonly modelRuns: number;
}

export interface LatencyOptions {
  readonly config: FabricConfig;
  readonly log: Logger;
  readonly client: HttpLoadClient;
  readonly runId: string;
  readonly seed: number;
  readonly apiKey: string;
  readonly ratePerSec: number;
  readonly durationSec: number;
  readonly tickMs: number;
  readonly warmupSec: number;
  readonly progress: (line: string) => void;
}

export async function runLatency(o: LatencyOptions): Promise<LatencyResult> {
  const perTick = Math.max(1, Math.round((o.ratePerSec * o.tickMs) / 1000));
  const warmTicks = Math.max(1, Math.round((o.warmupSec * 1000) / o.tickMs));
  const ticks = Math.round((o.durationSec * 1000) / o.tickMs);
  const data = makeEvents({ seed: o.seed, count: (warmTicks + ticks) * perTick, runId: `${o.runId}-e2e${o.ratePerSec}`, batchSize: perTick, ratePerSec: o.ratePerSec, startTs: Date.now() - 1_000 });
  const idsOf = (from: number, to: number): string[][] => {
    const out: string[][] = [];
    for (let b = from; b < to; b++) out.push(data.events.slice(b * perTick, (b + 1) * perTick).map((e) => e.event_id));
    return out;
  };
  const warmIds = idsOf(0, warmTicks);
  const ids = idsOf(warmTicks, warmTicks + ticks);
  await o.client.load('e2e-warmup', data.bodies.slice(0, warmTicks));
  await o.client.load('e2e', data.bodies.slice(warmTicks));

  o.progress(`e2e ${o.ratePerSec}/s: starting the fabric with every processor`);
  const fabric = await startFabric(o.config, o.log);
  const kafka = createKafka(o.config, o.log, 'bench-latency');
  const serde = new AvroSerde({ url: o.config.registryUrl });
  const group = (name: string): string => prefixed(o.config, `bench.latency.${name}`);
  const recorders = {
    input: new ArrivalRecorder(kafka, group('input'), prefixed(o.config, 'events.transactions'), serde, o.config.consumerMaxWaitMs),
    features: new ArrivalRecorder(kafka, group('features'), prefixed(o.config, 'features.account'), serde, o.config.consumerMaxWaitMs),
    predictions: new ArrivalRecorder(kafka, group('predictions'), prefixed(o.config, 'predictions.fraud'), serde, o.config.consumerMaxWaitMs),
  };
  try {
    await Promise.all(Object.values(recorders).map((r) => r.start()));
    const url = `http://127.0.0.1:${fabric.gatewayPort}/v1/events/transactions`;

    o.progress(`e2e ${o.ratePerSec}/s: warm-up ${o.warmupSec} s`);
    const warm = await o.client.paced('e2e-warmup', url, o.apiKey, o.tickMs);
    if (warm.statuses.some((s) => s !== 202)) throw new Error(`warm-up requests failed: ${warm.errors.join(' | ')}`);
    await recorders.predictions.waitFor(warmIds.flat(), 60_000);

    o.progress(`e2e ${o.ratePerSec}/s: ${o.ratePerSec} events/s for ${o.durationSec} s (${perTick} per ${o.tickMs} ms request)`);
    const before = await totals(fabric.metrics);
    const run = await o.client.paced('e2e', url, o.apiKey, o.tickMs);
    const allIds = ids.flat();
    await recorders.predictions.waitFor(allIds, 30_000);
    await recorders.features.waitFor(allIds, 5_000);

    const sendTimeOf = new Map<string, number>();
    ids.forEach((batch, b) => batch.forEach((id) => sendTimeOf.set(id, run.sendTimes[b]!)));
    const stage = (r: ArrivalRecorder): StageLatency => {
      const latencies: number[] = [];
      for (const id of allIds) {
        const at = r.arrivals.get(id);
        if (at !== undefined) latencies.push(at - sendTimeOf.get(id)!);
      }
      return { ...distribution(latencies), received: latencies.length };
    };
    const after = await totals(fabric.metrics);
    // Let tracking (ClickHouse linger) and drift finish their batches before the fabric is stopped.
    await new Promise((r) => setTimeout(r, 2_000));
    const processors: ProcessorShare[] = [...after.processors].map(([processor, a]) => {
      const b = before.processors.get(processor) ?? { seconds: 0, batches: 0, records: 0 };
      const batches = a.batches - b.batches;
      return { processor, batches, recordsPerBatch: batches ? (a.records - b.records) / batches : 0, meanBatchMs: batches ? ((a.seconds - b.seconds) * 1000) / batches : 0 };
    });
    const modelRuns = after.modelRuns - before.modelRuns;
    const acceptedBatches = run.statuses.filter((s) => s === 202).length;
    return {
      ratePerSec: o.ratePerSec,
      durationSec: o.durationSec,
      sent: allIds.length,
      accepted: acceptedBatches * perTick,
      requestErrors: run.errors,
      achievedRate: allIds.length / (run.elapsedMs / 1000),
      gatewayAck: distribution(run.ackTimes.map((a, i) => a - run.sendTimes[i]!)),
      input: stage(recorders.input),
      features: stage(recorders.features),
      predictions: stage(recorders.predictions),
      fallbacks: allIds.filter((id) => recorders.predictions.fallbacks.has(id)).length,
      duplicatePredictions: recorders.predictions.duplicates,
      processors,
      meanModelRunMs: modelRuns ? ((after.modelSeconds - before.modelSeconds) * 1000) / modelRuns : 0,
      modelRuns,
    };
  } finally {
    await Promise.all(Object.values(recorders).map((r) => r.stop().catch(() => undefined)));
    await fabric.stop();
  }
}
