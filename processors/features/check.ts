import type { Redis } from 'ioredis';
import type { ClickHouseClient } from '../../topology/runtime/clickhouse.js';
import { sqlIdentifier, sqlLiteral } from '../../topology/runtime/clickhouse.js';
import type { FeatureGroup } from '../../topology/features/definition.js';
import type { FeatureValue, FeatureValues } from '../../topology/features/engine.js';
import { featureTable } from '../../topology/features/rows.js';
import { FabricError, messageOf } from '../../topology/errors.js';
import { groupKeys } from '../../serving/features/redis-keys.js';
import { MAX_ONLINE_ENTITIES, readLatestRows, readOnlineFeatures, type OnlineFeatures } from '../../serving/features/online.js';
import { loadHistory, offlineFeatures } from './offline.js';

export interface CheckDifference {
  readonly entity: string;
  /** as_of: the values at the instant; latest: Redis' latest hash against the latest offline row; missing: an entity one side lacks. */
  readonly what: 'as_of' | 'latest' | 'missing';
  readonly feature: string;
  readonly online: FeatureValue | undefined;
  readonly offline: FeatureValue | undefined;
}

export interface CheckReport {
  readonly group: string;
  readonly as_of: string;
  readonly sampled: number;
  readonly checked: number;
  /** Entities whose online store no longer holds the instant (compare at a later --at, or read offline). */
  readonly skipped: number;
  /** Entities with at least one difference (an offline store still behind after the wait counts). */
  readonly mismatches: number;
  readonly lagging: number;
  readonly differences: readonly CheckDifference[];
}

/**
 * The online/offline consistency check: for sampled entities, the online value as of `asOf` (Redis,
 * the stream's state) against the offline value at the same instant (the same engine over the
 * ClickHouse history), and the latest hash against the latest offline row (invariant 4). The offline
 * store trails the online one by the tracking processor's lag: an entity whose latest offline row is
 * older than its latest online one is re-checked until `waitMs` has passed, then counted.
 */
export async function checkFeatures(options: { redis: Redis; keyPrefix: string; ch: ClickHouseClient; database: string; group: FeatureGroup; sample: number; asOf: number; seed: number; waitMs: number }): Promise<CheckReport> {
  const { redis, keyPrefix, ch, database, group, asOf } = options;
  const entities = sample(await scanEntities(redis, keyPrefix, group), options.sample, options.seed);
  const deadline = Date.now() + options.waitMs;
  let pending = entities;
  const differences: CheckDifference[] = [];
  const mismatched = new Set<string>();
  let skipped = 0;
  let lagging: string[] = [];
  for (;;) {
    lagging = [];
    const online: OnlineFeatures[] = [];
    for (let i = 0; i < pending.length; i += MAX_ONLINE_ENTITIES) online.push(...(await readOnlineFeatures(redis, keyPrefix, group, pending.slice(i, i + MAX_ONLINE_ENTITIES), asOf)));
    const latestOnline = await readLatestRows(redis, keyPrefix, group, pending);
    const latestOffline = await latestRows(ch, database, group, pending);
    const history = await loadHistory(ch, database, group, { entities: pending });
    pending.forEach((entity, i) => {
      const on = latestOnline[i];
      const off = latestOffline.get(entity);
      if (on && (!off || off.ts < on.ts || (off.ts === on.ts && (off.offset < on.offset || (off.offset === on.offset && off.version < on.version))))) {
        lagging.push(entity);
        return;
      }
      const diffs: CheckDifference[] = [];
      if (!on || !off) diffs.push({ entity, what: 'missing', feature: '*', online: on ? 'present' : undefined, offline: off ? 'present' : undefined });
      else if (off.ts !== on.ts || off.offset !== on.offset || off.version !== on.version) diffs.push({ entity, what: 'latest', feature: '(ts, offset, version)', online: `${on.ts},${on.offset},${on.version}`, offline: `${off.ts},${off.offset},${off.version}` });
      else diffs.push(...compare(group, entity, 'latest', on.values, off.values));
      const o = online[i]!;
      if (!o.exact) skipped++;
      else diffs.push(...compare(group, entity, 'as_of', o.values, offlineFeatures(group, history, entity, asOf)));
      if (diffs.length > 0) {
        mismatched.add(entity);
        differences.push(...diffs);
      }
    });
    if (lagging.length === 0 || Date.now() >= deadline) break;
    pending = lagging;
    await new Promise((r) => setTimeout(r, 1000));
  }
  for (const entity of lagging) {
    mismatched.add(entity);
    differences.push({ entity, what: 'latest', feature: '(offline store behind)', online: 'newer', offline: 'older' });
  }
  return {
    group: group.name,
    as_of: new Date(asOf).toISOString(),
    sampled: entities.length,
    checked: entities.length - lagging.length,
    skipped,
    mismatches: mismatched.size,
    lagging: lagging.length,
    differences,
  };
}

/**
 * As-of values are computed by one engine from exact inputs on both sides: equal or different. The
 * latest row's Float64 columns went through ClickHouse's text parser, which on 18.16 may land one ulp
 * off (see exactColumn()): those compare within a few ulps.
 */
function compare(group: FeatureGroup, entity: string, what: 'as_of' | 'latest', online: FeatureValues | null, offline: FeatureValues | null): CheckDifference[] {
  if (online === null || offline === null) return online === offline ? [] : [{ entity, what: 'missing', feature: '*', online: online ? 'present' : undefined, offline: offline ? 'present' : undefined }];
  const same = (a: FeatureValue, b: FeatureValue): boolean => a === b || (what === 'latest' && typeof a === 'number' && typeof b === 'number' && Math.abs(a - b) <= 4 * Number.EPSILON * Math.max(Math.abs(a), Math.abs(b)));
  return group.featureNames.filter((n) => !same(online[n]!, offline[n]!)).map((n) => ({ entity, what, feature: n, online: online[n], offline: offline[n] }));
}

/** Every entity with a latest hash in Redis. */
async function scanEntities(redis: Redis, keyPrefix: string, group: FeatureGroup): Promise<string[]> {
  const prefix = groupKeys(keyPrefix, group).latest('');
  const found: string[] = [];
  let cursor = '0';
  do {
    const [next, keys] = await redis.scan(cursor, 'MATCH', `${prefix.replace(/[*?[\]\\]/g, '\\$&')}*`, 'COUNT', 1000);
    cursor = next;
    for (const k of keys) found.push(k.slice(prefix.length));
  } while (cursor !== '0');
  return found.sort();
}

/** A seeded sample without replacement (a partial Fisher-Yates with a small LCG). */
function sample<T>(items: T[], n: number, seed: number): T[] {
  const a = [...items];
  let s = (seed >>> 0) || 1;
  const next = (): number => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
  const k = Math.min(n, a.length);
  for (let i = 0; i < k; i++) {
    const j = i + Math.floor(next() * (a.length - i));
    [a[i], a[j]] = [a[j]!, a[i]!];
  }
  return a.slice(0, k);
}

/** The latest offline row per entity: greatest (ts, offset), with its version and features. */
async function latestRows(ch: ClickHouseClient, database: string, group: FeatureGroup, entities: readonly string[]): Promise<Map<string, { ts: number; offset: number; version: number; values: FeatureValues }>> {
  const out = new Map<string, { ts: number; offset: number; version: number; values: FeatureValues }>();
  if (entities.length === 0) return out;
  const query = `SELECT entity_id, ts_ms, source_offset, version, ${group.featureNames.join(', ')} FROM ${sqlIdentifier(database)}.${featureTable(group)} FINAL WHERE entity_id IN (${entities.map(sqlLiteral).join(', ')}) ORDER BY entity_id, ts_ms DESC, source_offset DESC LIMIT 1 BY entity_id`;
  try {
    const rs = await ch.query({ query, format: 'JSONEachRow' });
    for (const r of await rs.json<Record<string, unknown>>()) {
      const values: FeatureValues = {};
      for (const f of group.features) {
        const v = r[f.name];
        values[f.name] = v === null || v === undefined ? null : f.type === 'long' || f.type === 'double' ? Number(v) : f.type === 'boolean' ? Number(v) === 1 : (v as string);
      }
      out.set(r.entity_id as string, { ts: Number(r.ts_ms), offset: Number(r.source_offset), version: Number(r.version), values });
    }
  } catch (err) {
    throw new FabricError('FABRIC_SINK_FAILED', `reading the latest rows of ${featureTable(group)} failed: ${messageOf(err)}`, { cause: err });
  }
  return out;
}
