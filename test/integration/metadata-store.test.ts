import { randomBytes } from 'node:crypto';
import { afterAll, beforeEach, describe, expect, it, vi } from 'vitest';
import { Redis } from 'ioredis';
import { loadConfig } from '../../topology/config.js';
import { isFabricError } from '../../topology/errors.js';
import { MetadataStore, type MetadataChange } from '../../serving/metadata/store.js';

/**
 * The metadata store against the real Redis: one MGET per lookup, values read back with their JSON
 * types, and every write applied only if its offset is newer than the stored one (so a replay of the
 * compacted topic, or a zombie instance, never moves an entity back), deletes included.
 */
const redis = new Redis(loadConfig().redisUrl);
const prefixes: string[] = [];
let prefix: string;
let store: MetadataStore;

beforeEach(() => {
  prefix = `it-${randomBytes(4).toString('hex')}:`;
  prefixes.push(prefix);
  store = new MetadataStore(redis, prefix);
});

afterAll(async () => {
  for (const p of prefixes) {
    const keys = await redis.keys(`${p}*`);
    if (keys.length) await redis.del(...keys);
  }
  redis.disconnect();
});

const upsert = (id: string, offset: number, attributes: Record<string, string | number | boolean | null>, kind = 'item'): MetadataChange => ({ kind, id, offset, attributes, updatedAt: 1000 + offset });
const del = (id: string, offset: number, kind = 'item'): MetadataChange => ({ kind, id, offset, deleted: true });

describe('MetadataStore', () => {
  it('reads many ids in one round trip (MGET), with their types; unknown ids are absent', async () => {
    expect(await store.apply([upsert('A', 0, { title: 'Alpha', category: 'c1', price: 12.5, available: false, brand: null }), upsert('B', 1, { title: 'Beta', category: 'c2', price: 0 })])).toBe(2);
    const send = vi.spyOn(redis, 'sendCommand');
    try {
      const got = await store.getMany('item', ['A', 'missing', 'B']);
      expect(send.mock.calls.map(([cmd]) => cmd.name)).toEqual(['mget']);
      expect(got).toEqual(
        new Map<string, unknown>([
          ['A', { title: 'Alpha', category: 'c1', price: 12.5, available: false, brand: null }],
          ['B', { title: 'Beta', category: 'c2', price: 0 }],
        ]),
      );
      expect(typeof got.get('A')!.price).toBe('number');
      expect(got.get('A')!.available).toBe(false);
      send.mockClear();
      expect(await store.getMany('item', [])).toEqual(new Map());
      expect(send).not.toHaveBeenCalled();
    } finally {
      send.mockRestore();
    }
    expect(await redis.get(`${prefix}meta:item:A`)).toBe(JSON.stringify({ offset: 0, attributes: { title: 'Alpha', category: 'c1', price: 12.5, available: false, brand: null }, updated_at: 1000 }));
    expect(await store.get('item', 'B')).toEqual({ attributes: { title: 'Beta', category: 'c2', price: 0 }, updatedAt: 1001, offset: 1 });
    expect(await store.get('item', 'missing')).toBeNull();
    // Kinds are separate key spaces.
    expect(await store.getMany('other', ['A'])).toEqual(new Map());
  });

  it('applies a batch in order, each write only if newer than the stored offset', async () => {
    // Same key twice in one batch: the later offset wins; an older one after it is ignored.
    expect(await store.apply([upsert('X', 5, { title: 'v5', category: 'c', price: 5 }), upsert('X', 7, { title: 'v7', category: 'c', price: 7 }), upsert('X', 6, { title: 'v6', category: 'c', price: 6 })])).toBe(2);
    expect((await store.getMany('item', ['X'])).get('X')).toEqual({ title: 'v7', category: 'c', price: 7 });
    // A replay of the same offset changes nothing (idempotent), even with other content.
    expect(await store.apply([upsert('X', 7, { title: 'other', category: 'c', price: 1 })])).toBe(0);
    expect((await store.get('item', 'X'))?.attributes.title).toBe('v7');
    // A replay of the whole history from offset 0 ends where it was.
    expect(await store.apply([upsert('X', 0, { title: 'v0', category: 'c', price: 0 }), upsert('X', 5, { title: 'v5', category: 'c', price: 5 }), upsert('X', 7, { title: 'v7', category: 'c', price: 7 })])).toBe(0);
    expect(await store.get('item', 'X')).toEqual({ attributes: { title: 'v7', category: 'c', price: 7 }, updatedAt: 1007, offset: 7 });
  });

  it('deletes with a marker that keeps its offset: an older upsert never resurrects the entity', async () => {
    await store.apply([upsert('D', 3, { title: 'd', category: 'c', price: 1 })]);
    // An older delete is ignored.
    expect(await store.apply([del('D', 2)])).toBe(0);
    expect((await store.getMany('item', ['D'])).size).toBe(1);
    expect(await store.apply([del('D', 4)])).toBe(1);
    expect(await store.getMany('item', ['D'])).toEqual(new Map());
    expect(await store.get('item', 'D')).toBeNull();
    // The marker outlives the topic's tombstone by days, then expires; upserts do not expire.
    const ttl = await redis.pttl(`${prefix}meta:item:D`);
    expect(ttl).toBeGreaterThan(6.9 * 86_400_000);
    expect(ttl).toBeLessThanOrEqual(7 * 86_400_000);
    expect(await store.apply([upsert('D', 3, { title: 'stale', category: 'c', price: 1 })])).toBe(0);
    expect(await store.getMany('item', ['D'])).toEqual(new Map());
    // A newer upsert brings it back, without an expiry.
    expect(await store.apply([upsert('D', 9, { title: 'back', category: 'c', price: 2 })])).toBe(1);
    expect((await store.getMany('item', ['D'])).get('D')).toEqual({ title: 'back', category: 'c', price: 2 });
    expect(await redis.pttl(`${prefix}meta:item:D`)).toBe(-1);
  });

  it('shares one Redis connection between stores (the script is defined once) and keeps prefixes apart', async () => {
    const otherPrefix = `it-${randomBytes(4).toString('hex')}:`;
    prefixes.push(otherPrefix);
    const other = new MetadataStore(redis, otherPrefix);
    await store.apply([upsert('S', 1, { title: 'mine', category: 'c', price: 1 })]);
    await other.apply([upsert('S', 0, { title: 'theirs', category: 'c', price: 1 })]);
    expect((await store.get('item', 'S'))?.attributes.title).toBe('mine');
    expect((await other.get('item', 'S'))?.attributes.title).toBe('theirs');
    expect(store.key('item', 'S')).toBe(`${prefix}meta:item:S`);
  });

  it('reports an unreachable Redis as a retriable FABRIC_SINK_FAILED', async () => {
    const down = new Redis({ port: 1, host: '127.0.0.1', lazyConnect: true, maxRetriesPerRequest: 0, enableOfflineQueue: false, retryStrategy: () => null });
    down.on('error', () => undefined);
    try {
      const s = new MetadataStore(down, prefix);
      for (const op of [() => s.getMany('item', ['A']), () => s.get('item', 'A'), () => s.apply([upsert('A', 1, { title: 't', category: 'c', price: 1 })])]) {
        const err = await op().then(
          () => null,
          (e: unknown) => e,
        );
        expect(isFabricError(err, 'FABRIC_SINK_FAILED'), String(err)).toBe(true);
        expect((err as { retriable: boolean }).retriable).toBe(true);
      }
    } finally {
      down.disconnect();
    }
  });
});
