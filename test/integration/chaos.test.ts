/**
 * Exactly-once under chaos: one seeded input, processed by real `fabric run` processes, compared
 * effect by effect (predictions and features read_committed, Redis online features, ClickHouse
 * through the deduplicated views, drift metrics) with a clean run of the same input, and the clean
 * run itself compared with an independent recomputation of every feature and score.
 * CHAOS_SCALE multiplies the input (`npm run chaos` runs a longer soak).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as ort from 'onnxruntime-node';
import { Rng } from '../../sim/rng.js';
import { loadConfig } from '../../topology/config.js';
import { stackDown, stackUp, type ComponentName } from '../../deploy/stack.js';
import type { Transaction } from '../../schemas/types.generated.js';
import { oracleFeaturesAtEvent } from '../shared/feature-oracle.js';
import { demoModel } from '../shared/models.js';
import { checkFeatures } from '../../processors/features/check.js';
import { accountGroup } from '../../topology/features/groups.js';
import { createNamespace, differences, Fleet, produceInput, seededTransactions, snapshot, waitRunning, waitSettled, type Head, type Namespace, type Snapshot } from '../chaos/harness.js';

const SCALE = Number(process.env.CHAOS_SCALE ?? 1);
const COUNT = Math.round(3000 * SCALE);
const SEED = Number(process.env.CHAOS_SEED ?? 11);
/** Each scenario's budget grows with the input (`npm run chaos` runs 5x). */
const SCENARIO_MS = 300_000 * SCALE;
const SETTLE_MS = 240_000 * SCALE;
const events = seededTransactions(SEED, COUNT);
const namespaces: Namespace[] = [];
const fleets: Fleet[] = [];
let clean: Snapshot;

async function namespace(tag: string): Promise<Namespace> {
  const ns = await createNamespace(tag);
  namespaces.push(ns);
  return ns;
}

function fleet(ns: Namespace, counts: Partial<Record<Head, number>>): Fleet {
  const f = new Fleet(ns);
  fleets.push(f);
  for (const [head, n] of Object.entries(counts) as [Head, number][]) for (let i = 0; i < n; i++) f.spawn(head);
  return f;
}

const wait = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
/** Runs `hurts` at their moments (ms from now) while `work` runs. */
async function during(work: Promise<unknown>, hurts: { at: number; run: () => Promise<unknown> }[]): Promise<void> {
  const start = Date.now();
  for (const h of hurts) {
    await wait(Math.max(0, h.at - (Date.now() - start)));
    await h.run();
  }
  await work;
}

beforeAll(async () => {
  const ns = await namespace('clean');
  const f = fleet(ns, { features: 1, tracking: 1, drift: 1, 'drift-merge': 1 });
  await produceInput(ns, events);
  await waitSettled(ns, { fleet: f, timeoutMs: SETTLE_MS });
  clean = await snapshot(ns);
  await f.stopAll();
}, 600_000 * SCALE);

afterAll(async () => {
  for (const f of fleets) await f.stopAll().catch(() => undefined);
  const keep = process.env.CHAOS_KEEP === '1';
  if (!keep) for (const ns of namespaces) await ns.cleanup().catch(() => undefined);
}, 120_000);

describe('the clean run against an independent recomputation', () => {
  it('scores every event once, with features recomputed from the raw events in partition order', () => {
    expect(clean.predictions.size).toBe(COUNT);
    expect(clean.predictionRecords).toBe(COUNT);
    expect(clean.features.size).toBe(COUNT);
    const byPartition = new Map<number, { offset: number; t: Transaction }[]>();
    for (const i of clean.inputs) {
      const list = byPartition.get(i.partition) ?? [];
      list.push({ offset: Number(i.offset), t: i.value });
      byPartition.set(i.partition, list);
    }
    let checked = 0;
    for (const list of byPartition.values()) {
      list.sort((a, b) => a.offset - b.offset);
      const asOracle = ({ offset, t }: { offset: number; t: Transaction }) => ({ ts: t.ts, offset, value: { ...t } });
      list.forEach((entry, idx) => {
        const { t } = entry;
        // Scoring gets the event's own row as admitted: over the account's events up to it in the partition.
        const f = oracleFeaturesAtEvent('account', list.slice(0, idx + 1).filter((x) => x.t.account_id === t.account_id).map(asOracle), asOracle(entry));
        // The model's inputs log a missing value as -1.
        const expected = { ...f, amount_avg_24h: f.amount_avg_24h ?? -1, seconds_since_last_txn: f.seconds_since_last_txn ?? -1 };
        const logged = (JSON.parse(clean.predictions.get(t.event_id)!) as { features: Record<string, number> }).features;
        for (const [name, value] of Object.entries(expected)) expect(logged[name], `${t.event_id} ${name}`).toBeCloseTo(value, 6);
        checked++;
      });
    }
    expect(checked).toBe(COUNT);
  });

  it('gives every prediction the score an independent ONNX run of its logged inputs gives', async () => {
    // The artifact's own bytes and declared input/output names, run here without the fabric's worker.
    const { entry, bytes } = demoModel('fraud');
    const model = { inputs: entry.signature.inputs.map((i) => i.name), inputName: entry.signature.input_name, outputName: entry.signature.output_name, positiveClassIndex: entry.signature.positive_class_index };
    const session = await ort.InferenceSession.create(new Uint8Array(bytes));
    const values = clean.predictionValues as { event_id: string; score: number | null; features: Record<string, number | null>; fallback: boolean }[];
    const width = model.inputs.length;
    const rows = new Float32Array(values.length * width);
    values.forEach((v, i) => model.inputs.forEach((name, j) => (rows[i * width + j] = v.features[name] ?? -1)));
    const out = await session.run({ [model.inputName]: new ort.Tensor('float32', rows, [values.length, width]) });
    const probabilities = out[model.outputName]!;
    const classes = probabilities.dims[1] ?? 1;
    const data = probabilities.data as Float32Array;
    values.forEach((v, i) => {
      expect(v.fallback, v.event_id).toBe(false);
      expect(v.score, v.event_id).toBeCloseTo(classes === 1 ? data[i]! : data[i * classes + model.positiveClassIndex]!, 5);
    });
  });

  it('shows one row per event through the deduplicated ClickHouse views, equal to the Kafka outputs', () => {
    expect(clean.clickhouse.v_predictions!.visible).toBe(COUNT);
    expect(clean.clickhouse.v_events_transactions!.visible).toBe(COUNT);
    expect(clean.clickhouse['features_account FINAL']!.visible).toBe(COUNT);
    expect(clean.drift.length).toBeGreaterThan(0);
    expect(clean.clickhouse['drift_metrics FINAL']!.visible).toBe(clean.drift.length);
  });

  it('measures every prediction once in drift: a window per 30 s of event time, the last ones (traffic stopped) as early results', () => {
    const latest = clean.drift.map((d) => JSON.parse(d) as { variable: string; window_start: number; total: number; late: number; final: boolean });
    const score = latest.filter((d) => d.variable === 'score').sort((a, b) => a.window_start - b.window_start);
    const panes = [...new Set(events.map((e) => e.ts - (e.ts % 30_000)))].sort((a, b) => a - b);
    expect(score.map((d) => d.window_start)).toEqual(panes);
    expect(score.reduce((n, d) => n + d.total + d.late, 0)).toBe(COUNT);
    expect(clean.driftFinalRepeats).toBe(0);
    // The watermark passed all but the newest windows (final); the newest fired on the idle timeout.
    expect(score[0]!.final).toBe(true);
    expect(score.at(-1)!.final).toBe(false);
  });
});

describe('chaos, each compared with the clean run', () => {
  it('kill -9 of every processor at seeded moments (10+ kills) changes nothing', async () => {
    const ns = await namespace('kill');
    const f = fleet(ns, { features: 2, tracking: 1, drift: 1, 'drift-merge': 1 });
    const heads: Head[] = ['features', 'features', 'tracking', 'drift', 'drift-merge', 'features', 'tracking', 'drift', 'features', 'drift-merge', 'features', 'features'];
    const rng = new Rng(SEED);
    // Input arrives steadily (processors stay busy), and the kills fall at seeded moments across it.
    const produceMs = (COUNT / 50) * 250;
    const moments = heads.map((_, i) => Math.round(((i + 0.2 + rng.uniform() * 0.6) * produceMs) / heads.length));
    await during(
      produceInput(ns, events, { chunk: 50, paceMs: 250 }),
      moments.map((at, i) => ({ at, run: () => f.killAndReplace(rng, [heads[i]!]) })),
    );
    expect(f.kills).toBeGreaterThanOrEqual(10);
    await waitSettled(ns, { fleet: f, timeoutMs: SETTLE_MS });
    expect(differences(clean, await snapshot(ns))).toEqual([]);
    // And the consistency check a user runs finds online equal to offline, at the stream's end and before it.
    const end = Math.max(...events.map((e) => e.ts));
    for (const asOf of [end, end - 20 * 60_000]) {
      const report = await checkFeatures({ redis: ns.redis, keyPrefix: ns.config.redisKeyPrefix, ch: ns.clickhouse, database: ns.config.clickhouseDatabase, group: accountGroup, sample: 1_000_000, asOf, seed: 1, waitMs: 30_000 });
      expect(report.differences).toEqual([]);
      expect(report.checked).toBe(new Set(events.map((e) => e.account_id)).size);
    }
  }, SCENARIO_MS);

  it('3 instances of each processor, one killed and one added mid-stream (rebalances), changes nothing', async () => {
    const ns = await namespace('churn');
    const f = fleet(ns, { features: 3, tracking: 3, drift: 3, 'drift-merge': 3 });
    const rng = new Rng(SEED + 1);
    await during(produceInput(ns, events, { chunk: 40, paceMs: 600 }), [
      { at: 6_000, run: async () => f.kill(f.alive('features')[rng.int(0, 2)]!) },
      { at: 8_000, run: async () => f.spawn('features') },
      { at: 10_000, run: async () => f.kill(f.alive('drift')[rng.int(0, 2)]!) },
      { at: 12_000, run: async () => f.spawn('tracking') },
    ]);
    await waitSettled(ns, { fleet: f, timeoutMs: SETTLE_MS });
    expect(differences(clean, await snapshot(ns))).toEqual([]);
  }, SCENARIO_MS);

  it('replaying the whole input from offset 0 into a fresh namespace gives the same effects', async () => {
    const ns = await namespace('replay');
    const f = fleet(ns, { features: 1, tracking: 1, drift: 1, 'drift-merge': 1 });
    // Copied byte for byte from the clean namespace's input, then processed from offset 0.
    await produceInput(ns, [...clean.inputs].sort((a, b) => a.partition - b.partition || Number(BigInt(a.offset) - BigInt(b.offset))).map((i) => i.value));
    await waitSettled(ns, { fleet: f, timeoutMs: SETTLE_MS });
    expect(differences(clean, await snapshot(ns))).toEqual([]);
  }, SCENARIO_MS);

  it('outages — registry stopped 10 s, ClickHouse stopped a minute, Redis restarted, broker restarted — change nothing', async () => {
    const ns = await namespace('outage');
    const f = fleet(ns, { features: 1, tracking: 1, drift: 1, 'drift-merge': 1 });
    // Every instance must be up before the registry goes: a process starting without it exits (its supervisor would restart it).
    await waitRunning(ns, f);
    const config = loadConfig();
    const log = (): void => undefined;
    /** Stops a component for at least `ms` while `work` (input arriving) goes on, then starts it again. */
    const outage = async (component: ComponentName, ms: number, work: () => Promise<void> = async () => undefined): Promise<void> => {
      await stackDown(config, log, [component]);
      await Promise.all([work(), wait(ms)]);
      await stackUp(config, log, [component]);
    };
    const part = (i: number): Transaction[] => events.slice(Math.floor((i * events.length) / 5), Math.floor(((i + 1) * events.length) / 5));
    const feed = (i: number) => () => produceInput(ns, part(i), { chunk: 40, paceMs: 150 });
    await feed(0)();
    // Processors keep working without the registry (schemas are cached; nothing may be dead-lettered).
    await outage('registry', 10_000, feed(1));
    // Tracking cannot insert: its partitions pause and retry, the rest of the fabric goes on.
    await outage('clickhouse', 60_000, feed(2));
    // Features cannot read or write windows: batches retry until Redis is back.
    await outage('redis', 2_000, feed(3));
    await outage('kafka', 1_000);
    await feed(4)();
    await waitSettled(ns, { fleet: f, timeoutMs: SETTLE_MS });
    expect(differences(clean, await snapshot(ns))).toEqual([]);
    expect(f.failures()).toEqual([]);
  }, SCENARIO_MS);
});
