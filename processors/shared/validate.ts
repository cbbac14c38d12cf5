import { FabricError } from '../../topology/errors.js';
import { reject, type Output, type SourceRecord } from '../../topology/runtime/processor.js';
import type { Interaction, Transaction } from '../../schemas/types.generated.js';
import type { SchemaName } from '../../schemas/catalog.js';

/** Domain checks beyond the Avro schema: values a schema cannot rule out but no real event has. */
function transactionProblem(t: Transaction): string | null {
  if (!t.event_id) return 'event_id is empty';
  if (!t.account_id) return 'account_id is empty';
  if (!Number.isFinite(t.amount) || t.amount < 0) return `amount must be a finite non-negative number, got ${t.amount}`;
  if (!Number.isFinite(t.old_balance) || !Number.isFinite(t.new_balance)) return 'balances must be finite numbers';
  if (!Number.isSafeInteger(t.ts) || t.ts <= 0) return `ts must be epoch milliseconds, got ${t.ts}`;
  return null;
}

function interactionProblem(i: Interaction): string | null {
  if (!i.event_id) return 'event_id is empty';
  if (!i.user_id) return 'user_id is empty';
  if (!i.item_id) return 'item_id is empty';
  if (!Number.isSafeInteger(i.ts) || i.ts <= 0) return `ts must be epoch milliseconds, got ${i.ts}`;
  return null;
}

/** The domain problem of an event of a stream with this schema, null when it is fine. */
export function eventProblem(schema: SchemaName, value: unknown): string | null {
  if (schema === 'transaction') return transactionProblem(value as Transaction);
  if (schema === 'interaction') return interactionProblem(value as Interaction);
  return null;
}

/** Splits a batch into valid transactions and DLQ outputs for the invalid ones. */
export function splitTransactions(records: readonly SourceRecord[]): { valid: { record: SourceRecord; txn: Transaction }[]; rejects: Output[] } {
  const valid: { record: SourceRecord; txn: Transaction }[] = [];
  const rejects: Output[] = [];
  for (const record of records) {
    const txn = record.value as Transaction;
    const problem = transactionProblem(txn);
    if (problem) rejects.push(reject(record, new FabricError('FABRIC_RECORD_REJECTED', problem)));
    else valid.push({ record, txn });
  }
  return { valid, rejects };
}
