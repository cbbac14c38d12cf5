import { TransactionTypeSymbols } from '../../schemas/types.generated.js';
import type { TaskInputs } from '../registry/entry.js';
import { RECS_CROSS_FEATURE_NAMES } from './recs-inputs.js';

/** Scores one transaction: event fields, derived balance error and type one-hot, account features. */
export const FRAUD_TASK: TaskInputs = Object.freeze({ task: 'fraud', schema: 'transaction', derived: Object.freeze(['balance_error', ...TransactionTypeSymbols.map((t) => `type_${t}`)]) });

/** Scores candidate items for a user: user and item features plus user-item cross features. */
export const RECS_TASK: TaskInputs = Object.freeze({ task: 'recs', schema: 'interaction', derived: RECS_CROSS_FEATURE_NAMES });

/** Every task the fabric has an input builder for. */
export const TASKS: readonly TaskInputs[] = Object.freeze([FRAUD_TASK, RECS_TASK]);
