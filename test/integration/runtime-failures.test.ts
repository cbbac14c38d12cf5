/**
 * The stream runtime's failure semantics on a real broker: each kind of failure has one meaning.
 * Unexpected errors restart the consumer from the committed offsets (never a silent stop, never a
 * duplicate), a spent restart budget fails the processor loudly, a retriable sink failure pauses the
 * partition and retries, and outputs larger than one produce request are split by bytes.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { Kafka, logLevel, Partitioners } from 'kafkajs';
import { Redis } from 'ioredis';
import { AvroSerde } from '../../schemas/serde.js';
import { loadAvroSchema } from '../../schemas/catalog.js';
import type { Outcome, Transaction } from '../../schemas/types.generated.js';
import { prefixed, type FabricConfig } from '../../topology/config.js';
import { FabricError } from '../../topology/errors.js';
import { buildTopology, processor, stream, topic } from '../../topology/graph.js';
import { applyTopology } from '../../topology/apply.js';
import { createLogger } from '../../topology/runtime/log.js';
import { Metrics } from '../../topology/runtime/metrics.js';
import { emit, wholeBatch, type ProcessorLogic } from '../../topology/runtime/processor.js';
import { ProcessorRunner, type ProcessorStatus } from '../../topology/runtime/stream.js';
import { RedisStateStore } from '../../topology/runtime/state-store.js';
import { readToEnd } from '../../topology/runtime/topic-reader.js';
import { dropNamespace, isolatedConfig, waitFor } from './harness.js';

const topology = buildTopology({
  streams: [stream('x', 'transaction', 'account_id')],
  topics: [topic('out', { schema: 'outcome' })],
  processors: [processor({ name: 'p', group: 'g.p', inputs: ['events.x'], outputs: ['out'], sinks: [], doc: 'test' })],
});

const cleanups: (() => Promise<void>)[] = [];
afterAll(async () => {
  for (const c of cleanups.reverse()) await c().catch(() => undefined);
});

interface Env {
  readonly config: FabricConfig;
  readonly kafka: Kafka;
  readonly serde: AvroSerde;
  run(logic: ProcessorLogic): Promise<{ runner: ProcessorRunner; fatal: Promise<Error> }>;
  produce(n: number): Promise<Transaction[]>;
  outputs(): Promise<Outcome[]>;
  dlq(): Promise<number>;
}

async function env(overrides: Parameters<typeof isolatedConfig>[0] = {}): Promise<Env> {
  const config = isolatedConfig({ sinkRetryMs: 50, consumerSessionTimeoutMs: 6000, ...overrides });
  const kafka = new Kafka({ brokers: config.kafkaBrokers.split(','), clientId: 'it-runtime', logLevel: logLevel.NOTHING });
  const serde = new AvroSerde({ url: config.registryUrl });
  await applyTopology(topology, config, kafka, serde, { clickhouse: false });
  const redis = new Redis(config.redisUrl);
  const runners: ProcessorRunner[] = [];
  cleanups.push(async () => {
    for (const r of runners) await r.stop();
    await dropNamespace(config, { kafka, redis });
    redis.disconnect();
  });
  let seq = 0;
  return {
    config, kafka, serde,
    async run(logic) {
      let onFatal!: (err: Error) => void;
      const fatal = new Promise<Error>((resolve) => (onFatal = resolve));
      const runner = new ProcessorRunner([{ def: topology.processor('p'), logic }], {
        kafka, serde, topology, config, log: createLogger(config), metrics: new Metrics({ defaults: false }), stateStore: new RedisStateStore(redis, config.redisKeyPrefix),
        onFatal: (_name, err) => onFatal(err),
      });
      runners.push(runner);
      await runner.start();
      return { runner, fatal };
    },
    async produce(n) {
      const topicName = prefixed(config, 'events.x');
      const writer = await serde.writer<Transaction>(`${topicName}-value`, loadAvroSchema('transaction'));
      const txns = Array.from({ length: n }, (_, i): Transaction => ({ event_id: `e${seq + i}`, account_id: `A${(seq + i) % 7}`, counterparty_id: 'M', type: 'PAYMENT', amount: seq + i, old_balance: 0, new_balance: 0, channel: 'web', ts: Date.now() }));
      seq += n;
      const producer = kafka.producer({ createPartitioner: Partitioners.DefaultPartitioner });
      await producer.connect();
      await producer.send({ topic: topicName, acks: -1, messages: txns.map((t) => ({ key: t.account_id, value: writer.encode(t) })) });
      await producer.disconnect();
      return txns;
    },
    async outputs() {
      const records = await readToEnd(kafka, prefixed(config, 'out'), { groupPrefix: `${config.topicPrefix}r` });
      return Promise.all(records.map((r) => serde.decodeAsync<Outcome>(r.value!)));
    },
    async dlq() {
      return (await readToEnd(kafka, prefixed(config, 'dlq.events.x'), { groupPrefix: `${config.topicPrefix}r` })).length;
    },
  };
}

const echo = (r: { value: unknown }, pad = ''): Outcome => {
  const t = r.value as Transaction;
  return { event_id: t.event_id, entity_id: t.account_id, label: `ok${pad}`, value: t.amount, ts: t.ts, item_id: null };
};

describe('stream runtime failures', () => {
  it('an unexpected error restarts the consumer from the committed offsets: every record out exactly once, and the state says so', async () => {
    const e = await env();
    let failures = 0;
    const { runner } = await e.run({
      name: 'p',
      process: wholeBatch((records) => {
        if (failures < 2) {
          failures++;
          throw new TypeError('a bug that happens twice');
        }
        return records.map((r) => emit('out', r.key!, echo(r), r));
      }),
    });
    const sent = await e.produce(40);
    const out = await waitFor(() => e.outputs(), (o) => o.length >= 40, { what: '40 outputs' });
    expect(out.map((o) => o.event_id).sort()).toEqual(sent.map((t) => t.event_id).sort());
    expect(out.map((o) => o.value).sort((a, b) => a - b)).toEqual(sent.map((t) => t.amount));
    const status = await waitFor(async () => runner.status(), (s: ProcessorStatus) => s.state === 'running');
    // Two partitions' batches may fail in the same consumer run: one restart or two.
    expect(status.restarts).toBeGreaterThanOrEqual(1);
    expect(status.restarts).toBeLessThanOrEqual(2);
    expect(status.lastError).toMatch(/a bug that happens twice/);
    expect(await e.dlq()).toBe(0);
  });

  it('a processor that keeps failing spends its restart budget, reports failed and calls onFatal (never a silent stop)', async () => {
    const e = await env({ processorRestarts: 2 });
    const { runner, fatal } = await e.run({ name: 'p', process: wholeBatch(() => Promise.reject(new RangeError('always broken'))) });
    await e.produce(5);
    const err = await fatal;
    expect(err).toBeInstanceOf(FabricError);
    expect((err as FabricError).code).toBe('FABRIC_PROCESSOR_FAILED');
    expect(err.message).toMatch(/always broken/);
    expect(runner.status().state).toBe('failed');
    expect(await e.outputs()).toEqual([]);
  });

  it('a retriable sink failure pauses the partition and retries: nothing dead-lettered, nothing duplicated', async () => {
    const e = await env();
    let flushFailures = 0;
    const states: string[] = [];
    const logic: ProcessorLogic = {
      name: 'p',
      process: wholeBatch((records) => records.map((r) => emit('out', r.key!, echo(r), r))),
      async flush(task) {
        if (task && flushFailures < 4) {
          flushFailures++;
          throw new FabricError('FABRIC_SINK_FAILED', 'ClickHouse is down (simulated)');
        }
      },
    };
    const { runner } = await e.run(logic);
    const probe = setInterval(() => states.push(runner.status().state), 5);
    const sent = await e.produce(30);
    const out = await waitFor(() => e.outputs(), (o) => o.length >= 30, { what: '30 outputs' });
    clearInterval(probe);
    expect(out.map((o) => o.event_id).sort()).toEqual(sent.map((t) => t.event_id).sort());
    expect(flushFailures).toBe(4);
    expect(states).toContain('paused');
    expect(runner.status()).toMatchObject({ state: 'running', restarts: 0, paused: [] });
    expect(await e.dlq()).toBe(0);
  });

  it('outputs larger than one produce request are split by bytes instead of being refused forever', async () => {
    const e = await env({ producerMaxRequestBytes: 300_000 });
    // ~200 KB per output, 20 records per batch or so: several MiB per batch, far above message.max.bytes.
    const big = 'x'.repeat(200_000);
    await e.run({ name: 'p', process: wholeBatch((records) => records.map((r) => emit('out', r.key!, echo(r, big), r))) });
    const sent = await e.produce(20);
    const out = await waitFor(() => e.outputs(), (o) => o.length >= 20, { what: '20 large outputs', timeoutMs: 90_000 });
    expect(out.map((o) => o.event_id).sort()).toEqual(sent.map((t) => t.event_id).sort());
    expect(out.every((o) => o.label.length === 200_002)).toBe(true);
  });
});
