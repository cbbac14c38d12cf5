/**
 * The one error catalogue. Every failure the fabric reports has a stable code
 * (`FABRIC_<AREA>_<PROBLEM>`), an HTTP status where it reaches a client, and whether a retry may help.
 * `docs` is the text shown in README's error table (a test checks every code is documented there).
 */
export interface ErrorSpec {
  readonly status: number;
  readonly retriable: boolean;
  readonly docs: string;
}

export const ERRORS = {
  FABRIC_CONFIG_INVALID: { status: 500, retriable: false, docs: 'A configuration value failed validation; the message names the variable and how to fix it.' },
  FABRIC_HTTP_MALFORMED: { status: 400, retriable: false, docs: 'The request body is not valid JSON, a JSON array or NDJSON, or a path segment is not valid percent-encoding.' },
  FABRIC_HTTP_UNAUTHORIZED: { status: 401, retriable: false, docs: 'No API key, or an unknown one, in `Authorization: Bearer <key>`.' },
  FABRIC_HTTP_FORBIDDEN: { status: 403, retriable: false, docs: 'The API key is not allowed on this stream.' },
  FABRIC_HTTP_NOT_FOUND: { status: 404, retriable: false, docs: 'Unknown route.' },
  FABRIC_STREAM_UNKNOWN: { status: 404, retriable: false, docs: 'The stream is not declared in the topology.' },
  FABRIC_MODEL_UNKNOWN: { status: 404, retriable: false, docs: 'The model is not registered.' },
  FABRIC_HTTP_TOO_LARGE: { status: 413, retriable: false, docs: 'The body exceeds the gateway limit (FABRIC_GATEWAY_MAX_BODY_BYTES).' },
  FABRIC_HTTP_RATE_LIMITED: { status: 429, retriable: true, docs: 'Too many events in flight; retry after the Retry-After seconds.' },
  FABRIC_KAFKA_UNAVAILABLE: { status: 503, retriable: true, docs: 'Kafka did not acknowledge in time or is unreachable; nothing in the request is reported accepted.' },
  FABRIC_REGISTRY_UNAVAILABLE: { status: 503, retriable: true, docs: 'The schema registry is unreachable.' },
  FABRIC_EVENT_INVALID: { status: 400, retriable: false, docs: 'An event does not match its Avro schema (wrong type or missing field); reported per event in `rejected`.' },
  FABRIC_EVENT_TIME_SKEW: { status: 400, retriable: false, docs: 'An event\'s `ts` is further in the future than FABRIC_MAX_CLOCK_SKEW_SEC allows (e.g. microseconds sent as milliseconds); refused by the gateway, dead-lettered by processors, it never moves state or watermarks.' },
  FABRIC_EVENT_NOT_OBJECT: { status: 400, retriable: false, docs: 'An element of the body is not a JSON object; reported per event in `rejected`.' },
  FABRIC_RECORD_UNDECODABLE: { status: 500, retriable: false, docs: 'A Kafka record could not be decoded with its schema; it goes to `dlq.<topic>`.' },
  FABRIC_RECORD_REJECTED: { status: 500, retriable: false, docs: 'A processor rejected a record (invalid content); it goes to `dlq.<topic>`.' },
  FABRIC_SINK_FAILED: { status: 503, retriable: true, docs: 'A sink (Redis, ClickHouse, Kafka) failed; the batch is retried and offsets are not committed.' },
  FABRIC_SINK_REJECTED: { status: 500, retriable: false, docs: 'A sink refused a record\'s row for its content (ClickHouse could not parse or convert a value); the record goes to `dlq.<topic>` with the server\'s message, the other rows of the insert are written.' },
  FABRIC_MODEL_INVALID: { status: 500, retriable: false, docs: 'A model artifact is missing, fails its sha256 pin, or references files outside its folder.' },
  FABRIC_MODEL_UNAVAILABLE: { status: 503, retriable: true, docs: 'The model worker crashed or is restarting; the batch waits (stream) and the processor reports not ready after repeated failures.' },
  FABRIC_MODEL_TIMEOUT: { status: 504, retriable: true, docs: 'The model worker did not answer within FABRIC_SCORING_TIMEOUT_MS; the worker is recycled and the stream batch retried (nothing is committed meanwhile).' },
  FABRIC_MODEL_OVERLOADED: { status: 429, retriable: true, docs: 'Too many rows wait for a model\'s micro-batches (the per-model queue bound); retry after the Retry-After seconds.' },
  FABRIC_MODEL_STORE_UNAVAILABLE: { status: 503, retriable: true, docs: 'The model store could not be read (the artifact is missing or the store is down); the serving version stays in place and the load is retried.' },
  FABRIC_REGISTRY_CONFLICT: { status: 409, retriable: false, docs: 'A model registration conflicts with the registry: the version exists with other bytes, or a stage change is not allowed.' },
  FABRIC_METADATA_INVALID: { status: 400, retriable: false, docs: 'Metadata for an unknown kind, an id that is empty, too long or holds control characters, or attributes that do not match their kind (unknown, missing, wrong type); the message names each attribute. On `_fabric.metadata` such a record goes to the DLQ.' },
  FABRIC_RULES_INVALID: { status: 400, retriable: false, docs: 'A rule set failed validation (JSON Schema, expression syntax or types, kinds the model does not take); the message gives the path of each problem. It never replaces the working rule set.' },
  FABRIC_EXPERIMENT_INVALID: { status: 400, retriable: false, docs: 'An experiment was refused: an unknown version, a control that is not the version in production, a split outside 0-100, a metric the model cannot be judged on, a guardrail that does not parse, another experiment running on the model, or a treatment or shadow that fails to load; the message names every problem. Nothing is written.' },
  FABRIC_EXPERIMENT_UNKNOWN: { status: 404, retriable: false, docs: 'No experiment has this id.' },
  FABRIC_CONTROL_CONFLICT: { status: 409, retriable: true, docs: 'Another writer changed the same control-plane state at the same moment (two experiments started on one model at once); nothing of this change was written: read the state again and retry.' },
  FABRIC_SCHEMA_MIGRATION_FAILED: { status: 500, retriable: false, docs: 'A ClickHouse migration (deploy/clickhouse/migrations) failed, naming the migration and the statement, or an applied migration\'s file was edited since (its checksum differs); nothing of a failed migration is recorded, it runs again whole next time.' },
  FABRIC_STACK_FAILED: { status: 500, retriable: false, docs: 'A local stack component did not become healthy; the message carries its log tail.' },
  FABRIC_CLI_USAGE: { status: 400, retriable: false, docs: 'A command was called with missing or invalid arguments.' },
  FABRIC_LABELS_INVALID: { status: 400, retriable: false, docs: 'A labels file for a training set is malformed: the message names the file, line and column.' },
  FABRIC_STATE_FENCED: { status: 409, retriable: true, docs: 'A task\'s state write came from an instance that no longer owns the partition (a zombie after a rebalance); it is refused and the batch is abandoned.' },
  FABRIC_STATE_MISMATCH: { status: 500, retriable: false, docs: 'A task\'s saved state is from a later input position than the batch starts at (offsets were reset or expired, or the state store lost writes); processing stops rather than compute from the wrong state. Clear the task state to start over.' },
  FABRIC_PROCESSOR_FAILED: { status: 500, retriable: false, docs: 'A processor failed unexpectedly more often than its restart budget allows; the process exits non-zero so a supervisor restarts it.' },
  FABRIC_SHUTTING_DOWN: { status: 503, retriable: true, docs: 'The component is draining for shutdown.' },
} as const satisfies Record<string, ErrorSpec>;

export type ErrorCode = keyof typeof ERRORS;

export class FabricError extends Error {
  readonly code: ErrorCode;
  readonly status: number;
  readonly retriable: boolean;
  readonly details: Record<string, unknown> | undefined;

  constructor(code: ErrorCode, message: string, options: { cause?: unknown; details?: Record<string, unknown> } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'FabricError';
    this.code = code;
    this.status = ERRORS[code].status;
    this.retriable = ERRORS[code].retriable;
    this.details = options.details;
  }

  toJSON(): { code: ErrorCode; message: string } {
    return { code: this.code, message: this.message };
  }
}

export function isFabricError(err: unknown, code?: ErrorCode): err is FabricError {
  return err instanceof FabricError && (code === undefined || err.code === code);
}

/** A message for any thrown value, without losing the cause chain's first line. */
export function messageOf(err: unknown): string {
  if (err instanceof Error) return err.message;
  return String(err);
}
