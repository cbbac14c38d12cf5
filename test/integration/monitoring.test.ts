import { execFile } from 'node:child_process';
import { createServer, type IncomingMessage, type Server } from 'node:http';
import { promisify } from 'node:util';
import type { AddressInfo } from 'node:net';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PNG } from 'pngjs';
import { dumpDom, ensureChromium, screenshot } from '../shared/chromium.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import avro from 'avsc';
import { isolatedConfig, readAll, startTestFabric, waitFor, chRows, type TestFabric } from './harness.js';
import { runSimulation } from '../../sim/run.js';
import { FRAUD_INPUT_NAMES } from '../../serving/models/fraud-inputs.js';
import { numericProfile } from '../../serving/registry/reference.js';
import { AvroSerde } from '../../schemas/serde.js';
import { loadAvroSchema } from '../../schemas/catalog.js';
import type { Outcome } from '../../schemas/types.generated.js';
import { BatchingProducer } from '../../topology/runtime/producer.js';
import { createKafka } from '../../topology/runtime/kafka.js';
import { createLogger } from '../../topology/runtime/log.js';
import { prefixed } from '../../topology/config.js';

const execFileP = promisify(execFile);

/**
 * The monitor on the running fabric: an undrifted seeded stream, then the same generator with
 * --drift. Checked from outside: the drift metrics in ClickHouse against a recomputation from the
 * predictions read back from Kafka and the profile in models/fraud/model.json (binned and measured by
 * this test's own code), the alert on `alerts` within two windows of the drift, the webhook's POST,
 * and the last windows closing after the traffic stopped.
 */
const WINDOW_SEC = 4;
const WINDOW = WINDOW_SEC * 1000;

interface Profile {
  edges: number[];
  proportions: number[];
  centers: number[];
}
const reference = (JSON.parse(readFileSync(new URL('../../models/fraud/model.json', import.meta.url), 'utf8')) as { reference: Record<string, Profile> }).reference;

let f: TestFabric;
let producer: BatchingProducer;
let hook: Server;
const posts: { headers: IncomingMessage['headers']; body: Record<string, unknown> }[] = [];
let driftStart = 0;
let garbageAt = 0;
let lastEventTs = 0;

const decoders = new Map<number, avro.Type>();
async function decode(registryUrl: string, buf: Buffer): Promise<Record<string, unknown>> {
  const id = buf.readInt32BE(1);
  let type = decoders.get(id);
  if (!type) {
    const { schema } = (await (await fetch(`${registryUrl}/schemas/ids/${id}`)).json()) as { schema: string };
    type = avro.Type.forSchema(JSON.parse(schema) as avro.Schema);
    decoders.set(id, type);
  }
  return type.fromBuffer(buf.subarray(5)) as Record<string, unknown>;
}

beforeAll(async () => {
  hook = createServer((req, res) => {
    let body = '';
    req.on('data', (c: Buffer) => (body += c.toString()));
    req.on('end', () => {
      posts.push({ headers: req.headers, body: JSON.parse(body) as Record<string, unknown> });
      // The first delivery fails: the webhook retries it.
      res.statusCode = posts.length === 1 ? 503 : 204;
      res.end();
    });
  });
  await new Promise<void>((r) => hook.listen(0, '127.0.0.1', r));
  const config = isolatedConfig({
    driftWindowSec: WINDOW_SEC,
    driftAllowedLatenessSec: 0,
    driftIdleSec: 3,
    driftMinCount: 50,
    alertWebhookUrl: `http://127.0.0.1:${(hook.address() as AddressInfo).port}/alerts`,
    performanceWindowSec: WINDOW_SEC,
    outcomeHorizonSec: 3,
    // Labels reach ClickHouse through tracking (about a second; more on a loaded machine).
    performanceGraceSec: 6,
    performanceIntervalSec: 1,
  });
  f = await startTestFabric(config, { processors: ['features', 'scoring', 'tracking', 'drift', 'drift-merge', 'monitor-alerts', 'alert-webhook'] });
  const log = createLogger(config);
  const outcomesTopic = prefixed(config, 'outcomes.transactions');
  const writer = await new AvroSerde({ url: config.registryUrl }).writer<Outcome>(`${outcomesTopic}-value`, loadAvroSchema('outcome'));
  producer = new BatchingProducer(createKafka(config, log, 'it-outcomes'), { lingerMs: 5, batchSize: 500, maxQueued: 10_000, ackTimeoutMs: 10_000 }, log);
  await producer.start();
  // Labels 0.5 s after each event; a tenth of them 5 s after (beyond the 3 s horizon: late, not joined).
  const run = (drift: boolean, seed: number) =>
    runSimulation({
      stream: 'transactions', gatewayUrl: f.url, apiKey: 'dev-key', ratePerSec: 100, durationSec: 12, seed, drift, runId: `mon-${seed}`, outcomeDelayMs: 500,
      publishOutcomes: async (outcomes) => {
        const late = outcomes.filter((o) => o.event_id.endsWith('0'));
        await producer.send(outcomes.filter((o) => !o.event_id.endsWith('0')).map((o) => ({ topic: outcomesTopic, key: o.entity_id, value: writer.encode(o) })));
        setTimeout(() => void producer.send(late.map((o) => ({ topic: outcomesTopic, key: o.entity_id, value: writer.encode({ ...o, ts: o.ts + 4500 }) }))).catch(() => undefined), 4500).unref();
      },
    });
  const plain = await run(false, 21);
  expect(plain.accepted).toBe(1200);
  // Two records no processor can read, written past the gateway: dead letters, counted as data quality.
  await producer.send([0, 1].map((i) => ({ topic: prefixed(config, 'events.transactions'), key: `C000000${i}`, value: Buffer.from(`not avro ${i}`) })));
  garbageAt = Date.now();
  driftStart = Date.now();
  const drifted = await run(true, 22);
  expect(drifted.accepted).toBe(1200);
  lastEventTs = Date.now();
}, 180_000);

afterAll(async () => {
  await producer?.close();
  await f?.cleanup();
  await new Promise((r) => hook?.close(r));
});

interface Row {
  version: string;
  variable: string;
  window_start_ms: string;
  window_end_ms: string;
  count: string;
  total: string;
  psi: number;
  js: number | null;
  ks: number | null;
  wasserstein: number | null;
  missing_rate: number;
  status: string;
}

/** This test's own binning (right-closed: the number of edges strictly below x) and measures. */
function measure(p: Profile, values: number[]): { psi: number; ks: number; wasserstein: number } {
  const counts = new Array<number>(p.proportions.length).fill(0);
  for (const x of values) counts[p.edges.filter((e) => e < x).length]!++;
  const q = counts.map((c) => c / values.length);
  let psi = 0;
  let ks = 0;
  let w = 0;
  let cp = 0;
  let cq = 0;
  for (let i = 0; i < q.length; i++) {
    const a = Math.max(p.proportions[i]!, 1e-4);
    const b = Math.max(q[i]!, 1e-4);
    psi += (b - a) * Math.log(b / a);
    cp += p.proportions[i]!;
    cq += q[i]!;
    ks = Math.max(ks, Math.abs(cp - cq));
    if (i < q.length - 1) w += Math.abs(cp - cq) * (p.centers[i + 1]! - p.centers[i]!);
  }
  return { psi, ks, wasserstein: w };
}

describe('model monitoring on the running fabric', () => {
  let rows: Row[] = [];
  const predictions: Record<string, unknown>[] = [];

  it('measures every model input and the score per window, closing the last windows after the traffic stopped', async () => {
    const lastWindowEnd = Math.ceil(lastEventTs / WINDOW) * WINDOW;
    rows = await waitFor(
      () => chRows<Row>(f.clickhouse, `SELECT version, variable, window_start_ms, window_end_ms, count, total, psi, js, ks, wasserstein, missing_rate, status FROM ${f.config.clickhouseDatabase}.v_drift_metrics ORDER BY window_start_ms, variable`),
      (r) => r.some((x) => Number(x.window_end_ms) >= lastWindowEnd - WINDOW),
      { what: 'drift windows up to the end of the traffic (closed on the idle timeout)', timeoutMs: 90_000 },
    );
    expect(new Set(rows.map((r) => r.variable))).toEqual(new Set([...FRAUD_INPUT_NAMES, 'score']));
    expect(new Set(rows.map((r) => r.version))).toEqual(new Set(['1.0.0']));
  });

  it('PSI, KS and Wasserstein of every window equal a recomputation from the predictions on Kafka (within 1e-6)', async () => {
    const events = await readAll(f.kafka, f.config, 'events.transactions');
    // 2,400 simulated events plus the 2 undecodable records (dead letters, never scored).
    expect(events.length).toBe(2402);
    const records = await waitFor(() => readAll(f.kafka, f.config, 'predictions.fraud'), (r) => r.length >= 2400, { what: 'a prediction per event' });
    const decoded = await Promise.all(records.map(async (r) => ({ partition: r.partition, offset: BigInt(r.offset), value: await decode(f.config.registryUrl, r.value!) })));
    expect(new Set(decoded.map((p) => p.value.event_id)).size).toBe(2400);
    // Late ones are left out (allowed lateness 0): per partition in offset order, a prediction whose
    // window ended at or before the newest event time seen before it.
    const newest = new Map<number, number>();
    let late = 0;
    for (const r of decoded.sort((a, b) => a.partition - b.partition || (a.offset < b.offset ? -1 : 1))) {
      const ts = r.value.event_ts as number;
      const max = newest.get(r.partition) ?? -Infinity;
      if (Math.floor(ts / WINDOW) * WINDOW + WINDOW <= max) late++;
      else {
        predictions.push(r.value);
        newest.set(r.partition, Math.max(max, ts));
      }
    }
    expect(late).toBeLessThan(50);
    let checked = 0;
    for (const row of rows) {
      const start = Number(row.window_start_ms);
      const inWindow = predictions.filter((p) => (p.event_ts as number) >= start && (p.event_ts as number) < Number(row.window_end_ms));
      expect(Number(row.total), `${row.variable} @ ${start}`).toBe(inWindow.length);
      const values = inWindow.map((p) => (row.variable === 'score' ? p.score : (p.features as Record<string, number | null>)[row.variable])).filter((x): x is number => typeof x === 'number');
      expect(Number(row.count)).toBe(values.length);
      const want = measure(reference[row.variable]!, values);
      expect(Math.abs(row.psi - want.psi), `psi ${row.variable} @ ${start}`).toBeLessThan(1e-6);
      expect(Math.abs(row.ks! - want.ks), `ks ${row.variable} @ ${start}`).toBeLessThan(1e-6);
      expect(Math.abs(row.wasserstein! - want.wasserstein), `wasserstein ${row.variable} @ ${start}`).toBeLessThan(1e-6 * Math.max(1, want.wasserstein));
      checked++;
    }
    expect(checked).toBeGreaterThanOrEqual(5 * (FRAUD_INPUT_NAMES.length + 1));
  });

  it('the amount stays below 0.1 undrifted and exceeds 0.25 once drifted; TRANSFER\'s share too', () => {
    const full = (r: Row) => Number(r.window_end_ms) <= driftStart - 1000 && Number(r.window_start_ms) > 0 && Number(r.count) >= 200;
    const before = rows.filter((r) => full(r) && (r.variable === 'amount' || r.variable.startsWith('type_')));
    expect(before.length).toBeGreaterThan(4);
    for (const r of before) expect(r.psi, `${r.variable} @ ${r.window_start_ms}`).toBeLessThan(0.1);
    const after = rows.filter((r) => Number(r.window_start_ms) >= driftStart && Number(r.window_end_ms) <= lastEventTs && Number(r.count) >= 200);
    for (const v of ['amount', 'type_TRANSFER']) {
      const w = after.filter((r) => r.variable === v);
      expect(w.length, v).toBeGreaterThan(1);
      for (const r of w) expect(r.psi, `${v} @ ${r.window_start_ms}`).toBeGreaterThan(0.25);
    }
  });

  it('raises an alert on `alerts` within two windows of the drift, and POSTs it to the webhook (retried after a 503)', async () => {
    const alerts = await waitFor(
      async () => Promise.all((await readAll(f.kafka, f.config, 'alerts')).map((r) => decode(f.config.registryUrl, r.value!))),
      (a) => a.some((x) => (x.subject as string) === 'fraud@1.0.0/amount/psi'),
      { what: 'the amount drift alert', timeoutMs: 60_000 },
    );
    const amount = alerts.find((x) => (x.subject as string) === 'fraud@1.0.0/amount/psi')!;
    expect(amount).toMatchObject({ kind: 'drift', severity: 'critical', model: 'fraud', version: '1.0.0' });
    const details = amount.details as Record<string, string>;
    expect(details).toMatchObject({ state: 'firing', metric: 'psi', variable: 'amount', windows: '1' });
    // Fired at the latest at the end of the second window holding drifted events (the first may hold
    // more undrifted events than drifted ones).
    const firstDriftedWindowEnd = Math.floor(driftStart / WINDOW) * WINDOW + WINDOW;
    expect(amount.ts as number).toBeLessThanOrEqual(firstDriftedWindowEnd + WINDOW);
    expect(amount.ts as number).toBeGreaterThan(driftStart);
    // Undrifted, the amount never fired.
    expect(alerts.filter((x) => x.subject === 'fraud@1.0.0/amount/psi' && (x.ts as number) < driftStart)).toEqual([]);
    const delivered = await waitFor(async () => posts.filter((p) => p.body.alert_id === amount.alert_id), (p) => p.length >= 1, { what: 'the webhook POST' });
    expect(delivered[0]!.headers['idempotency-key']).toBe(amount.alert_id);
    expect(delivered[0]!.body).toMatchObject({ subject: 'fraud@1.0.0/amount/psi', message: expect.stringContaining('psi') });
    // Every alert reached the webhook (the first after a retry), and ClickHouse.
    await waitFor(async () => new Set(posts.map((p) => p.body.alert_id)), (ids) => alerts.every((a) => ids.has(a.alert_id as string)), { what: 'every alert POSTed' });
    const stored = await waitFor(() => chRows<{ alert_id: string }>(f.clickhouse, `SELECT alert_id FROM ${f.config.clickhouseDatabase}.v_alerts`), (r) => r.length >= alerts.length, { what: 'alerts in ClickHouse' });
    expect(new Set(stored.map((r) => r.alert_id))).toEqual(new Set(alerts.map((a) => a.alert_id as string)));
  });

  const cli = async (...args: string[]) => {
    const env = { ...process.env, FABRIC_TOPIC_PREFIX: f.config.topicPrefix, FABRIC_REDIS_PREFIX: f.config.redisKeyPrefix, FABRIC_CLICKHOUSE_DATABASE: f.config.clickhouseDatabase, FABRIC_LOG_LEVEL: 'warn' };
    return JSON.parse((await execFileP('npx', ['tsx', 'app/cli/main.ts', 'monitor', ...args, '--json'], { env, timeout: 120_000 })).stdout) as unknown;
  };

  it('fabric monitor alerts lists them; --active keeps what is firing now', async () => {
    const all = (await cli('alerts', '--model', 'fraud')) as { subject: string; state: string; severity: string; ts: number }[];
    expect(all.find((a) => a.subject === 'fraud@1.0.0/amount/psi')).toMatchObject({ state: 'firing', severity: 'critical' });
    for (let i = 1; i < all.length; i++) expect(all[i]!.ts).toBeLessThanOrEqual(all[i - 1]!.ts);
    const active = (await cli('alerts', '--active')) as { subject: string; state: string }[];
    expect(active.every((a) => a.state === 'firing')).toBe(true);
    expect(new Set(active.map((a) => a.subject)).size).toBe(active.length);
    expect((await cli('alerts', '--model', 'nope')) as unknown[]).toEqual([]);
  });

  it('fabric monitor profile makes the reference profile of a version from the ledger: the same bins as from the predictions on Kafka', async () => {
    const from = Math.min(...predictions.map((p) => p.event_ts as number));
    const to = driftStart;
    const got = (await cli('profile', '--model', 'fraud@1.0.0', '--from', new Date(from).toISOString(), '--to', String(to))) as { predictions: number; profile: Record<string, { edges: number[]; counts: number[] }> };
    // Every prediction of the undrifted run, late ones included (the ledger has them all).
    const records = await Promise.all((await readAll(f.kafka, f.config, 'predictions.fraud')).map((r) => decode(f.config.registryUrl, r.value!)));
    const undrifted = records.filter((p) => (p.event_ts as number) >= from && (p.event_ts as number) < to);
    expect(got.predictions).toBe(undrifted.length);
    expect(Object.keys(got.profile).sort()).toEqual([...FRAUD_INPUT_NAMES, 'score'].sort());
    for (const v of ['amount', 'score', 'txn_count_24h']) {
      const want = numericProfile(undrifted.map((p) => (v === 'score' ? (p.score as number | null) : (p.features as Record<string, number | null>)[v]!)));
      expect(got.profile[v]!.edges, v).toEqual(want.edges);
      expect(got.profile[v]!.counts, v).toEqual(want.counts);
    }
    const none = await execFileP('npx', ['tsx', 'app/cli/main.ts', 'monitor', 'profile', '--model', 'fraud@9.9.9', '--from', '0', '--to', '1'], { env: { ...process.env, FABRIC_CLICKHOUSE_DATABASE: f.config.clickhouseDatabase, FABRIC_LOG_LEVEL: 'warn' }, timeout: 120_000 }).then(() => null, (e: { code: number; stderr: string }) => e);
    expect(none?.code).not.toBe(0);
    expect(none?.stderr).toMatch(/FABRIC_MODEL_UNKNOWN|no predictions of fraud@9.9.9/);
  });

  it('measures performance per window from the labels that arrived within the horizon: AUC, log loss and precision at the thresholds equal a recomputation from the ledger; later labels are counted late', async () => {
    const db = f.config.clickhouseDatabase;
    const windows = await waitFor(
      () => chRows<{ window_start_ms: string; window_end_ms: string; predictions: string; labelled: string; positives: string; late_labels: string; auc: number | null; log_loss: number | null; threshold_names: string[]; threshold_values: number[]; threshold_precision: (number | null)[] }>(f.clickhouse, `SELECT * FROM ${db}.v_model_performance WHERE model = 'fraud' ORDER BY window_start_ms`),
      (r) => r.length > 0 && Number(r.at(-1)!.window_end_ms) >= Math.floor(lastEventTs / WINDOW) * WINDOW,
      { what: 'performance windows up to the end of the traffic', timeoutMs: 90_000 },
    );
    // The ledger, read with this test's own join: a label counts when it arrived within 3 s of the event.
    const preds = await chRows<{ event_id: string; score: number | null; event_ts_ms: string }>(f.clickhouse, `SELECT event_id, score, event_ts_ms FROM ${db}.v_predictions WHERE model = 'fraud'`);
    const labels = new Map((await chRows<{ event_id: string; value: number; ts_ms: string }>(f.clickhouse, `SELECT event_id, value, ts_ms FROM ${db}.v_outcomes WHERE stream = 'transactions'`)).map((o) => [o.event_id, o]));
    const thresholds = (JSON.parse(readFileSync(new URL('../../models/fraud/model.json', import.meta.url), 'utf8')) as { thresholds: Record<string, number> }).thresholds;
    let lateSeen = 0;
    let withAuc = 0;
    for (const w of windows) {
      const inWindow = preds.filter((p) => Number(p.event_ts_ms) >= Number(w.window_start_ms) && Number(p.event_ts_ms) < Number(w.window_end_ms));
      expect(Number(w.predictions)).toBe(inWindow.length);
      const joined: { score: number; y: number }[] = [];
      let late = 0;
      for (const p of inWindow) {
        const o = labels.get(p.event_id);
        if (p.score === null || !o) continue;
        if (Number(o.ts_ms) - Number(p.event_ts_ms) <= 3000) joined.push({ score: p.score, y: o.value > 0 ? 1 : 0 });
        else late++;
      }
      expect(Number(w.labelled), `window ${w.window_start_ms}`).toBe(joined.length);
      expect(Number(w.late_labels)).toBe(late);
      lateSeen += late;
      const pos = joined.filter((j) => j.y === 1);
      const neg = joined.filter((j) => j.y === 0);
      expect(Number(w.positives)).toBe(pos.length);
      if (pos.length && neg.length) {
        let wins = 0;
        for (const a of pos) for (const b of neg) wins += a.score > b.score ? 1 : a.score === b.score ? 0.5 : 0;
        expect(Math.abs(w.auc! - wins / (pos.length * neg.length))).toBeLessThan(1e-9);
        withAuc++;
      } else expect(w.auc).toBeNull();
      const clip = (p: number) => Math.min(1 - 1e-15, Math.max(1e-15, p));
      const loss = joined.reduce((s, j) => s - (j.y ? Math.log(clip(j.score)) : Math.log(1 - clip(j.score))), 0) / joined.length;
      expect(Math.abs(w.log_loss! - loss)).toBeLessThan(1e-9);
      const block = w.threshold_names.indexOf('block');
      expect(w.threshold_values[block]).toBe(thresholds.block);
      const flagged = joined.filter((j) => j.score >= thresholds.block!);
      if (flagged.length) expect(Math.abs(w.threshold_precision[block]! - flagged.filter((j) => j.y).length / flagged.length)).toBeLessThan(1e-12);
      else expect(w.threshold_precision[block]).toBeNull();
    }
    expect(lateSeen).toBeGreaterThan(50);
    expect(withAuc).toBeGreaterThan(2);
    // The two undecodable records are dead letters of events.transactions, counted in their window.
    const dead = await chRows<{ code: string; original_ts_ms: string }>(f.clickhouse, `SELECT code, original_ts_ms FROM ${db}.v_dead_letters WHERE original_topic = 'events.transactions'`);
    expect(dead.map((d) => d.code)).toEqual(['FABRIC_RECORD_UNDECODABLE', 'FABRIC_RECORD_UNDECODABLE']);
    const counted = await chRows<{ window_start_ms: string; dead_letters: string }>(f.clickhouse, `SELECT window_start_ms, dead_letters FROM ${db}.v_model_performance WHERE model = 'fraud' AND dead_letters > 0`);
    expect(counted.reduce((n, w) => n + Number(w.dead_letters), 0)).toBe(2);
    expect(counted.every((w) => Number(w.window_start_ms) <= garbageAt && garbageAt - Number(w.window_start_ms) < WINDOW + 2000)).toBe(true);
  });

  it('fabric monitor report writes one self-contained HTML file that renders in headless Chromium with every chart drawn', async () => {
    const chromium = ensureChromium();
    const dir = mkdtempSync(join(tmpdir(), 'fabric-report-'));
    const file = join(dir, 'report.html');
    const from = Math.min(...predictions.map((p) => p.event_ts as number)) - WINDOW;
    const summary = (await cli('report', '--model', 'fraud', '--from', String(from), '--to', String(Date.now()), '--out', file)) as { histograms: number; driftWindows: number; performanceWindows: number; alerts: number };
    expect(summary.histograms).toBe(FRAUD_INPUT_NAMES.length + 1);
    expect(summary.performanceWindows).toBeGreaterThan(2);
    expect(summary.alerts).toBeGreaterThan(0);
    const html = readFileSync(file, 'utf8');
    // Nothing is fetched at view time: no external script, style, image or font.
    expect(html).not.toMatch(/(src|href)\s*=\s*["']?(https?:)?\/\//i);
    expect(html).not.toMatch(/@import|url\(\s*["']?https?:/i);
    const dom = dumpDom(chromium, `file://${file}`);
    const canvases = [...dom.matchAll(/<canvas[^>]*data-chart="([^"]+)"[^>]*>/g)].map((m) => ({ chart: m[1]!, drawn: /data-drawn="1"/.test(m[0]), ink: Number(/data-ink="(\d+)"/.exec(m[0])?.[1] ?? 0) }));
    // PSI over time, a histogram per input and the score, AUC, loss and calibration error, one chart per threshold, ROC, calibration.
    const kinds = new Map<string, number>();
    for (const c of canvases) kinds.set(c.chart, (kinds.get(c.chart) ?? 0) + 1);
    expect(Object.fromEntries(kinds)).toEqual({ 'drift-psi': 1, histogram: FRAUD_INPUT_NAMES.length + 1, 'performance-auc': 1, 'performance-loss': 1, 'performance-threshold': 2, roc: 1, calibration: 1 });
    for (const c of canvases) {
      expect(c.drawn, c.chart).toBe(true);
      expect(c.ink, c.chart).toBeGreaterThan(2000);
    }
    expect(dom).toContain('fraud@1.0.0/amount/psi');
    // And a screenshot is not blank: a good share of its pixels are not background.
    const png = join(dir, 'report.png');
    screenshot(chromium, `file://${file}`, png);
    const image = PNG.sync.read(readFileSync(png));
    let painted = 0;
    for (let i = 0; i < image.data.length; i += 4) if (image.data[i]! < 240 || image.data[i + 1]! < 240 || image.data[i + 2]! < 240) painted++;
    expect(painted / (image.width * image.height)).toBeGreaterThan(0.03);
  });
});
