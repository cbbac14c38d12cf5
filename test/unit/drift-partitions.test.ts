import { describe, expect, it } from 'vitest';
import avro from 'avsc';
import type { Observable } from 'rxjs';
import { TestDriver } from '../../topology/runtime/test-driver.js';
import type { BatchContext, Output, ProcessorLogic, SourceRecord } from '../../topology/runtime/processor.js';
import { driftMergeProcessor, driftProcessor } from '../../processors/drift/processor.js';
import { variableMetric } from '../../processors/drift/merge.js';
import { binOf } from '../../serving/registry/reference.js';
import { loadAvroSchema } from '../../schemas/catalog.js';
import type { DriftMetric, DriftPartial, Prediction } from '../../schemas/types.generated.js';
import { seededUniform } from '../shared/seeded.js';

const reference = {
  score: { edges: [0.2, 0.4, 0.6, 0.8], proportions: [0.2, 0.2, 0.2, 0.2, 0.2] },
  amount: { edges: [10, 100, 1000], proportions: [0.2, 0.4, 0.3, 0.1] },
  velocity: { edges: [1, 5], proportions: [0.5, 0.3, 0.2] },
};
const VARIABLES = Object.keys(reference).sort() as (keyof typeof reference)[];
const WINDOW = 20_000;
const LATENESS = 5_000;
const SKEW = 300_000;
const MIN_COUNT = 20;
const PARTITIONS = 3;
const T0 = 1_700_000_000_000;
/** Record timestamp of every prediction: a day after the events (so only far-future event times are skewed). */
const NOW = T0 + 86_400_000;
const TOPIC = 'predictions.fraud';

const partialType = avro.Type.forSchema(loadAvroSchema('drift_partial') as avro.Schema);
const metricType = avro.Type.forSchema(loadAvroSchema('drift_metric') as avro.Schema);

const rng = seededUniform;

function prediction(id: string, ts: number, score: number | null, features: Record<string, number | null>): Prediction {
  return { event_id: id, entity_id: id, model: 'fraud', version: '1', score, decision: 'allow', reasons: [], fallback: score === null, provider: 'cpu', event_ts: ts, features, source_topic: 'events.transactions', source_partition: 0, source_offset: 0, origin: 'stream', rules_version: 0, rules_fired: [], experiment: '', arm: '', latency_ms: 0 };
}

/**
 * Per-partition sequences: partitions advance at different speeds, event times jitter by up to 4 s
 * either way (some beyond the 5 s lateness), a few events come minutes late, a few have no score or a
 * missing input, and values are arbitrary doubles (their floating sums depend on addition order).
 */
function generate(seed: number, perPartition = 900): Prediction[][] {
  const r = rng(seed);
  return Array.from({ length: PARTITIONS }, (_, p) => {
    let t = T0 + p * 7_000;
    const out: Prediction[] = [];
    for (let i = 0; i < perPartition; i++) {
      t += Math.floor(r() * (1200 + p * 500));
      let ts = t + Math.floor((r() - 0.5) * 8000);
      if (r() < 0.02) ts = t - Math.floor(r() * 3 * WINDOW);
      const score = r() < 0.03 ? null : r() ** (1 + p * 0.5);
      const features: Record<string, number | null> = { amount: Math.exp(r() * 8) };
      if (r() > 0.03) features.velocity = r() * 8;
      else if (r() < 0.5) features.velocity = null;
      out.push(prediction(`p${p}-${i}`, ts, score, features));
    }
    return out;
  });
}

/**
 * Independent computation straight from the definition: per partition in order, a prediction is
 * refused when beyond the clock skew, late when its window ended at or before the partition's
 * watermark (newest accepted event time minus the lateness), accepted otherwise; a window is reported
 * once every partition's final watermark passed its end; its metrics are psi.ts over all partitions'
 * accepted predictions.
 */
function expected(parts: readonly Prediction[][], recordTs = NOW, options: { windowMs?: number; flush?: boolean } = {}): { metrics: DriftMetric[]; late: number[]; rejected: number } {
  const accepted: Prediction[] = [];
  const late: number[] = [];
  const watermarks: number[] = [];
  const lateByWindow = new Map<number, number>();
  let rejected = 0;
  for (const seq of parts) {
    let max = -Infinity;
    /** Where each late one is reported: the window holding the watermark when it arrived. */
    const lateIn: number[] = [];
    for (const p of seq) {
      if (p.event_ts > recordTs + SKEW) {
        rejected++;
        continue;
      }
      const end = Math.floor(p.event_ts / WINDOW) * WINDOW + WINDOW;
      if (end <= max - LATENESS) {
        lateIn.push(Math.floor((max - LATENESS) / WINDOW) * WINDOW);
        continue;
      }
      accepted.push(p);
      max = Math.max(max, p.event_ts);
    }
    // Reported once that window closes in the partition.
    late.push(lateIn.filter((start) => start + WINDOW <= max - LATENESS).length);
    for (const start of lateIn) lateByWindow.set(start, (lateByWindow.get(start) ?? 0) + 1);
    watermarks.push(max - LATENESS);
  }
  // Windows are `size` long and end at every pane end (WINDOW); with `flush` (every partition idle) the
  // merge closes every window ending at or before the last pane's end, whatever the watermarks.
  const through = options.flush ? Math.max(...accepted.map((p) => Math.floor(p.event_ts / WINDOW) * WINDOW + WINDOW)) : Math.min(...watermarks);
  const size = options.windowMs ?? WINDOW;
  const ends = new Set<number>();
  for (const p of accepted) {
    const pane = Math.floor(p.event_ts / WINDOW) * WINDOW;
    for (let e = pane + WINDOW; e <= pane + size; e += WINDOW) if (e <= through) ends.add(e);
  }
  const metrics: DriftMetric[] = [];
  for (const end of [...ends].sort((a, b) => a - b)) {
    const start = end - size;
    const inWindow = accepted.filter((p) => p.event_ts >= start && p.event_ts < end);
    let lateIn = 0;
    for (let pane = start; pane < end; pane += WINDOW) lateIn += lateByWindow.get(pane) ?? 0;
    for (const v of VARIABLES) {
      const raw = inWindow.map((p) => (v === 'score' ? p.score : p.features[v]));
      const values = raw.filter((x): x is number => typeof x === 'number');
      const bins = new Array<number>(reference[v].proportions.length).fill(0);
      for (const x of values) bins[binOf(reference[v].edges, x)]!++;
      const agg = { bins, sum: values.reduce((a, b) => a + b, 0), n: values.length, missing: raw.length - values.length, invalid: 0, out_of_range: 0, unseen: 0 };
      metrics.push(variableMetric({ model: 'fraud', version: '1', window_start: start, window_end: end, total: inWindow.length, late: lateIn }, v, agg, reference[v], MIN_COUNT));
    }
  }
  return { metrics, late, rejected };
}

/** Several instances of the same logic, a different one per batch (as after rebalances): none may keep state of its own. */
function instances(make: () => ProcessorLogic, n: number, pick: () => number): ProcessorLogic {
  const all = Array.from({ length: n }, make);
  return { name: all[0]!.name, process: (records: Observable<SourceRecord>, ctx: BatchContext): Observable<Output> => all[Math.floor(pick() * n)]!.process(records, ctx) };
}

const references = (version: string) => (version === '1' ? reference : null);
const sourceLogic = (partitions = PARTITIONS) => driftProcessor({ model: 'fraud', version: () => '1', references, paneMs: WINDOW, latenessMs: LATENESS, maxClockSkewMs: SKEW, partitions });
const mergeLogic = (partitions?: number, extra: { hopMs?: number; windowMs?: number; idleMs?: number; holdMs?: number } = {}) => driftMergeProcessor({ model: 'fraud', references, windowMs: WINDOW, minCount: MIN_COUNT, ...(partitions ? { partitions } : {}), ...extra });

interface Run {
  metrics: DriftMetric[];
  partials: DriftPartial[];
  source: TestDriver;
}

/**
 * Runs the two stages. Without `seed`: every partition in one batch, one after the other, then the
 * merge in one batch. With `seed`: random batch sizes, random interleaving of partitions, crashed
 * batches (re-delivered with other boundaries), partitions reassigned, three instances of each
 * logic, and the merge fed in random chunks as partials commit, with crashes of its own. Partials
 * travel Avro-encoded, as through Kafka.
 */
async function run(parts: readonly Prediction[][], seed?: number, mergeOptions: { windowMs?: number; hopMs?: number } = {}): Promise<Run> {
  const r = seed === undefined ? null : rng(seed);
  const source = await new TestDriver(r ? instances(sourceLogic, 3, r) : sourceLogic(), { startTime: NOW }).open();
  const merge = await new TestDriver(r ? instances(() => mergeLogic(undefined, mergeOptions), 2, r) : mergeLogic(undefined, mergeOptions), { startTime: NOW }).open();
  const queue: Buffer[] = [];
  let merged = 0;
  const committed = (outputs: Output[]) => {
    for (const o of outputs) if (o.kind === 'emit' && o.topic === 'drift.partials') queue.push(partialType.toBuffer(o.value));
  };
  const feedMerge = async (all: boolean) => {
    while (merged < queue.length) {
      const size = all || !r ? queue.length - merged : 1 + Math.floor(r() * 4);
      const chunk = queue.slice(merged, merged + size).map((b) => partialType.fromBuffer(b) as unknown);
      const crash = r !== null && r() < 0.2;
      await merge.pipe('drift.partials', crash ? chunk.slice(0, 1 + Math.floor(r!() * chunk.length)) : chunk, { commit: !crash });
      if (!crash) merged += chunk.length;
      if (!all && r && r() < 0.5) break;
    }
  };
  if (!r) {
    for (let p = 0; p < parts.length; p++) committed(await source.pipe(TOPIC, parts[p]!, { partition: p }));
    await feedMerge(true);
  } else {
    const pos = parts.map(() => 0);
    for (;;) {
      const open = parts.map((_, p) => p).filter((p) => pos[p]! < parts[p]!.length);
      if (!open.length) break;
      const p = open[Math.floor(r() * open.length)]!;
      const size = r() < 0.1 ? 200 : 1 + Math.floor(r() * 40);
      const batch = parts[p]!.slice(pos[p]!, pos[p]! + size);
      const crash = r() < 0.15;
      const outputs = await source.pipe(TOPIC, batch, { partition: p, commit: !crash });
      if (!crash) {
        pos[p]! += batch.length;
        committed(outputs);
      }
      if (r() < 0.1) await source.reassign(TOPIC, p);
      if (r() < 0.3) await feedMerge(false);
    }
    await feedMerge(true);
  }
  return { metrics: merge.emitted<DriftMetric>('drift.metrics'), partials: source.emitted<DriftPartial>('drift.partials'), source };
}

function latePerPartition(partials: readonly DriftPartial[]): number[] {
  const late = new Array<number>(PARTITIONS).fill(0);
  // Snapshots repeat a pane while it is open: its late count is final in the closing one.
  for (const x of partials) for (const w of x.windows) if (w.closed) late[x.source_partition]! += w.late;
  return late;
}

/** Exact on everything but the mean, which the test sums in another order (the fabric's own runs are compared byte for byte). */
function expectSameAsIndependent(actual: readonly DriftMetric[], wanted: readonly DriftMetric[]): void {
  expect(actual.map(({ mean: _, ...m }) => m)).toEqual(wanted.map(({ mean: _, ...m }) => m));
  actual.forEach((m, i) => (m.mean === null ? expect(wanted[i]!.mean).toBeNull() : expect(m.mean).toBeCloseTo(wanted[i]!.mean!, 5)));
}

describe('drift across partitions', () => {
  it('3 partitions, any batching, interleaving, crashes and instances: byte-identical metrics, equal to an independent computation', async () => {
    const parts = generate(7);
    const want = expected(parts);
    const one = await run(parts);
    expect(one.metrics.length).toBeGreaterThan(20 * VARIABLES.length);
    expectSameAsIndependent(one.metrics, want.metrics);
    expect(want.late.every((n) => n > 0)).toBe(true);
    expect(latePerPartition(one.partials)).toEqual(want.late);
    const reference = JSON.stringify(one.metrics);
    for (const seed of [1, 2, 3, 4, 5]) {
      const other = await run(parts, seed);
      expect(JSON.stringify(other.metrics), `seed ${seed}`).toBe(reference);
      expect(latePerPartition(other.partials), `seed ${seed}`).toEqual(want.late);
    }
  });

  it('partials and metrics are valid Avro of their schemas', async () => {
    const { metrics, partials } = await run(generate(11, 300), 9);
    expect(partials.length).toBeGreaterThan(0);
    for (const p of partials) expect(partialType.isValid(p), JSON.stringify(p)).toBe(true);
    for (const m of metrics) expect(metricType.isValid(m), JSON.stringify(m)).toBe(true);
  });

  it('a crash then re-delivery with other batch boundaries gives the same partials and metrics', async () => {
    const parts = generate(21, 400);
    const clean = await run(parts);
    const source = await new TestDriver(sourceLogic(), { startTime: NOW }).open();
    const merge = await new TestDriver(mergeLogic(), { startTime: NOW }).open();
    for (let p = 0; p < PARTITIONS; p++) {
      const seq = parts[p]!;
      // Crash after the processor ran over 0..250 (state saved), re-delivered as 0..99, 100..399.
      await source.pipe(TOPIC, seq.slice(0, 250), { partition: p, commit: false });
      for (const [a, b] of [[0, 100], [100, seq.length]] as const) {
        const outputs = await source.pipe(TOPIC, seq.slice(a, b), { partition: p });
        const partials = outputs.flatMap((o) => (o.kind === 'emit' ? [o.value] : []));
        // The merge crashes on its first try of every batch too.
        if (partials.length > 1) await merge.pipe('drift.partials', partials.slice(0, 1), { commit: false });
        if (partials.length) await merge.pipe('drift.partials', partials);
      }
    }
    expect(JSON.stringify(merge.emitted('drift.metrics'))).toBe(JSON.stringify(clean.metrics));
    // The closing snapshots (open ones follow the batch boundaries).
    const windows = (ps: DriftPartial[]) => ps.flatMap((x) => x.windows.filter((w) => w.closed).map((w) => ({ p: x.source_partition, ...w })));
    expect(windows(source.emitted<DriftPartial>('drift.partials'))).toEqual(windows(clean.partials));
  });

  it('a far-future event is dead-lettered and makes no window late', async () => {
    const parts = generate(31, 400).map((seq) => seq.filter((p) => p.event_ts > T0 - WINDOW && p.event_ts < T0 + 1_000_000_000_000)); // no injected late ones
    const clean = expected(parts);
    const withFuture = parts.map((seq) => [...seq]);
    // Microseconds sent as milliseconds, early in partition 1.
    withFuture[1]!.splice(10, 0, prediction('future', (T0 + 100_000) * 1000, 0.5, { amount: 50, velocity: 2 }));
    const want = expected(withFuture);
    expect(want.rejected).toBe(1);
    expect(want.metrics).toEqual(clean.metrics);
    for (const seed of [undefined, 41]) {
      const got = await run(withFuture, seed);
      expect(got.source.rejected().map((x) => [x.record.partition, (x.record.value as Prediction).event_id, x.error.code])).toEqual([[1, 'future', 'FABRIC_EVENT_TIME_SKEW']]);
      expectSameAsIndependent(got.metrics, clean.metrics);
      expect(latePerPartition(got.partials)).toEqual(clean.late);
      // No partial's watermark ever jumped to the far future.
      expect(Math.max(...got.partials.map((x) => x.watermark))).toBeLessThan(NOW);
    }
  });

  it('late events are counted per partition, in the partition\'s oldest open window, whatever the batching', async () => {
    const w = (k: number, ms = 0) => T0 - (T0 % WINDOW) + k * WINDOW + ms;
    const seq = [
      prediction('a', w(0, 1000), 0.1, { amount: 5 }),
      prediction('b', w(2, WINDOW / 2), 0.1, { amount: 5 }), // watermark 2W + W/2 - 5s: windows 0 and 1 closed
      prediction('c', w(0, 2000), 0.1, { amount: 5 }), // late: counted in window 2
      prediction('d', w(1, WINDOW - 1000), 0.1, { amount: 5 }), // late too
      prediction('e', w(2, 1000), 0.1, { amount: 5 }), // on time
      prediction('f', w(4, 10_000), 0.1, { amount: 5 }), // watermark 4W + 5s: window 2 closes
    ];
    const results: string[] = [];
    for (const cuts of [[6], [1, 1, 1, 1, 1, 1], [2, 4], [3, 3]]) {
      const source = await new TestDriver(sourceLogic(), { startTime: NOW }).open();
      let at = 0;
      for (const n of cuts) {
        await source.pipe(TOPIC, seq.slice(at, at + n), { partition: 2 });
        at += n;
      }
      const windows = source.emitted<DriftPartial>('drift.partials').flatMap((x) => x.windows.filter((win) => win.closed).map((win) => [win.window_start - w(0), win.count, win.late]));
      expect(windows).toEqual([[0, 1, 0], [2 * WINDOW, 2, 2]]);
      results.push(JSON.stringify(windows));
    }
    expect(new Set(results).size).toBe(1);
  });

  it('the merge closes a window only when every partition\'s watermark has passed it', async () => {
    const source = await new TestDriver(sourceLogic(), { startTime: NOW }).open();
    const merge = await new TestDriver(mergeLogic(), { startTime: NOW }).open();
    const w = (k: number, ms = 0) => T0 - (T0 % WINDOW) + k * WINDOW + ms;
    const step = async (partition: number, values: Prediction[]) => {
      const partials = (await source.pipe(TOPIC, values, { partition })).flatMap((o) => (o.kind === 'emit' ? [o.value] : []));
      if (partials.length) await merge.pipe('drift.partials', partials);
      return merge.emitted<DriftMetric>('drift.metrics').filter((m) => m.variable === 'score');
    };
    expect(await step(0, [prediction('a', w(0, 1000), 0.1, {}), prediction('b', w(0, 2000), 0.3, {})])).toEqual([]);
    expect(await step(1, [prediction('c', w(0, 1000), 0.5, {})])).toEqual([]);
    expect(await step(0, [prediction('d', w(3), 0.1, {})])).toEqual([]); // partition 0 passed window 0
    expect(await step(1, [prediction('e', w(1, 10_000), 0.1, {})])).toEqual([]); // and partition 1
    // Partition 2 never had an event in window 0; its first watermark beyond it closes the window.
    const closed = await step(2, [prediction('f', w(1, 6000), 0.9, {})]);
    expect(closed.map((m) => [m.window_start - w(0), m.count, m.mean])).toEqual([[0, 3, 0.3]]);
    // Window 1 has events of partitions 1 and 2; partition 2 is behind: it stays open (no idle timeout).
    expect(await step(0, [prediction('g', w(9), 0.1, {})])).toHaveLength(1);
    expect(await step(1, [prediction('h', w(9), 0.1, {})])).toHaveLength(1);
    const later = await step(2, [prediction('i', w(4, 5000), 0.1, {})]);
    expect(later.map((m) => [m.window_start - w(0), m.count])).toEqual([[0, 3], [WINDOW, 2], [3 * WINDOW, 1]]);
  });

  it('the merge keeps one partial per (partition, window): a duplicate changes nothing', async () => {
    const parts = generate(51, 300);
    const clean = await run(parts);
    const merge = await new TestDriver(mergeLogic(PARTITIONS), { startTime: NOW }).open();
    for (const partial of clean.partials) {
      await merge.pipe('drift.partials', [partial, partial]);
      await merge.pipe('drift.partials', [partial]);
    }
    expect(JSON.stringify(merge.emitted('drift.metrics'))).toBe(JSON.stringify(clean.metrics));
  });

  it('the merge dead-letters a partial that does not fit the reference', async () => {
    const merge = await new TestDriver(mergeLogic(1), { startTime: NOW }).open();
    const bad: DriftPartial = {
      model: 'fraud', version: '1', source_topic: TOPIC, source_partition: 0, partitions: 1, watermark: WINDOW, kind: 'partial',
      windows: [{ window_start: 0, window_end: WINDOW, count: 1, late: 0, closed: true, versions: { '1': { count: 1, variables: { score: { bins: [1, 0], sum: 0.1, n: 1, missing: 0, invalid: 0, out_of_range: 0, unseen: 0 } } } } }],
    };
    await merge.pipe('drift.partials', [bad, { ...bad, model: 'recs' }]);
    expect(merge.rejected().map((x) => [x.record.offset, x.error.code])).toEqual([['0', 'FABRIC_RECORD_REJECTED']]);
    expect(merge.emitted('drift.metrics')).toEqual([]);
  });
});

describe('drift windows: hopping, idle partitions, versions, data quality', () => {
  const partial = (o: Output) => (o.kind === 'emit' && o.topic === 'drift.partials' ? [o.value] : []);

  it('hopping windows (3 panes, a window ends every pane) equal an independent computation under any batching and crashes', async () => {
    const parts = generate(61, 500);
    const want = expected(parts, NOW, { windowMs: 3 * WINDOW });
    const clean = await run(parts, undefined, { windowMs: 3 * WINDOW, hopMs: WINDOW });
    expect(clean.metrics.length).toBeGreaterThan(10 * VARIABLES.length);
    // Consecutive windows overlap: a window's count is the sum of its three panes'.
    expectSameAsIndependent(clean.metrics, want.metrics);
    for (const seed of [3, 8]) expect(JSON.stringify((await run(parts, seed, { windowMs: 3 * WINDOW, hopMs: WINDOW })).metrics)).toBe(JSON.stringify(clean.metrics));
  });

  it('windows close when traffic stops: once every partition is idle, a tick fires every window whose panes ended (early results, open panes included); a later snapshot fires it again, and the final results follow the watermarks', async () => {
    const parts = generate(71, 200);
    const source = await new TestDriver(sourceLogic(), { startTime: NOW }).open();
    const merge = await new TestDriver(mergeLogic(PARTITIONS, { idleMs: 60_000 }), { startTime: NOW }).open();
    for (let p = 0; p < PARTITIONS; p++) await merge.pipe('drift.partials', (await source.pipe(TOPIC, parts[p]!, { partition: p })).flatMap(partial), { timestamp: NOW + p });
    const before = merge.emitted<DriftMetric>('drift.metrics').length;
    expect(merge.emitted<DriftMetric>('drift.metrics').every((m) => m.final)).toBe(true);
    const tick: DriftPartial = { model: '', version: '', source_topic: '', source_partition: 0, partitions: 0, watermark: 0, kind: 'tick', windows: [] };
    // Not idle yet: a tick changes nothing.
    await merge.pipe('drift.partials', [tick], { timestamp: NOW + 30_000 });
    expect(merge.emitted('drift.metrics')).toHaveLength(before);
    await merge.pipe('drift.partials', [tick], { timestamp: NOW + 60_003 });
    const all = merge.emitted<DriftMetric>('drift.metrics');
    expect(all.length).toBeGreaterThan(before);
    // Every accepted prediction is in a window now, the last (partly filled) ones too, as early results.
    const flushed = expected(parts, NOW, { flush: true }).metrics;
    expectSameAsIndependent(all, flushed.map((m, i) => (i < before ? m : { ...m, final: false })));
    // More ticks while nothing arrives fire nothing again.
    await merge.pipe('drift.partials', [tick, tick], { timestamp: NOW + 65_000 });
    expect(merge.emitted('drift.metrics')).toHaveLength(all.length);

    // Partition 0 wakes up with a prediction in its newest pane (accepted: that pane is still open in the
    // partition): the window holding it fired early, so it fires again with it (still early), alone.
    const newest = Math.max(...parts[0]!.map((p) => p.event_ts));
    const extra = prediction('extra', newest, 0.5, { amount: 50, velocity: 1 });
    await merge.pipe('drift.partials', (await source.pipe(TOPIC, [extra], { partition: 0 })).flatMap(partial), { timestamp: NOW + 70_000 });
    await merge.pipe('drift.partials', [tick], { timestamp: NOW + 130_001 });
    const again = merge.emitted<DriftMetric>('drift.metrics').slice(all.length);
    const pane = newest - (newest % WINDOW);
    expect(again.map((m) => [m.window_start, m.variable, m.final])).toEqual(VARIABLES.map((v) => [pane, v, false]));
    const score = (ms: readonly DriftMetric[]) => ms.filter((m) => m.variable === 'score' && m.window_start === pane).at(-1)!;
    expect(score(again).total).toBe(score(all).total + 1);

    // Traffic resumes on every partition, well past those windows: their final results equal the
    // independent computation over everything that arrived (the extra prediction included).
    const resumed = parts.map((seq, p) => [...seq, ...(p === 0 ? [extra] : []), prediction(`resume-${p}`, newest + 5 * WINDOW, 0.5, { amount: 50, velocity: 1 })]);
    for (let p = 0; p < PARTITIONS; p++) await merge.pipe('drift.partials', (await source.pipe(TOPIC, [resumed[p]!.at(-1)!], { partition: p })).flatMap(partial), { timestamp: NOW + 130_002 + p });
    const finals = merge.emitted<DriftMetric>('drift.metrics').filter((m) => m.final);
    expectSameAsIndependent(finals, expected(resumed, NOW).metrics);
    // The latest result of every window is its final one.
    const latest = new Map<string, DriftMetric>();
    for (const m of merge.emitted<DriftMetric>('drift.metrics')) latest.set(`${m.window_end}/${m.variable}`, m);
    expect([...latest.values()].filter((m) => m.window_end <= pane + WINDOW).every((m) => m.final)).toBe(true);
  });

  it('an idle partition stops holding windows back while the others advance (early results); its return brings the final ones', async () => {
    const w = (k: number, ms = 0) => T0 - (T0 % WINDOW) + k * WINDOW + ms;
    const source = await new TestDriver(sourceLogic(2), { startTime: NOW }).open();
    const merge = await new TestDriver(mergeLogic(2, { idleMs: 60_000 }), { startTime: NOW }).open();
    const step = async (partition: number, values: Prediction[], at: number) => {
      await merge.pipe('drift.partials', (await source.pipe(TOPIC, values, { partition })).flatMap(partial), { timestamp: at });
      return merge.emitted<DriftMetric>('drift.metrics').filter((m) => m.variable === 'score').map((m) => [m.window_start - w(0), m.count, m.final]);
    };
    expect(await step(0, [prediction('a', w(0, 1000), 0.1, {})], NOW)).toEqual([]);
    expect(await step(1, [prediction('b', w(0, 2000), 0.3, {})], NOW)).toEqual([]);
    expect(await step(0, [prediction('c', w(2), 0.1, {})], NOW + 10_000)).toEqual([]); // partition 1 still holds window 0
    // A minute later partition 1 has sent nothing: it is idle, partition 0 alone fires windows, early.
    const early = [[0, 2, false], [2 * WINDOW, 1, false]];
    expect(await step(0, [prediction('d', w(3, 6000), 0.1, {})], NOW + 70_001)).toEqual(early);
    // Partition 1 comes back past them: the same windows, now final.
    expect(await step(1, [prediction('e', w(3, 7000), 0.3, {})], NOW + 80_000)).toEqual([...early, [0, 2, true], [2 * WINDOW, 1, true]]);
  });

  it('a partition that never sends holds final results back by at most holdMs of event time (bounded state)', async () => {
    const w = (k: number, ms = 0) => T0 - (T0 % WINDOW) + k * WINDOW + ms;
    const source = await new TestDriver(sourceLogic(2), { startTime: NOW }).open();
    const merge = await new TestDriver(mergeLogic(2, { idleMs: 60_000, holdMs: 3 * WINDOW }), { startTime: NOW }).open();
    for (let k = 0; k < 8; k++) await merge.pipe('drift.partials', (await source.pipe(TOPIC, [prediction(`k${k}`, w(k, 6000), 0.1, {})], { partition: 0 })).flatMap(partial), { timestamp: k === 0 ? NOW : NOW + 61_000 + k });
    const scores = merge.emitted<DriftMetric>('drift.metrics').filter((m) => m.variable === 'score');
    // Partition 0's watermark is w(7, 1000): windows 0..6 fired early; those ending 3 windows before it are final.
    expect(scores.filter((m) => !m.final).map((m) => (m.window_start - w(0)) / WINDOW)).toEqual([0, 1, 2, 3, 4, 5, 6]);
    expect(scores.filter((m) => m.final).map((m) => (m.window_start - w(0)) / WINDOW)).toEqual([0, 1, 2, 3]);
  });

  it('measures each model version against its own profile; a version without one is reported no_reference, not skipped', async () => {
    const source = await new TestDriver(driftProcessor({ model: 'fraud', version: () => '1', references, paneMs: WINDOW, latenessMs: LATENESS, partitions: 1 }), { startTime: NOW }).open();
    const merge = await new TestDriver(mergeLogic(1), { startTime: NOW }).open();
    const values = Array.from({ length: 60 }, (_, i) => ({ ...prediction(`v${i}`, T0 + i * 10, 0.1 + (i % 5) * 0.2, { amount: 50, velocity: 2, fresh: i }), version: i % 3 === 0 ? '2' : '1' }));
    await merge.pipe('drift.partials', (await source.pipe(TOPIC, [...values, prediction('end', T0 + 10 * WINDOW, 0.1, {})], { partition: 0 })).flatMap(partial));
    const got = merge.emitted<DriftMetric>('drift.metrics').filter((m) => m.window_start === T0 - (T0 % WINDOW));
    expect(got.map((m) => `${m.version}/${m.variable}/${m.status}/${m.count}`)).toEqual([
      // Every amount is 50 and every velocity 2 (one bin each): drift against version 1's profile.
      '1/amount/drift/40', '1/fresh/no_reference/40', '1/score/ok/40', '1/velocity/drift/40',
      '2/amount/no_reference/20', '2/fresh/no_reference/20', '2/score/no_reference/20', '2/velocity/no_reference/20',
    ]);
    // Version 1's score: 40 values, 8 in each fifth of [0, 1]: exactly the reference.
    expect(got.find((m) => m.version === '1' && m.variable === 'score')!.psi).toBeCloseTo(0, 12);
    expect(got.find((m) => m.version === '2' && m.variable === 'fresh')).toMatchObject({ kind: 'none', psi: 0, js: null, mean: 28.5, total: 20 });
  });

  it('NaN, infinite, null and out-of-range values are data-quality findings, never crashes', async () => {
    const ranged = { amount: { kind: 'numeric' as const, edges: [10, 100], proportions: [0.3, 0.4, 0.3], centers: [5, 50, 500], min: 1, max: 1000 } };
    const source = await new TestDriver(driftProcessor({ model: 'fraud', version: () => '1', references: () => ranged, paneMs: WINDOW, latenessMs: 0, partitions: 1 }), { startTime: NOW }).open();
    const merge = await new TestDriver(driftMergeProcessor({ model: 'fraud', references: () => ranged, windowMs: WINDOW, minCount: 1 }), { startTime: NOW }).open();
    const amounts = [5, 50, 500, Number.NaN, Number.POSITIVE_INFINITY, null, 0.5, 5000, 50];
    const values = amounts.map((a, i) => prediction(`q${i}`, T0 + i, 0.5, a === undefined ? {} : { amount: a }));
    await merge.pipe('drift.partials', (await source.pipe(TOPIC, [...values, prediction('end', T0 + 3 * WINDOW, 0.5, {})], { partition: 0 })).flatMap(partial));
    const amount = merge.emitted<DriftMetric>('drift.metrics').find((m) => m.variable === 'amount' && m.window_start === T0 - (T0 % WINDOW))!;
    expect(amount).toMatchObject({ count: 6, total: 9, invalid: 2, kind: 'numeric' });
    expect(amount.missing_rate).toBeCloseTo(1 / 9, 12);
    expect(amount.out_of_range_rate).toBeCloseTo(2 / 6, 12);
    expect(source.rejected()).toEqual([]);
  });
});

