import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { AvroSerde } from '../../schemas/serde.js';
import { isolatedConfig, post, readAll, startTestFabric, transaction, type TestFabric } from './harness.js';

let f: TestFabric;

beforeAll(async () => {
  f = await startTestFabric(isolatedConfig({ gatewayApiKeys: 'dev-key:*,tx-only:transactions', gatewayMaxBodyBytes: 64 * 1024 }), { processors: [] });
});
afterAll(async () => f?.cleanup());

describe('gateway ingest (real Kafka and registry)', () => {
  it('answers health, readiness and Prometheus metrics', async () => {
    expect((await fetch(`${f.url}/healthz`)).status).toBe(200);
    const ready = await fetch(`${f.url}/readyz`);
    expect(ready.status).toBe(200);
    expect(await ready.json()).toMatchObject({ ready: true, checks: { kafka: true } });
    const metrics = await (await fetch(`${f.url}/metrics`)).text();
    expect(metrics).toContain('fabric_gateway_requests_total');
  });

  it('accepts one object, an array and NDJSON with 202 only after Kafka acks', async () => {
    const one = await post(f.url, '/v1/events/transactions', JSON.stringify(transaction(1)));
    expect(one).toMatchObject({ status: 202, body: { accepted: 1, rejected: [] } });
    const many = await post(f.url, '/v1/events/transactions', JSON.stringify([transaction(2), transaction(3)]));
    expect(many.body).toEqual({ accepted: 2, rejected: [] });
    const nd = await post(f.url, '/v1/events/transactions', `${JSON.stringify(transaction(4))}\n${JSON.stringify(transaction(5))}\n`, { 'Content-Type': 'application/x-ndjson' });
    expect(nd.body).toEqual({ accepted: 2, rejected: [] });
  });

  it('rejects bad events per index, produces the good ones, and nothing bad reaches Kafka', async () => {
    const good = transaction(10);
    const body = [good, { ...transaction(11), amount: 'lots' }, { ...transaction(12), account_id: undefined }, 42, { ...transaction(13), type: 'STEAL' }];
    const res = await post(f.url, '/v1/events/transactions', JSON.stringify(body));
    expect(res.status).toBe(202);
    expect(res.body.accepted).toBe(1);
    const rejected = res.body.rejected as { index: number; code: string; message: string }[];
    expect(rejected.map((r) => [r.index, r.code])).toEqual([[1, 'FABRIC_EVENT_INVALID'], [2, 'FABRIC_EVENT_INVALID'], [3, 'FABRIC_EVENT_NOT_OBJECT'], [4, 'FABRIC_EVENT_INVALID']]);
    expect(rejected[0]!.message).toBe('amount: expected double, got string "lots"');
    expect(rejected[1]!.message).toMatch(/account_id: missing required field/);

    // Decode what is in Kafka with the registry (schema id from the wire format): only valid events.
    const serde = new AvroSerde({ url: f.config.registryUrl });
    const records = await readAll(f.kafka, f.config, 'events.transactions');
    const ids = await Promise.all(records.map(async (r) => (await serde.decodeAsync<{ event_id: string }>(r.value!)).event_id));
    expect(ids).toContain(good.event_id);
    expect(ids).toHaveLength(6);
    const keyed = records.find((r) => r.key === good.account_id);
    expect(keyed).toBeDefined();
  });

  it('answers typed errors: 400 malformed or all invalid, 401, 403, 404, 413', async () => {
    const malformed = await post(f.url, '/v1/events/transactions', '{"event_id": ');
    expect(malformed.status).toBe(400);
    expect(malformed.body).toMatchObject({ error: { code: 'FABRIC_HTTP_MALFORMED' } });
    const invalid = await post(f.url, '/v1/events/transactions', JSON.stringify({ ...transaction(20), ts: 'yesterday' }));
    expect(invalid.status).toBe(400);
    expect(invalid.body).toMatchObject({ error: { code: 'FABRIC_EVENT_INVALID' }, accepted: 0 });
    // Microseconds sent as milliseconds: refused at the edge, never produced.
    const skewed = await post(f.url, '/v1/events/transactions', JSON.stringify({ ...transaction(21), ts: Date.now() * 1000 }));
    expect(skewed.status).toBe(400);
    expect(skewed.body).toMatchObject({ error: { code: 'FABRIC_EVENT_TIME_SKEW' }, accepted: 0, rejected: [{ index: 0, code: 'FABRIC_EVENT_TIME_SKEW' }] });
    expect((await post(f.url, '/v1/events/transactions', '{}', { Authorization: '' })).body).toMatchObject({ error: { code: 'FABRIC_HTTP_UNAUTHORIZED' } });
    expect((await post(f.url, '/v1/events/transactions', '{}', { Authorization: 'Bearer wrong' })).status).toBe(401);
    const forbidden = await post(f.url, '/v1/events/interactions', '{}', { Authorization: 'Bearer tx-only' });
    expect(forbidden).toMatchObject({ status: 403, body: { error: { code: 'FABRIC_HTTP_FORBIDDEN' } } });
    const unknown = await post(f.url, '/v1/events/payments', '{}');
    expect(unknown).toMatchObject({ status: 404, body: { error: { code: 'FABRIC_STREAM_UNKNOWN' } } });
    const big = await post(f.url, '/v1/events/transactions', JSON.stringify(Array.from({ length: 1000 }, (_, i) => transaction(i))));
    expect(big).toMatchObject({ status: 413, body: { error: { code: 'FABRIC_HTTP_TOO_LARGE' } } });
    expect((await fetch(`${f.url}/v2/nothing`)).status).toBe(404);
  });

  it('acks WebSocket messages after Kafka, with the client sequence number and per-event rejections', async () => {
    const ws = new WebSocket(`${f.url.replace('http', 'ws')}/v1/events/transactions`, { headers: { Authorization: 'Bearer dev-key' } });
    const replies: Record<string, unknown>[] = [];
    await new Promise<void>((resolve, reject) => {
      ws.onerror = () => reject(new Error('websocket error'));
      ws.onopen = () => {
        ws.send(JSON.stringify(transaction(30)));
        ws.send(JSON.stringify({ seq: 'batch-7', events: [transaction(31), { ...transaction(32), amount: null }] }));
        ws.send('not json');
      };
      ws.onmessage = (m) => {
        replies.push(JSON.parse(String(m.data)) as Record<string, unknown>);
        if (replies.length === 3) resolve();
      };
    });
    ws.close();
    const byAck = new Map(replies.map((r) => [r.ack, r]));
    expect(byAck.get(0)).toMatchObject({ accepted: 1, rejected: [] });
    expect(byAck.get('batch-7')).toMatchObject({ accepted: 1, rejected: [{ index: 1, code: 'FABRIC_EVENT_INVALID' }] });
    expect(byAck.get(2)).toMatchObject({ accepted: 0, error: { code: 'FABRIC_HTTP_MALFORMED' } });
  });
});
