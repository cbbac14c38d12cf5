import type { Redis } from 'ioredis';
import { FabricError, messageOf } from '../../topology/errors.js';
import type { AttributeValue } from '../../topology/metadata.js';

/**
 * Entity metadata in Redis for millisecond lookups: one JSON string per entity
 * (`<prefix>meta:<kind>:<id>`), read for many ids in one MGET. Written only by the metadata processor
 * from `_fabric.metadata`, in offset order; each value carries the offset it came from, and a write
 * older than what is stored is ignored (a script compares and sets atomically), so a zombie instance
 * or a replay never moves an entity back. A delete leaves a marker with its offset for a week (long
 * after the topic's tombstone is compacted away), for the same reason.
 */
export type Attributes = Readonly<Record<string, AttributeValue>>;

export type MetadataChange =
  | { readonly kind: string; readonly id: string; readonly offset: number; readonly attributes: Attributes; readonly updatedAt: number }
  | { readonly kind: string; readonly id: string; readonly offset: number; readonly deleted: true };

interface Stored {
  readonly offset: number;
  readonly attributes?: Attributes;
  readonly updated_at?: number;
  readonly deleted?: true;
}

const APPLY_IF_NEWER = `
local cur = redis.call('GET', KEYS[1])
if cur then
  local ok, doc = pcall(cjson.decode, cur)
  if ok and type(doc) == 'table' and doc.offset and tonumber(doc.offset) >= tonumber(ARGV[1]) then return 0 end
end
if ARGV[3] == '' then
  redis.call('SET', KEYS[1], ARGV[2])
else
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
end
return 1
`;

const DELETE_MARKER_TTL_MS = 7 * 86_400_000;

type WithScript = { fabricMetaApply(key: string, offset: number, value: string, ttl: string): void };

export class MetadataStore {
  constructor(private readonly redis: Redis, private readonly keyPrefix: string) {
    if (!('fabricMetaApply' in redis)) redis.defineCommand('fabricMetaApply', { numberOfKeys: 1, lua: APPLY_IF_NEWER });
  }

  key(kind: string, id: string): string {
    return `${this.keyPrefix}meta:${kind}:${id}`;
  }

  /** Attributes by id for the ids known (deleted and unknown ids are absent), in one round trip. */
  async getMany(kind: string, ids: readonly string[]): Promise<Map<string, Attributes>> {
    const out = new Map<string, Attributes>();
    if (ids.length === 0) return out;
    let values: (string | null)[];
    try {
      values = await this.redis.mget(ids.map((id) => this.key(kind, id)));
    } catch (err) {
      throw new FabricError('FABRIC_SINK_FAILED', `metadata store: reading ${ids.length} ${kind} records: ${messageOf(err)}`, { cause: err });
    }
    values.forEach((v, i) => {
      if (v === null) return;
      const stored = JSON.parse(v) as Stored;
      if (!stored.deleted && stored.attributes) out.set(ids[i]!, stored.attributes);
    });
    return out;
  }

  async get(kind: string, id: string): Promise<{ attributes: Attributes; updatedAt: number; offset: number } | null> {
    let v: string | null;
    try {
      v = await this.redis.get(this.key(kind, id));
    } catch (err) {
      throw new FabricError('FABRIC_SINK_FAILED', `metadata store: reading ${kind} ${JSON.stringify(id)}: ${messageOf(err)}`, { cause: err });
    }
    if (v === null) return null;
    const stored = JSON.parse(v) as Stored;
    return stored.deleted || !stored.attributes ? null : { attributes: stored.attributes, updatedAt: stored.updated_at ?? 0, offset: stored.offset };
  }

  /** Applies changes in order, each only if newer than what is stored; one pipeline. Returns how many applied. */
  async apply(changes: readonly MetadataChange[]): Promise<number> {
    if (changes.length === 0) return 0;
    const pipeline = this.redis.pipeline() as unknown as WithScript & { exec(): Promise<[Error | null, unknown][] | null> };
    for (const c of changes) {
      const stored: Stored = 'deleted' in c ? { offset: c.offset, deleted: true } : { offset: c.offset, attributes: c.attributes, updated_at: c.updatedAt };
      pipeline.fabricMetaApply(this.key(c.kind, c.id), c.offset, JSON.stringify(stored), 'deleted' in c ? String(DELETE_MARKER_TTL_MS) : '');
    }
    let results: [Error | null, unknown][] | null;
    try {
      results = await pipeline.exec();
    } catch (err) {
      throw new FabricError('FABRIC_SINK_FAILED', `metadata store: ${messageOf(err)}`, { cause: err });
    }
    let applied = 0;
    for (const [err, value] of results ?? []) {
      if (err) throw new FabricError('FABRIC_SINK_FAILED', `metadata store: ${messageOf(err)}`, { cause: err });
      applied += Number(value);
    }
    return applied;
  }
}
