import { describe, expect, it } from 'vitest';
import { TestDriver } from '../../topology/runtime/test-driver.js';
import { driftProcessor, type StateStore } from '../../processors/drift/processor.js';
import { binOf, psi } from '../../processors/drift/psi.js';
import type { DriftMetric, Prediction } from '../../schemas/types.generated.js';

const reference = {
  score: { edges: [0.25, 0.5, 0.75], proportions: [0.25, 0.25, 0.25, 0.25] },
  amount: { edges: [10, 100], proportions: [0.3, 0.4, 0.3] },
};
const WINDOW = 60_000;

function prediction(i: number, ts: number, score: number, amount: number): Prediction {
  return { event_id: `e${i}`, entity_id: 'a', model: 'fraud', version: '1', score, decision: 'allow', reasons: [], fallback: false, provider: 'cpu', event_ts: ts, features: { amount }, source_topic: 'events.transactions', source_partition: 0, source_offset: i };
}

function memoryStore(): StateStore & { value: string | null } {
  const store = {
    value: null as string | null,
    load: async () => store.value,
    save: async (s: string) => {
      store.value = s;
    },
  };
  return store;
}

function matching(start: number, n: number, offset = 0): Prediction[] {
  // Spread evenly over the reference bins: PSI ~ 0.
  return Array.from({ length: n }, (_, i) => prediction(offset + i, start + (i % 50) * 1000, (i % 4) * 0.25 + 0.1, [5, 50, 50, 500][i % 4]!));
}

describe('PSI', () => {
  it('bins values by inner edges', () => {
    expect([binOf([1, 2], 0.5), binOf([1, 2], 1), binOf([1, 2], 1.5), binOf([1, 2], 5)]).toEqual([0, 1, 1, 2]);
  });
  it('is zero for the reference distribution and grows with the shift', () => {
    expect(psi(reference.score, [25, 25, 25, 25])).toBe(0);
    expect(psi(reference.score, [10, 20, 30, 40])).toBeGreaterThan(0.05);
    expect(psi(reference.score, [0, 0, 0, 100])).toBeGreaterThan(1);
  });
});

describe('drift processor', () => {
  const options = (store: StateStore) => ({ model: 'fraud', version: '1', reference, windowMs: WINDOW, latenessMs: 5000, minCount: 10, store });

  it('emits one metric per variable when the watermark passes the window end', async () => {
    const driver = await new TestDriver(driftProcessor(options(memoryStore()))).open();
    await driver.pipe('predictions.fraud', matching(0, 100));
    expect(driver.emitted('drift.metrics')).toHaveLength(0);
    await driver.pipe('predictions.fraud', [prediction(1000, WINDOW + 5000, 0.1, 5)]);
    const metrics = driver.emitted<DriftMetric>('drift.metrics');
    expect(metrics.map((m) => m.variable)).toEqual(['amount', 'score']);
    expect(metrics[1]).toMatchObject({ window_start: 0, window_end: WINDOW, count: 100, status: 'ok' });
    expect(metrics[1]!.psi).toBeLessThan(0.01);
  });

  it('flags a shifted window as drift', async () => {
    const driver = await new TestDriver(driftProcessor(options(memoryStore()))).open();
    await driver.pipe('predictions.fraud', Array.from({ length: 100 }, (_, i) => prediction(i, i * 100, 0.95, 5000)));
    await driver.pipe('predictions.fraud', [prediction(1000, WINDOW + 5000, 0.1, 5)]);
    expect(driver.emitted<DriftMetric>('drift.metrics').map((m) => m.status)).toEqual(['drift', 'drift']);
  });

  it('resumes from its snapshot and skips records it already folded in (restart without double counting)', async () => {
    const store = memoryStore();
    const first = await new TestDriver(driftProcessor(options(store))).open();
    const events = matching(0, 60);
    await first.pipe('predictions.fraud', events.slice(0, 40));
    // Restart: the runtime replays from the committed offset, which may be before the snapshot.
    const second = await new TestDriver(driftProcessor(options(store))).open();
    await second.pipe('predictions.fraud', events); // offsets 0..59, 0..39 already folded
    await second.pipe('predictions.fraud', [prediction(1000, WINDOW + 5000, 0.1, 5)]);
    const score = second.emitted<DriftMetric>('drift.metrics').find((m) => m.variable === 'score');
    expect(score?.count).toBe(60);
  });

  it('counts late events as late instead of reopening closed windows', async () => {
    const driver = await new TestDriver(driftProcessor(options(memoryStore()))).open();
    await driver.pipe('predictions.fraud', [prediction(0, 1000, 0.1, 5), prediction(1, 3 * WINDOW, 0.1, 5), prediction(2, 2000, 0.1, 5)]);
    const windows = driver.emitted<DriftMetric>('drift.metrics').filter((m) => m.variable === 'score');
    expect(windows).toHaveLength(1);
    expect(windows[0]!.count).toBe(1);
  });
});
