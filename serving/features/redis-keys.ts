import type { ChainableCommander } from 'ioredis';
import type { FeatureGroup, Scalar } from '../../topology/features/definition.js';
import type { FeatureEvent, FeatureValues } from '../../topology/features/engine.js';
import type { FeatureRow } from '../../topology/features/rows.js';

/** Redis key layout of the feature groups, in one place for the processor, online reads and the CLI. */
export function groupKeys(prefix: string, group: FeatureGroup | string) {
  const name = typeof group === 'string' ? group : group.name;
  return {
    /** ZSET of the entity's retained events: score = event time, member = encodeMember(event). */
    window: (entity: string) => `${prefix}win:${name}:${entity}`,
    /**
     * HASH of the features as of the entity's greatest event by (ts, offset), with its ts, offset,
     * version and event_id, plus trim_bound: the greatest event time trimmed so far (reads whose
     * windows start at or after it are exact; a function of what was removed, not of batch timing).
     */
    latest: (entity: string) => `${prefix}feat:${name}:${entity}`,
  };
}

/**
 * A window member: one JSON object with the event's offset (`$o`), time (`$t`, also the score) and id
 * (`$i`), then its stored fields (names are lower snake case, so they cannot clash). A pure function of
 * the source record and the definition, so re-adding a redelivered or replayed record's member is a
 * no-op. Reads parse one flat object per member (no scores to fetch): the online read's main cost.
 */
export function encodeMember(group: FeatureGroup, e: FeatureEvent): string {
  const m: Record<string, Scalar> = { $o: e.offset, $t: e.ts, $i: e.eventId };
  for (const f of group.fields) m[f] = e.fields[f] ?? null;
  return JSON.stringify(m);
}

/**
 * Queues ZADDs of the events' members on a pipeline or MULTI, in chunks: one call per event set could
 * pass more arguments than a JavaScript call takes (a hot entity after a long outage, a backfill).
 */
export function addMembers(write: ChainableCommander, key: string, group: FeatureGroup, events: readonly FeatureEvent[]): void {
  for (let i = 0; i < events.length; i += 5000) write.zadd(key, ...events.slice(i, i + 5000).flatMap((e) => [e.ts, encodeMember(group, e)]));
}

/**
 * Null for a member this layout did not write (e.g. left by an older version): it is ignored. A stored
 * field the member lacks (added to the definition since) reads as null until a backfill --online.
 */
export function decodeMember(group: FeatureGroup, member: string): FeatureEvent | null {
  let m: Record<string, unknown>;
  try {
    m = JSON.parse(member) as Record<string, unknown>;
  } catch {
    return null;
  }
  if (m === null || typeof m !== 'object' || typeof m.$o !== 'number' || typeof m.$t !== 'number' || typeof m.$i !== 'string') return null;
  // The parsed object serves as the event's fields (its $ keys are never a field name).
  for (const f of group.fields) if (!(f in m)) m[f] = null;
  for (const [name, t] of group.transformList) m[name] = t.fn(m as Record<string, Scalar>);
  return { eventId: m.$i, ts: m.$t, offset: m.$o, fields: m as Record<string, Scalar> };
}

/** Decodes a list of members (ZRANGE without scores: the time is in the member). */
export function decodeMembers(group: FeatureGroup, members: readonly string[]): FeatureEvent[] {
  const events: FeatureEvent[] = [];
  for (const member of members) {
    const e = decodeMember(group, member);
    if (e) events.push(e);
  }
  return events;
}

/** The latest hash's fields for a row: features (empty string = null) plus its event's identity. */
export function latestFields(group: FeatureGroup, row: FeatureRow): string[] {
  const out: string[] = [];
  for (const name of group.featureNames) out.push(name, row[name] === null || row[name] === undefined ? '' : String(row[name]));
  out.push('ts', String(row.ts), 'offset', String(row.source_offset), 'version', String(row.version), 'event_id', row.event_id);
  return out;
}

export interface LatestRow {
  readonly event_id: string;
  readonly ts: number;
  readonly offset: number;
  readonly version: number;
  readonly values: FeatureValues;
}

/** A latest hash (HGETALL) back into its row; null when the entity has none. */
export function parseLatest(group: FeatureGroup, raw: Record<string, string>): LatestRow | null {
  if (!raw.ts) return null;
  const values: FeatureValues = {};
  for (const f of group.features) {
    const v = raw[f.name];
    values[f.name] = v === undefined || v === '' ? null : f.type === 'string' ? v : f.type === 'boolean' ? v === 'true' : Number(v);
  }
  return { event_id: raw.event_id ?? '', ts: Number(raw.ts), offset: Number(raw.offset), version: Number(raw.version ?? 0), values };
}
