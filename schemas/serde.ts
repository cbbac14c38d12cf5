import avro from 'avsc';
import { SchemaRegistry, SchemaType } from '@kafkajs/confluent-schema-registry';
import type { AvroRecordSchema } from './catalog.js';

/**
 * Confluent wire format (magic byte 0, 4-byte big-endian schema id, Avro binary) over a
 * Confluent-compatible registry. Registration and id look-ups go through
 * @kafkajs/confluent-schema-registry; encoding and decoding of known ids is synchronous and cached,
 * so the hot path never awaits per record.
 */
export const MAGIC_BYTE = 0;
const HEADER_BYTES = 5;

export class SerdeError extends Error {
  constructor(
    readonly kind: 'invalid' | 'undecodable' | 'registry',
    message: string,
    readonly paths: readonly string[] = [],
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'SerdeError';
  }
}

/** A writer bound to one registered schema version. */
export interface AvroWriter<T> {
  readonly subject: string;
  readonly id: number;
  readonly type: avro.Type;
  /**
   * The value in the Confluent wire format, or its field-level problems (unknown fields count).
   * One pass for valid values: the problems are worked out only when encoding fails.
   */
  encodeOrExplain(value: unknown): { readonly bytes: Buffer } | { readonly problems: string[] };
  /** Encodes a valid value; throws SerdeError('invalid') with the problems otherwise. */
  encode(value: T): Buffer;
}

export interface SerdeOptions {
  readonly url: string;
  /** Largest payload decode will attempt: bounds memory against hostile block counts. */
  readonly maxPayloadBytes?: number;
  /** Longest one registry request may take before it counts as the registry being unreachable. */
  readonly requestTimeoutMs?: number;
  /** How long the registry's "no such schema id" answer is trusted before it is asked again. */
  readonly unknownIdTtlMs?: number;
}

/** The registry's definitive answer that a schema id does not exist, as of `at` (epoch ms). */
interface UnknownId {
  readonly at: number;
  readonly reason: string;
}

export class AvroSerde {
  readonly registry: SchemaRegistry;
  private readonly writers = new Map<string, Promise<AvroWriter<unknown>>>();
  private readonly byId = new Map<number, avro.Type>();
  /**
   * Ids the registry said it does not have, oldest answer first. Kept briefly (`unknownIdTtlMs`), not
   * for good: a producer may register the schema a moment later, or a registry replica that answered
   * may lag behind the one the producer used. The entry only has to outlive the batch that asked
   * (prefetch, then decode) and spares the registry a request per batch when a stream is full of
   * records with a foreign id; later batches ask again, so a schema registered since then is found.
   */
  private readonly unknownIds = new Map<number, UnknownId>();
  private readonly fetching = new Map<number, Promise<void>>();
  /** avsc binds a resolver to the reader Type instance, so the cache is per instance, then per writer id. */
  private readonly resolvers = new WeakMap<avro.Type, Map<number, avro.Resolver>>();
  private readonly maxPayloadBytes: number;
  private readonly unknownIdTtlMs: number;

  constructor(options: SerdeOptions) {
    const timeout = options.requestTimeoutMs ?? 5_000;
    this.registry = new SchemaRegistry({
      host: options.url,
      // The client retries 5xx answers and refused or reset connections (about 1.5 s in all) before
      // prefetch gives up; the runtime then retries the whole batch with its own backoff.
      retry: { retries: 3, initialRetryTimeInSecs: 0.2 },
      // Without a timeout a registry that accepts connections but never answers would hang the batch.
      middlewares: [() => ({ request: (request) => request.enhance({ timeout }) })],
    });
    this.maxPayloadBytes = options.maxPayloadBytes ?? 8 * 1024 * 1024;
    this.unknownIdTtlMs = options.unknownIdTtlMs ?? 1_000;
  }

  /**
   * Registers `schema` under `subject` with BACKWARD compatibility (idempotent: the registry returns
   * the existing id for an identical schema) and returns a writer for it.
   */
  writer<T>(subject: string, schema: AvroRecordSchema): Promise<AvroWriter<T>> {
    let pending = this.writers.get(subject);
    if (!pending) {
      pending = this.createWriter<T>(subject, schema) as Promise<AvroWriter<unknown>>;
      pending.catch(() => this.writers.delete(subject));
      this.writers.set(subject, pending);
    }
    return pending as Promise<AvroWriter<T>>;
  }

  private async createWriter<T>(subject: string, schema: AvroRecordSchema): Promise<AvroWriter<T>> {
    const type = avro.Type.forSchema(schema as avro.Schema);
    let id: number;
    try {
      ({ id } = await this.registry.register({ type: SchemaType.AVRO, schema: JSON.stringify(schema) }, { subject }));
    } catch (err) {
      throw new SerdeError('registry', `registering ${subject} failed: ${(err as Error).message}`, [], { cause: err });
    }
    this.byId.set(id, type);
    const fieldNames = new Set((schema.fields ?? []).map((f) => f.name));
    const header = Buffer.alloc(HEADER_BYTES);
    header.writeUInt8(MAGIC_BYTE, 0);
    header.writeInt32BE(id, 1);
    const encodeOrExplain = (value: unknown): { bytes: Buffer } | { problems: string[] } => {
      // avsc's writer checks every field's type as it encodes; it only ignores unknown fields.
      if (value !== null && typeof value === 'object' && !Array.isArray(value) && Object.keys(value).every((k) => fieldNames.has(k))) {
        try {
          const body = type.toBuffer(value);
          return { bytes: Buffer.concat([header, body], HEADER_BYTES + body.length) };
        } catch {
          // fall through to the explanation
        }
      }
      const problems = validateAgainst(type, fieldNames, value);
      return { problems: problems.length > 0 ? problems : ['value cannot be encoded with this schema'] };
    };
    return {
      subject,
      id,
      type,
      encodeOrExplain,
      encode(value: T): Buffer {
        const result = encodeOrExplain(value);
        if ('bytes' in result) return result.bytes;
        throw new SerdeError('invalid', `value does not match ${subject}: ${result.problems.join('; ')}`, result.problems);
      },
    };
  }

  /** The schema id of a wire-format buffer, or a SerdeError when the header is not Confluent's. */
  static schemaIdOf(buf: Buffer): number {
    if (buf.length < HEADER_BYTES || buf.readUInt8(0) !== MAGIC_BYTE) {
      throw new SerdeError('undecodable', `not Confluent wire format (${buf.length} bytes, first byte ${buf.length ? buf.readUInt8(0) : 'none'})`);
    }
    return buf.readInt32BE(1);
  }

  /**
   * Asks the registry, once each, for the writer schema of every id in `buffers` not yet known, so
   * decode() is synchronous. Rejects with SerdeError('registry') when the registry cannot be reached
   * (refused connection, timeout, 5xx, any answer but "not found"): the caller retries the batch
   * later, since records decoded now would be dead-lettered for the registry's fault. Only the
   * registry's definitive "not found" (HTTP 404, Confluent error 40403) marks an id unknown, so that
   * decode() reports its records as undecodable.
   */
  async prefetch(buffers: Iterable<Buffer | null>): Promise<void> {
    this.forgetUnknownIdsBefore(Date.now() - this.unknownIdTtlMs);
    const missing = new Set<number>();
    for (const buf of buffers) {
      if (!buf || buf.length < HEADER_BYTES || buf.readUInt8(0) !== MAGIC_BYTE) continue;
      const id = buf.readInt32BE(1);
      if (!this.byId.has(id) && !this.unknownIds.has(id)) missing.add(id);
    }
    await Promise.all([...missing].map((id) => this.lookUp(id)));
  }

  /** Settles once `id` is known or known to be absent; one request at a time per id. */
  private lookUp(id: number): Promise<void> {
    let pending = this.fetching.get(id);
    if (!pending) {
      pending = this.fetchSchema(id).finally(() => this.fetching.delete(id));
      this.fetching.set(id, pending);
    }
    return pending;
  }

  private async fetchSchema(id: number): Promise<void> {
    let schema: unknown;
    try {
      schema = await this.registry.getSchema(id);
    } catch (err) {
      // The client's ResponseError carries the HTTP status; it reports a refused connection or a
      // timeout as status 400 (mappersmith's client error), so only 404 means "the registry says no".
      if ((err as { status?: unknown }).status === 404) {
        this.unknownIds.delete(id);
        this.unknownIds.set(id, { at: Date.now(), reason: `the registry has no schema with this id: ${(err as Error).message}` });
        return;
      }
      throw new SerdeError('registry', `schema id ${id} could not be fetched from the registry: ${(err as Error).message}`, [], { cause: err });
    }
    let type: avro.Type;
    try {
      // Re-parse from the canonical JSON so the Type belongs to our avsc instance.
      type = avro.Type.forSchema(JSON.parse(JSON.stringify(schema)) as avro.Schema);
    } catch (err) {
      // Not "not found": the batch waits (and says why) rather than dead-lettering records whose
      // schema exists, in case it is our reading that needs fixing.
      throw new SerdeError('registry', `schema id ${id} from the registry cannot be read as Avro: ${(err as Error).message}`, [], { cause: err });
    }
    this.byId.set(id, type);
    this.unknownIds.delete(id);
  }

  /** Entries are in answer order (re-answered ids are moved to the end), so the expired ones lead. */
  private forgetUnknownIdsBefore(cutoff: number): void {
    for (const [id, entry] of this.unknownIds) {
      if (entry.at >= cutoff) break;
      this.unknownIds.delete(id);
    }
  }

  /**
   * Decodes a wire-format buffer whose schema id was prefetched. With `reader`, values are resolved
   * into the reader schema (schema evolution). Throws SerdeError('undecodable') for records that will
   * never decode (the registry has no such id, bad bytes), and SerdeError('registry') when the id's
   * schema has not been fetched (no prefetch, or its "not found" answer was since forgotten): retry
   * after a prefetch.
   */
  decode<T>(buf: Buffer, reader?: avro.Type): T {
    const id = AvroSerde.schemaIdOf(buf);
    const writer = this.byId.get(id);
    if (!writer) {
      const unknown = this.unknownIds.get(id);
      if (unknown) throw new SerdeError('undecodable', `unknown schema id ${id} (${unknown.reason})`);
      throw new SerdeError('registry', `schema id ${id} has not been fetched from the registry (prefetch first)`);
    }
    if (buf.length > this.maxPayloadBytes) throw new SerdeError('undecodable', `payload of ${buf.length} bytes exceeds ${this.maxPayloadBytes}`);
    const payload = buf.subarray(HEADER_BYTES);
    try {
      if (!reader || reader === writer) return writer.fromBuffer(payload) as T;
      let byWriter = this.resolvers.get(reader);
      if (!byWriter) {
        byWriter = new Map();
        this.resolvers.set(reader, byWriter);
      }
      let resolver = byWriter.get(id);
      if (!resolver) {
        resolver = reader.createResolver(writer);
        byWriter.set(id, resolver);
      }
      return reader.fromBuffer(payload, resolver) as T;
    } catch (err) {
      throw new SerdeError('undecodable', `Avro decoding with schema id ${id} failed: ${(err as Error).message}`, [], { cause: err });
    }
  }

  /** Async decode for callers off the hot path (CLI tail, tests): fetches the schema when needed. */
  async decodeAsync<T>(buf: Buffer, reader?: avro.Type): Promise<T> {
    await this.prefetch([buf]);
    return this.decode<T>(buf, reader);
  }
}

function describe(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'array';
  if (typeof value === 'string') return `string ${JSON.stringify(value.length > 40 ? `${value.slice(0, 40)}…` : value)}`;
  return `${typeof value} ${typeof value === 'object' ? '' : String(value)}`.trim();
}

function typeName(t: avro.Type): string {
  const name = (t as { typeName?: string }).typeName ?? 'value';
  if (name === 'enum') return `one of ${(t as unknown as { symbols: string[] }).symbols.join('|')}`;
  if (name.startsWith('union')) return (t as unknown as { types: avro.Type[] }).types.map(typeName).join(' or ');
  return name;
}

/** Field-level problems of `value` against a record type; unknown fields count as problems. */
export function validateAgainst(type: avro.Type, fieldNames: ReadonlySet<string>, value: unknown): string[] {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) return [`expected an object, got ${describe(value)}`];
  const problems: string[] = [];
  for (const key of Object.keys(value)) if (!fieldNames.has(key)) problems.push(`${key}: unknown field`);
  type.isValid(value, {
    errorHook(path: string[], v: unknown, t: avro.Type) {
      if (path.length === 0) return;
      const field = path.join('.');
      problems.push(v === undefined ? `${field}: missing required field (${typeName(t)})` : `${field}: expected ${typeName(t)}, got ${describe(v)}`);
    },
  });
  return problems;
}
