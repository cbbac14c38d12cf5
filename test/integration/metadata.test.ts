import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isolatedConfig, readAll, startTestFabric, waitFor, type TestFabric } from './harness.js';
import { AvroSerde } from '../../schemas/serde.js';
import { loadAvroSchema } from '../../schemas/catalog.js';
import type { EntityMetadata } from '../../schemas/types.generated.js';
import { prefixed } from '../../topology/config.js';
import { DLQ_HEADERS } from '../../topology/runtime/dlq.js';
import { MetadataStore } from '../../serving/metadata/store.js';

/**
 * The metadata store: the webhook (PUT/DELETE/GET /v1/metadata/{kind}/{id}, admin scope), records put
 * on _fabric.metadata by any producer (tombstones delete), bad input refused with a typed error (HTTP)
 * or dead-lettered with its reason (topic), and the store in Redis read back with its types.
 */
let f: TestFabric;
let store: MetadataStore;

beforeAll(async () => {
  f = await startTestFabric(isolatedConfig({ gatewayApiKeys: 'dev-key:*,ops:admin,writer:transactions' }), { processors: ['metadata'] });
  store = new MetadataStore(f.redis, f.config.redisKeyPrefix);
});

afterAll(async () => {
  await f?.cleanup();
});

async function call(method: string, path: string, body?: unknown, key = 'dev-key'): Promise<{ status: number; json: Record<string, unknown> }> {
  const res = await fetch(`${f.url}${path}`, { method, headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' }, ...(body !== undefined ? { body: typeof body === 'string' ? body : JSON.stringify(body) } : {}) });
  return { status: res.status, json: (await res.json()) as Record<string, unknown> };
}

describe('the metadata webhook and store', () => {
  it('PUT stores an item (after Kafka acknowledged it), GET and the store read it back with its types, DELETE removes it', async () => {
    const put = await call('PUT', '/v1/metadata/item/I-1', { title: 'Red kettle', category: 'kitchen', price: 24.5, available: true });
    expect(put.status).toBe(200);
    expect(put.json).toMatchObject({ kind: 'item', id: 'I-1' });
    const got = await waitFor(() => store.getMany('item', ['I-1', 'I-none']), (m) => m.has('I-1'), { what: 'I-1 in the store' });
    expect(got).toEqual(new Map([['I-1', { title: 'Red kettle', category: 'kitchen', price: 24.5, available: true }]]));
    expect((await call('GET', '/v1/metadata/item/I-1', undefined, 'writer')).json).toMatchObject({ kind: 'item', id: 'I-1', attributes: { title: 'Red kettle', price: 24.5 } });
    // An update replaces the attributes (an attribute left out is gone).
    expect((await call('PUT', '/v1/metadata/item/I-1', { title: 'Red kettle', category: 'kitchen', price: 19 })).status).toBe(200);
    await waitFor(() => store.getMany('item', ['I-1']), (m) => m.get('I-1')?.price === 19, { what: 'the update' });
    expect((await store.getMany('item', ['I-1'])).get('I-1')).toEqual({ title: 'Red kettle', category: 'kitchen', price: 19 });
    const del = await call('DELETE', '/v1/metadata/item/I-1', undefined, 'ops');
    expect(del).toEqual({ status: 200, json: { kind: 'item', id: 'I-1', deleted: true } });
    await waitFor(() => store.getMany('item', ['I-1']), (m) => m.size === 0, { what: 'the delete' });
    expect((await call('GET', '/v1/metadata/item/I-1')).status).toBe(404);
  });

  it('refuses bad input with a typed 400, and a key without the admin scope with 403', async () => {
    const unknownKind = await call('PUT', '/v1/metadata/planet/P1', { title: 'x' });
    expect(unknownKind.status).toBe(400);
    expect(unknownKind.json.error).toEqual({ code: 'FABRIC_METADATA_INVALID', message: 'unknown metadata kind "planet"; known: item' });
    const bad = await call('PUT', '/v1/metadata/item/I-2', { title: 'x', category: 'c', price: 'cheap', colour: 'red' });
    expect(bad.status).toBe(400);
    expect((bad.json.error as { message: string }).message).toBe('invalid item metadata: price: must be a finite number, got "cheap"; colour: not an attribute of item (one of title, category, price, brand, available)');
    const missing = await call('PUT', '/v1/metadata/item/I-2', { title: 'x', price: -1 });
    expect((missing.json.error as { message: string }).message).toBe('invalid item metadata: price: must be >= 0, got -1; category: required');
    expect((await call('PUT', '/v1/metadata/item/I-2', '{"title": ')).json.error).toMatchObject({ code: 'FABRIC_HTTP_MALFORMED' });
    expect((await call('PUT', '/v1/metadata/item/I-2', { title: 'x', category: 'c', price: 1 }, 'writer')).status).toBe(403);
    expect((await call('DELETE', '/v1/metadata/item/I-2', undefined, 'writer')).status).toBe(403);
    expect((await call('PUT', '/v1/metadata/item/I-2', { title: 'x', category: 'c', price: 1 }, 'nobody')).status).toBe(401);
    // Bad ids: too long, a control character (percent-encoded), malformed percent-encoding (the gateway keeps serving).
    const long = await call('PUT', `/v1/metadata/item/${'x'.repeat(257)}`, { title: 'x', category: 'c', price: 1 });
    expect(long.status).toBe(400);
    expect(long.json.error).toMatchObject({ code: 'FABRIC_METADATA_INVALID' });
    expect((await call('DELETE', '/v1/metadata/item/a%0Ab')).json.error).toMatchObject({ code: 'FABRIC_METADATA_INVALID' });
    const malformed = await call('PUT', '/v1/metadata/item/%E0%A4%A', { title: 'x', category: 'c', price: 1 });
    expect(malformed).toEqual({ status: 400, json: { error: { code: 'FABRIC_HTTP_MALFORMED', message: 'path segment "%E0%A4%A" is not valid percent-encoding' } } });
    expect((await call('GET', '/v1/metadata/item/%')).status).toBe(400);
    expect((await call('DELETE', '/v1/metadata/planet/P1')).json.error).toMatchObject({ code: 'FABRIC_METADATA_INVALID' });
    expect((await store.getMany('item', ['I-2'])).size).toBe(0);
  });

  it('applies records any producer writes to _fabric.metadata (tombstones delete), and dead-letters bad ones with the reason', async () => {
    const serde = new AvroSerde({ url: f.config.registryUrl });
    const topic = prefixed(f.config, '_fabric.metadata');
    const writer = await serde.writer<EntityMetadata>(`${topic}-value`, loadAvroSchema('metadata'));
    const producer = f.kafka.producer();
    await producer.connect();
    try {
      const record = (id: string, attributes: EntityMetadata['attributes'], kind = 'item'): EntityMetadata => ({ kind, id, attributes, updated_at: 1, source: 'it' });
      await producer.send({
        topic,
        messages: [
          { key: 'item/T-1', value: writer.encode(record('T-1', { title: 'A', category: 'a', price: 1 })) },
          { key: 'item/T-2', value: writer.encode(record('T-2', { title: 'B', category: 'b', price: 2 })) },
          { key: 'item/T-1', value: null },
          { key: 'item/T-3', value: writer.encode(record('T-4', { title: 'C', category: 'c', price: 3 })) },
          { key: 'item/T-5', value: writer.encode(record('T-5', { title: 'D', price: 4 })) },
          { key: 'widget/W-1', value: writer.encode(record('W-1', {}, 'widget')) },
        ],
      });
    } finally {
      await producer.disconnect();
    }
    const dlq = await waitFor(() => readAll(f.kafka, f.config, 'dlq._fabric.metadata'), (r) => r.length >= 3, { what: 'three dead letters' });
    expect(dlq.map((d) => d.headers[DLQ_HEADERS.message]).sort()).toEqual([
      'invalid item metadata: category: required',
      'record key item/T-3 does not match its value (item/T-4)',
      'unknown metadata kind "widget"; known: item',
    ]);
    expect(dlq.every((d) => d.headers[DLQ_HEADERS.code] === 'FABRIC_METADATA_INVALID')).toBe(true);
    expect(await store.getMany('item', ['T-1', 'T-2', 'T-3', 'T-4', 'T-5'])).toEqual(new Map([['T-2', { title: 'B', category: 'b', price: 2 }]]));
  });

  it('never moves an entity back: a write older (by offset) than the stored one is ignored, a delete included', async () => {
    const older = { kind: 'item', id: 'Z-1', attributes: { title: 'old', category: 'z', price: 1 }, updatedAt: 1 };
    expect(await store.apply([{ ...older, offset: 10, attributes: { title: 'new', category: 'z', price: 2 } }, { ...older, offset: 9 }])).toBe(1);
    expect((await store.getMany('item', ['Z-1'])).get('Z-1')).toEqual({ title: 'new', category: 'z', price: 2 });
    expect(await store.apply([{ kind: 'item', id: 'Z-1', offset: 11, deleted: true }, { ...older, offset: 10 }])).toBe(1);
    expect((await store.getMany('item', ['Z-1'])).size).toBe(0);
  });
});
