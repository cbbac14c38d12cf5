import type { FeatureGroup, Scalar } from '../../topology/features/definition.js';
import { featureEvent, type FeatureEvent } from '../../topology/features/engine.js';

/** Redis key layout of the feature groups, in one place for the processor, online reads and the CLI. */
export function groupKeys(prefix: string, group: FeatureGroup | string) {
  const name = typeof group === 'string' ? group : group.name;
  return {
    /** ZSET of the entity's retained events: score = event time, member = encodeMember(event). */
    window: (entity: string) => `${prefix}win:${name}:${entity}`,
    /**
     * HASH of the features as of the entity's greatest event by (ts, offset), with its ts, offset,
     * version and event_id, plus trim_bound (events below it may have been trimmed).
     */
    latest: (entity: string) => `${prefix}feat:${name}:${entity}`,
  };
}

/**
 * A window member: the event's offset, id and stored fields as JSON (any characters in ids survive).
 * A pure function of the source record and the definition, so re-adding a redelivered or replayed
 * record's member is a no-op.
 */
export function encodeMember(group: FeatureGroup, e: FeatureEvent): string {
  const fields: Record<string, Scalar> = {};
  for (const f of group.fields) fields[f] = e.fields[f] ?? null;
  return JSON.stringify([e.offset, e.eventId, fields]);
}

/** Null for a member this layout did not write (e.g. left by an older version): it is ignored. */
export function decodeMember(group: FeatureGroup, member: string, score: string): FeatureEvent | null {
  let parsed: unknown;
  try {
    parsed = JSON.parse(member);
  } catch {
    return null;
  }
  if (!Array.isArray(parsed) || parsed.length !== 3) return null;
  const [offset, eventId, fields] = parsed as unknown[];
  if (typeof offset !== 'number' || typeof eventId !== 'string' || typeof fields !== 'object' || fields === null) return null;
  return featureEvent(group, eventId, Number(score), offset, fields as Record<string, unknown>);
}

/** Decodes ZRANGE ... WITHSCORES output. */
export function decodeMembers(group: FeatureGroup, flat: readonly string[]): FeatureEvent[] {
  const events: FeatureEvent[] = [];
  for (let j = 0; j + 1 < flat.length; j += 2) {
    const e = decodeMember(group, flat[j]!, flat[j + 1]!);
    if (e) events.push(e);
  }
  return events;
}
