import { Partitioners, type Admin, type Consumer, type EachBatchPayload, type Kafka, type KafkaMessage, type Producer, type TopicMessages } from 'kafkajs';
import avro from 'avsc';
import { AvroSerde, SerdeError, type AvroWriter } from '../../schemas/serde.js';
import { loadAvroSchema } from '../../schemas/catalog.js';
import { FabricError, isFabricError, messageOf } from '../errors.js';
import { prefixed, type FabricConfig } from '../config.js';
import { dlqTopicName, type ProcessorDef, type Topology } from '../graph.js';
import type { Logger } from './log.js';
import type { Metrics } from './metrics.js';
import type { OutMessage } from './producer.js';
import { chunkByBytes } from './producer.js';
import type { Output, ProcessorLogic, SourceRecord, TaskId } from './processor.js';
import { runChain } from './chain.js';
import { taskState, type PartitionStateStore } from './state-store.js';
import { deadLetter, type RawRecord } from './dlq.js';
import { backoffMs, sleep } from './retry.js';

export interface StreamDeps {
  readonly kafka: Kafka;
  readonly serde: AvroSerde;
  readonly topology: Topology<unknown>;
  readonly config: FabricConfig;
  readonly log: Logger;
  readonly metrics: Metrics;
  readonly stateStore: PartitionStateStore;
  readonly clock?: () => number;
  /** Called once when the processor gave up (restart budget spent): the process should exit non-zero. */
  readonly onFatal?: (name: string, err: Error) => void;
}

export type ProcessorState = 'starting' | 'running' | 'paused' | 'restarting' | 'failed' | 'stopped';

export interface ProcessorStatus {
  readonly processor: string;
  readonly chain: readonly string[];
  readonly state: ProcessorState;
  readonly restarts: number;
  /** Tasks (input partitions) whose batch is waiting on a failing sink or the registry. */
  readonly paused: readonly string[];
  readonly lastError: string | null;
}

export interface ChainLink {
  readonly def: ProcessorDef<unknown>;
  readonly logic: ProcessorLogic;
}

/**
 * Thrown out of eachBatch when the consumer must start again from what Kafka committed: the batch's
 * outcome is unknown (the commit itself failed), the task is lost (fenced) or something unexpected
 * happened. Not retriable, so kafkajs does not redo the batch from its in-memory position (which knows
 * nothing of a commit that landed) but crashes the consumer, and the runner's supervisor restarts it.
 */
class RestartConsumer extends Error {
  override readonly name = 'RestartConsumer';
  readonly retriable = false;
  constructor(cause: unknown) {
    super(messageOf(cause), { cause });
  }
}

/**
 * Binds one task chain (a processor and those chained after it) to Kafka, exactly once:
 * consume-transform-produce in a Kafka transaction per batch of one input partition, with the input
 * offsets committed inside the transaction (a transactional producer per task, its transactional id
 * derived from group, topic and partition, so a new owner of the partition fences the old one, as
 * Kafka Streams' exactly-once does). Sinks are flushed before the transaction commits; task state is
 * versioned by input position (state-store.ts), so a batch whose transaction aborts leaves nothing
 * that a redo would see.
 *
 * Failures have one meaning each: a record that cannot be decoded or that a processor rejects goes
 * to dlq.<topic> inside the same transaction and the batch goes on; a retriable failure (a sink,
 * the registry, the model) aborts the transaction, pauses the partition and retries the batch with
 * backoff; a failure whose outcome is unknown (the commit itself), a fenced producer or anything
 * unexpected restarts the consumer from the committed offsets, with backoff, and after
 * FABRIC_PROCESSOR_MAX_RESTARTS consecutive failures the processor is failed and onFatal is called.
 */
export class ProcessorRunner {
  private consumer: Consumer | null = null;
  private readonly readers = new Map<string, avro.Type>();
  private readonly writers = new Map<string, AvroWriter<unknown>>();
  private readonly physicalToLogical = new Map<string, string>();
  private readonly producers = new Map<string, Promise<Producer>>();
  private readonly claims = new Map<string, number[]>();
  /** Tasks whose committed offset was checked against the fetch position in this group generation. */
  private readonly verified = new Set<string>();
  private admin: Admin | null = null;
  private restarting: Promise<void> | null = null;
  private readonly pausedTasks = new Set<string>();
  private readonly log: Logger;
  private readonly stopping = new AbortController();
  private readonly head: ProcessorDef<unknown>;
  private readonly group: string;
  private opened = false;
  private state: ProcessorState = 'starting';
  private restarts = 0;
  private consecutiveFailures = 0;
  private lastError: string | null = null;
  private restartTimer: NodeJS.Timeout | null = null;
  private inFlight = new Set<Promise<void>>();
  private readonly exactlyOnce: boolean;

  constructor(
    private readonly links: readonly ChainLink[],
    private readonly deps: StreamDeps,
  ) {
    if (links.length === 0) throw new FabricError('FABRIC_CONFIG_INVALID', 'a processor runner needs at least one processor');
    this.head = links[0]!.def;
    this.group = prefixed(deps.config, this.head.group);
    this.exactlyOnce = deps.config.processingGuarantee === 'exactly_once';
    this.log = deps.log.child({ processor: this.head.name, ...(links.length > 1 ? { chain: links.map((l) => l.def.name) } : {}) });
  }

  get name(): string {
    return this.head.name;
  }

  status(): ProcessorStatus {
    let state = this.state === 'running' && this.pausedTasks.size > 0 ? 'paused' : this.state;
    let lastError = this.lastError;
    for (const { def, logic } of this.links) {
      const r = logic.readiness?.();
      if (!r || r.ready || state === 'failed' || state === 'stopped') continue;
      state = r.state === 'failed' ? 'failed' : 'restarting';
      lastError = `${def.name}: ${r.state}${r.detail ? ` (${r.detail})` : ''}`;
    }
    return { processor: this.head.name, chain: this.links.map((l) => l.def.name), state, restarts: this.restarts, paused: [...this.pausedTasks], lastError };
  }

  private physical(topic: string): string {
    return prefixed(this.deps.config, topic);
  }

  async start(): Promise<void> {
    const { serde, topology } = this.deps;
    for (const input of this.head.inputs) {
      const schema = topology.topic(input).schema;
      this.physicalToLogical.set(this.physical(input), input);
      if (schema) this.readers.set(input, avro.Type.forSchema(loadAvroSchema(schema) as avro.Schema));
    }
    for (const { def } of this.links) {
      for (const output of def.outputs) {
        const schema = topology.topic(output).schema;
        if (!schema) throw new FabricError('FABRIC_CONFIG_INVALID', `output topic ${output} of ${def.name} has no schema`);
        if (!this.writers.has(output)) this.writers.set(output, await serde.writer(`${this.physical(output)}-value`, loadAvroSchema(schema)));
      }
    }
    for (const { logic } of this.links) await logic.open?.();
    this.opened = true;
    await this.startConsumer();
    this.log.info({ inputs: this.head.inputs, group: this.group, guarantee: this.deps.config.processingGuarantee }, 'processor started');
  }

  private async startConsumer(): Promise<void> {
    const { kafka, config } = this.deps;
    const consumer = kafka.consumer({
      groupId: this.group,
      sessionTimeout: config.consumerSessionTimeoutMs,
      rebalanceTimeout: config.consumerRebalanceTimeoutMs,
      heartbeatInterval: Math.min(3_000, Math.floor(config.consumerSessionTimeoutMs / 3)),
      maxWaitTimeInMs: config.consumerMaxWaitMs,
      allowAutoTopicCreation: false,
      // Outputs of fabric processors are transactional: never see aborted or open transactions.
      readUncommitted: false,
      // The runner supervises restarts itself (budget, state, onFatal); kafkajs must not restart behind it.
      retry: { retries: 10, initialRetryTime: 300, restartOnFailure: async () => false },
    });
    this.consumer = consumer;
    consumer.on(consumer.events.GROUP_JOIN, (e) => {
      // A new generation: every task is claimed and checked anew on its next batch; producers of tasks we lost are closed.
      this.claims.clear();
      this.verified.clear();
      const assigned = new Set<string>();
      for (const [topic, partitions] of Object.entries(e.payload.memberAssignment)) for (const p of partitions) assigned.add(`${topic}/${p}`);
      for (const key of [...this.producers.keys()]) if (!assigned.has(key)) void this.closeProducer(key);
      this.log.info({ assignment: e.payload.memberAssignment }, 'partitions assigned');
    });
    consumer.on(consumer.events.CRASH, (e) => {
      if (this.stopping.signal.aborted || this.consumer !== consumer) return;
      this.scheduleRestart(e.payload.error);
    });
    await consumer.connect();
    await consumer.subscribe({ topics: this.head.inputs.map((t) => this.physical(t)), fromBeginning: true });
    const partitions = Math.max(...this.head.inputs.map((t) => this.deps.topology.topic(t).partitions));
    await consumer.run({
      autoCommit: false,
      eachBatchAutoResolve: false,
      partitionsConsumedConcurrently: partitions * this.head.inputs.length,
      eachBatch: (payload) => this.track(this.handleBatch(payload)),
    });
    // Unless the first join already crashed (a restart is scheduled) or we are stopping.
    if (this.consumer === consumer && this.restartTimer === null && this.state !== 'failed' && !this.stopping.signal.aborted) this.state = 'running';
  }

  private track(work: Promise<void>): Promise<void> {
    this.inFlight.add(work);
    return work.finally(() => this.inFlight.delete(work));
  }

  private scheduleRestart(err: Error): void {
    this.consecutiveFailures++;
    this.lastError = messageOf(err);
    const budget = this.deps.config.processorRestarts;
    if (this.consecutiveFailures > budget) {
      this.state = 'failed';
      const fatal = new FabricError('FABRIC_PROCESSOR_FAILED', `processor ${this.head.name} failed ${this.consecutiveFailures} times in a row; last error: ${this.lastError}`, { cause: err });
      this.log.fatal({ err: this.lastError }, 'processor gave up');
      this.deps.onFatal?.(this.head.name, fatal);
      return;
    }
    this.state = 'restarting';
    this.restarts++;
    this.deps.metrics.processorRestarts.inc({ processor: this.head.name });
    const delay = backoffMs(this.consecutiveFailures - 1, this.deps.config.sinkRetryMs);
    this.log.error({ err: this.lastError, attempt: this.consecutiveFailures, delayMs: delay }, 'processor failed; restarting its consumer from the committed offsets');
    this.restartTimer = setTimeout(() => {
      this.restartTimer = null;
      this.restarting = this.restartConsumer().finally(() => (this.restarting = null));
    }, delay);
  }

  private async restartConsumer(): Promise<void> {
    if (this.stopping.signal.aborted) return;
    const old = this.consumer;
    this.consumer = null;
    await old?.disconnect().catch(() => undefined);
    await this.closeProducers();
    this.pausedTasks.clear();
    if (this.stopping.signal.aborted) return;
    try {
      await this.startConsumer();
    } catch (err) {
      if (!this.stopping.signal.aborted) this.scheduleRestart(err as Error);
    }
  }

  /** The group's committed offset for a partition (null when none), read after the task's producer fenced earlier owners. */
  private async committedOffset(physicalTopic: string, partition: number): Promise<string | null> {
    if (!this.admin) {
      const admin = this.deps.kafka.admin();
      await admin.connect();
      this.admin = admin;
    }
    const [topic] = await this.admin.fetchOffsets({ groupId: this.group, topics: [physicalTopic] });
    const offset = topic?.partitions.find((p) => p.partition === partition)?.offset;
    return offset === undefined || offset === '-1' ? null : offset;
  }

  private taskOf(physicalTopic: string, partition: number): TaskId {
    return { group: this.group, topic: this.physicalToLogical.get(physicalTopic) ?? physicalTopic, partition };
  }

  /** The task's transactional producer; its transactional id fences any earlier owner of the partition. */
  private producerFor(physicalTopic: string, partition: number): Promise<Producer> {
    const key = `${physicalTopic}/${partition}`;
    let pending = this.producers.get(key);
    if (!pending) {
      const producer = this.deps.kafka.producer({
        // murmur2, as Java clients: outputs keyed by entity land on the partition number their input had.
        createPartitioner: Partitioners.DefaultPartitioner,
        ...(this.exactlyOnce ? { transactionalId: `${this.group}.${physicalTopic}.${partition}`, transactionTimeout: 60_000 } : {}),
        idempotent: true,
        maxInFlightRequests: 1,
        allowAutoTopicCreation: false,
        // Bounded, unlike kafkajs' idempotent default (forever): a send that keeps failing aborts the
        // transaction and the batch is redone, so exactly-once holds without endless retries inside a send.
        retry: { retries: 5, initialRetryTime: 200, maxRetryTime: 3000 },
      });
      pending = producer.connect().then(() => producer);
      pending.catch(() => this.producers.delete(key));
      this.producers.set(key, pending);
    }
    return pending;
  }

  private async closeProducer(key: string): Promise<void> {
    const pending = this.producers.get(key);
    this.producers.delete(key);
    const producer = await pending?.catch(() => null);
    await producer?.disconnect().catch(() => undefined);
  }

  private async closeProducers(): Promise<void> {
    await Promise.all([...this.producers.keys()].map((k) => this.closeProducer(k)));
  }

  private async claimsFor(task: TaskId, slot: string): Promise<number[]> {
    let claims = this.claims.get(slot);
    if (!claims) {
      claims = await Promise.all(this.links.map(({ def }) => this.deps.stateStore.claim(def.name, task)));
      this.claims.set(slot, claims);
    }
    return claims;
  }

  private async handleBatch(payload: EachBatchPayload): Promise<void> {
    const { batch, heartbeat, isRunning, isStale } = payload;
    if (batch.isEmpty()) return;
    const started = performance.now();
    const task = this.taskOf(batch.topic, batch.partition);
    const slot = `${batch.topic}/${batch.partition}`;
    const firstOffset = batch.firstOffset()!;
    // The batch's last offset may be a transaction marker after the last record: commit past it.
    const nextOffset = (BigInt(batch.lastOffset()) + 1n).toString();
    const log = this.log.child({ topic: task.topic, partition: task.partition, firstOffset });
    const rawByOffset = new Map(batch.messages.map((m) => [m.offset, m]));
    let resume: (() => void) | null = null;

    const unpause = (): void => {
      resume?.();
      resume = null;
      this.pausedTasks.delete(slot);
    };
    for (let attempt = 0; ; attempt++) {
      if (!isRunning() || isStale() || this.stopping.signal.aborted) return unpause();
      let producer: Producer | null = null;
      let transaction: Awaited<ReturnType<Producer['transaction']>> | null = null;
      let committing = false;
      try {
        const claims = await this.claimsFor(task, slot);
        producer = await this.producerFor(batch.topic, batch.partition);
        // The task's first transaction initialises its transactional id: the broker first completes or
        // aborts whatever an earlier owner (or our own commit whose answer was lost) left open, so the
        // committed offset read below is final.
        if (this.exactlyOnce) transaction = await producer.transaction();
        if (!this.verified.has(slot)) {
          const committed = await this.committedOffset(batch.topic, batch.partition);
          if (committed !== null && BigInt(committed) > BigInt(firstOffset)) {
            // Our fetch position predates a commit that covers this batch: skip to it, never redo it.
            log.info({ committed }, 'offsets committed past the fetch position; seeking');
            await transaction?.abort();
            transaction = null;
            this.consumer?.seek({ topic: batch.topic, partition: batch.partition, offset: committed });
            return unpause();
          }
          this.verified.add(slot);
        }
        // The registry being unreachable is retriable: nothing is dead-lettered for it.
        await this.deps.serde.prefetch(batch.messages.map((m) => m.value));
        const { records, rejects } = this.decode(task.topic, batch.partition, batch.messages);
        const outputs = await runChain(
          this.links.map((l) => l.logic),
          records,
          (i, upstream) => ({
            log,
            now: this.deps.clock ?? Date.now,
            task,
            firstOffset,
            nextOffset,
            state: taskState(this.deps.stateStore, this.links[i]!.def.name, task, claims[i]!, firstOffset, nextOffset),
            ...(upstream ? { upstream } : {}),
          }),
        );
        const messages = this.toMessages(outputs, rejects, rawByOffset, batch.topic, batch.partition, log);
        const chunks = chunkByBytes(messages, this.deps.config.producerMaxRequestBytes);
        const send = (p: Pick<Producer, 'sendBatch'>, chunk: OutMessage[]) => p.sendBatch({ topicMessages: byTopic(chunk), acks: -1, timeout: this.deps.config.kafkaAckTimeoutMs });
        if (transaction) {
          for (const chunk of chunks) await send(transaction, chunk);
          await transaction.sendOffsets({ consumerGroupId: this.group, topics: [{ topic: batch.topic, partitions: [{ partition: batch.partition, offset: nextOffset }] }] });
          for (const { logic } of this.links) await logic.flush?.(task);
          committing = true;
          await transaction.commit();
          transaction = null;
        } else {
          for (const chunk of chunks) await send(producer, chunk);
          for (const { logic } of this.links) await logic.flush?.(task);
          committing = true;
          await this.consumer!.commitOffsets([{ topic: batch.topic, partition: batch.partition, offset: nextOffset }]);
        }
        for (const tm of byTopic(messages)) this.deps.metrics.producerSent.inc({ topic: tm.topic }, tm.messages.length);
        break;
      } catch (err) {
        if (transaction) await transaction.abort().catch(() => undefined);
        const failedLink = this.links.find((l) => l.logic.readiness?.().state === 'failed');
        if (committing || !isRetriable(err) || isFenced(err) || failedLink || isFabricError(err, 'FABRIC_STATE_FENCED')) {
          // Unknown outcome (the commit may have landed), lost partition, a dependency that gave up, or a
          // bug: start again from what Kafka committed (see RestartConsumer).
          log.error({ err: messageOf(err), committing, ...(failedLink ? { failed: failedLink.def.name } : {}) }, 'batch failed; restarting from the committed offsets');
          await this.closeProducer(slot);
          unpause();
          throw new RestartConsumer(err);
        }
        this.deps.metrics.processorRetries.inc({ processor: this.head.name });
        // The broker still writing the previous transaction's markers is routine and clears in milliseconds:
        // retry soon without pausing; anything else (a sink, the registry) pauses the partition and backs
        // off from FABRIC_SINK_RETRY_MS.
        if (errorTypes(err).includes('CONCURRENT_TRANSACTIONS')) {
          log.debug({ attempt }, 'previous transaction still completing; retrying');
          await sleep(backoffMs(attempt, 20, 1000), this.stopping.signal);
          continue;
        }
        if (!resume) {
          resume = payload.pause();
          this.pausedTasks.add(slot);
        }
        this.lastError = messageOf(err);
        log.warn({ err: this.lastError, attempt }, 'batch failed; partition paused, retrying with backoff (nothing committed)');
        await sleep(backoffMs(attempt, this.deps.config.sinkRetryMs), this.stopping.signal);
        try {
          await heartbeat();
        } catch (rebalance) {
          // The group is rebalancing (or lost us): give the batch up so kafkajs rejoins now instead of
          // holding the rebalance up while we retry; whoever gets the partition redoes it.
          unpause();
          throw rebalance;
        }
      }
    }
    unpause();
    this.consecutiveFailures = 0;
    payload.resolveOffset(batch.lastOffset());
    await heartbeat().catch(() => undefined);
    this.deps.metrics.processorRecords.inc({ processor: this.head.name, topic: task.topic }, batch.messages.length);
    this.deps.metrics.processorLag.set({ processor: this.head.name, topic: task.topic, partition: String(batch.partition) }, Number(batch.offsetLag()));
    this.deps.metrics.processorBatchSeconds.observe({ processor: this.head.name }, (performance.now() - started) / 1000);
  }

  private decode(topic: string, partition: number, messages: readonly KafkaMessage[]): { records: SourceRecord[]; rejects: { raw: KafkaMessage; error: FabricError }[] } {
    const reader = this.readers.get(topic);
    const records: SourceRecord[] = [];
    const rejects: { raw: KafkaMessage; error: FabricError }[] = [];
    // A compacted (control) topic's tombstone is a record with a null value: it deletes its key.
    const compacted = this.deps.topology.topics.some((t) => t.name === topic && t.compacted);
    for (const m of messages) {
      if (!m.value) {
        if (compacted) {
          records.push({ topic, partition, offset: m.offset, key: m.key ? m.key.toString() : null, value: null, timestamp: Number(m.timestamp), headers: m.headers ?? {} });
          continue;
        }
        rejects.push({ raw: m, error: new FabricError('FABRIC_RECORD_UNDECODABLE', 'record has no value (tombstone) on a non-compacted stream') });
        continue;
      }
      let value: unknown;
      try {
        value = reader ? this.deps.serde.decode(m.value, reader) : m.value;
      } catch (err) {
        if (err instanceof SerdeError && err.kind === 'registry') throw err;
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
    const toDlq = (raw: KafkaMessage | undefined, offset: string, error: FabricError): void => {
      this.deps.metrics.processorDlq.inc({ processor: this.head.name, topic: physicalTopic, code: error.code });
      log.warn({ offset, code: error.code, reason: error.message }, 'record sent to dead-letter topic');
      const rawRecord: RawRecord = { topic: physicalTopic, partition, offset, key: raw?.key ?? null, value: raw?.value ?? null, timestamp: raw?.timestamp ?? '0', headers: raw?.headers ?? {} };
      messages.push(deadLetter(dlqTopic, this.head.name, rawRecord, error));
    };
    for (const { raw, error } of decodeRejects) toDlq(raw, raw.offset, error);
    for (const out of outputs) {
      if (out.kind === 'reject') {
        toDlq(rawByOffset.get(out.record.offset), out.record.offset, out.error);
        continue;
      }
      const writer = this.writers.get(out.topic);
      if (!writer) throw new FabricError('FABRIC_CONFIG_INVALID', `processor ${this.head.name} emitted to ${out.topic}, which is not among its chain's declared outputs`);
      try {
        messages.push({ topic: this.physical(out.topic), key: out.key, value: writer.encode(out.value), ...(out.headers ? { headers: out.headers } : {}) });
      } catch (err) {
        const error = new FabricError('FABRIC_RECORD_REJECTED', `output for ${out.topic} does not match its schema: ${messageOf(err)}`, { cause: err });
        if (out.source) toDlq(rawByOffset.get(out.source.offset), out.source.offset, error);
        else throw error;
      }
    }
    return messages;
  }

  /** Stops fetching, lets in-flight batches finish (flushed and committed), closes sinks and producers, disconnects. */
  async stop(): Promise<void> {
    this.stopping.abort();
    if (this.restartTimer) clearTimeout(this.restartTimer);
    await this.restarting;
    const consumer = this.consumer;
    this.consumer = null;
    if (consumer) await consumer.stop().catch((err: unknown) => this.log.warn({ err: messageOf(err) }, 'consumer stop failed'));
    await Promise.allSettled([...this.inFlight]);
    if (this.opened) {
      this.opened = false;
      for (const { logic } of this.links) await logic.flush?.().catch((err: unknown) => this.log.error({ err: messageOf(err) }, 'final flush failed'));
    }
    // The runner owns its links' logic from construction on, started or not (a model worker, a sink).
    for (const { logic } of [...this.links].reverse()) await logic.close?.().catch((err: unknown) => this.log.error({ err: messageOf(err) }, 'close failed'));
    await this.closeProducers();
    await this.admin?.disconnect().catch(() => undefined);
    this.admin = null;
    await consumer?.disconnect().catch(() => undefined);
    this.state = 'stopped';
    this.log.info('processor stopped');
  }
}

function byTopic(messages: readonly OutMessage[]): TopicMessages[] {
  const map = new Map<string, TopicMessages>();
  for (const m of messages) {
    let tm = map.get(m.topic);
    if (!tm) {
      tm = { topic: m.topic, messages: [] };
      map.set(m.topic, tm);
    }
    tm.messages.push({ key: m.key, value: m.value, ...(m.headers ? { headers: m.headers } : {}) });
  }
  return [...map.values()];
}

/** Whether retrying the same batch (after aborting its transaction) may succeed. */
function isRetriable(err: unknown): boolean {
  if (isFabricError(err)) return err.retriable;
  if (err instanceof SerdeError) return err.kind === 'registry';
  // kafkajs errors say whether they are retriable (connection loss, leader moves, timeouts); a store
  // client's lost connection (ioredis, fetch) is too.
  let e: unknown = err;
  while (e && typeof e === 'object') {
    if ((e as { retriable?: unknown }).retriable === true) return true;
    const code = (e as { code?: unknown }).code;
    if (typeof code === 'string' && /^(ECONNREFUSED|ECONNRESET|ETIMEDOUT|EPIPE|EHOSTUNREACH|ENOTCONN)$/.test(code)) return true;
    if ((e as { name?: unknown }).name === 'MaxRetriesPerRequestError' || /Connection is closed|Stream isn't writeable/.test(messageOf(e))) return true;
    e = (e as { cause?: unknown }).cause;
  }
  return false;
}

/** The Kafka protocol error types along an error's cause chain (kafkajs wraps retried errors). */
function errorTypes(err: unknown): string[] {
  const types: string[] = [];
  for (let e: unknown = err; e && typeof e === 'object'; e = (e as { cause?: unknown }).cause) {
    const type = (e as { type?: unknown }).type;
    if (typeof type === 'string') types.push(type);
  }
  return types;
}

/** A producer that another instance fenced (it owns the task now) or whose epoch is gone. */
function isFenced(err: unknown): boolean {
  return errorTypes(err).some((t) => /PRODUCER_FENCED|INVALID_PRODUCER_EPOCH|TRANSACTIONAL_ID_AUTHORIZATION|INVALID_TXN_STATE/.test(t)) || /fenced/i.test(messageOf(err));
}
