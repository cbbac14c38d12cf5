import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import avro from 'avsc';
import { isolatedConfig, readAll, startTestFabric, waitFor, chRows, type TestFabric } from './harness.js';
import { runSimulation, type SimulationSummary } from '../../sim/run.js';
import { AvroSerde } from '../../schemas/serde.js';
import { loadAvroSchema } from '../../schemas/catalog.js';
import { BatchingProducer } from '../../topology/runtime/producer.js';
import { createKafka } from '../../topology/runtime/kafka.js';
import { createLogger } from '../../topology/runtime/log.js';
import { prefixed } from '../../topology/config.js';
import { accountGroup } from '../../topology/features/groups.js';
import { FRAUD_INPUT_NAMES } from '../../serving/models/fraud-inputs.js';

const ACCOUNT_FEATURE_NAMES = accountGroup.featureNames;
import type { Outcome } from '../../schemas/types.generated.js';

let f: TestFabric;
let summary: SimulationSummary;
let producer: BatchingProducer;

/** Decodes Confluent wire format with nothing of ours: the registry's REST API and avsc. */
async function independentDecode(registryUrl: string, buf: Buffer, cache: Map<number, avro.Type>): Promise<Record<string, unknown>> {
  expect(buf.readUInt8(0)).toBe(0);
  const id = buf.readInt32BE(1);
  let type = cache.get(id);
  if (!type) {
    const res = await fetch(`${registryUrl}/schemas/ids/${id}`);
    expect(res.status).toBe(200);
    const { schema } = (await res.json()) as { schema: string };
    type = avro.Type.forSchema(JSON.parse(schema) as avro.Schema);
    cache.set(id, type);
  }
  return type.fromBuffer(buf.subarray(5)) as Record<string, unknown>;
}

beforeAll(async () => {
  const config = isolatedConfig({ driftWindowSec: 2, driftAllowedLatenessSec: 0 });
  f = await startTestFabric(config);
  const log = createLogger(config);
  const serde = new AvroSerde({ url: config.registryUrl });
  const outcomesTopic = prefixed(config, 'outcomes.transactions');
  const writer = await serde.writer<Outcome>(`${outcomesTopic}-value`, loadAvroSchema('outcome'));
  producer = new BatchingProducer(createKafka(config, log, 'it-outcomes'), { lingerMs: 5, batchSize: 500, maxQueued: 10_000, ackTimeoutMs: 10_000 }, log);
  await producer.start();
  summary = await runSimulation({
    stream: 'transactions', gatewayUrl: f.url, apiKey: 'dev-key', ratePerSec: 100, durationSec: 4, seed: 11, drift: false, runId: 'e2e', outcomeDelayMs: 500,
    publishOutcomes: (outcomes) => producer.send(outcomes.map((o) => ({ topic: outcomesTopic, key: o.entity_id, value: writer.encode(o) }))),
  });
});

afterAll(async () => {
  await producer?.close();
  await f?.cleanup();
});

describe('one event the whole way: gateway, Kafka, features, scoring, rules, ClickHouse, drift', () => {
  it('acknowledged every simulated event', () => {
    expect(summary.sent).toBe(400);
    expect(summary.accepted).toBe(400);
    expect(summary.failedRequests).toBe(0);
    expect(summary.outcomes).toBe(400);
  });

  it('has every acknowledged event in Kafka and one prediction per event, readable by an independent Avro client', async () => {
    const accepted = new Set(summary.acceptedIds);
    const events = await readAll(f.kafka, f.config, 'events.transactions');
    expect(new Set(events.map((e) => e.value!.subarray(5).length > 0 && e.key)).size).toBeGreaterThan(1);
    const cache = new Map<number, avro.Type>();
    const predictions = await waitFor(() => readAll(f.kafka, f.config, 'predictions.fraud'), (r) => new Set(r.map((x) => x.key)).size > 0 && r.length >= accepted.size, { what: 'predictions for every event' });
    const decoded = await Promise.all(predictions.map((p) => independentDecode(f.config.registryUrl, p.value!, cache)));
    expect(new Set(decoded.map((d) => d.event_id))).toEqual(accepted);
    for (const d of decoded) {
      expect(['block', 'review', 'allow']).toContain(d.decision);
      expect(d.provider).toBe('cpu');
      expect(d.fallback).toBe(false);
      expect(typeof d.score).toBe('number');
      expect(d.model).toBe('fraud');
    }
    expect(decoded.some((d) => d.decision === 'block')).toBe(true);
  });

  it('writes events, features, predictions and outcomes to ClickHouse, each row carrying its source position', async () => {
    const db = f.config.clickhouseDatabase;
    const n = summary.accepted;
    const counts = await waitFor(
      () => chRows<{ e: string; p: string; fe: string; o: string }>(f.clickhouse, `SELECT (SELECT uniqExact(event_id) FROM ${db}.events_transactions) AS e, (SELECT uniqExact(event_id) FROM ${db}.predictions) AS p, (SELECT uniqExact(event_id) FROM ${db}.features_account) AS fe, (SELECT uniqExact(event_id) FROM ${db}.outcomes) AS o`),
      (r) => r.length === 1 && [r[0]!.e, r[0]!.p, r[0]!.fe, r[0]!.o].every((x) => Number(x) === n),
      { what: 'ClickHouse rows', timeoutMs: 60_000 },
    );
    expect(counts).toHaveLength(1);
    const positions = await chRows<{ bad: string }>(f.clickhouse, `SELECT count() AS bad FROM ${db}.v_predictions WHERE source_topic != 'predictions.fraud' OR event_id = ''`);
    expect(Number(positions[0]!.bad)).toBe(0);
    const perf = await chRows<{ label: string; n: string }>(f.clickhouse, `SELECT label, count() AS n FROM ${db}.v_fraud_performance GROUP BY label`);
    expect(perf.reduce((a, r) => a + Number(r.n), 0)).toBe(n);
  });

  it('keeps online equal to offline: the latest ClickHouse feature row equals the Redis value for every account', async () => {
    const db = f.config.clickhouseDatabase;
    const cols = ACCOUNT_FEATURE_NAMES.map((c) => `argMax(${c}, (ts_ms, source_offset, version)) AS ${c}`).join(', ');
    const offline = await chRows<Record<string, string | number | null>>(f.clickhouse, `SELECT entity_id, ${cols} FROM ${db}.v_features_account GROUP BY entity_id`);
    expect(offline.length).toBeGreaterThan(10);
    for (const row of offline) {
      const online = await f.redis.hgetall(`${f.config.redisKeyPrefix}feat:account:${row.entity_id}`);
      for (const name of ACCOUNT_FEATURE_NAMES) {
        const off = row[name] === null ? null : Number(row[name]);
        const on = online[name] === '' || online[name] === undefined ? null : Number(online[name]);
        // ClickHouse 18.16 parses and prints Float64 to within one ulp (1.769 -> 1.7690000000000001).
        if (on === null || off === null) expect(on, `${row.entity_id}.${name}`).toBe(off);
        else expect(Math.abs(on - off), `${row.entity_id}.${name}: ${on} vs ${off}`).toBeLessThanOrEqual(1e-9 * Math.max(1, Math.abs(off)));
      }
    }
  });

  it('computes drift windows continuously and writes them to drift.metrics and ClickHouse', async () => {
    const rows = await waitFor(
      () => chRows<{ variable: string; count: string; psi: number; status: string }>(f.clickhouse, `SELECT variable, count, psi, status FROM ${f.config.clickhouseDatabase}.drift_metrics FINAL`),
      (r) => r.length >= 2,
      { what: 'drift rows' },
    );
    // Every model input and the score (models/fraud/model.json profiles them all).
    expect(new Set(rows.map((r) => r.variable))).toEqual(new Set([...FRAUD_INPUT_NAMES, 'score']));
    for (const r of rows) expect(Number.isFinite(r.psi)).toBe(true);
  });

  it('dead-lettered nothing', async () => {
    expect(await readAll(f.kafka, f.config, 'dlq.events.transactions')).toHaveLength(0);
  });
});
