import { describe, expect, it } from 'vitest';
import { FRAUD_INPUT_NAMES, fraudInputRow } from '../../serving/models/fraud-inputs.js';
import { buildFraudTrainingSet, trainingSimOptions, type FraudTrainingSetOptions } from '../../scripts/build-training-set.js';
import { generateTransactions } from '../../sim/transactions.js';
import type { Transaction } from '../../schemas/types.generated.js';

const HOUR_MS = 3_600_000;
const DAY_MS = 24 * HOUR_MS;
const col = (name: (typeof FRAUD_INPUT_NAMES)[number]): number => FRAUD_INPUT_NAMES.indexOf(name);
const round6 = (x: number): number => Math.round(x * 1e6) / 1e6;

describe('buildFraudTrainingSet', () => {
  it('has the model input header and one labelled row per event', () => {
    const set = buildFraudTrainingSet({ seed: 3, count: 5000 });
    expect(set.header).toEqual([...FRAUD_INPUT_NAMES]);
    expect(set.rows).toHaveLength(5000);
    expect(set.labels).toHaveLength(5000);
    expect(set.amounts).toHaveLength(5000);
    expect(set.rows.every((r) => r.length === FRAUD_INPUT_NAMES.length && r.every(Number.isFinite))).toBe(true);
    expect(set.labels.every((l) => l === 0 || l === 1)).toBe(true);
    expect(set.labels.some((l) => l === 1)).toBe(true);
    expect(set.rows.map((r) => r[col('amount')])).toEqual(set.amounts);
    expect(buildFraudTrainingSet({ seed: 3, count: 5000 })).toEqual(set);
  });

  // A small population at a low rate: 5000 events over ~5.8 days, ~17 per account per day, so the
  // 1 h and 24 h windows expire events and some gaps between an account's events exceed 24 h.
  const small: FraudTrainingSetOptions = { seed: 11, count: 5000, accounts: 50, ratePerSec: 0.01 };
  const set = buildFraudTrainingSet(small);
  const events = [...generateTransactions(trainingSimOptions(small))].map((s) => s.event);

  it('computes every row point in time from the account events before it (offset) with ts <= t only', () => {
    const byAccount = new Map<string, { e: Transaction; offset: number }[]>();
    events.forEach((e, offset) => byAccount.set(e.account_id, [...(byAccount.get(e.account_id) ?? []), { e, offset }]));
    let expired = 0;
    let longGaps = 0;
    events.forEach((e, i) => {
      const all = byAccount.get(e.account_id)!;
      const past = all.filter((o) => o.offset <= i && o.e.ts <= e.ts);
      // Independently of the feature engine: the window semantics t - W < ts <= t.
      const row = set.rows[i]!;
      const day = past.filter((o) => o.e.ts > e.ts - DAY_MS);
      const hour = past.filter((o) => o.e.ts > e.ts - HOUR_MS);
      const sum = (xs: typeof past): number => xs.reduce((a, o) => a + o.e.amount, 0);
      expect(row[col('txn_count_24h')]).toBe(day.length);
      expect(row[col('txn_count_1h')]).toBe(hour.length);
      expect(row[col('amount_sum_1h')]).toBeCloseTo(round6(sum(hour)), 5);
      expect(row[col('amount_sum_24h')]).toBeCloseTo(round6(sum(day)), 5);
      expect(row[col('amount_avg_24h')]).toBeCloseTo(round6(sum(day) / day.length), 5);
      expect(row[col('amount_max_24h')]).toBe(Math.max(...day.map((o) => o.e.amount)));
      expect(row[col('distinct_counterparties_24h')]).toBe(new Set(day.map((o) => o.e.counterparty_id)).size);
      expect(row.slice(0, col('type_CASH_IN'))).toEqual(fraudInputRow(e, {}).slice(0, col('type_CASH_IN')));
      const previous = past.filter((o) => o.offset < i).sort((a, b) => b.e.ts - a.e.ts || b.offset - a.offset)[0];
      const gap = previous === undefined ? -1 : (e.ts - previous.e.ts) / 1000;
      expect(row[col('seconds_since_last_txn')]).toBe(gap);
      if (past.length > row[col('txn_count_24h')]!) expired++;
      if (gap > DAY_MS / 1000) longGaps++;
    });
    expect(expired).toBeGreaterThan(1000);
    expect(longGaps).toBeGreaterThan(0);
  });

  it('is not influenced by any later event', () => {
    // Each row rebuilt from a stream cut right after its event (no later event exists) is the same row.
    const n = events.length;
    for (const i of [0, 1, 17, 400, 1234, 2500, Math.floor(n / 2) + 3, n - 200, n - 2]) {
      const cut = buildFraudTrainingSet({ ...small, count: i + 1 });
      expect(cut.rows[i]).toEqual(set.rows[i]);
      expect(cut.labels[i]).toBe(set.labels[i]);
    }
  });
});
