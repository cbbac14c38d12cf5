import { randomBytes } from 'node:crypto';
import { afterAll, describe, expect, it } from 'vitest';
import { Redis } from 'ioredis';
import { loadConfig } from '../../topology/config.js';
import { FrequencyCaps, type CapRequest } from '../../serving/rules/caps.js';
import { seededUniform } from '../shared/seeded.js';

/** Frequency caps against the real Redis: exact under concurrency, idempotent under retries, order-independent. */
const url = loadConfig().redisUrl;
const admin = new Redis(url);
const prefix = `it-caps-${randomBytes(4).toString('hex')}:`;
afterAll(async () => {
  const keys = await admin.keys(`${prefix}*`);
  if (keys.length) await admin.del(...keys);
  admin.disconnect();
});

const DAY = 86_400_000;
const cap24h = [{ name: 'no-repeat', windowMs: DAY, max: 1 }];

function request(user: string, event: string, ts: number, candidates: string[], k = 3, groups?: string[], maxPerGroup = 0): CapRequest {
  return { model: 'recs', entity: user, member: event, ts, caps: cap24h, candidates, k, maxPerGroup, ...(groups ? { groups } : {}) };
}

describe('frequency caps in Redis', () => {
  it('never admits one item twice to one user within the window, whatever the arrival order of event times', async () => {
    const caps = new FrequencyCaps(admin, prefix);
    const rng = seededUniform(42);
    const items = ['i1', 'i2', 'i3', 'i4', 'i5', 'i6'];
    // 400 events of one user over 10 days of event time; arrival order is not event-time order: each
    // event may come up to 50 minutes late (within the cap's grace, one hour by default).
    const events = Array.from({ length: 400 }, (_, i) => ({ id: `e${i}`, ts: 1_700_000_000_000 + Math.floor((i / 400) * 10 * DAY) - Math.floor(rng() * 50 * 60_000), candidates: [...items].sort(() => rng() - 0.5) }));
    const answers = await caps.settle(events.map((e) => request('u-order', e.id, e.ts, e.candidates, 3)));
    const shown = answers.flatMap((picked, n) => picked.map((i) => ({ item: events[n]!.candidates[i]!, ts: events[n]!.ts })));
    expect(answers.every((a) => a.length <= 3)).toBe(true);
    for (const item of items) {
      const times = shown.filter((s) => s.item === item).map((s) => s.ts).sort((a, b) => a - b);
      for (let i = 1; i < times.length; i++) expect(times[i]! - times[i - 1]!).toBeGreaterThanOrEqual(DAY);
      // Greedy: over 10 days an item comes back about daily, never less than every other day.
      expect(times.length).toBeGreaterThanOrEqual(5);
    }
  });

  it('is exact when instances race: 40 concurrent requests from 4 connections for one user and item admit exactly one', async () => {
    const clients = Array.from({ length: 4 }, () => new Redis(url));
    try {
      const capsOf = clients.map((c) => new FrequencyCaps(c, prefix));
      const ts = 1_800_000_000_000;
      const results = await Promise.all(Array.from({ length: 40 }, (_, i) => capsOf[i % 4]!.settleOne(request('u-race', `r${i}`, ts + i * 1000, ['hot'], 1))));
      expect(results.filter((r) => r.length === 1)).toHaveLength(1);
    } finally {
      for (const c of clients) c.disconnect();
    }
  });

  it('gives a retried request (same event) its first answer, and counts an event once whichever path decides it', async () => {
    const caps = new FrequencyCaps(admin, prefix);
    const ts = 1_900_000_000_000;
    const first = await caps.settleOne(request('u-retry', 'e1', ts, ['a', 'b', 'c', 'd'], 2));
    expect(first).toEqual([0, 1]);
    // The same event again (a retried batch, or POST /v1/predict then the stream): same items, nothing counted twice.
    expect(await caps.settleOne(request('u-retry', 'e1', ts, ['a', 'b', 'c', 'd'], 2))).toEqual([0, 1]);
    // Another path ranking differently gets the same items, mapped onto its own candidate order.
    expect(await caps.settleOne(request('u-retry', 'e1', ts, ['d', 'b', 'a'], 2))).toEqual([1, 2]);
    expect((await caps.counted(request('u-retry', 'e1', ts, []), 'no-repeat', 'a')).map((c) => c.member)).toEqual(['e1']);
    // The next event an hour later: a and b were shown, so c and d.
    expect(await caps.settleOne(request('u-retry', 'e2', ts + 3_600_000, ['a', 'b', 'c', 'd'], 2))).toEqual([2, 3]);
    // Past the memo (deleted here), an event's own earlier records do not count against it: a replay is exact.
    const memo = caps.keys(request('u-retry', 'e2', ts + 3_600_000, ['a'], 2))[0]!;
    expect(await admin.del(memo)).toBe(1);
    expect(await caps.settleOne(request('u-retry', 'e2', ts + 3_600_000, ['a', 'b', 'c', 'd'], 2))).toEqual([2, 3]);
  });

  it('takes the top k under the diversity quota and the cap in one walk', async () => {
    const caps = new FrequencyCaps(admin, prefix);
    const ts = 2_000_000_000_000;
    // x1 was shown an hour ago; a category holds at most 2.
    await caps.settleOne(request('u-div', 'p0', ts - 3_600_000, ['x1'], 1));
    const picked = await caps.settleOne(request('u-div', 'p1', ts, ['x1', 'x2', 'x3', 'x4', 'y1', 'y2', 'y3'], 4, ['x', 'x', 'x', 'x', 'y', 'y', 'y'], 2));
    expect(picked).toEqual([1, 2, 4, 5]);
  });

  it('caps a count per window (at most 3 reviews per account per hour)', async () => {
    const caps = new FrequencyCaps(admin, prefix);
    const review = [{ name: 'review-cap', windowMs: 3_600_000, max: 3 }];
    const t0 = 2_100_000_000_000;
    const at = (i: number, minutes: number) => caps.settleOne({ model: 'fraud', entity: 'C1', member: `t${i}`, ts: t0 + minutes * 60_000, caps: review, candidates: ['review'], k: 1, maxPerGroup: 0 });
    const admitted: boolean[] = [];
    for (const [i, m] of [0, 10, 20, 30, 59, 61, 75, 130].entries()) admitted.push((await at(i, m)).length === 1);
    // Independent count: admitted iff fewer than 3 admitted times lie within (t - 60, t + 60).
    const times = [0, 10, 20, 30, 59, 61, 75, 130];
    const expected: boolean[] = [];
    const kept: number[] = [];
    for (const t of times) {
      const ok = kept.filter((k) => k > t - 60 && k < t + 60).length < 3;
      expected.push(ok);
      if (ok) kept.push(t);
    }
    expect(admitted).toEqual(expected);
    // 30 and 59 find 0, 10 and 20 within the hour; 61 finds only 10 and 20.
    expect(expected).toEqual([true, true, true, false, false, true, true, true]);
  });
});
