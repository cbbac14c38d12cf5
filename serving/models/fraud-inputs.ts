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

/**
 * Every input the fraud task can feed a model, by name (null when missing): the event's numeric fields,
 * the derived balance error and type one-hot, and the account features. A model's signature picks
 * and orders what it takes (and says what a missing value becomes).
 */
export function fraudInputValues(txn: Transaction, f: Readonly<FeatureValues>): Record<string, number | null> {
  const values: Record<string, number | null> = {
    amount: txn.amount,
    old_balance: txn.old_balance,
    new_balance: txn.new_balance,
    // Money that appears or vanishes: PaySim fraud empties accounts without the balance adding up.
    balance_error: Math.round((txn.old_balance - txn.amount - txn.new_balance) * 100) / 100,
  };
  for (const t of TransactionTypeSymbols) values[`type_${t}`] = txn.type === t ? 1 : 0;
  for (const name of ACCOUNT_FEATURE_NAMES) {
    const v = f[name];
    values[name] = typeof v === 'number' ? v : null;
  }
  return values;
}

/** The training vector (FRAUD_INPUT_NAMES order, missing as -1): what model 1.0.0 was trained on. */
export function fraudInputRow(txn: Transaction, f: Readonly<FeatureValues>): number[] {
  const values = fraudInputValues(txn, f);
  return FRAUD_INPUT_NAMES.map((name) => values[name] ?? MISSING);
}

/** Where a fraud input comes from and what a missing value becomes (the manifest's signature entries). */
export type FraudInputSource =
  | { readonly name: string; readonly source: 'event' | 'derived'; readonly missing: { readonly policy: 'default'; readonly value: number } }
  | { readonly name: string; readonly source: 'feature'; readonly group: 'account'; readonly missing: { readonly policy: 'default'; readonly value: number } };

const DEFAULT_MISSING = Object.freeze({ policy: 'default' as const, value: MISSING });
const EVENT_INPUTS: readonly string[] = ['amount', 'old_balance', 'new_balance'];

/** FRAUD_INPUT_NAMES with their sources: event fields, derived balance error and type one-hot, account features. */
export const FRAUD_INPUT_SOURCES: readonly FraudInputSource[] = Object.freeze(
  FRAUD_INPUT_NAMES.map((name): FraudInputSource => {
    if ((ACCOUNT_FEATURE_NAMES as readonly string[]).includes(name)) return Object.freeze({ name, source: 'feature' as const, group: 'account' as const, missing: DEFAULT_MISSING });
    return Object.freeze({ name, source: EVENT_INPUTS.includes(name) ? ('event' as const) : ('derived' as const), missing: DEFAULT_MISSING });
  }),
);
