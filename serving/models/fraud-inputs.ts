import type { Transaction } from '../../schemas/types.generated.js';
import { TransactionTypeSymbols } from '../../schemas/types.generated.js';
import { accountGroup } from '../../topology/features/groups.js';
import type { FeatureValues } from '../../topology/features/engine.js';

/** The account features the model reads, in the definition's order. */
export const ACCOUNT_FEATURE_NAMES = accountGroup.featureNames;

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
  ...ACCOUNT_FEATURE_NAMES,
] as const;

export const MISSING = -1;

export function fraudInputRow(txn: Transaction, f: Readonly<FeatureValues>): number[] {
  return [
    txn.amount,
    txn.old_balance,
    txn.new_balance,
    // Money that appears or vanishes: PaySim fraud empties accounts without the balance adding up.
    Math.round((txn.old_balance - txn.amount - txn.new_balance) * 100) / 100,
    ...TransactionTypeSymbols.map((t) => (txn.type === t ? 1 : 0)),
    ...ACCOUNT_FEATURE_NAMES.map((name) => {
      const v = f[name];
      return typeof v === 'number' ? v : MISSING;
    }),
  ];
}
