import { Partitioners, type Kafka, type Producer, type TopicMessages, type IHeaders } from 'kafkajs';
import { FabricError, messageOf } from '../errors.js';
import type { Logger } from './log.js';
import type { Metrics } from './metrics.js';
import { backoffMs, sleep } from './retry.js';

export interface OutMessage {
  readonly topic: string;
  readonly key: string | null;
  /** Null: a tombstone (compacted topics). */
  readonly value: Buffer | null;
  readonly headers?: IHeaders;
}

/** Bytes a message adds to a produce request (key, value, headers, plus record overhead). */
export function messageBytes(m: OutMessage): number {
  let n = 64 + (m.value?.length ?? 0) + (m.key ? Buffer.byteLength(m.key) : 0);
  if (m.headers) for (const [k, v] of Object.entries(m.headers)) n += k.length + (Buffer.isBuffer(v) ? v.length : String(v ?? '').length) + 8;
  return n;
}

/**
 * At most this many messages per sendBatch: kafkajs groups a request's messages per partition with a
 * spread inside a reduce (quadratic in messages per partition: 8,000 messages cost about 300 ms of CPU,
 * measured); 1,000 keeps that negligible for one more round trip per thousand.
 */
export const MAX_MESSAGES_PER_REQUEST = 1000;

/**
 * Splits messages into produce requests of at most `maxBytes` and `maxMessages` (and never an empty
 * one): a request above the broker's message.max.bytes is refused whole, and a batch retried after
 * that refusal would be refused again forever. A single larger message goes alone (the broker decides).
 */
export function chunkByBytes(messages: readonly OutMessage[], maxBytes: number, maxMessages = MAX_MESSAGES_PER_REQUEST): OutMessage[][] {
  const chunks: OutMessage[][] = [];
  let current: OutMessage[] = [];
  let bytes = 0;
  for (const m of messages) {
    const size = messageBytes(m);
    if (current.length > 0 && (bytes + size > maxBytes || current.length >= maxMessages)) {
      chunks.push(current);
      current = [];
      bytes = 0;
    }
    current.push(m);
    bytes += size;
  }
  if (current.length > 0) chunks.push(current);
  return chunks;
}

export interface BatchingProducerOptions {
  readonly lingerMs: number;
  readonly batchSize: number;
  /** Largest produce request in bytes (below the broker's message.max.bytes). */
  readonly maxRequestBytes?: number;
  readonly maxQueued: number;
  readonly ackTimeoutMs: number;
}

export const DEFAULT_MAX_REQUEST_BYTES = 512 * 1024;

interface Pending {
  readonly message: OutMessage;
  readonly enqueuedAt: number;
  readonly done: Waiter;
}

/** Resolves a group of messages once all of them are acknowledged, or rejects on the first failure. */
class Waiter {
  private remaining: number;
  private settled = false;
  constructor(count: number, private readonly resolve: () => void, private readonly reject: (err: Error) => void) {
    this.remaining = count;
  }
  ack(n: number): void {
    if (this.settled) return;
    this.remaining -= n;
    if (this.remaining <= 0) {
      this.settled = true;
      this.resolve();
    }
  }
  fail(err: Error): void {
    if (this.settled) return;
    this.settled = true;
    this.reject(err);
  }
}

/**
 * kafkajs has no linger: every send is a request. This producer batches across callers into
 * `sendBatch` requests (acks=all, one request in flight so retries cannot reorder a partition), bounds what it queues, and answers each caller once all of its messages are
 * acknowledged. Callers that would overflow the queue are refused at once (backpressure), and
 * messages that wait longer than ackTimeoutMs while Kafka is unreachable are failed without being sent.
 */
export class BatchingProducer {
  private readonly producer: Producer;
  private readonly queue: Pending[] = [];
  private head = 0;
  private connected = false;
  private closing = false;
  private flushing: Promise<void> | null = null;
  private lingerTimer: NodeJS.Timeout | null = null;
  private connectLoop: Promise<void> | null = null;
  private readonly stop = new AbortController();
  private markConnected!: () => void;
  /** Resolves the first time the producer connects (never, if it is closed before). */
  readonly whenConnected: Promise<void> = new Promise((resolve) => (this.markConnected = resolve));

  constructor(kafka: Kafka, private readonly options: BatchingProducerOptions, private readonly log: Logger, private readonly metrics?: Metrics) {
    // Not idempotent: kafkajs' idempotence needs unlimited retries, and callers must get an answer
    // within ackTimeoutMs. One request in flight keeps per-partition order through retries; a retry
    // that duplicates a record is harmless because everything downstream dedupes by event id.
    this.producer = kafka.producer({
      idempotent: false,
      maxInFlightRequests: 1,
      allowAutoTopicCreation: false,
      createPartitioner: Partitioners.DefaultPartitioner,
      retry: { retries: 3, initialRetryTime: 100, maxRetryTime: 1000 },
    });
    this.producer.on('producer.disconnect', () => {
      this.connected = false;
    });
  }

  /** Whether Kafka is reachable from this producer (readiness). */
  get isReady(): boolean {
    return this.connected && !this.closing;
  }

  get queued(): number {
    return this.queue.length - this.head;
  }

  /** Connects, retrying in the background until it succeeds or the producer is closed. Resolves on the first success or failure. */
  start(): Promise<boolean> {
    if (!this.connectLoop) {
      const first: { settle: ((ok: boolean) => void) | null } = { settle: null };
      const firstResult = new Promise<boolean>((r) => (first.settle = r));
      this.connectLoop = (async () => {
        for (let attempt = 0; !this.closing; attempt++) {
          try {
            await this.producer.connect();
            this.connected = true;
            this.markConnected();
            first.settle?.(true);
            first.settle = null;
            return;
          } catch (err) {
            this.log.warn({ err: messageOf(err), attempt }, 'Kafka producer could not connect; retrying');
            first.settle?.(false);
            first.settle = null;
            await sleep(backoffMs(attempt, 500, 5000), this.stop.signal);
          }
        }
      })();
      return firstResult;
    }
    return Promise.resolve(this.connected);
  }

  /**
   * Queues messages and resolves when Kafka has acknowledged all of them (acks=all).
   * Rejects with FABRIC_HTTP_RATE_LIMITED when the queue is full, FABRIC_KAFKA_UNAVAILABLE when Kafka
   * is unreachable or does not acknowledge within ackTimeoutMs, FABRIC_SHUTTING_DOWN when closing.
   */
  send(messages: readonly OutMessage[]): Promise<void> {
    if (messages.length === 0) return Promise.resolve();
    if (this.closing) return Promise.reject(new FabricError('FABRIC_SHUTTING_DOWN', 'producer is closing'));
    if (!this.connected) {
      void this.start();
      return Promise.reject(new FabricError('FABRIC_KAFKA_UNAVAILABLE', 'Kafka is not reachable'));
    }
    if (this.queued + messages.length > this.options.maxQueued) {
      return Promise.reject(new FabricError('FABRIC_HTTP_RATE_LIMITED', `producer queue full (${this.queued} queued, limit ${this.options.maxQueued})`));
    }
    return new Promise<void>((resolve, reject) => {
      // Every caller gets an answer within the ack timeout, even if a request is stuck in retries.
      const timer = setTimeout(() => done.fail(new FabricError('FABRIC_KAFKA_UNAVAILABLE', `not acknowledged within ${this.options.ackTimeoutMs} ms`)), this.options.ackTimeoutMs + 250);
      const done = new Waiter(
        messages.length,
        () => {
          clearTimeout(timer);
          resolve();
        },
        (err) => {
          clearTimeout(timer);
          reject(err);
        },
      );
      const now = Date.now();
      for (const message of messages) this.queue.push({ message, enqueuedAt: now, done });
      this.metrics?.producerQueued.set(this.queued);
      this.schedule();
    });
  }

  private schedule(): void {
    if (this.flushing) return;
    if (this.queued >= this.options.batchSize || this.options.lingerMs === 0) {
      this.kick();
    } else if (!this.lingerTimer) {
      this.lingerTimer = setTimeout(() => this.kick(), this.options.lingerMs);
    }
  }

  private kick(): void {
    if (this.lingerTimer) {
      clearTimeout(this.lingerTimer);
      this.lingerTimer = null;
    }
    if (this.flushing || this.queued === 0) return;
    this.flushing = this.drain().finally(() => {
      this.flushing = null;
      if (this.queued > 0) this.schedule();
    });
  }

  /** Sends batches while there is something queued; one request at a time. */
  private async drain(): Promise<void> {
    while (this.queued > 0) {
      this.expireStale();
      const batch = this.take(this.options.batchSize, this.options.maxRequestBytes ?? DEFAULT_MAX_REQUEST_BYTES);
      if (batch.length === 0) return;
      const byTopic = new Map<string, TopicMessages>();
      for (const { message } of batch) {
        let tm = byTopic.get(message.topic);
        if (!tm) {
          tm = { topic: message.topic, messages: [] };
          byTopic.set(message.topic, tm);
        }
        tm.messages.push({ key: message.key, value: message.value, headers: message.headers });
      }
      try {
        await this.producer.sendBatch({ topicMessages: [...byTopic.values()], acks: -1, timeout: this.options.ackTimeoutMs });
        this.metrics?.producerBatchSize.observe(batch.length);
        for (const tm of byTopic.values()) this.metrics?.producerSent.inc({ topic: tm.topic }, tm.messages.length);
        ackAll(batch);
      } catch (err) {
        this.metrics?.producerErrors.inc();
        this.log.error({ err: messageOf(err), messages: batch.length }, 'produce request failed');
        const failure = new FabricError('FABRIC_KAFKA_UNAVAILABLE', `Kafka did not acknowledge: ${messageOf(err)}`, { cause: err });
        for (const p of batch) p.done.fail(failure);
      }
      this.metrics?.producerQueued.set(this.queued);
    }
  }

  private take(n: number, maxBytes: number): Pending[] {
    const batch: Pending[] = [];
    let bytes = 0;
    while (batch.length < n && this.head < this.queue.length) {
      const next = this.queue[this.head]!;
      const size = messageBytes(next.message);
      if (batch.length > 0 && bytes + size > maxBytes) break;
      batch.push(next);
      bytes += size;
      this.head++;
    }
    if (this.head > 1024 && this.head * 2 > this.queue.length) {
      this.queue.splice(0, this.head);
      this.head = 0;
    }
    return batch;
  }

  /** Messages that waited past the ack timeout were never sent: fail them rather than send late. */
  private expireStale(): void {
    const limit = Date.now() - this.options.ackTimeoutMs;
    while (this.queued > 0 && this.queue[this.head]!.enqueuedAt < limit) {
      const p = this.queue[this.head++]!;
      p.done.fail(new FabricError('FABRIC_KAFKA_UNAVAILABLE', `not acknowledged within ${this.options.ackTimeoutMs} ms`));
    }
  }

  /** Sends everything queued, then disconnects. */
  async close(): Promise<void> {
    if (this.closing) return;
    this.closing = true;
    this.stop.abort();
    this.kick();
    while (this.flushing) await this.flushing;
    for (const p of this.queue.slice(this.head)) p.done.fail(new FabricError('FABRIC_SHUTTING_DOWN', 'producer closed before sending'));
    this.queue.length = 0;
    this.head = 0;
    await this.connectLoop?.catch(() => undefined);
    await this.producer.disconnect().catch(() => undefined);
    this.connected = false;
  }
}

function ackAll(batch: readonly Pending[]): void {
  // Group acks per waiter so a large request does one resolve per caller.
  let current: Waiter | null = null;
  let count = 0;
  for (const p of batch) {
    if (p.done !== current) {
      current?.ack(count);
      current = p.done;
      count = 0;
    }
    count++;
  }
  current?.ack(count);
}
