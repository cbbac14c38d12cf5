import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import avro from 'avsc';
import { AvroSerde, SerdeError } from '../../schemas/serde.js';

const SCHEMA = { type: 'record', name: 'Ping', fields: [{ name: 'n', type: 'int' }] };

function wire(id: number, n: number): Buffer {
  const header = Buffer.alloc(5);
  header.writeInt32BE(id, 1);
  return Buffer.concat([header, avro.Type.forSchema(SCHEMA as avro.Schema).toBuffer({ n })]);
}

type Mode = 'ok' | 'missing' | 'error' | 'hang';

/** A fake Confluent registry serving `GET /schemas/ids/:id` as `mode` says, counting requests. */
async function fakeRegistry(initial: Mode): Promise<{ url: string; requests: string[]; set(mode: Mode): void; server: Server }> {
  let mode = initial;
  const requests: string[] = [];
  const server = createServer((req, res) => {
    requests.push(`${req.method} ${req.url}`);
    const id = /^\/schemas\/ids\/(\d+)$/.exec(req.url ?? '')?.[1];
    const reply = (status: number, body: unknown): void => {
      res.writeHead(status, { 'content-type': 'application/vnd.schemaregistry.v1+json' });
      res.end(JSON.stringify(body));
    };
    if (mode === 'hang') return; // accepts the connection, never answers
    if (mode === 'error') return reply(500, { error_code: 50001, message: 'Error in the backend data store' });
    if (mode === 'missing' || !id) return reply(404, { error_code: 40403, message: `Schema ${id} not found` });
    reply(200, { schema: JSON.stringify(SCHEMA) });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return { url: `http://127.0.0.1:${port}`, requests, set: (m) => (mode = m), server };
}

const servers: Server[] = [];
afterEach(async () => {
  for (const s of servers.splice(0)) {
    s.closeAllConnections();
    await new Promise((resolve) => s.close(resolve));
  }
});

async function registry(mode: Mode): ReturnType<typeof fakeRegistry> {
  const r = await fakeRegistry(mode);
  servers.push(r.server);
  return r;
}

/** The SerdeError kind and message a call fails with, or 'ok'. */
async function failure(call: () => unknown): Promise<string> {
  try {
    await call();
    return 'ok';
  } catch (err) {
    return err instanceof SerdeError ? `${err.kind}: ${err.message}` : `not a SerdeError: ${String(err)}`;
  }
}

describe('serde against an unreachable or answering registry', () => {
  it('a registry that refuses connections makes prefetch fail as retriable (kind registry), never undecodable', async () => {
    const r = await fakeRegistry('ok');
    await new Promise((resolve) => r.server.close(resolve)); // nothing listens on the port any more
    const serde = new AvroSerde({ url: r.url });
    const record = wire(7, 1);
    expect(await failure(() => serde.prefetch([record]))).toMatch(/^registry: schema id 7 could not be fetched from the registry: .*ECONNREFUSED/);
    // A decode attempted anyway must not condemn the record either.
    expect(await failure(() => serde.decode(record))).toMatch(/^registry: schema id 7 has not been fetched/);
  });

  it('a 404 (Confluent 40403) is definitive: prefetch resolves and decode reports the record undecodable', async () => {
    const r = await registry('missing');
    const serde = new AvroSerde({ url: r.url });
    const record = wire(7, 1);
    await serde.prefetch([record, wire(7, 2)]);
    expect(await failure(() => serde.decode(record))).toMatch(/^undecodable: unknown schema id 7 \(the registry has no schema with this id: .*Schema 7 not found\)$/);
    expect(r.requests).toEqual(['GET /schemas/ids/7']);
  });

  it('a 5xx answer fails prefetch as retriable (kind registry), and nothing of it is remembered', async () => {
    const r = await registry('error');
    const serde = new AvroSerde({ url: r.url });
    const record = wire(7, 42);
    expect(await failure(() => serde.prefetch([record]))).toMatch(/^registry: schema id 7 could not be fetched from the registry: .*Error in the backend data store/);
    // The client retried the 5xx (3 retries) before giving up.
    expect(r.requests).toHaveLength(4);
    r.set('ok');
    await serde.prefetch([record]);
    expect(serde.decode<{ n: number }>(record)).toEqual({ n: 42 });
  });

  it('a registry that never answers fails prefetch after the request timeout (kind registry)', async () => {
    const r = await registry('hang');
    const serde = new AvroSerde({ url: r.url, requestTimeoutMs: 200 });
    const started = Date.now();
    expect(await failure(() => serde.prefetch([wire(7, 1)]))).toMatch(/^registry: schema id 7 could not be fetched from the registry: .*Timeout \(200ms\)/);
    expect(Date.now() - started).toBeLessThan(5_000);
  });

  it('a "not found" answer is trusted only briefly: a schema registered a moment later is found', async () => {
    const r = await registry('missing');
    const serde = new AvroSerde({ url: r.url, unknownIdTtlMs: 100 });
    const record = wire(7, 5);
    await serde.prefetch([record]);
    await serde.prefetch([record]);
    // Within the TTL the answer is reused: one request for two batches.
    expect(r.requests).toHaveLength(1);
    expect(await failure(() => serde.decode(record))).toMatch(/^undecodable: unknown schema id 7/);
    r.set('ok');
    await new Promise((resolve) => setTimeout(resolve, 150));
    await serde.prefetch([record]);
    expect(r.requests).toHaveLength(2);
    expect(serde.decode<{ n: number }>(record)).toEqual({ n: 5 });
  });

  it('decodeAsync fetches what it needs and reports an unreachable registry as such', async () => {
    const r = await registry('ok');
    const serde = new AvroSerde({ url: r.url });
    expect(await serde.decodeAsync<{ n: number }>(wire(3, 9))).toEqual({ n: 9 });
    r.set('error');
    expect(await failure(() => serde.decodeAsync(wire(4, 9)))).toMatch(/^registry: /);
  });
});
