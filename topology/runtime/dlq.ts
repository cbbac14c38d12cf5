import type { IHeaders } from 'kafkajs';
import type { FabricError } from '../errors.js';
import type { OutMessage } from './producer.js';

/** Header names a dead-letter record carries besides the original headers. */
export const DLQ_HEADERS = {
  code: 'fabric.error.code',
  message: 'fabric.error.message',
  processor: 'fabric.error.processor',
  topic: 'fabric.source.topic',
  partition: 'fabric.source.partition',
  offset: 'fabric.source.offset',
  timestamp: 'fabric.source.timestamp',
} as const;

export interface RawRecord {
  readonly topic: string;
  readonly partition: number;
  readonly offset: string;
  readonly key: Buffer | null;
  readonly value: Buffer | null;
  readonly timestamp: string;
  readonly headers?: IHeaders;
}

/** The dead-letter message for a record: original key and bytes untouched, the reason in headers. */
export function deadLetter(physicalDlqTopic: string, processor: string, raw: RawRecord, error: FabricError): OutMessage {
  return {
    topic: physicalDlqTopic,
    key: raw.key ? raw.key.toString() : null,
    value: raw.value ?? Buffer.alloc(0),
    headers: {
      ...(raw.headers ?? {}),
      [DLQ_HEADERS.code]: error.code,
      [DLQ_HEADERS.message]: error.message.slice(0, 2000),
      [DLQ_HEADERS.processor]: processor,
      [DLQ_HEADERS.topic]: raw.topic,
      [DLQ_HEADERS.partition]: String(raw.partition),
      [DLQ_HEADERS.offset]: raw.offset,
      [DLQ_HEADERS.timestamp]: raw.timestamp,
    },
  };
}
