/** Redis key layout of the account feature group, in one place for the processor, scoring and the CLI. */
export function accountKeys(prefix: string) {
  return {
    /** ZSET of the account's recent events: member `event_id \u001f amount \u001f counterparty`, score event time. */
    window: (accountId: string) => `${prefix}win:account:${accountId}`,
    /** HASH of the latest features (as of the account's newest event). */
    latest: (accountId: string) => `${prefix}feat:account:${accountId}`,
    /** STRING (JSON) of the features as of one event, for scoring and replays. */
    snapshot: (eventId: string) => `${prefix}fsnap:account:${eventId}`,
  };
}

const SEP = '\u001f';

export function encodeMember(eventId: string, amount: number, counterpartyId: string): string {
  return `${eventId}${SEP}${amount}${SEP}${counterpartyId}`;
}

export function decodeMember(member: string, score: string): { eventId: string; ts: number; amount: number; counterpartyId: string } | null {
  const parts = member.split(SEP);
  if (parts.length !== 3) return null;
  return { eventId: parts[0]!, amount: Number(parts[1]), counterpartyId: parts[2]!, ts: Number(score) };
}
