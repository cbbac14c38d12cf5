import { describe, expect, it } from 'vitest';
import { TestDriver, type PipeOptions } from '../../topology/runtime/test-driver.js';
import { driftMergeProcessor, driftProcessor } from '../../processors/drift/processor.js';
import { psi } from '../../processors/drift/metrics.js';
import { binOf } from '../../serving/registry/reference.js';
import type { DriftMetric, DriftPartial, Prediction } from '../../schemas/types.generated.js';

const reference = {
  score: { edges: [0.25, 0.5, 0.75], proportions: [0.25, 0.25, 0.25, 0.25] },
  amount: { edges: [10, 100], proportions: [0.3, 0.4, 0.3] },
};
const WINDOW = 60_000;

function prediction(i: number, ts: number, score: number, amount: number): Prediction {
  return { event_id: `e${i}`, entity_id: 'a', model: 'fraud', version: '1', score, decision: 'allow', reasons: [], fallback: false, provider: 'cpu', event_ts: ts, features: { amount }, source_topic: 'events.transactions', source_partition: 0, source_offset: i, origin: 'stream', rules_version: 0, rules_fired: [], experiment: '', arm: '', latency_ms: 0 };
}

function matching(start: number, n: number, offset = 0): Prediction[] {
  // Spread evenly over the reference bins: PSI ~ 0.
  return Array.from({ length: n }, (_, i) => prediction(offset + i, start + (i % 50) * 1000, (i % 4) * 0.25 + 0.1, [5, 50, 50, 500][i % 4]!));
}

/** One input partition: the per-partition processor, its partials piped into the merge as they commit. */
async function pipeline() {
  const source = await new TestDriver(driftProcessor({ model: 'fraud', version: () => '1', references: () => reference, paneMs: WINDOW, latenessMs: 5000, partitions: 1 })).open();
  const merge = await new TestDriver(driftMergeProcessor({ model: 'fraud', references: () => reference, windowMs: WINDOW, minCount: 10 })).open();
  return {
    source,
    merge,
    async pipe(values: readonly Prediction[], options: PipeOptions = {}): Promise<void> {
      const outputs = await source.pipe('predictions.fraud', values, options);
      if (options.commit === false) return;
      const partials = outputs.flatMap((o) => (o.kind === 'emit' && o.topic === 'drift.partials' ? [o.value] : []));
      if (partials.length) await merge.pipe('drift.partials', partials);
    },
    metrics: () => merge.emitted<DriftMetric>('drift.metrics'),
    partials: () => source.emitted<DriftPartial>('drift.partials'),
  };
}

describe('PSI', () => {
  it('bins values by inner edges, right-closed', () => {
    expect([binOf([1, 2], 0.5), binOf([1, 2], 1), binOf([1, 2], 1.5), binOf([1, 2], 5)]).toEqual([0, 0, 1, 2]);
  });
  it('is zero for the reference distribution and grows with the shift', () => {
    expect(psi(reference.score.proportions, [25, 25, 25, 25])).toBe(0);
    expect(psi(reference.score.proportions, [10, 20, 30, 40])).toBeGreaterThan(0.05);
    expect(psi(reference.score.proportions, [0, 0, 0, 100])).toBeGreaterThan(1);
  });
});

describe('drift processor (one partition)', () => {
  it('emits one metric per variable when the watermark passes the window end', async () => {
    const p = await pipeline();
    await p.pipe(matching(0, 100));
    expect(p.metrics()).toHaveLength(0);
    await p.pipe([prediction(1000, WINDOW + 5000, 0.1, 5)]);
    const metrics = p.metrics();
    expect(metrics.map((m) => m.variable)).toEqual(['amount', 'score']);
    expect(metrics[1]).toMatchObject({ window_start: 0, window_end: WINDOW, count: 100, status: 'ok' });
    expect(metrics[1]!.psi).toBeLessThan(0.01);
    expect(metrics[0]!.mean).toBe(151.25);
  });

  it('flags a shifted window as drift', async () => {
    const p = await pipeline();
    await p.pipe(Array.from({ length: 100 }, (_, i) => prediction(i, i * 100, 0.95, 5000)));
    await p.pipe([prediction(1000, WINDOW + 5000, 0.1, 5)]);
    expect(p.metrics().map((m) => m.status)).toEqual(['drift', 'drift']);
  });

  it('a crashed batch is re-delivered from the state of its first offset: no double counting, no loss', async () => {
    const p = await pipeline();
    const events = [...matching(0, 60), prediction(1000, WINDOW + 5000, 0.1, 5)];
    await p.pipe(events.slice(0, 40));
    // The next batch runs (its state is saved) but its transaction aborts, partial and all.
    await p.pipe(events.slice(40), { commit: false });
    expect(p.metrics()).toHaveLength(0);
    // Re-delivered from offset 40 with other batch boundaries.
    await p.source.reassign('predictions.fraud', 0);
    await p.pipe(events.slice(40, 45));
    await p.pipe(events.slice(45));
    const score = p.metrics().find((m) => m.variable === 'score');
    expect(score?.count).toBe(60);
  });

  it('counts late events as late instead of reopening closed windows', async () => {
    const p = await pipeline();
    await p.pipe([prediction(0, 1000, 0.1, 5), prediction(1, 3 * WINDOW, 0.1, 5), prediction(2, 2000, 0.1, 5)]);
    await p.pipe([prediction(3, 4 * WINDOW + 5000, 0.1, 5)]);
    const windows = p.metrics().filter((m) => m.variable === 'score');
    expect(windows.map((w) => [w.window_start, w.count])).toEqual([[0, 1], [3 * WINDOW, 1]]);
    // The late one was counted in the partition's oldest open window when it arrived: [2W, 3W).
    expect(p.partials().flatMap((x) => x.windows).filter((w) => w.late > 0 && w.closed)).toMatchObject([{ window_start: 2 * WINDOW, count: 0, late: 1 }]);
  });

  it('ignores predictions of other models and dead-letters those without an event time', async () => {
    const p = await pipeline();
    const other = { ...prediction(0, 1000, 0.9, 5), model: 'recs' };
    const broken = { ...prediction(1, 1000, 0.9, 5), event_ts: Number.NaN };
    await p.pipe([other, broken, prediction(2, 1000, 0.1, 5), prediction(3, WINDOW + 5000, 0.1, 5)]);
    expect(p.source.rejected().map((r) => [r.record.offset, r.error.code])).toEqual([['1', 'FABRIC_RECORD_REJECTED']]);
    expect(p.metrics().find((m) => m.variable === 'score')).toMatchObject({ window_start: 0, count: 1 });
  });
});
