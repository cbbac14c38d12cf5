/**
 * The benchmark's data set: simulated transactions, generated once per run, in the three shapes the
 * pairs need: JSON request bodies for the gateway, Avro (Confluent wire format) messages for the
 * project's producer, and a delimited file of the same key/value bytes for kcat.
 */
import { randomBytes } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import type { Transaction } from '../../schemas/types.generated.js';
import type { AvroWriter } from '../../schemas/serde.js';
import { generateTransactions } from '../../sim/transactions.js';

export interface EncodedEvent {
  readonly key: Buffer;
  readonly value: Buffer;
}

export interface BenchEvents {
  readonly events: readonly Transaction[];
  /** JSON arrays of `batchSize` events, the gateway's request bodies. */
  readonly bodies: readonly string[];
  readonly batchSize: number;
}

/**
 * `count` simulated transactions with event ids made unique to this run. Event times start at
 * `startTs` (default 2025-01-01, fine for rows that only write the input topic); runs through the
 * processors pass a time just before now, so every event is within the allowed clock skew
 * (FABRIC_MAX_CLOCK_SKEW_SEC, future only) and the windows are those of live traffic.
 */
export function makeEvents(options: { seed: number; count: number; runId: string; batchSize: number; ratePerSec?: number; startTs?: number }): BenchEvents {
  const events: Transaction[] = [];
  for (const sim of generateTransactions({ seed: options.seed, startTs: options.startTs ?? Date.UTC(2025, 0, 1), ratePerSec: options.ratePerSec ?? 1000, count: options.count })) {
    events.push({ ...sim.event, event_id: `${options.runId}-${sim.event.event_id}` });
  }
  const bodies: string[] = [];
  for (let i = 0; i < events.length; i += options.batchSize) bodies.push(JSON.stringify(events.slice(i, i + options.batchSize)));
  return { events, bodies, batchSize: options.batchSize };
}

/** Avro-encodes every event with the writer of the topic's subject; the key is account_id, as the gateway does. */
export function encodeEvents(events: readonly Transaction[], writer: AvroWriter<Transaction>): EncodedEvent[] {
  return events.map((e) => ({ key: Buffer.from(e.account_id, 'utf8'), value: writer.encode(e) }));
}

export interface KcatInput {
  readonly file: string;
  /** Message delimiter (-D) and key delimiter (-K), checked against every record. */
  readonly delimiter: string;
  readonly keyDelimiter: string;
  readonly count: number;
}

/**
 * Writes `key <K> value <D>` records for `kcat -P -l -K <K> -D <D>`. Avro binary may contain any
 * byte, so the delimiters are long random ASCII strings and every record is checked: its first <K>
 * must end the key and its first <D> must end the record (kcat splits at the first occurrence).
 * A delimiter that fails the check is replaced by a new random one.
 */
export async function writeKcatInput(file: string, encoded: readonly EncodedEvent[]): Promise<KcatInput> {
  for (let attempt = 0; attempt < 20; attempt++) {
    const tag = randomBytes(6).toString('hex');
    const delimiter = `#|#BENCH-MSG-${tag}#|#`;
    const keyDelimiter = `#|#BENCH-KEY-${tag}#|#`;
    const d = Buffer.from(delimiter, 'latin1');
    const k = Buffer.from(keyDelimiter, 'latin1');
    const parts: Buffer[] = [];
    let ok = true;
    for (const { key, value } of encoded) {
      const record = Buffer.concat([key, k, value, d]);
      if (record.indexOf(k) !== key.length || record.indexOf(d) !== record.length - d.length) {
        ok = false;
        break;
      }
      parts.push(record);
    }
    if (!ok) continue;
    await writeFile(file, Buffer.concat(parts));
    return { file, delimiter, keyDelimiter, count: encoded.length };
  }
  throw new Error('could not find a kcat delimiter absent from every encoded message');
}
