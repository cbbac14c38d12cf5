/**
 * Throughput pairs: gateway ingest vs kcat, the project's BatchingProducer vs kcat, and a no-op
 * kafkajs consumer vs kcat. Every measurement checks that the topic really grew (or was read) by
 * the expected number of messages, so a fast but lossy run cannot pass as a result.
 */
import type { Admin, Kafka } from 'kafkajs';
import type { Logger } from '../../topology/runtime/log.js';
import { BatchingProducer, type OutMessage } from '../../topology/runtime/producer.js';
import type { FabricConfig } from '../../topology/config.js';
import type { EncodedEvent, KcatInput } from './data.js';
import { kcatConsume, kcatProduce } from './kcat.js';
import type { HttpLoadClient } from './http-client.js';

export interface Sample {
  readonly elapsedMs: number;
  readonly messages: number;
  /** messages / s */
  readonly rate: number;
  readonly note?: string;
}

export function sample(elapsedMs: number, messages: number, note?: string): Sample {
  return { elapsedMs, messages, rate: messages / (elapsedMs / 1000), ...(note ? { note } : {}) };
}

/** Sum of the high watermarks of every partition of `topic`. */
export async function topicEnd(admin: Admin, topic: string): Promise<number> {
  const offsets = await admin.fetchTopicOffsets(topic);
  return offsets.reduce((s, o) => s + Number(o.high), 0);
}

export async function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([p, new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`${what} did not finish within ${ms / 1000} s`)), ms)))]);
  } finally {
    clearTimeout(timer);
  }
}

/** Runs `measure` and checks that `topic` grew by exactly `expected` messages. */
async function produced(admin: Admin, topic: string, expected: number, measure: () => Promise<Sample>): Promise<Sample> {
  const before = await topicEnd(admin, topic);
  const s = await measure();
  const grown = (await topicEnd(admin, topic)) - before;
  if (grown !== expected) throw new Error(`expected ${expected} new messages on ${topic}, found ${grown}`);
  return s;
}

export interface ProduceContext {
  readonly config: FabricConfig;
  readonly admin: Admin;
  readonly topic: string;
  readonly kcatInput: KcatInput;
}

export function kcatProduceSample(ctx: ProduceContext): Promise<Sample> {
  return produced(ctx.admin, ctx.topic, ctx.kcatInput.count, async () => {
    const r = await kcatProduce(ctx.config.kafkaBrokers, ctx.topic, ctx.kcatInput);
    return sample(r.elapsedMs, r.messages);
  });
}

export interface GatewayContext extends ProduceContext {
  readonly client: HttpLoadClient;
  readonly bodiesKey: string;
  readonly url: string;
  readonly apiKey: string;
  readonly concurrency: number;
  readonly events: number;
}

export function gatewaySample(ctx: GatewayContext, concurrency = ctx.concurrency): Promise<Sample> {
  return produced(ctx.admin, ctx.topic, ctx.events, async () => {
    const r = await ctx.client.burst(ctx.bodiesKey, ctx.url, ctx.apiKey, concurrency);
    if (r.failed > 0) throw new Error(`${r.failed} of ${r.requests} requests failed: ${r.errors.join(' | ')}`);
    return sample(r.elapsedMs, r.accepted);
  });
}

/** The first `requests` bodies, unchecked: warms up the gateway (JIT, connections, producer). */
export async function gatewayWarmup(ctx: GatewayContext, requests: number): Promise<void> {
  const r = await ctx.client.burst(ctx.bodiesKey, ctx.url, ctx.apiKey, ctx.concurrency, requests);
  if (r.failed > 0) throw new Error(`warm-up: ${r.failed} of ${r.requests} requests failed: ${r.errors.join(' | ')}`);
}

/** The project's producer, fed `groupSize`-message send() calls with at most `window` of them unanswered. */
export class ProducerBench {
  private readonly producer: BatchingProducer;
  private readonly messages: OutMessage[];

  constructor(kafka: Kafka, config: FabricConfig, log: Logger, topic: string, encoded: readonly EncodedEvent[]) {
    this.producer = new BatchingProducer(kafka, { lingerMs: config.producerLingerMs, batchSize: config.producerBatchSize, maxQueued: config.producerMaxQueued, ackTimeoutMs: config.kafkaAckTimeoutMs }, log.child({ component: 'bench-producer' }));
    this.messages = encoded.map((e) => ({ topic, key: e.key.toString('utf8'), value: e.value }));
  }

  async start(): Promise<void> {
    if (!(await this.producer.start())) throw new Error('the bench producer could not connect to Kafka');
  }

  async run(groupSize: number, window: number, count = this.messages.length): Promise<Sample> {
    const groups: OutMessage[][] = [];
    for (let i = 0; i < count; i += groupSize) groups.push(this.messages.slice(i, Math.min(count, i + groupSize)));
    let next = 0;
    const started = performance.now();
    const lane = async (): Promise<void> => {
      while (next < groups.length) await this.producer.send(groups[next++]!);
    };
    await Promise.all(Array.from({ length: Math.min(window, groups.length) }, lane));
    return sample(performance.now() - started, count);
  }

  sample(ctx: ProduceContext, groupSize: number, window: number): Promise<Sample> {
    return produced(ctx.admin, ctx.topic, this.messages.length, () => this.run(groupSize, window));
  }

  close(): Promise<void> {
    return this.producer.close();
  }
}

export async function kcatConsumeSample(brokers: string, topic: string, expected: number): Promise<Sample> {
  const r = await kcatConsume(brokers, topic, expected);
  if (r.messages !== expected) throw new Error(`kcat read ${r.messages} messages from ${topic}, expected ${expected}`);
  return sample(r.elapsedMs, r.messages);
}

/**
 * A no-op eachBatch consumer in a new group reading `topic` from the beginning; the time runs from
 * connect() until it has seen `expected` messages (like kcat's, it includes start-up and assignment).
 */
export async function kafkajsConsumeSample(kafka: Kafka, groupId: string, topic: string, expected: number): Promise<Sample> {
  const consumer = kafka.consumer({ groupId, allowAutoTopicCreation: false });
  let seen = 0;
  let firstAt = Number.NaN;
  let resolveDone: () => void = () => undefined;
  const done = new Promise<void>((r) => (resolveDone = r));
  const started = performance.now();
  try {
    await consumer.connect();
    await consumer.subscribe({ topic, fromBeginning: true });
    await consumer.run({
      autoCommit: false,
      eachBatch: async ({ batch }) => {
        if (Number.isNaN(firstAt)) firstAt = performance.now();
        seen += batch.messages.length;
        if (seen >= expected) resolveDone();
      },
    });
    await withTimeout(done, 120_000, `kafkajs consumer of ${topic}`);
    const elapsedMs = performance.now() - started;
    if (seen !== expected) throw new Error(`kafkajs consumer saw ${seen} messages, expected ${expected}`);
    return sample(elapsedMs, seen, `start-up to first batch ${(firstAt - started).toFixed(0)} ms; after it ${Math.round(seen / ((elapsedMs - (firstAt - started)) / 1000)).toLocaleString('en-US')} msg/s`);
  } finally {
    await consumer.disconnect().catch(() => undefined);
  }
}
