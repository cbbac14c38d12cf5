import type { Transaction } from '../../schemas/types.generated.js';
import { TransactionTypeSymbols } from '../../schemas/types.generated.js';
import type { AccountFeatures } from '../features/account.js';

/**
 * The fraud model's input vector: one definition used by the training-set builder and by online
 * scoring, so training and serving cannot disagree on column order or imputation.
 * Missing values (a first event's gap, an empty window's average) are imputed as -1, which the
 * tree model learns to separate from real values (all real values are >= 0).
 */
export const FRAUD_INPUT_NAMES = [
  'amount',
  'old_balance',
  'new_balance',
  'balance_error',
  ...TransactionTypeSymbols.map((t) => `type_${t}`),
  'txn_count_1h',
  'txn_count_24h',
  'amount_sum_1h',
  'amount_sum_24h',
  'amount_avg_24h',
  'amount_max_24h',
  'distinct_counterparties_24h',
  'seconds_since_last_txn',
] as const;

export const MISSING = -1;

export function fraudInputRow(txn: Transaction, f: AccountFeatures): number[] {
  return [
    txn.amount,
    txn.old_balance,
    txn.new_balance,
    // Money that appears or vanishes: PaySim fraud empties accounts without the balance adding up.
    Math.round((txn.old_balance - txn.amount - txn.new_balance) * 100) / 100,
    ...TransactionTypeSymbols.map((t) => (txn.type === t ? 1 : 0)),
    f.txn_count_1h,
    f.txn_count_24h,
    f.amount_sum_1h,
    f.amount_sum_24h,
    f.amount_avg_24h ?? MISSING,
    f.amount_max_24h,
    f.distinct_counterparties_24h,
    f.seconds_since_last_txn ?? MISSING,
  ];
}
