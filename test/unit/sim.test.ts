import { createServer, type IncomingMessage } from 'node:http';
import type { AddressInfo } from 'node:net';
import { describe, expect, it } from 'vitest';
import { Rng } from '../../sim/rng.js';
import { generateInteractions, itemCatalog } from '../../sim/interactions.js';
import { ACCOUNT_RATE_PER_SEC, accountsFor, generateTransactions, outcomeFor, type SimulatedTransaction } from '../../sim/transactions.js';
import { runSimulation } from '../../sim/run.js';
import type { Outcome, Transaction } from '../../schemas/types.generated.js';

const START = Date.UTC(2024, 0, 1);

/** 2/s over the template population (2000 accounts, each five times the training pace): rings and bursts show in 20,000 events. */
function sim(opts: Partial<Parameters<typeof generateTransactions>[0]> = {}): SimulatedTransaction[] {
  return [...generateTransactions({ seed: 7, startTs: START, ratePerSec: 2, count: 20_000, accounts: 2000, ...opts })];
}

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)] as number;
};
const share = <T>(xs: T[], pred: (x: T) => boolean): number => xs.filter(pred).length / xs.length;
const isMule = (id: string): boolean => id.startsWith('C9');

describe('rng', () => {
  it('is deterministic per seed and stays in range', () => {
    const a = new Rng(123);
    const b = new Rng(123);
    const c = new Rng(124);
    const xa = Array.from({ length: 100 }, () => a.uniform());
    expect(Array.from({ length: 100 }, () => b.uniform())).toEqual(xa);
    expect(Array.from({ length: 100 }, () => c.uniform())).not.toEqual(xa);
    const r = new Rng(1);
    for (let i = 0; i < 10_000; i++) {
      const u = r.uniform();
      expect(u >= 0 && u < 1).toBe(true);
      const k = r.int(3, 5);
      expect(k >= 3 && k <= 5 && Number.isInteger(k)).toBe(true);
    }
  });

  it('has roughly the right moments', () => {
    const r = new Rng(99);
    const n = 50_000;
    const normals = Array.from({ length: n }, () => r.normal());
    const mean = normals.reduce((s, x) => s + x, 0) / n;
    const variance = normals.reduce((s, x) => s + (x - mean) ** 2, 0) / n;
    expect(Math.abs(mean)).toBeLessThan(0.02);
    expect(Math.abs(variance - 1)).toBeLessThan(0.03);
    const exps = Array.from({ length: n }, () => r.exponential(4));
    expect(Math.abs(exps.reduce((s, x) => s + x, 0) / n - 0.25)).toBeLessThan(0.01);
    expect(Math.abs(median(Array.from({ length: n }, () => r.lognormal(Math.log(50), 1))) - 50)).toBeLessThan(2);
    expect(Math.abs(share(Array.from({ length: n }, () => r.bernoulli(0.3)), Boolean) - 0.3)).toBeLessThan(0.01);
  });
});

describe('generateTransactions', () => {
  const base = sim();

  it('is deterministic: same seed, same events; another seed, other events', () => {
    expect(sim()).toEqual(base);
    const other = sim({ seed: 8 });
    expect(other.map((s) => s.event)).not.toEqual(base.map((s) => s.event));
  });

  it('is prefix-stable: a shorter count yields the same first events', () => {
    expect(sim({ count: 500 })).toEqual(base.slice(0, 500));
  });

  it('gives unique ids, non-decreasing times and the requested rate', () => {
    expect(base).toHaveLength(20_000);
    expect(new Set(base.map((s) => s.event.event_id)).size).toBe(base.length);
    for (let i = 1; i < base.length; i++) expect(base[i]!.event.ts).toBeGreaterThanOrEqual(base[i - 1]!.event.ts);
    const spanSec = (base.at(-1)!.event.ts - START) / 1000;
    expect(spanSec).toBeGreaterThan(10_000 * 0.95);
    expect(spanSec).toBeLessThan(10_000 * 1.05);
    const infinite = generateTransactions({ seed: 1, startTs: START, ratePerSec: 100 });
    for (let i = 0; i < 50_000; i++) expect(infinite.next().done).toBe(false);
  });

  it('keeps legit balances consistent, per event and along each account', () => {
    const last = new Map<string, number>();
    let checked = 0;
    for (const { event: e, isFraud } of base) {
      if (!isFraud) {
        const expected = e.type === 'CASH_IN' ? e.old_balance + e.amount : e.old_balance - e.amount;
        expect(Math.abs(expected - e.new_balance)).toBeLessThan(0.005);
        expect(e.amount).toBeGreaterThan(0);
        expect(e.new_balance).toBeGreaterThanOrEqual(0);
        expect(isMule(e.account_id)).toBe(false);
        checked++;
      }
      // Population accounts: each event starts from the previous event's balance (fraud included).
      if (!isMule(e.account_id)) {
        const prev = last.get(e.account_id);
        if (prev !== undefined) expect(e.old_balance).toBeCloseTo(prev, 2);
        last.set(e.account_id, e.new_balance);
      }
    }
    expect(checked).toBeGreaterThan(19_000);
  });

  it('has a PaySim-like mix of types and channels', () => {
    const types = new Set(base.map((s) => s.event.type));
    expect([...types].sort()).toEqual(['CASH_IN', 'CASH_OUT', 'DEBIT', 'PAYMENT', 'TRANSFER']);
    expect(share(base, (s) => s.event.type === 'CASH_OUT')).toBeGreaterThan(0.25);
    expect(share(base, (s) => s.event.type === 'PAYMENT')).toBeGreaterThan(0.25);
    expect(share(base, (s) => s.event.type === 'TRANSFER')).toBeLessThan(0.15);
    expect(new Set(base.map((s) => s.event.channel))).toEqual(new Set(['web', 'mobile', 'pos', 'atm']));
    expect(base.filter((s) => s.event.type === 'PAYMENT').every((s) => s.event.counterparty_id.startsWith('M'))).toBe(true);
  });

  it('keeps the fraud share near fraudRate', () => {
    const big = sim({ count: 100_000 });
    const fraudShare = share(big, (s) => s.isFraud);
    expect(fraudShare).toBeGreaterThan(0.01);
    expect(fraudShare).toBeLessThan(0.02);
    const more = share(sim({ count: 100_000, fraudRate: 0.05 }), (s) => s.isFraud);
    expect(more).toBeGreaterThan(0.04);
    expect(more).toBeLessThan(0.06);
    expect(sim({ fraudRate: 0 }).some((s) => s.isFraud)).toBe(false);
  });

  it('injects fraud rings: victims drained to mules within minutes, then mule cash-outs', () => {
    const fraud = base.filter((s) => s.isFraud).map((s) => s.event);
    const transfers = fraud.filter((e) => e.type === 'TRANSFER');
    expect(transfers.length).toBeGreaterThan(20);
    expect(transfers.every((e) => isMule(e.counterparty_id) && !isMule(e.account_id))).toBe(true);
    const muleCashouts = fraud.filter((e) => isMule(e.account_id));
    expect(muleCashouts.length).toBeGreaterThan(10);
    expect(muleCashouts.every((e) => e.type === 'CASH_OUT')).toBe(true);
    // Mules only cash out what ring transfers paid them.
    const paidTo = new Set(transfers.map((e) => e.counterparty_id));
    expect(muleCashouts.every((e) => paidTo.has(e.account_id))).toBe(true);
    expect(new Set(transfers.map((e) => e.counterparty_id)).size).toBeLessThan(30);
    // Burst: a victim's fraud events (outside mule cash-outs) span minutes, not hours.
    const byVictim = new Map<string, number[]>();
    for (const e of fraud.filter((f) => !isMule(f.account_id))) byVictim.set(e.account_id, [...(byVictim.get(e.account_id) ?? []), e.ts]);
    const spans = [...byVictim.values()].filter((ts) => ts.length > 1).map((ts) => (Math.max(...ts) - Math.min(...ts)) / 60_000);
    expect(spans.length).toBeGreaterThan(5);
    expect(median(spans)).toBeLessThan(15);
    // PaySim's signature: emptied accounts whose balances do not add up.
    const inconsistent = fraud.filter((e) => !isMule(e.account_id) && e.new_balance === 0 && Math.abs(e.old_balance - e.amount) > 0.005);
    expect(inconsistent.length).toBeGreaterThan(5);
    // Fraud moves much more money than legit transfers.
    const legitTransfers = base.filter((s) => !s.isFraud && s.event.type === 'TRANSFER').map((s) => s.event.amount);
    expect(median(transfers.map((e) => e.amount))).toBeGreaterThan(2 * median(legitTransfers));
  });

  it('shifts the distributions when drift is on', () => {
    const drifted = sim({ drift: true });
    const legit = (xs: SimulatedTransaction[]): number[] => xs.filter((s) => !s.isFraud && s.event.type === 'PAYMENT').map((s) => s.event.amount);
    const ratio = median(legit(drifted)) / median(legit(base));
    expect(ratio).toBeGreaterThan(2);
    expect(ratio).toBeLessThan(3);
    expect(share(drifted, (s) => s.event.type === 'TRANSFER')).toBeGreaterThan(share(base, (s) => s.event.type === 'TRANSFER') + 0.08);
    expect(share(drifted, (s) => s.event.channel === 'mobile')).toBeGreaterThan(share(base, (s) => s.event.channel === 'mobile') + 0.15);
    // Same population: the accounts' starting balances do not depend on drift.
    const first = (xs: SimulatedTransaction[]): Map<string, number> => {
      const m = new Map<string, number>();
      for (const s of xs) if (!m.has(s.event.account_id)) m.set(s.event.account_id, s.event.old_balance);
      return m;
    };
    const a = first(base);
    const b = first(drifted);
    const common = [...a.keys()].filter((k) => b.has(k) && !isMule(k));
    expect(common.length).toBeGreaterThan(1000);
    expect(common.filter((k) => a.get(k) === b.get(k)).length / common.length).toBeGreaterThan(0.8);
  });

  it('builds outcomes from the simulated label', () => {
    const f = base.find((s) => s.isFraud)!;
    const l = base.find((s) => !s.isFraud)!;
    expect(outcomeFor(f, 123)).toEqual({ event_id: f.event.event_id, entity_id: f.event.account_id, label: 'fraud', value: 1, ts: 123, item_id: null });
    expect(outcomeFor(l, 456)).toEqual({ event_id: l.event.event_id, entity_id: l.event.account_id, label: 'legit', value: 0, ts: 456, item_id: null });
  });
});

describe('generateTransactions: the population scales with the rate', () => {
  const activity = (rate: number, seconds: number) => {
    const perAccount = new Map<string, number>();
    let legit = 0;
    for (const s of generateTransactions({ seed: 5, startTs: 0, ratePerSec: rate, count: Math.round(rate * seconds) })) {
      if (s.isFraud) continue;
      legit++;
      perAccount.set(s.event.account_id, (perAccount.get(s.event.account_id) ?? 0) + 1);
    }
    return { legit, accounts: perAccount.size, perAccount };
  };

  it('keeps each account at the training stream\'s pace whatever the rate (activity features stay comparable)', () => {
    expect(accountsFor(0.4)).toBe(2000);
    expect(accountsFor(0.05)).toBe(2000);
    expect(accountsFor(10)).toBe(50_000);
    // Over one day of event time, accounts transact about as often at 0.4/s as at 4/s (ten times the accounts).
    const slow = activity(0.4, 86_400);
    const fast = activity(4, 86_400);
    const mean = (a: { legit: number; accounts: number }) => a.legit / a.accounts;
    expect(fast.accounts).toBeGreaterThan(8 * slow.accounts);
    expect(mean(fast) / mean(slow)).toBeGreaterThan(0.9);
    expect(mean(fast) / mean(slow)).toBeLessThan(1.1);
    // Per account and day: ACCOUNT_RATE_PER_SEC * 86400 (about 17) on average.
    expect((fast.legit / accountsFor(4)) / (ACCOUNT_RATE_PER_SEC * 86_400)).toBeGreaterThan(0.9);
    // Shard copies have their own ids, in the account id format, apart from the mules (C9...).
    expect([...fast.perAccount.keys()].every((id) => /^C\d{7}$/.test(id) && !id.startsWith('C9'))).toBe(true);
  });

  it('mules of a shard are its own, so fraud rings keep their pace too', () => {
    const mules = new Set<string>();
    for (const s of generateTransactions({ seed: 5, startTs: 0, ratePerSec: 8, count: 200_000 })) if (s.isFraud && s.event.type === 'TRANSFER') mules.add(s.event.counterparty_id);
    expect([...mules].some((id) => /^C9\d{6}$/.test(id))).toBe(true);
    expect([...mules].some((id) => /^C9\d{4}[0-3][0-5]$/.test(id) && id.length === 8)).toBe(true);
  });
});

describe('generateInteractions', () => {
  const opts = { seed: 5, startTs: START, ratePerSec: 20, count: 30_000 };
  const base = [...generateInteractions(opts)];

  it('is deterministic, with unique ids and ordered times', () => {
    expect([...generateInteractions(opts)]).toEqual(base);
    expect([...generateInteractions({ ...opts, seed: 6 })]).not.toEqual(base);
    expect(new Set(base.map((e) => e.event_id)).size).toBe(base.length);
    for (let i = 1; i < base.length; i++) expect(base[i]!.ts).toBeGreaterThanOrEqual(base[i - 1]!.ts);
  });

  it('has a view >> click >> purchase funnel on the same user and item', () => {
    const views = base.filter((e) => e.action === 'view');
    const clicks = base.filter((e) => e.action === 'click');
    const purchases = base.filter((e) => e.action === 'purchase');
    expect(clicks.length).toBeGreaterThan(0);
    expect(purchases.length).toBeGreaterThan(0);
    expect(views.length).toBeGreaterThan(5 * clicks.length);
    expect(clicks.length).toBeGreaterThan(3 * purchases.length);
    const viewed = new Set(views.map((e) => `${e.user_id}/${e.item_id}`));
    const clicked = new Set(clicks.map((e) => `${e.user_id}/${e.item_id}`));
    expect(clicks.every((e) => viewed.has(`${e.user_id}/${e.item_id}`))).toBe(true);
    expect(purchases.every((e) => clicked.has(`${e.user_id}/${e.item_id}`))).toBe(true);
  });

  it('changes what users look at when drift is on', () => {
    const top = (xs: typeof base): Set<string> => {
      const c = new Map<string, number>();
      for (const e of xs) c.set(e.item_id, (c.get(e.item_id) ?? 0) + 1);
      return new Set([...c.entries()].sort((a, b) => b[1] - a[1]).slice(0, 20).map(([k]) => k));
    };
    const drifted = top([...generateInteractions({ ...opts, drift: true })]);
    const overlap = [...top(base)].filter((k) => drifted.has(k)).length;
    expect(overlap).toBeLessThan(10);
  });
});

/** A stand-in gateway: answers 202 to every request, except `answer` says otherwise; records accepted events in order. */
async function fakeGateway(answer: (n: number) => { status: number; retryAfter?: string } | null = () => null) {
  const accepted: Record<string, unknown>[] = [];
  /** Wall-clock arrival of each accepted event, by id. */
  const arrivedAt = new Map<string, number>();
  let requests = 0;
  let refused = 0;
  const readBody = async (req: IncomingMessage): Promise<string> => {
    const chunks: Buffer[] = [];
    for await (const c of req) chunks.push(c as Buffer);
    return Buffer.concat(chunks).toString();
  };
  const server = createServer((req, res) => {
    void readBody(req).then((text) => {
      const n = ++requests;
      const batch = JSON.parse(text) as Record<string, unknown>[];
      const a = answer(n);
      if (a) {
        refused++;
        res.writeHead(a.status, { 'Content-Type': 'application/json', ...(a.retryAfter !== undefined ? { 'Retry-After': a.retryAfter } : {}) });
        res.end(JSON.stringify({ error: { code: 'FAKE', message: 'try again' } }));
        return;
      }
      accepted.push(...batch);
      const now = Date.now();
      for (const e of batch) arrivedAt.set(e.event_id as string, now);
      res.writeHead(202, { 'Content-Type': 'application/json' });
      res.end(JSON.stringify({ accepted: batch.length, rejected: [] }));
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    accepted,
    arrivedAt,
    get requests() {
      return requests;
    },
    get refused() {
      return refused;
    },
    close: () => {
      server.closeAllConnections();
      return new Promise<void>((r) => server.close(() => r()));
    },
  };
}

/** Event ids in the order they appear, per entity. */
const idsByEntity = (events: readonly object[], key: string): Map<string, string[]> => {
  const m = new Map<string, string[]>();
  for (const e of events as readonly Record<string, unknown>[]) {
    const k = e[key] as string;
    const list = m.get(k) ?? [];
    list.push(e.event_id as string);
    m.set(k, list);
  }
  return m;
};

describe('runSimulation', () => {
  it('publishes each interaction as an outcome about its item (valued 1, a purchase at the item price)', async () => {
    const gw = await fakeGateway(() => null);
    const outcomes: Outcome[] = [];
    try {
      const summary = await runSimulation({
        stream: 'interactions', gatewayUrl: gw.url, apiKey: 'k', ratePerSec: 200, durationSec: 1, seed: 5, drift: false, runId: 'o',
        startTs: Date.now(), tickMs: 20, maxInFlight: 2, maxBatch: 100, outcomeDelayMs: 50,
        publishOutcomes: async (o) => void outcomes.push(...o),
      });
      expect(summary.outcomes).toBe(summary.accepted);
      const price = new Map(itemCatalog({ seed: 5 }).map((i) => [i.item_id, i.price]));
      const sent = new Map(gw.accepted.map((e) => [e.event_id as string, e]));
      expect(outcomes).toHaveLength(gw.accepted.length);
      for (const o of outcomes) {
        const e = sent.get(o.event_id)!;
        expect(o).toEqual({ event_id: e.event_id, entity_id: e.user_id, item_id: e.item_id, label: e.action, value: e.action === 'purchase' ? price.get(e.item_id as string) : 1, ts: (e.ts as number) + 50 });
      }
      expect(outcomes.some((o) => o.label === 'click')).toBe(true);
    } finally {
      await gw.close();
    }
  });

  it('sends the history first, as fast as the gateway takes it, then live; every event once, per-entity in order, 429s retried', async () => {
    // Every third request is refused with 429 (Retry-After: 0): retried in place, never lost.
    const gw = await fakeGateway((n) => (n % 3 === 0 ? { status: 429, retryAfter: '0' } : null));
    const outcomes: Outcome[] = [];
    const historyMs = 30 * 60_000;
    const start = Date.now();
    const t0 = Date.now();
    try {
      const summary = await runSimulation({
        stream: 'transactions', gatewayUrl: gw.url, apiKey: 'k', ratePerSec: 20, durationSec: 1, seed: 3, drift: false, runId: 'h',
        historyMs, startTs: start, tickMs: 20, maxInFlight: 4, maxBatch: 500, outcomeDelayMs: 100,
        publishOutcomes: async (o) => void outcomes.push(...o),
      });
      const elapsed = Date.now() - t0;
      // All the events of the past half hour, then rate x duration = 20 live ones.
      const expected: Transaction[] = [];
      let live = 0;
      for (const s of generateTransactions({ seed: 3, startTs: start - historyMs, ratePerSec: 20 })) {
        if (s.event.ts > start && ++live > 20) break;
        expected.push({ ...s.event, event_id: `h-${s.event.event_id}` });
      }
      const total = expected.length;
      // Half an hour of event time went out in far less than half an hour (generous bound).
      expect(elapsed).toBeLessThan(60_000);

      // Every generated event reached the gateway exactly once, unchanged.
      expect(gw.accepted).toHaveLength(total);
      expect(new Set(gw.accepted.map((e) => e.event_id)).size).toBe(total);
      const byId = new Map(gw.accepted.map((e) => [e.event_id as string, e]));
      for (const e of expected) expect(byId.get(e.event_id)).toEqual(e);

      // History (ts <= start) strictly before live, and every account's events in generation (= ts) order.
      const nHistory = expected.filter((e) => e.ts <= start).length;
      expect(nHistory).toBeGreaterThan(30_000);
      expect(nHistory).toBe(total - 20);
      const firstLive = gw.accepted.findIndex((e) => (e.ts as number) > start);
      expect(firstLive).toBe(nHistory);
      expect(gw.accepted.slice(0, nHistory).every((e) => (e.ts as number) <= start)).toBe(true);
      for (const e of gw.accepted.slice(nHistory)) expect(gw.arrivedAt.get(e.event_id as string)).toBeGreaterThanOrEqual(e.ts as number);
      expect(idsByEntity(gw.accepted, 'account_id')).toEqual(idsByEntity(expected, 'account_id'));
      for (const ids of idsByEntity(gw.accepted, 'account_id').values()) {
        const ts = ids.map((id) => byId.get(id)!.ts as number);
        for (let i = 1; i < ts.length; i++) expect(ts[i]).toBeGreaterThanOrEqual(ts[i - 1]!);
      }

      // The 429s were retried: no loss, no failed request.
      expect(gw.refused).toBeGreaterThan(0);
      expect(summary.retries).toBe(gw.refused);
      expect(summary).toMatchObject({ sent: total, history: nHistory, accepted: total, rejected: 0, failedRequests: 0, errors: [] });
      expect(new Set(summary.acceptedIds)).toEqual(new Set(expected.map((e) => e.event_id)));

      // One label per event, stamped outcome-delay after the event time.
      expect(summary.outcomes).toBe(total);
      expect(outcomes).toHaveLength(total);
      const tsById = new Map(expected.map((e) => [e.event_id, e.ts]));
      for (const o of outcomes) expect(o.ts).toBe(tsById.get(o.event_id)! + 100);
      expect(new Set(outcomes.map((o) => o.event_id)).size).toBe(total);
      expect(summary.fraud).toBe(outcomes.filter((o) => o.label === 'fraud').length);
    } finally {
      await gw.close();
    }
  }, 120_000);

  it('keeps per-user order for interactions and sends nothing early without history', async () => {
    const gw = await fakeGateway((n) => (n % 4 === 0 ? { status: 503 } : null));
    try {
      const start = Date.now();
      const summary = await runSimulation({
        stream: 'interactions', gatewayUrl: gw.url, apiKey: 'k', ratePerSec: 200, durationSec: 1, seed: 4, drift: false, runId: 'i',
        startTs: start, tickMs: 20, maxInFlight: 3, maxBatch: 7, retryBaseMs: 1,
      });
      const expected = [...generateInteractions({ seed: 4, startTs: start, ratePerSec: 200, count: 200 })].map((e) => ({ ...e, event_id: `i-${e.event_id}` }));
      expect(summary).toMatchObject({ sent: 200, history: 0, accepted: 200, failedRequests: 0, outcomes: 0 });
      expect(summary.retries).toBe(gw.refused);
      expect(gw.accepted).toHaveLength(200);
      expect(idsByEntity(gw.accepted, 'user_id')).toEqual(idsByEntity(expected, 'user_id'));
      // Real time: no event left before its event time.
      for (const e of gw.accepted) expect(gw.arrivedAt.get(e.event_id as string)).toBeGreaterThanOrEqual(e.ts as number);
    } finally {
      await gw.close();
    }
  }, 30_000);

  it('gives a batch up after maxAttempts and counts it as a failed request, never silently', async () => {
    const gw = await fakeGateway(() => ({ status: 503 }));
    try {
      const summary = await runSimulation({
        stream: 'transactions', gatewayUrl: gw.url, apiKey: 'k', ratePerSec: 20, durationSec: 1, seed: 5, drift: false, runId: 'f',
        historyMs: 60_000, tickMs: 20, maxInFlight: 2, maxBatch: 500, maxAttempts: 3, retryBaseMs: 1,
      });
      expect(summary.sent).toBe(summary.history + 20);
      expect(summary.history).toBeGreaterThan(1000);
      expect(summary.accepted).toBe(0);
      expect(summary.failedRequests).toBeGreaterThanOrEqual(3);
      expect(gw.requests).toBe(3 * summary.failedRequests);
      expect(summary.retries).toBe(2 * summary.failedRequests);
      expect(summary.errors[0]).toMatch(/^503 FAKE try again \(after 3 attempts\)$/);
    } finally {
      await gw.close();
    }
  }, 30_000);
});
