import { readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import avro from 'avsc';
import { isolatedConfig, readAll, startTestFabric, waitFor, chRows, type TestFabric } from './harness.js';
import { runSimulation } from '../../sim/run.js';
import { AvroSerde } from '../../schemas/serde.js';
import { loadAvroSchema } from '../../schemas/catalog.js';
import type { Outcome, Recommendation } from '../../schemas/types.generated.js';
import { BatchingProducer } from '../../topology/runtime/producer.js';
import { createKafka } from '../../topology/runtime/kafka.js';
import { createLogger } from '../../topology/runtime/log.js';
import { prefixed } from '../../topology/config.js';

/**
 * Monitoring of the ranking model on the running fabric: every item shown is measured against the
 * recs version's profile (drift-recs, drift-merge-recs), and CTR and conversion per window come from the
 * clicks and purchases on the items shown within the horizon. Both checked against a recomputation
 * from Kafka and from the ledger.
 */
const WINDOW_SEC = 4;
const WINDOW = WINDOW_SEC * 1000;
const HORIZON = 3000;
const reference = (JSON.parse(readFileSync(new URL('../../models/recs/model.json', import.meta.url), 'utf8')) as { reference: Record<string, { edges: number[]; proportions: number[] }> }).reference;

let f: TestFabric;
let producer: BatchingProducer;
let lastEventTs = 0;

beforeAll(async () => {
  const config = isolatedConfig({ driftWindowSec: WINDOW_SEC, driftAllowedLatenessSec: 0, driftIdleSec: 3, driftMinCount: 20, performanceWindowSec: WINDOW_SEC, outcomeHorizonSec: HORIZON / 1000, performanceGraceSec: 6, performanceIntervalSec: 1 });
  f = await startTestFabric(config, { processors: ['features-user', 'features-item', 'tracking', 'drift-recs', 'drift-merge-recs'] });
  const log = createLogger(config);
  const outcomesTopic = prefixed(config, 'outcomes.interactions');
  const writer = await new AvroSerde({ url: config.registryUrl }).writer<Outcome>(`${outcomesTopic}-value`, loadAvroSchema('outcome'));
  producer = new BatchingProducer(createKafka(config, log, 'it-outcomes'), { lingerMs: 5, batchSize: 500, maxQueued: 10_000, ackTimeoutMs: 10_000 }, log);
  await producer.start();
  const summary = await runSimulation({
    stream: 'interactions', gatewayUrl: f.url, apiKey: 'dev-key', ratePerSec: 60, durationSec: 12, seed: 33, drift: false, runId: 'monrecs', outcomeDelayMs: 300,
    publishOutcomes: (outcomes) => producer.send(outcomes.map((o) => ({ topic: outcomesTopic, key: o.entity_id, value: writer.encode(o) }))),
  });
  expect(summary.failedRequests).toBe(0);
  lastEventTs = Date.now();
}, 180_000);

afterAll(async () => {
  await producer?.close();
  await f?.cleanup();
});

describe('monitoring the recommendations', () => {
  it('measures every item shown against the recs profile: PSI of each window equals a recomputation from predictions.recs', async () => {
    const rows = await waitFor(
      () => chRows<{ variable: string; window_start_ms: string; window_end_ms: string; count: string; psi: number }>(f.clickhouse, `SELECT variable, window_start_ms, window_end_ms, count, psi FROM ${f.config.clickhouseDatabase}.v_drift_metrics WHERE model = 'recs' ORDER BY window_start_ms, variable`),
      (r) => r.some((x) => Number(x.window_end_ms) >= Math.floor(lastEventTs / WINDOW) * WINDOW),
      { what: 'recs drift windows to the end of the traffic', timeoutMs: 90_000 },
    );
    expect(new Set(rows.map((r) => r.variable))).toEqual(new Set(Object.keys(reference)));
    const types = new Map<number, avro.Type>();
    const recs: Recommendation[] = [];
    const newest = new Map<number, number>();
    for (const rec of (await readAll(f.kafka, f.config, 'predictions.recs')).sort((a, b) => a.partition - b.partition || (BigInt(a.offset) < BigInt(b.offset) ? -1 : 1))) {
      const id = rec.value!.readInt32BE(1);
      if (!types.has(id)) types.set(id, avro.Type.forSchema(JSON.parse(((await (await fetch(`${f.config.registryUrl}/schemas/ids/${id}`)).json()) as { schema: string }).schema) as avro.Schema));
      const r = types.get(id)!.fromBuffer(rec.value!.subarray(5)) as Recommendation;
      // Late ones (allowed lateness 0) are left out, per partition in offset order.
      const max = newest.get(rec.partition) ?? -Infinity;
      if (Math.floor(r.event_ts / WINDOW) * WINDOW + WINDOW <= max) continue;
      newest.set(rec.partition, Math.max(max, r.event_ts));
      recs.push(r);
    }
    let checked = 0;
    for (const row of rows) {
      const items = recs.filter((r) => r.event_ts >= Number(row.window_start_ms) && r.event_ts < Number(row.window_end_ms)).flatMap((r) => r.items);
      const values = items.map((i) => (row.variable === 'score' ? i.score : i.features[row.variable])).filter((x): x is number => typeof x === 'number');
      expect(Number(row.count), `${row.variable} @ ${row.window_start_ms}`).toBe(values.length);
      const p = reference[row.variable]!;
      const counts = new Array<number>(p.proportions.length).fill(0);
      for (const x of values) counts[p.edges.filter((e) => e < x).length]!++;
      let psi = 0;
      counts.forEach((c, i) => {
        const a = Math.max(p.proportions[i]!, 1e-4);
        const b = Math.max(c / values.length, 1e-4);
        psi += (b - a) * Math.log(b / a);
      });
      expect(Math.abs(row.psi - psi), `${row.variable} @ ${row.window_start_ms}`).toBeLessThan(1e-6);
      checked++;
    }
    expect(checked).toBeGreaterThanOrEqual(3 * Object.keys(reference).length);
  });

  it('measures CTR and conversion per window from the clicks and purchases on the items shown within the horizon, equal to a recomputation from the ledger', async () => {
    const db = f.config.clickhouseDatabase;
    const windows = await waitFor(
      () => chRows<{ window_start_ms: string; window_end_ms: string; items: string; clicks: string; purchases: string; ctr: number | null; conversion: number | null }>(f.clickhouse, `SELECT * FROM ${db}.v_model_performance WHERE model = 'recs' ORDER BY window_start_ms`),
      (r) => r.length > 0 && Number(r.at(-1)!.window_end_ms) >= Math.floor(lastEventTs / WINDOW) * WINDOW,
      { what: 'recs performance windows to the end of the traffic', timeoutMs: 90_000 },
    );
    const shown = await chRows<{ user_id: string; item_id: string; event_ts_ms: string }>(f.clickhouse, `SELECT user_id, item_id, event_ts_ms FROM ${db}.v_recommendations WHERE model = 'recs' AND origin = 'stream'`);
    const outcomes = await chRows<{ entity_id: string; item_id: string; label: string; ts_ms: string }>(f.clickhouse, `SELECT entity_id, item_id, label, ts_ms FROM ${db}.v_outcomes WHERE stream = 'interactions' AND label IN ('click', 'purchase')`);
    const byPair = new Map<string, { label: string; ts: number }[]>();
    for (const o of outcomes) byPair.set(`${o.entity_id}|${o.item_id}`, [...(byPair.get(`${o.entity_id}|${o.item_id}`) ?? []), { label: o.label, ts: Number(o.ts_ms) }]);
    let clicksSeen = 0;
    for (const w of windows) {
      const items = shown.filter((s) => Number(s.event_ts_ms) >= Number(w.window_start_ms) && Number(s.event_ts_ms) < Number(w.window_end_ms));
      const within = (s: (typeof items)[number], label: string) => (byPair.get(`${s.user_id}|${s.item_id}`) ?? []).some((o) => o.label === label && o.ts > Number(s.event_ts_ms) && o.ts <= Number(s.event_ts_ms) + HORIZON);
      const clicks = items.filter((s) => within(s, 'click')).length;
      const purchases = items.filter((s) => within(s, 'purchase')).length;
      expect([Number(w.items), Number(w.clicks), Number(w.purchases)], `window ${w.window_start_ms}`).toEqual([items.length, clicks, purchases]);
      expect(w.ctr).toBeCloseTo(clicks / items.length, 12);
      expect(w.conversion).toBeCloseTo(purchases / items.length, 12);
      clicksSeen += clicks;
    }
    expect(clicksSeen).toBeGreaterThan(0);
  });
});
