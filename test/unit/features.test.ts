import { describe, expect, it } from 'vitest';
import {
  count,
  distinctCount,
  featureGroup,
  FeatureDefinitionError,
  lastValue,
  ratio,
  sum,
  timeSincePrevious,
  validateGroups,
  type AggregationSpec,
  type FeatureGroup,
  type FeatureGroupSpec,
} from '../../topology/features/definition.js';
import { compareEvents, evaluate, featureEvent, type FeatureEvent, type FeatureValues } from '../../topology/features/engine.js';
import { accountGroup, itemGroup, userGroup } from '../../topology/features/groups.js';
import { EntityLog, eventRejection, trimBound } from '../../processors/features/entity-log.js';
import { decodeMember, encodeMember } from '../../serving/features/redis-keys.js';
import {
  DAY_MS,
  HOUR_MS,
  LATE_GROUP_HEADER,
  LATE_NEWEST_HEADER,
  ORACLE_GROUPS,
  oracleEmptyValues,
  oracleFeaturesAtEvent,
  oracleFeaturesAtInstant,
  randomEvents,
  runOracle,
  type ExpectedOutput,
  type OracleEvent,
  type OracleGroupName,
  type OracleRecord,
  type RejectCode,
} from '../shared/feature-oracle.js';
import { seededUniform } from '../shared/seeded.js';

/**
 * The feature engine, the entity log and the definitions, held to the specification through an
 * independent brute-force recomputation (test/shared/feature-oracle.ts).
 */
const MIN = 60_000;
const T0 = Date.UTC(2024, 4, 1);
const GROUPS: Record<OracleGroupName, FeatureGroup> = { account: accountGroup, user: userGroup, item: itemGroup };
const TOPIC = 'events.test';

type Raw = Record<string, unknown>;
const txn = (id: string, ts: number, amount: number, cp = 'm1', account = 'a1'): Raw => ({ event_id: id, account_id: account, counterparty_id: cp, type: 'PAYMENT', amount, old_balance: 1000, new_balance: 1000 - amount, channel: 'web', ts });
const act = (id: string, ts: number, action: 'view' | 'click' | 'purchase', item = 'i1', user = 'u1'): Raw => ({ event_id: id, user_id: user, item_id: item, action, ts });

let nextOffset = 0;
/** An admitted event at `offset` (default: the next one). */
const ev = (value: Raw, offset = nextOffset++): OracleEvent => ({ ts: value.ts as number, offset, value });

const asEngine = (g: FeatureGroup, e: OracleEvent): FeatureEvent => featureEvent(g, e.value.event_id as string, e.ts, e.offset, e.value);
const sortedFor = (g: FeatureGroup, events: readonly OracleEvent[]): FeatureEvent[] => events.map((e) => asEngine(g, e)).sort(compareEvents);
const atEvent = (g: FeatureGroup, events: readonly OracleEvent[], e: OracleEvent): FeatureValues => evaluate(g, sortedFor(g, events), { event: e });
const atInstant = (g: FeatureGroup, events: readonly OracleEvent[], t: number): FeatureValues => evaluate(g, sortedFor(g, events), { instant: t });

/** Engine and oracle agree at every event and at the given instants (and the engine's keys are the group's features in order). */
function agree(name: OracleGroupName, events: readonly OracleEvent[], instants: readonly number[] = []): void {
  const g = GROUPS[name];
  for (const e of events) {
    const got = atEvent(g, events, e);
    expect(Object.keys(got)).toEqual(ORACLE_GROUPS[name].features);
    expect(got, `at event offset ${e.offset}`).toEqual(oracleFeaturesAtEvent(name, events, e));
  }
  for (const t of instants) expect(atInstant(g, events, t), `at instant ${t}`).toEqual(oracleFeaturesAtInstant(name, events, t));
}

describe('the groups are the specified ones', () => {
  it('declares the specified features in order and stores the specified fields', () => {
    for (const name of ['account', 'user', 'item'] as const) {
      const g = GROUPS[name];
      const shape = ORACLE_GROUPS[name];
      expect(g.name).toBe(name);
      expect(g.entity).toBe(shape.entity);
      expect(g.stream).toBe(shape.stream);
      expect(g.featureNames).toEqual(shape.features);
      expect(g.fields).toEqual(shape.stored);
      expect(g.maxWindowMs).toBe(DAY_MS);
    }
  });
});

describe('account features at an event: (ts, offset) order, windows t - W < ts <= t', () => {
  it('orders a same-millisecond tie by offset: each sees only the ones before it, 0 s since the previous', () => {
    const prior = ev(txn('p', T0 - 30_000, 8, 'c0'), 9);
    const tied = [ev(txn('x', T0, 1, 'c1'), 10), ev(txn('y', T0, 2, 'c2'), 11), ev(txn('z', T0, 4, 'c3'), 12)];
    const all = [tied[2]!, prior, tied[0]!, tied[1]!];
    const got = tied.map((e) => atEvent(accountGroup, all, e));
    expect(got.map((f) => f.txn_count_1h)).toEqual([2, 3, 4]);
    expect(got.map((f) => f.amount_sum_1h)).toEqual([9, 11, 15]);
    expect(got.map((f) => f.amount_max_24h)).toEqual([8, 8, 8]);
    expect(got.map((f) => f.distinct_counterparties_24h)).toEqual([2, 3, 4]);
    expect(got.map((f) => f.seconds_since_last_txn)).toEqual([30, 0, 0]);
    agree('account', all, [T0 - 1, T0, T0 + 1]);
    // At the instant of the tie, every tied event counts and the latest is 0 s old.
    expect(atInstant(accountGroup, all, T0)).toMatchObject({ txn_count_1h: 4, amount_sum_1h: 15, seconds_since_last_txn: 0 });
  });

  it('excludes an event exactly W old and includes one at t, at events and at instants', () => {
    const old = ev(txn('old', T0 - HOUR_MS, 5), 0);
    const inside = ev(txn('in', T0 - HOUR_MS + 1, 7), 1);
    const dayOld = ev(txn('day', T0 - DAY_MS, 11), 2);
    const now = ev(txn('now', T0, 3), 3);
    const all = [dayOld, old, inside, now];
    expect(atEvent(accountGroup, all, now)).toEqual({
      txn_count_1h: 2,
      txn_count_24h: 3,
      amount_sum_1h: 10,
      amount_sum_24h: 15,
      amount_avg_24h: 5,
      amount_max_24h: 7,
      distinct_counterparties_24h: 1,
      seconds_since_last_txn: (HOUR_MS - 1) / 1000,
    });
    expect(atInstant(accountGroup, all, T0)).toMatchObject({ txn_count_1h: 2, txn_count_24h: 3, seconds_since_last_txn: 0 });
    expect(atInstant(accountGroup, all, T0 - 1)).toMatchObject({ txn_count_1h: 2, txn_count_24h: 3, seconds_since_last_txn: (HOUR_MS - 2) / 1000 });
    agree('account', all, [T0 - DAY_MS, T0 - HOUR_MS, T0 - HOUR_MS + 1, T0 - 1, T0, T0 + 1, T0 + HOUR_MS - 1, T0 + HOUR_MS]);
  });

  it('measures since_previous from the greatest earlier event; null for the first', () => {
    const a = ev(txn('a', T0, 10), 0);
    const b = ev(txn('b', T0 + 90_000, 30, 'm2'), 1);
    expect(atEvent(accountGroup, [a], a).seconds_since_last_txn).toBeNull();
    expect(atEvent(accountGroup, [a, b], b)).toEqual({ txn_count_1h: 2, txn_count_24h: 2, amount_sum_1h: 40, amount_sum_24h: 40, amount_avg_24h: 20, amount_max_24h: 30, distinct_counterparties_24h: 2, seconds_since_last_txn: 90 });
    // A gap longer than every window still has a previous event.
    const c = ev(txn('c', T0 + 3 * DAY_MS, 1), 2);
    expect(atEvent(accountGroup, [a, b, c], c)).toMatchObject({ txn_count_24h: 1, amount_avg_24h: 1, seconds_since_last_txn: (3 * DAY_MS - 90_000) / 1000 });
    agree('account', [a, b, c], [T0 - 1, T0 + 45_000, T0 + 2 * DAY_MS]);
  });

  it('counts, for an event, a later-offset event with an earlier ts (its corrected row), not the other way round', () => {
    const a = ev(txn('a', T0, 10, 'c1'), 0);
    const b = ev(txn('b', T0 + MIN, 20, 'c2'), 1);
    const straggler = ev(txn('s', T0 - MIN, 100, 'c3'), 2);
    const c = ev(txn('c', T0 + 2 * MIN, 40, 'c1'), 3);
    const all = [a, b, straggler, c];
    expect(atEvent(accountGroup, all, straggler)).toMatchObject({ txn_count_1h: 1, amount_sum_1h: 100, seconds_since_last_txn: null });
    expect(atEvent(accountGroup, all, a)).toMatchObject({ txn_count_1h: 2, amount_sum_1h: 110, seconds_since_last_txn: 60 });
    expect(atEvent(accountGroup, all, c)).toMatchObject({ txn_count_1h: 4, amount_sum_1h: 170, seconds_since_last_txn: 60 });
    agree('account', all, [T0 - MIN, T0]);
  });

  it('is independent of the order the events are given in', () => {
    const events = Array.from({ length: 50 }, (_, i) => ev(txn(`e${i}`, T0 + (i % 17) * 7 * MIN, 0.1 * (i + 1), `c${i % 7}`), i));
    const reversed = [...events].reverse();
    for (const e of events) expect(atEvent(accountGroup, reversed, e)).toEqual(atEvent(accountGroup, events, e));
    agree('account', reversed, [T0, T0 + 30 * MIN, T0 + 3 * HOUR_MS]);
  });
});

describe('account features at an instant', () => {
  it('decay as events expire, without a new event', () => {
    const a = ev(txn('a', T0, 100, 'c1'), 0);
    const b = ev(txn('b', T0 + 10 * MIN, 50, 'c2'), 1);
    const at = (t: number) => atInstant(accountGroup, [a, b], t);
    expect(at(b.ts)).toEqual({ txn_count_1h: 2, txn_count_24h: 2, amount_sum_1h: 150, amount_sum_24h: 150, amount_avg_24h: 75, amount_max_24h: 100, distinct_counterparties_24h: 2, seconds_since_last_txn: 0 });
    expect(at(a.ts + HOUR_MS)).toMatchObject({ txn_count_1h: 1, amount_sum_1h: 50, txn_count_24h: 2, seconds_since_last_txn: 3000 });
    expect(at(b.ts + HOUR_MS)).toMatchObject({ txn_count_1h: 0, amount_sum_1h: 0, txn_count_24h: 2 });
    expect(at(a.ts + DAY_MS)).toMatchObject({ txn_count_24h: 1, amount_avg_24h: 50, amount_max_24h: 50, distinct_counterparties_24h: 1 });
    // Empty windows: counts and sums 0, average null, max 0, the gap still measured.
    expect(at(b.ts + DAY_MS)).toEqual({ txn_count_1h: 0, txn_count_24h: 0, amount_sum_1h: 0, amount_sum_24h: 0, amount_avg_24h: null, amount_max_24h: 0, distinct_counterparties_24h: 0, seconds_since_last_txn: DAY_MS / 1000 });
    agree('account', [a, b], [a.ts + HOUR_MS, b.ts + HOUR_MS, a.ts + DAY_MS, b.ts + DAY_MS, b.ts + 10 * DAY_MS]);
  });

  it('ignores events after the instant (no future leakage), whatever their offset', () => {
    const past = ev(txn('p', T0, 10, 'c1'), 5);
    const future = ev(txn('f', T0 + 1, 1000, 'evil'), 1);
    expect(atInstant(accountGroup, [future, past], T0)).toEqual(atInstant(accountGroup, [past], T0));
    expect(atInstant(accountGroup, [future, past], T0).seconds_since_last_txn).toBe(0);
    agree('account', [future, past], [T0 - 1, T0, T0 + 1]);
  });

  it('before the entity\'s first event: counts 0, avg and since null, max 0', () => {
    const a = ev(txn('a', T0, 10), 0);
    expect(atInstant(accountGroup, [a], T0 - 1)).toEqual(oracleEmptyValues('account'));
    expect(oracleEmptyValues('account')).toEqual({ txn_count_1h: 0, txn_count_24h: 0, amount_sum_1h: 0, amount_sum_24h: 0, amount_avg_24h: null, amount_max_24h: 0, distinct_counterparties_24h: 0, seconds_since_last_txn: null });
  });

  it('an unknown entity: the engine gives the empty values, the entity-level answer is null', () => {
    for (const name of ['account', 'user', 'item'] as const) {
      expect(evaluate(GROUPS[name], [], { instant: T0 })).toEqual(oracleEmptyValues(name));
      expect(oracleFeaturesAtInstant(name, [], T0)).toBeNull();
    }
  });

  it('rounds sums and averages to 1e-6', () => {
    const events = [ev(txn('a', T0, 0.1), 0), ev(txn('b', T0 + 1, 0.2), 1), ev(txn('c', T0 + 2, 0.0000004), 2)];
    expect(atInstant(accountGroup, events, T0 + 2)).toMatchObject({ amount_sum_1h: 0.3, amount_avg_24h: 0.1 });
    agree('account', events, [T0 + 1, T0 + 2]);
  });
});

describe('user and item features: filters, ratio, distinct', () => {
  it('counts by action per window, distinct items, and the click-through rate', () => {
    const events = [
      ev(act('v1', T0, 'view', 'i1'), 0),
      ev(act('v2', T0 + MIN, 'view', 'i2'), 1),
      ev(act('c1', T0 + 2 * MIN, 'click', 'i2'), 2),
      ev(act('p1', T0 + 2 * HOUR_MS, 'purchase', 'i2'), 3),
      ev(act('v3', T0 + 2 * HOUR_MS, 'view', 'i3'), 4),
    ];
    expect(atEvent(userGroup, events, events[2]!)).toEqual({
      user_views_1h: 2,
      user_views_24h: 2,
      user_clicks_1h: 1,
      user_clicks_24h: 1,
      user_purchases_1h: 0,
      user_purchases_24h: 0,
      user_ctr_24h: 0.5,
      user_distinct_items_24h: 2,
      user_seconds_since_last_interaction: 60,
    });
    expect(atEvent(userGroup, events, events[4]!)).toEqual({
      user_views_1h: 1,
      user_views_24h: 3,
      user_clicks_1h: 0,
      user_clicks_24h: 1,
      user_purchases_1h: 1,
      user_purchases_24h: 1,
      user_ctr_24h: 0.333333,
      user_distinct_items_24h: 3,
      user_seconds_since_last_interaction: 0,
    });
    agree('user', events, [T0 - 1, T0 + HOUR_MS + MIN, T0 + 3 * HOUR_MS, T0 + DAY_MS + 2 * MIN]);
    // The item view of the same events (one item's audience).
    const items = events.filter((e) => e.value.item_id === 'i2');
    expect(atEvent(itemGroup, items, items[2]!)).toMatchObject({ item_views_24h: 1, item_clicks_24h: 1, item_purchases_1h: 1, item_ctr_24h: 1, item_distinct_users_24h: 1, item_seconds_since_last_interaction: 2 * HOUR_MS / 1000 - 120 });
    agree('item', items, [T0 + 2 * HOUR_MS]);
  });

  it('gives a null ratio when there is no view in 24 h, whatever the clicks', () => {
    const clicks = [ev(act('c1', T0, 'click'), 0), ev(act('c2', T0 + MIN, 'click'), 1)];
    for (const e of clicks) expect(atEvent(userGroup, clicks, e).user_ctr_24h).toBeNull();
    expect(atInstant(userGroup, clicks, T0 + MIN).user_clicks_24h).toBe(2);
    expect(atInstant(userGroup, clicks, T0 + MIN).user_ctr_24h).toBeNull();
    const withView = [...clicks, ev(act('v', T0 + 2 * MIN, 'view'), 2)];
    expect(atInstant(userGroup, withView, T0 + 2 * MIN).user_ctr_24h).toBe(2);
    // Once the view leaves the 24 h window the ratio is null again.
    expect(atInstant(userGroup, withView, T0 + 2 * MIN + DAY_MS).user_ctr_24h).toBeNull();
    expect(atInstant(itemGroup, [], T0).item_ctr_24h).toBeNull();
    agree('user', withView, [T0 + DAY_MS, T0 + MIN + DAY_MS, T0 + 2 * MIN + DAY_MS]);
  });
});

describe('definitions are validated, errors name the group and the feature', () => {
  const base = { name: 'probe', stream: 'transactions', schema: 'transaction', entity: 'account_id' } as const;
  const build = (features: Record<string, AggregationSpec>, extra: Partial<FeatureGroupSpec> = {}) => () => featureGroup({ ...base, ...extra, features });
  function errorOf(fn: () => unknown): string {
    try {
      fn();
    } catch (e) {
      expect(e).toBeInstanceOf(FeatureDefinitionError);
      return (e as Error).message;
    }
    throw new Error('no FeatureDefinitionError');
  }
  const names = (message: string, group: string, feature: string) => {
    expect(message).toContain(`feature group ${group}`);
    expect(message).toContain(`feature ${feature}`);
  };

  it('accepts a valid definition over the real schema', () => {
    const g = featureGroup({ ...base, features: { probe_n_1h: count('1h'), probe_big_24h: count('24h', { where: { amount: { gt: 1000 } } }), probe_gap: timeSincePrevious({ where: { type: 'PAYMENT' }, window: '7d' }) } });
    expect(g.featureNames).toEqual(['probe_n_1h', 'probe_big_24h', 'probe_gap']);
    expect(g.fields).toEqual(['amount', 'type']);
  });

  it('an unknown field', () => {
    const m = errorOf(build({ probe_sum: sum('amountx', '1h') }));
    names(m, 'probe', 'probe_sum');
    expect(m).toContain('amountx');
    names(errorOf(build({ probe_n: count('1h', { where: { nope: 1 } }) })), 'probe', 'probe_n');
  });

  it('bad windows: 0h, 1y, -5, beyond 400 days, fractional ms', () => {
    for (const w of ['0h', '1y', -5, '401d', 1.5, '']) {
      const m = errorOf(build({ probe_n: count(w) }));
      names(m, 'probe', 'probe_n');
      expect(m).toContain('window');
    }
  });

  it('a sum over a string field', () => {
    const m = errorOf(build({ probe_sum: sum('channel', '1h') }));
    names(m, 'probe', 'probe_sum');
    expect(m).toMatch(/channel is string/);
  });

  it('a filter value that is not a symbol of the enum', () => {
    const m = errorOf(build({ probe_n: count('1h', { where: { type: 'REFUND' } }) }));
    names(m, 'probe', 'probe_n');
    expect(m).toContain('REFUND');
    const m2 = errorOf(() => featureGroup({ name: 'probe_u', stream: 'interactions', schema: 'interaction', entity: 'user_id', features: { probe_likes: count('1h', { where: { action: { in: ['view', 'like'] } } }) } }));
    names(m2, 'probe_u', 'probe_likes');
    expect(m2).toContain('like');
  });

  it('a name clash between a feature and a stored field, or its exact column', () => {
    const m = errorOf(build({ amount: sum('amount', '1h') }));
    names(m, 'probe', 'amount');
    expect(m).toMatch(/clash/);
    const m2 = errorOf(build({ probe_sum: sum('amount', '1h'), amount_exact: count('1h') }));
    names(m2, 'probe', 'amount_exact');
    expect(m2).toMatch(/clash/);
  });

  it('reserved names', () => {
    for (const name of ['ts', 'version', 'entity_id', 'event_id', 'source_offset', 'source_topic', 'entity']) {
      const m = errorOf(build({ [name]: count('1h') }));
      names(m, 'probe', name);
      expect(m).toMatch(/reserved/);
    }
  });

  it('a ratio referring to an unknown feature, or to a non-numeric one', () => {
    const m = errorOf(build({ probe_n: count('1h'), probe_rate: ratio('probe_n', 'probe_missing') }));
    names(m, 'probe', 'probe_rate');
    expect(m).toContain('probe_missing');
    const m2 = errorOf(build({ probe_n: count('1h'), probe_last_cp: lastValue('counterparty_id'), probe_rate: ratio('probe_n', 'probe_last_cp') }));
    names(m2, 'probe', 'probe_rate');
  });

  it('a filtered since_previous (or last) without a window', () => {
    const m = errorOf(build({ probe_gap: timeSincePrevious({ where: { type: 'PAYMENT' } }) }));
    names(m, 'probe', 'probe_gap');
    expect(m).toMatch(/window/);
    names(errorOf(build({ probe_last: lastValue('amount', { where: { type: 'PAYMENT' } }) })), 'probe', 'probe_last');
  });

  it('a clash across groups (validateGroups), and a group declared twice', () => {
    const other = featureGroup({ name: 'probe_two', stream: 'interactions', schema: 'interaction', entity: 'item_id', features: { probe_items: distinctCount('user_id', '1h'), user_views_1h: count('1h') } });
    const m = errorOf(() => validateGroups([accountGroup, userGroup, other]));
    names(m, 'probe_two', 'user_views_1h');
    expect(m).toContain('user');
    expect(() => validateGroups([accountGroup, userGroup, itemGroup])).not.toThrow();
    expect(errorOf(() => validateGroups([accountGroup, accountGroup]))).toContain('feature group account');
  });
});

// ---------------------------------------------------------------------------------------------------
// The entity log (what the processor and backfill run) against the oracle's record-by-record run.

interface Simulated {
  outputs: Record<number, ExpectedOutput[]>;
  logs: Map<string, EntityLog>;
  /** The greatest trim bound applied per entity. */
  bounds: Map<string, number>;
}

/**
 * The processor's decisions without Redis: eventRejection, then EntityLog.offer per entity, in batches;
 * with `trim`, every batch trims the entities it admitted to at trimBound(newest before the batch).
 */
function simulate(name: OracleGroupName, records: readonly OracleRecord[], o: { latenessMs: number; maxClockSkewMs: number; rand: () => number; trim: boolean }): Simulated {
  const g = GROUPS[name];
  const logs = new Map<string, EntityLog>();
  const bounds = new Map<string, number>();
  const outputs: Record<number, ExpectedOutput[]> = {};
  for (let start = 0; start < records.length; ) {
    const end = Math.min(records.length, start + 1 + Math.floor(o.rand() * 30));
    const newestBefore = new Map<string, number>();
    const touched = new Set<string>();
    for (let offset = start; offset < end; offset++) {
      const { value, timestamp } = records[offset]!;
      const v = value as Raw;
      const rejection = eventRejection(g, v, timestamp, o.maxClockSkewMs);
      if (rejection) {
        outputs[offset] = [{ reject: rejection.code as RejectCode }];
        continue;
      }
      const entity = v[g.entity] as string;
      let log = logs.get(entity);
      if (!log) logs.set(entity, (log = new EntityLog(g, entity, { topic: TOPIC, partition: 0 })));
      if (!newestBefore.has(entity)) newestBefore.set(entity, log.newestTs);
      const offer = log.offer(featureEvent(g, v.event_id as string, v.ts as number, offset, v), o.latenessMs);
      if (offer.kind === 'late') outputs[offset] = [{ topic: `late.${g.stream}`, key: entity, value: v, headers: { [LATE_GROUP_HEADER]: g.name, [LATE_NEWEST_HEADER]: String(offer.newestTs) } }];
      else if (offer.kind === 'admitted') {
        outputs[offset] = offer.rows.map((row) => ({ topic: `features.${g.name}`, key: entity, value: row }));
        touched.add(entity);
      }
    }
    if (o.trim) {
      for (const entity of touched) {
        const before = newestBefore.get(entity)!;
        if (!Number.isFinite(before)) continue;
        const bound = trimBound(g, before, o.latenessMs);
        const log = logs.get(entity)!;
        log.forget(log.trimmed(bound));
        bounds.set(entity, Math.max(bound, bounds.get(entity) ?? -Infinity));
      }
    }
    start = end;
  }
  return { outputs, logs, bounds };
}

describe('EntityLog.offer: admission, lateness, redelivery and corrections', () => {
  const L = 48 * HOUR_MS;

  it('a late event within the lateness emits its row and exactly the rows it changes, with its offset as version', () => {
    const values = [
      txn('a', T0, 10, 'm1'),
      txn('b', T0 + 10 * MIN, 20, 'm2'),
      txn('c', T0 + 70 * MIN, 40, 'm1'),
      txn('f', T0 + 30 * HOUR_MS, 5, 'm3'),
      txn('d', T0 + 5 * MIN, 100, 'm4'), // behind f by < 48 h: admitted before a..c in time
      txn('g', T0 + 10 * MIN, 1, 'm2'), // ties b's millisecond, after it by offset
      txn('b', T0 + 10 * MIN, 20, 'm2'), // b redelivered
      txn('h', T0 + 30 * HOUR_MS - L - 1, 7, 'm5'), // beyond the lateness
      txn('i', T0 + 30 * HOUR_MS - L, 7, 'm5'), // exactly at it: admitted
    ];
    const records = values.map((value) => ({ value, timestamp: T0 + 40 * DAY_MS }));
    const oracle = runOracle('account', records, { latenessMs: L, maxClockSkewMs: MIN, topic: TOPIC });
    const log = new EntityLog(accountGroup, 'a1', { topic: TOPIC, partition: 0 });
    const offers = values.map((v, offset) => log.offer(featureEvent(accountGroup, v.event_id as string, v.ts as number, offset, v), L));

    const rowsOf = (i: number) => {
      const o = offers[i]!;
      return o.kind === 'admitted' ? o.rows : [];
    };
    expect(rowsOf(4).map((r) => [r.event_id, r.version, r.txn_count_1h, r.txn_count_24h, r.seconds_since_last_txn])).toEqual([
      ['d', 4, 2, 2, 300],
      ['b', 4, 3, 3, 300],
      ['c', 4, 1, 4, 3600],
      // f is not corrected: d is outside its windows and not its previous event.
    ]);
    expect(rowsOf(5).map((r) => [r.event_id, r.version, r.txn_count_24h])).toEqual([
      ['g', 5, 4],
      ['c', 5, 5],
    ]);
    expect(offers[6]).toEqual({ kind: 'duplicate' });
    expect(offers[7]).toEqual({ kind: 'late', newestTs: T0 + 30 * HOUR_MS });
    expect(offers[8]!.kind).toBe('admitted');
    // Everything equals the oracle's run, row by row.
    offers.forEach((o, i) => {
      const expected = oracle.outcomes[i]!;
      if (expected.kind === 'admitted') expect(o.kind === 'admitted' ? o.rows : o).toEqual(expected.rows);
      else if (expected.kind === 'late') expect(o).toEqual({ kind: 'late', newestTs: expected.newestTs });
      else expect(o.kind).toBe(expected.kind);
    });
    // The latest row is the newest computation of the greatest event (f, unchanged since offset 3).
    expect(log.latestRow).toEqual(oracle.latestRow('a1'));
    expect(log.latestRow).toMatchObject({ event_id: 'f', version: 3 });
  });

  it('a late view corrects the click-through rate of the user\'s later events', () => {
    const values = [act('c1', T0, 'click'), act('v1', T0 + MIN, 'view'), act('c2', T0 + 2 * MIN, 'click'), act('v0', T0 - MIN, 'view', 'i9')];
    const records = values.map((value) => ({ value, timestamp: T0 + DAY_MS }));
    const oracle = runOracle('user', records, { latenessMs: HOUR_MS, maxClockSkewMs: MIN, topic: TOPIC });
    const log = new EntityLog(userGroup, 'u1', { topic: TOPIC, partition: 0 });
    const offers = values.map((v, offset) => log.offer(featureEvent(userGroup, v.event_id as string, v.ts as number, offset, v), HOUR_MS));
    const last = offers[3]!;
    expect(last.kind).toBe('admitted');
    if (last.kind !== 'admitted') return;
    expect(last.rows.map((r) => [r.event_id, r.user_views_24h, r.user_ctr_24h, r.user_distinct_items_24h, r.version])).toEqual([
      ['v0', 1, 0, 1, 3],
      ['c1', 1, 1, 2, 3],
      ['v1', 2, 0.5, 2, 3],
      ['c2', 2, 1, 2, 3],
    ]);
    expect(last.rows).toEqual((oracle.outcomes[3] as { rows: unknown }).rows);
  });
});

describe('seeded random streams: EntityLog + eventRejection equal the oracle, for every group', () => {
  const SKEW = 5 * MIN;
  // A lateness beyond the longest window also leaves some later events unchanged (no correction row).
  const cases: [OracleGroupName, number, number][] = [
    ['account', 1, HOUR_MS],
    ['account', 2, HOUR_MS],
    ['account', 3, 30 * HOUR_MS],
    ['user', 4, HOUR_MS],
    ['user', 5, 30 * HOUR_MS],
    ['item', 6, HOUR_MS],
    ['item', 7, 30 * HOUR_MS],
  ];

  it.each(cases)('%s, seed %i, lateness %i ms: outputs (rows, corrections, late, rejects), trims, and instants', (name, seed, LATENESS) => {
    const raw = randomEvents(name, { seed, n: 500, entities: 8, t0: T0, latenessMs: LATENESS, sleepyEvery: 110 });
    const records = raw.map((value) => ({ value, timestamp: T0 + 30 * DAY_MS }));
    const oracle = runOracle(name, records, { latenessMs: LATENESS, maxClockSkewMs: SKEW, topic: TOPIC });
    const expected = oracle.expected();

    // The stream exercises what it should.
    const outcomes = oracle.outcomes;
    expect(outcomes.filter((o) => o.kind === 'reject' && o.code === 'FABRIC_RECORD_REJECTED').length).toBeGreaterThan(0);
    expect(outcomes.filter((o) => o.kind === 'reject' && o.code === 'FABRIC_EVENT_TIME_SKEW').length).toBeGreaterThan(0);
    expect(outcomes.filter((o) => o.kind === 'late').length).toBeGreaterThan(0);
    expect(outcomes.filter((o) => o.kind === 'duplicate').length).toBeGreaterThan(0);
    if (LATENESS < DAY_MS) {
      // Retries of recent records, some already beyond the short lateness.
      expect(outcomes.filter((o, i) => o.kind === 'duplicate' && (raw[i]!.ts as number) < o.newestTs - LATENESS).length).toBeGreaterThan(0);
    } else {
      // An event far enough behind leaves the later events outside its windows unchanged (no row for them).
      expect(outcomes.filter((o) => o.kind === 'admitted' && o.unchanged > 0).length).toBeGreaterThan(0);
    }
    expect(oracle.rows().filter((r) => r.version !== r.source_offset).length).toBeGreaterThan(0);

    const rand = seededUniform(seed * 31);
    const plain = simulate(name, records, { latenessMs: LATENESS, maxClockSkewMs: SKEW, rand, trim: false });
    expect(plain.outputs).toEqual(expected);
    const trimmed = simulate(name, records, { latenessMs: LATENESS, maxClockSkewMs: SKEW, rand, trim: true });
    expect(trimmed.outputs).toEqual(expected);
    expect([...trimmed.logs.values()].some((log) => log.events.length < oracle.eventsOf(log.entityId).length)).toBe(true);

    const g = GROUPS[name];
    for (const entity of oracle.entities()) {
      const events = oracle.eventsOf(entity);
      const newest = oracle.newestTs(entity)!;
      const first = Math.min(...events.map((e) => e.ts));
      const instants = [first - 1, first, newest - HOUR_MS, newest, newest + HOUR_MS, newest + DAY_MS, ...events.flatMap((e) => [e.ts - 1, e.ts, e.ts + HOUR_MS, e.ts + DAY_MS])];
      for (let k = 0; k < 20; k++) instants.push(Math.floor(first - HOUR_MS + rand() * (newest - first + 2 * DAY_MS)));
      const all = plain.logs.get(entity)!.events;
      const kept = trimmed.logs.get(entity)!.events;
      const bound = trimmed.bounds.get(entity);
      // The latest row: the newest computation of the greatest event.
      expect(plain.logs.get(entity)!.latestRow).toEqual(oracle.latestRow(entity));
      for (const t of instants) {
        const want = oracle.atInstant(entity, t);
        expect(evaluate(g, all, { instant: t }), `${entity} at ${t}`).toEqual(want);
        // What a trimmed store still answers exactly: instants whose longest window starts at or after the bound.
        if (bound === undefined || t - g.maxWindowMs >= bound) expect(evaluate(g, kept, { instant: t }), `${entity} at ${t} (trimmed)`).toEqual(want);
      }
      // Every event's newest row, from the untrimmed log.
      for (const e of events) {
        const row = oracle.newestRows.get(e.offset)!;
        const values = evaluate(g, all, { event: e });
        for (const f of g.featureNames) expect(values[f], `${entity} offset ${e.offset} ${f}`).toBe(row[f]);
      }
    }
  });
});

describe('per-event transforms', () => {
  const group = featureGroup({
    name: 'probe_tx',
    stream: 'transactions',
    schema: 'transaction',
    entity: 'account_id',
    transforms: {
      amount_cents: { type: 'number', inputs: ['amount'], fn: (e) => Math.round((e.amount as number) * 100) },
      big: { type: 'boolean', inputs: ['amount'], fn: (e) => (e.amount as number) > 100 },
    },
    features: {
      probe_cents_1h: sum('amount_cents', '1h'),
      probe_big_1h: count('1h', { where: { big: true } }),
      probe_last_big: lastValue('big'),
    },
  });
  const T = 1_700_000_000_000;
  const raw = (amount: number) => ({ amount, account_id: 'a', counterparty_id: 'c' });

  it('stores only the raw inputs and derives the transforms on every path', () => {
    expect(group.fields).toEqual(['amount']);
    const events = [featureEvent(group, 'x', T, 0, raw(50.5)), featureEvent(group, 'y', T + 1000, 1, raw(250)), featureEvent(group, 'z', T + 2000, 2, raw(99.99))];
    expect(evaluate(group, events, { instant: T + 2000 })).toEqual({ probe_cents_1h: 5050 + 25000 + 9999, probe_big_1h: 1, probe_last_big: false });
    expect(evaluate(group, events, { event: events[1]! })).toEqual({ probe_cents_1h: 5050 + 25000, probe_big_1h: 1, probe_last_big: true });
    // A member round trip recomputes them from the stored amount.
    const member = encodeMember(group, events[1]!);
    expect(JSON.parse(member)).toEqual({ $o: 1, $t: T + 1000, $i: 'y', amount: 250 });
    expect(decodeMember(group, member)!.fields).toMatchObject({ amount: 250, amount_cents: 25000, big: true });
  });

  it('refuses a transform reading an unknown field, and an aggregation of the wrong type over one', () => {
    const base = { name: 'probe_bad', stream: 'transactions', schema: 'transaction' as const, entity: 'account_id' };
    expect(() => featureGroup({ ...base, transforms: { t: { type: 'number', inputs: ['amout'], fn: () => 1 } }, features: { probe_t: sum('t', '1h') } })).toThrow(/feature group probe_bad, transform t: unknown field "amout"/);
    expect(() => featureGroup({ ...base, transforms: { flag: { type: 'boolean', inputs: ['amount'], fn: () => true } }, features: { probe_f: sum('flag', '1h') } })).toThrow(/feature group probe_bad, feature probe_f: transform flag is boolean, number needed/);
  });
});
