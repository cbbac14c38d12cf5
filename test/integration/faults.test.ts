import { spawn, type ChildProcess } from 'node:child_process';
import { afterAll, describe, expect, it } from 'vitest';
import { isolatedConfig, post, readAll, startTestFabric, transaction, waitFor, type TestFabric } from './harness.js';
import { AvroSerde } from '../../schemas/serde.js';
import { loadAvroSchema } from '../../schemas/catalog.js';
import { prefixed, type FabricConfig } from '../../topology/config.js';
import { DLQ_HEADERS } from '../../topology/runtime/dlq.js';
import { packagePath } from '../../topology/paths.js';
import { runSimulation } from '../../sim/run.js';

const cleanups: (() => Promise<void>)[] = [];
afterAll(async () => {
  for (const c of cleanups.reverse()) await c().catch(() => undefined);
});

async function fabric(config: FabricConfig, options: Parameters<typeof startTestFabric>[1]): Promise<TestFabric> {
  const f = await startTestFabric(config, options);
  cleanups.push(() => f.cleanup());
  return f;
}

describe('faults', () => {
  it('Kafka down at start: /readyz says so and requests get 503 at once, not hangs', async () => {
    const f = await fabric(isolatedConfig({ kafkaBrokers: '127.0.0.1:1', kafkaAckTimeoutMs: 2000 }), { processors: [], apply: false });
    const ready = await fetch(`${f.url}/readyz`);
    expect(ready.status).toBe(503);
    expect(await ready.json()).toMatchObject({ ready: false, checks: { kafka: false } });
    const started = Date.now();
    const res = await post(f.url, '/v1/events/transactions', JSON.stringify(transaction(1)));
    expect(res.status).toBe(503);
    expect(res.body).toMatchObject({ error: { code: 'FABRIC_KAFKA_UNAVAILABLE' } });
    expect(res.headers.get('retry-after')).toBe('1');
    expect(Date.now() - started).toBeLessThan(5000);
  });

  it('a record a processor cannot decode or rejects goes to dlq.<topic> with its reason, and the processor keeps going', async () => {
    const f = await fabric(isolatedConfig(), { processors: ['features'], gateway: false });
    const serde = new AvroSerde({ url: f.config.registryUrl });
    const topic = prefixed(f.config, 'events.transactions');
    const writer = await serde.writer<Record<string, unknown>>(`${topic}-value`, loadAvroSchema('transaction'));
    const good = [transaction(1), transaction(2)];
    const garbage = Buffer.from('not avro at all');
    const unknownId = Buffer.from([0, 0x7f, 0xff, 0xff, 0xff, 1, 2, 3]);
    const negative = writer.encode(transaction(3, { amount: -5 }));
    const producer = f.kafka.producer();
    await producer.connect();
    await producer.send({ topic, acks: -1, messages: [{ key: 'A1', value: garbage }, { key: 'A1', value: writer.encode(good[0]!) }, { key: 'A1', value: unknownId }, { key: 'A1', value: negative }, { key: 'A1', value: writer.encode(good[1]!) }] });
    await producer.disconnect();

    const dlq = await waitFor(() => readAll(f.kafka, f.config, 'dlq.events.transactions'), (r) => r.length >= 3, { what: 'three dead letters' });
    expect(dlq.map((d) => d.headers[DLQ_HEADERS.code]).sort()).toEqual(['FABRIC_RECORD_REJECTED', 'FABRIC_RECORD_UNDECODABLE', 'FABRIC_RECORD_UNDECODABLE']);
    expect(dlq.find((d) => d.value!.equals(garbage))?.headers[DLQ_HEADERS.message]).toMatch(/not Confluent wire format/);
    expect(dlq.find((d) => d.value!.equals(unknownId))?.headers[DLQ_HEADERS.message]).toMatch(/schema id/);
    expect(dlq.find((d) => d.value!.equals(negative))?.headers[DLQ_HEADERS.message]).toMatch(/amount must be/);
    for (const d of dlq) expect(d.headers[DLQ_HEADERS.topic]).toBe(topic);
    const updates = await waitFor(() => readAll(f.kafka, f.config, 'features.account'), (r) => r.length >= 2, { what: 'feature updates for the good records' });
    const ids = await Promise.all(updates.map(async (u) => (await serde.decodeAsync<{ event_id: string }>(u.value!)).event_id));
    expect(ids.sort()).toEqual(good.map((g) => g.event_id as string).sort());
  });

  it('kill -9 of the scoring processor at any moment and a restart lose no prediction', async () => {
    const f = await fabric(isolatedConfig(), { processors: ['features'] });
    const env = { ...process.env, FABRIC_TOPIC_PREFIX: f.config.topicPrefix, FABRIC_REDIS_PREFIX: f.config.redisKeyPrefix, FABRIC_CLICKHOUSE_DATABASE: f.config.clickhouseDatabase, FABRIC_LOG_LEVEL: 'warn' };
    const startScoring = (): ChildProcess => {
      const child = spawn(process.execPath, ['--import', 'tsx', 'app/cli/main.ts', 'run', '--processors', 'scoring', '--no-gateway', '--no-stack'], { cwd: packagePath(), env, stdio: ['ignore', 'ignore', 'pipe'] });
      cleanups.push(async () => void child.kill('SIGKILL'));
      return child;
    };
    const serde = new AvroSerde({ url: f.config.registryUrl });
    const predictedIds = async (): Promise<Set<string>> => new Set(await Promise.all((await readAll(f.kafka, f.config, 'predictions.fraud')).map(async (r) => (await serde.decodeAsync<{ event_id: string }>(r.value!)).event_id)));

    let scoring = startScoring();
    const simulation = runSimulation({ stream: 'transactions', gatewayUrl: f.url, apiKey: 'dev-key', ratePerSec: 150, durationSec: 6, seed: 5, drift: false, runId: 'kill' });
    await waitFor(predictedIds, (s) => s.size >= 50, { what: 'first predictions', timeoutMs: 90_000 });
    scoring.kill('SIGKILL');
    await new Promise((r) => scoring.once('exit', r));
    scoring = startScoring();
    const summary = await simulation;
    expect(summary.accepted).toBe(900);
    const ids = await waitFor(predictedIds, (s) => s.size >= summary.accepted, { what: 'a prediction for every accepted event', timeoutMs: 120_000 });
    expect(ids).toEqual(new Set(summary.acceptedIds));
    scoring.kill('SIGTERM');
    await new Promise((r) => scoring.once('exit', r));
  });
});
