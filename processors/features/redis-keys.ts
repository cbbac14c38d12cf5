import type { AccountEventRef } from './account.js';

/** Redis key layout of the account feature group, in one place for the processor, scoring and the CLI. */
export function accountKeys(prefix: string) {
  return {
    /** ZSET of the account's retained events: score = event time, member = encodeMember(event). */
    window: (accountId: string) => `${prefix}win:account:${accountId}`,
    /** HASH of the features as of the account's greatest event by (ts, offset), with its ts, event_id and offset. */
    latest: (accountId: string) => `${prefix}feat:account:${accountId}`,
  };
}

/**
 * A window member: the event's offset, id, amount and counterparty as a JSON array (any characters in
 * ids survive). The encoding is a pure function of the source record, so re-adding the member of a
 * redelivered record is a no-op.
 */
export function encodeMember(e: Omit<AccountEventRef, 'ts'>): string {
  return JSON.stringify([e.offset, e.eventId, e.amount, e.counterpartyId]);
}

/** Null for a member this layout did not write (e.g. left by an older version): it is ignored. */
export function decodeMember(member: string, score: string): AccountEventRef | null {
  let parsed: unknown;
  try {
    parsed = JSON.parse(member);
  } catch {
    return null;
  }
  if (!Array.isArray(parsed) || parsed.length !== 4) return null;
  const [offset, eventId, amount, counterpartyId] = parsed as unknown[];
  if (typeof offset !== 'number' || typeof eventId !== 'string' || typeof amount !== 'number' || typeof counterpartyId !== 'string') return null;
  return { offset, eventId, amount, counterpartyId, ts: Number(score) };
}
