import { describe, expect, it } from 'vitest';
import avro from 'avsc';
import { parseEvents } from '../../gateways/ingest/parse.js';
import { ApiKeys } from '../../gateways/ingest/auth.js';
import { isFabricError } from '../../topology/errors.js';
import { validateAgainst } from '../../schemas/serde.js';
import { loadAvroSchema } from '../../schemas/catalog.js';

function code(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (err) {
    return isFabricError(err) ? err.code : 'not a FabricError';
  }
  return undefined;
}

describe('request bodies', () => {
  it('accepts one object, an array, and NDJSON', () => {
    expect(parseEvents('{"a":1}', 'application/json')).toEqual([{ a: 1 }]);
    expect(parseEvents('[{"a":1},{"a":2}]', undefined)).toHaveLength(2);
    expect(parseEvents('{"a":1}\n{"a":2}\n', 'application/x-ndjson')).toHaveLength(2);
    expect(parseEvents('{"a":1}\n{"a":2}', 'application/json')).toHaveLength(2);
  });

  it('rejects malformed JSON, empty bodies and bad NDJSON lines with FABRIC_HTTP_MALFORMED', () => {
    expect(code(() => parseEvents('{"a":', 'application/json'))).toBe('FABRIC_HTTP_MALFORMED');
    expect(code(() => parseEvents('   ', undefined))).toBe('FABRIC_HTTP_MALFORMED');
    expect(code(() => parseEvents('{"a":1}\n{oops}', 'application/x-ndjson'))).toBe('FABRIC_HTTP_MALFORMED');
  });
});

describe('API keys', () => {
  const keys = new ApiKeys('k1:transactions|interactions,admin:*');
  it('distinguishes a missing or unknown key (401) from a forbidden stream (403)', () => {
    expect(code(() => keys.check(undefined, 'transactions'))).toBe('FABRIC_HTTP_UNAUTHORIZED');
    expect(code(() => keys.check('Bearer nope', 'transactions'))).toBe('FABRIC_HTTP_UNAUTHORIZED');
    expect(code(() => keys.check('Basic abc', 'transactions'))).toBe('FABRIC_HTTP_UNAUTHORIZED');
    expect(code(() => keys.check('Bearer k1', 'payments'))).toBe('FABRIC_HTTP_FORBIDDEN');
    expect(code(() => keys.check('Bearer k1', 'transactions'))).toBeUndefined();
    expect(code(() => keys.check('Bearer admin', 'anything'))).toBeUndefined();
  });
  it('refuses a malformed key specification at start-up', () => {
    expect(code(() => new ApiKeys('justakey'))).toBe('FABRIC_CONFIG_INVALID');
  });
});

describe('event validation against the Avro schema', () => {
  const schema = loadAvroSchema('transaction');
  const type = avro.Type.forSchema(schema as avro.Schema);
  const fields = new Set(schema.fields.map((f) => f.name));
  const good = { event_id: 'e1', account_id: 'a1', counterparty_id: 'c1', type: 'TRANSFER', amount: 10.5, old_balance: 100, new_balance: 89.5, channel: 'web', ts: 1_700_000_000_000 };

  it('accepts a valid event', () => {
    expect(validateAgainst(type, fields, good)).toEqual([]);
  });
  it('names wrong types, missing fields, bad enum symbols and unknown fields', () => {
    expect(validateAgainst(type, fields, { ...good, amount: 'ten' })).toEqual(['amount: expected double, got string "ten"']);
    const { account_id: _a, ...missing } = good;
    expect(validateAgainst(type, fields, missing)[0]).toMatch(/^account_id: missing required field/);
    expect(validateAgainst(type, fields, { ...good, type: 'STEAL' })[0]).toMatch(/^type: expected one of CASH_IN\|/);
    expect(validateAgainst(type, fields, { ...good, extra: 1 })).toEqual(['extra: unknown field']);
    expect(validateAgainst(type, fields, { ...good, ts: 1.5 })[0]).toMatch(/^ts: expected long/);
    expect(validateAgainst(type, fields, [good])).toEqual(['expected an object, got array']);
  });
});

describe('event time skew at the edge', () => {
  it('refuses an event further in the future than the allowed skew with FABRIC_EVENT_TIME_SKEW, and produces the others', async () => {
    const { IngestService } = await import('../../gateways/ingest/ingest.js');
    const { stream } = await import('../../topology/graph.js');
    const sent: { key: string | null }[] = [];
    const producer = { send: async (messages: { key: string | null }[]) => void sent.push(...messages) };
    const writer = { encodeOrExplain: (v: unknown) => ({ bytes: Buffer.from(JSON.stringify(v)) }) };
    const now = 1_700_000_000_000;
    const ingest = new IngestService(
      new Map([['transactions', { def: stream('transactions', 'transaction', 'account_id'), physicalTopic: 'events.transactions', writer: writer as never }]]),
      producer as never,
      { maxInFlight: 100, maxClockSkewMs: 300_000, now: () => now },
    );
    const result = await ingest.ingest('transactions', [
      { account_id: 'A', ts: now + 300_000 },
      { account_id: 'B', ts: now * 1000 },
      { account_id: 'C', ts: now + 300_001 },
    ]);
    expect(result.accepted).toBe(1);
    expect(result.rejected.map((r) => [r.index, r.code])).toEqual([
      [1, 'FABRIC_EVENT_TIME_SKEW'],
      [2, 'FABRIC_EVENT_TIME_SKEW'],
    ]);
    expect(result.rejected[0]!.message).toMatch(/epoch milliseconds/);
    expect(sent.map((m) => m.key)).toEqual(['A']);
  });
});
