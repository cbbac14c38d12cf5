import { FabricError } from '../../topology/errors.js';
import type { AvroWriter } from '../../schemas/serde.js';
import type { BatchingProducer, OutMessage } from '../../topology/runtime/producer.js';
import type { StreamDef } from '../../topology/graph.js';
import type { Metrics } from '../../topology/runtime/metrics.js';

export interface Rejection {
  readonly index: number;
  readonly code: 'FABRIC_EVENT_INVALID' | 'FABRIC_EVENT_NOT_OBJECT' | 'FABRIC_EVENT_TIME_SKEW';
  readonly message: string;
}

export interface IngestResult {
  readonly accepted: number;
  readonly rejected: Rejection[];
}

export interface BoundStream {
  readonly def: StreamDef;
  readonly physicalTopic: string;
  readonly writer: AvroWriter<Record<string, unknown>>;
}

/**
 * Validates events against their stream's Avro schema and produces the valid ones, answering only
 * once Kafka has acknowledged all of them. Shared by HTTP and WebSocket. Invalid events are
 * reported per index and never produced; valid ones in the same request still are.
 * Bounded: beyond maxInFlight unacknowledged events, requests are refused with 429.
 */
export class IngestService {
  private inFlight = 0;

  constructor(
    private readonly streams: ReadonlyMap<string, BoundStream>,
    private readonly producer: BatchingProducer,
    private readonly options: { maxInFlight: number; maxClockSkewMs: number; now?: () => number },
    private readonly metrics?: Metrics,
  ) {}

  get eventsInFlight(): number {
    return this.inFlight;
  }

  stream(name: string): BoundStream {
    const s = this.streams.get(name);
    if (!s) throw new FabricError('FABRIC_STREAM_UNKNOWN', `unknown stream ${JSON.stringify(name)}; known: ${[...this.streams.keys()].join(', ')}`);
    return s;
  }

  async ingest(streamName: string, events: readonly unknown[]): Promise<IngestResult> {
    const stream = this.stream(streamName);
    const rejected: Rejection[] = [];
    const messages: OutMessage[] = [];
    // One instant per request: an event is refused when its time is further ahead of it than the
    // allowed skew (a client sending microseconds would otherwise freeze its entity's windows).
    const latest = (this.options.now ?? Date.now)() + this.options.maxClockSkewMs;
    events.forEach((event, index) => {
      if (event === null || typeof event !== 'object' || Array.isArray(event)) {
        rejected.push({ index, code: 'FABRIC_EVENT_NOT_OBJECT', message: `event ${index} is not a JSON object` });
        return;
      }
      const encoded = stream.writer.encodeOrExplain(event);
      if ('problems' in encoded) {
        rejected.push({ index, code: 'FABRIC_EVENT_INVALID', message: encoded.problems.join('; ') });
        return;
      }
      const ts = (event as Record<string, unknown>)[stream.def.timeField];
      if (typeof ts === 'number' && ts > latest) {
        rejected.push({ index, code: 'FABRIC_EVENT_TIME_SKEW', message: `${stream.def.timeField} ${ts} is ${Math.round((ts - latest) / 1000) + this.options.maxClockSkewMs / 1000} s in the future (allowed skew ${this.options.maxClockSkewMs / 1000} s); ${stream.def.timeField} must be epoch milliseconds` });
        return;
      }
      messages.push({ topic: stream.physicalTopic, key: String((event as Record<string, unknown>)[stream.def.keyField]), value: encoded.bytes });
    });
    this.metrics?.gatewayEvents.inc({ stream: streamName, outcome: 'rejected' }, rejected.length);
    if (messages.length === 0) return { accepted: 0, rejected };
    if (this.inFlight + messages.length > this.options.maxInFlight) {
      throw new FabricError('FABRIC_HTTP_RATE_LIMITED', `${this.inFlight} events awaiting Kafka acknowledgement (limit ${this.options.maxInFlight})`);
    }
    this.inFlight += messages.length;
    this.metrics?.gatewayInFlight.set(this.inFlight);
    try {
      await this.producer.send(messages);
    } finally {
      this.inFlight -= messages.length;
      this.metrics?.gatewayInFlight.set(this.inFlight);
    }
    this.metrics?.gatewayEvents.inc({ stream: streamName, outcome: 'accepted' }, messages.length);
    return { accepted: messages.length, rejected };
  }
}
