import { from, lastValueFrom, toArray } from 'rxjs';
import type { Consumer, EachBatchPayload, Kafka, KafkaMessage } from 'kafkajs';
import avro from 'avsc';
import { AvroSerde, SerdeError, type AvroWriter } from '../../schemas/serde.js';
import { loadAvroSchema } from '../../schemas/catalog.js';
import { FabricError, isFabricError, messageOf } from '../errors.js';
import { prefixed, type FabricConfig } from '../config.js';
import { dlqTopicName, type ProcessorDef, type Topology } from '../graph.js';
import type { Logger } from './log.js';
import type { Metrics } from './metrics.js';
import type { BatchingProducer, OutMessage } from './producer.js';
import type { Output, ProcessorLogic, SourceRecord } from './processor.js';
import { deadLetter, type RawRecord } from './dlq.js';
import { backoffMs, sleep } from './retry.js';

export interface StreamDeps {
  readonly kafka: Kafka;
  readonly producer: BatchingProducer;
  readonly serde: AvroSerde;
  readonly topology: Topology;
  readonly config: FabricConfig;
  readonly log: Logger;
  readonly metrics: Metrics;
  readonly clock?: () => number;
}

/**
 * Binds one processor to Kafka: a consumer group reading its inputs with eachBatch, records decoded
 * with the topic's schema, outputs produced through the batching producer, sinks flushed, and only
 * then offsets committed. A record that cannot be decoded or that the processor rejects goes to
 * dlq.<topic> and the batch goes on; a sink failure retries the batch with backoff (idempotent sinks)
 * without committing, heartbeating meanwhile.
 */
export class ProcessorRunner {
  private consumer: Consumer | null = null;
  private readonly readers = new Map<string, avro.Type>();
  private readonly writers = new Map<string, AvroWriter<unknown>>();
  private readonly physicalToLogical = new Map<string, string>();
  private readonly log: Logger;
  private readonly stopping = new AbortController();
  private opened = false;

  constructor(
    readonly def: ProcessorDef,
    private readonly logic: ProcessorLogic,
    private readonly deps: StreamDeps,
  ) {
    this.log = deps.log.child({ processor: def.name });
  }

  private physical(topic: string): string {
    return prefixed(this.deps.config, topic);
  }

  async start(): Promise<void> {
    const { serde, topology, kafka, config } = this.deps;
    for (const input of this.def.inputs) {
      const schema = topology.topic(input).schema;
      this.physicalToLogical.set(this.physical(input), input);
      if (schema) this.readers.set(input, avro.Type.forSchema(loadAvroSchema(schema) as avro.Schema));
    }
    for (const output of this.def.outputs) {
      const schema = topology.topic(output).schema;
      if (!schema) throw new FabricError('FABRIC_CONFIG_INVALID', `output topic ${output} of ${this.def.name} has no schema`);
      this.writers.set(output, await serde.writer(`${this.physical(output)}-value`, loadAvroSchema(schema)));
    }
    await this.logic.open?.();
    this.opened = true;
    const consumer = kafka.consumer({
      groupId: this.physical(this.def.group),
      sessionTimeout: 30_000,
      heartbeatInterval: 3_000,
      maxWaitTimeInMs: config.consumerMaxWaitMs,
      allowAutoTopicCreation: false,
      retry: { retries: 10, initialRetryTime: 300 },
    });
    this.consumer = consumer;
    await consumer.connect();
    await consumer.subscribe({ topics: this.def.inputs.map((t) => this.physical(t)), fromBeginning: true });
    const partitions = Math.max(...this.def.inputs.map((t) => topology.topic(t).partitions));
    await consumer.run({
      autoCommit: false,
      eachBatchAutoResolve: false,
      partitionsConsumedConcurrently: this.def.sequential ? 1 : partitions,
      eachBatch: (payload) => this.handleBatch(payload, consumer),
    });
    this.log.info({ inputs: this.def.inputs, group: this.physical(this.def.group) }, 'processor started');
  }

  private async handleBatch(payload: EachBatchPayload, consumer: Consumer): Promise<void> {
    const { batch, heartbeat, isRunning, isStale } = payload;
    if (batch.isEmpty()) return;
    const started = performance.now();
    const logical = this.physicalToLogical.get(batch.topic) ?? batch.topic;
    const log = this.log.child({ topic: logical, partition: batch.partition, firstOffset: batch.firstOffset() });
    await this.deps.serde.prefetch(batch.messages.map((m) => m.value));
    const { records, rejects } = this.decode(logical, batch.partition, batch.messages);
    const rawByOffset = new Map(batch.messages.map((m) => [m.offset, m]));

    for (let attempt = 0; ; attempt++) {
      if (!isRunning() || isStale()) return;
      try {
        const outputs = records.length ? await lastValueFrom(this.logic.process(from(records), { log, now: this.deps.clock ?? Date.now }).pipe(toArray()), { defaultValue: [] as Output[] }) : [];
        const messages = this.toMessages(outputs, rejects, rawByOffset, batch.topic, batch.partition, log);
        await this.deps.producer.send(messages);
        await this.logic.flush?.();
        break;
      } catch (err) {
        if (!isFabricError(err) || err.retriable) {
          this.deps.metrics.processorRetries.inc({ processor: this.def.name });
          log.warn({ err: messageOf(err), attempt }, 'batch failed; retrying without committing');
          await sleep(backoffMs(attempt, this.deps.config.sinkRetryMs), this.stopping.signal);
          await heartbeat().catch(() => undefined);
          continue;
        }
        // A non-retriable error out of process() is a bug in the processor: fail loudly, do not commit.
        log.error({ err }, 'processor failed with a non-retriable error');
        throw err;
      }
    }
    const last = batch.lastOffset();
    payload.resolveOffset(last);
    await consumer.commitOffsets([{ topic: batch.topic, partition: batch.partition, offset: (BigInt(last) + 1n).toString() }]);
    await heartbeat();
    this.deps.metrics.processorRecords.inc({ processor: this.def.name, topic: logical }, batch.messages.length);
    this.deps.metrics.processorLag.set({ processor: this.def.name, topic: logical, partition: String(batch.partition) }, Number(batch.offsetLag()));
    this.deps.metrics.processorBatchSeconds.observe({ processor: this.def.name }, (performance.now() - started) / 1000);
  }

  private decode(topic: string, partition: number, messages: readonly KafkaMessage[]): { records: SourceRecord[]; rejects: { raw: KafkaMessage; error: FabricError }[] } {
    const reader = this.readers.get(topic);
    const records: SourceRecord[] = [];
    const rejects: { raw: KafkaMessage; error: FabricError }[] = [];
    for (const m of messages) {
      if (!m.value) {
        rejects.push({ raw: m, error: new FabricError('FABRIC_RECORD_UNDECODABLE', 'record has no value (tombstone) on a non-compacted stream') });
        continue;
      }
      let value: unknown;
      try {
        value = reader ? this.deps.serde.decode(m.value, reader) : m.value;
      } catch (err) {
        const reason = err instanceof SerdeError ? err.message : messageOf(err);
        rejects.push({ raw: m, error: new FabricError('FABRIC_RECORD_UNDECODABLE', reason, { cause: err }) });
        continue;
      }
      records.push({ topic, partition, offset: m.offset, key: m.key ? m.key.toString() : null, value, timestamp: Number(m.timestamp), headers: m.headers ?? {} });
    }
    return { records, rejects };
  }

  private toMessages(outputs: readonly Output[], decodeRejects: readonly { raw: KafkaMessage; error: FabricError }[], rawByOffset: ReadonlyMap<string, KafkaMessage>, physicalTopic: string, partition: number, log: Logger): OutMessage[] {
    const messages: OutMessage[] = [];
    const dlqTopic = this.physical(dlqTopicName(this.physicalToLogical.get(physicalTopic) ?? physicalTopic));
    const toDlq = (raw: KafkaMessage | undefined, partition: number, offset: string, error: FabricError): void => {
      this.deps.metrics.processorDlq.inc({ processor: this.def.name, topic: physicalTopic, code: error.code });
      log.warn({ offset, code: error.code, reason: error.message }, 'record sent to dead-letter topic');
      const rawRecord: RawRecord = { topic: physicalTopic, partition, offset, key: raw?.key ?? null, value: raw?.value ?? null, timestamp: raw?.timestamp ?? '0', headers: raw?.headers ?? {} };
      messages.push(deadLetter(dlqTopic, this.def.name, rawRecord, error));
    };
    for (const { raw, error } of decodeRejects) toDlq(raw, partition, raw.offset, error);
    for (const out of outputs) {
      if (out.kind === 'reject') {
        toDlq(rawByOffset.get(out.record.offset), out.record.partition, out.record.offset, out.error);
        continue;
      }
      const writer = this.writers.get(out.topic);
      if (!writer) throw new FabricError('FABRIC_CONFIG_INVALID', `processor ${this.def.name} emitted to ${out.topic}, which is not among its declared outputs`);
      try {
        messages.push({ topic: this.physical(out.topic), key: out.key, value: writer.encode(out.value) });
      } catch (err) {
        const error = new FabricError('FABRIC_RECORD_REJECTED', `output for ${out.topic} does not match its schema: ${messageOf(err)}`, { cause: err });
        if (out.source) toDlq(rawByOffset.get(out.source.offset), out.source.partition, out.source.offset, error);
        else throw error;
      }
    }
    return messages;
  }

  /** Stops fetching, lets the in-flight batch finish (its sinks flushed and offsets committed), closes sinks, disconnects. */
  async stop(): Promise<void> {
    this.stopping.abort();
    // The batch in flight keeps its own consumer reference, so it still commits while stop() waits for it.
    const consumer = this.consumer;
    this.consumer = null;
    if (consumer) {
      await consumer.stop().catch((err: unknown) => this.log.warn({ err: messageOf(err) }, 'consumer stop failed'));
    }
    if (this.opened) {
      this.opened = false;
      await this.logic.flush?.().catch((err: unknown) => this.log.error({ err: messageOf(err) }, 'final flush failed'));
      await this.logic.close?.().catch((err: unknown) => this.log.error({ err: messageOf(err) }, 'close failed'));
    }
    await consumer?.disconnect().catch(() => undefined);
    this.log.info('processor stopped');
  }
}
