import { describe, expect, it } from 'vitest';
import { MemoryStateStore } from '../../topology/runtime/state-store.js';
import { stateStoreContract } from '../shared/state-store-contract.js';
import { runChain } from '../../topology/runtime/chain.js';
import { chunkByBytes, messageBytes, type OutMessage } from '../../topology/runtime/producer.js';
import { emit, reject, wholeBatch, type BatchContext, type ProcessorLogic, type SourceRecord } from '../../topology/runtime/processor.js';
import { TestDriver } from '../../topology/runtime/test-driver.js';
import { FabricError } from '../../topology/errors.js';
import { pino } from 'pino';

const task = { group: 'g', topic: 't', partition: 0 };

stateStoreContract('MemoryStateStore', async () => new MemoryStateStore());

function rec(offset: number, value: unknown): SourceRecord {
  return { topic: 'events.x', partition: 0, offset: String(offset), key: 'k', value, timestamp: 0, headers: {} };
}

describe('chained processors (one task)', () => {
  const ctx = (upstream?: ReadonlyMap<string, readonly unknown[]>): BatchContext => ({ log: pino({ level: 'silent' }), now: () => 0, task, firstOffset: '0', nextOffset: '3', state: { load: async () => null, save: async () => undefined }, ...(upstream ? { upstream: upstream as never } : {}) });
  it('passes records the head did not reject, with what the head emitted for each', async () => {
    const head: ProcessorLogic = {
      name: 'head',
      process: wholeBatch((rs) => rs.map((r) => ((r.value as number) < 0 ? reject(r, new FabricError('FABRIC_RECORD_REJECTED', 'negative')) : emit('double', 'k', (r.value as number) * 2, r)))),
    };
    const tail: ProcessorLogic = {
      name: 'tail',
      process: wholeBatch((rs, c) => rs.map((r) => emit('out', 'k', `tail ${r.offset} got ${(c.upstream!.get(r.offset)![0] as { value: number }).value}`, r))),
    };
    const outputs = await runChain([head, tail], [rec(0, 1), rec(1, -1), rec(2, 5)], (_i, upstream) => ctx(upstream as never));
    expect(outputs.filter((o) => o.kind === 'emit' && o.topic === 'out').map((o) => (o as { value: string }).value)).toEqual(['tail 0 got 2', 'tail 2 got 10']);
    expect(outputs.filter((o) => o.kind === 'reject')).toHaveLength(1);
  });

  it('gives the chained processor its upstream through the TestDriver as the runtime does', async () => {
    const head: ProcessorLogic = { name: 'head', process: wholeBatch((rs) => rs.map((r) => emit('sq', 'k', (r.value as number) ** 2, r))) };
    const tail: ProcessorLogic = {
      name: 'tail',
      process: wholeBatch((rs, c) => rs.map((r) => emit('sum', 'k', (r.value as number) + (c.upstream!.get(r.offset)![0] as { value: number }).value, r))),
    };
    const driver = await new TestDriver([head, tail]).open();
    await driver.pipe('events.x', [1, 2, 3]);
    expect(driver.emitted('sum')).toEqual([2, 6, 12]);
  });
});

describe('TestDriver crash and redo', () => {
  it('a batch that does not commit is re-delivered from the same offset with the state before it', async () => {
    const counter: ProcessorLogic = {
      name: 'counter',
      process: wholeBatch(async (rs, c) => {
        const n = Number((await c.state.load()) ?? 0) + rs.length;
        await c.state.save(String(n));
        return rs.map((r) => emit('count', 'k', `${r.offset}:${n}`, r));
      }),
    };
    const driver = await new TestDriver(counter).open();
    await driver.pipe('t', ['a', 'b']);
    await driver.pipe('t', ['c', 'd', 'e'], { commit: false });
    await driver.pipe('t', ['c']);
    await driver.pipe('t', ['d', 'e']);
    expect(driver.emitted('count')).toEqual(['0:2', '1:2', '2:3', '3:5', '4:5']);
  });
});

describe('produce requests sized by bytes', () => {
  const msg = (bytes: number): OutMessage => ({ topic: 't', key: 'k', value: Buffer.alloc(bytes) });
  it('splits a batch so no request exceeds the limit, keeping order', () => {
    const messages = Array.from({ length: 50 }, (_, i) => msg(1000 + i));
    const chunks = chunkByBytes(messages, 10_000);
    expect(chunks.flat()).toEqual(messages);
    for (const c of chunks) expect(c.reduce((n, m) => n + messageBytes(m), 0)).toBeLessThanOrEqual(10_000);
    const bytes = (c: OutMessage[]): number => c.reduce((n, m) => n + messageBytes(m), 0);
    // Greedy: no chunk could have taken the next chunk's first message.
    for (let i = 0; i + 1 < chunks.length; i++) expect(bytes(chunks[i]!) + messageBytes(chunks[i + 1]![0]!)).toBeGreaterThan(10_000);
  });
  it('sends a single oversized message alone rather than never', () => {
    expect(chunkByBytes([msg(10), msg(5000), msg(10)], 1000).map((c) => c.length)).toEqual([1, 1, 1]);
  });
  it('caps the messages per request too (kafkajs groups a request per partition in quadratic time)', () => {
    const messages = Array.from({ length: 2500 }, () => msg(10));
    expect(chunkByBytes(messages, 10_000_000).map((c) => c.length)).toEqual([1000, 1000, 500]);
    expect(chunkByBytes(messages, 10_000_000, 2000).flat()).toEqual(messages);
  });
});
