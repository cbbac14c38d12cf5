import { z } from 'zod';
import { parseRetention } from './retention.js';
import { FabricError } from './errors.js';

/**
 * Configuration is declared once here (variable, type, default, doc), read from the environment at
 * start-up only, validated with messages that say how to fix a bad value, then frozen.
 * Nothing else in the code base reads process.env.
 */
const port = z.coerce.number().int().min(1).max(65535);
const ms = z.coerce.number().int().min(0);
const positive = z.coerce.number().int().min(1);
const bool = z.enum(['true', 'false', '1', '0']).transform((v) => v === 'true' || v === '1');

interface Setting<T extends z.ZodTypeAny = z.ZodTypeAny> {
  readonly env: string;
  readonly schema: T;
  readonly default: string;
  readonly doc: string;
}

function s<T extends z.ZodTypeAny>(env: string, schema: T, def: string, doc: string): Setting<T> {
  return { env, schema, default: def, doc };
}

export const SETTINGS = {
  stackDir: s('FABRIC_STACK_DIR', z.string().min(1), '.stack', 'Folder for local stack binaries, data and logs (git-ignored).'),
  logLevel: s('FABRIC_LOG_LEVEL', z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']), 'info', 'pino log level.'),

  kafkaBrokers: s('FABRIC_KAFKA_BROKERS', z.string().min(1), '127.0.0.1:9092', 'Comma-separated Kafka bootstrap brokers.'),
  kafkaClientId: s('FABRIC_KAFKA_CLIENT_ID', z.string().min(1), 'fabric', 'Kafka client id prefix.'),
  kafkaPort: s('FABRIC_KAFKA_PORT', port, '9092', 'Port of the local Kafka broker started by `fabric stack up`.'),
  kafkaControllerPort: s('FABRIC_KAFKA_CONTROLLER_PORT', port, '9093', 'KRaft controller port of the local broker.'),
  kafkaAckTimeoutMs: s('FABRIC_KAFKA_ACK_TIMEOUT_MS', positive, '10000', 'How long a produce may wait for acks=all before the caller gets FABRIC_KAFKA_UNAVAILABLE.'),
  topicPrefix: s('FABRIC_TOPIC_PREFIX', z.string(), '', 'Prefix for every topic and consumer group (tests use it to isolate runs).'),

  registryUrl: s('FABRIC_REGISTRY_URL', z.string().url(), 'http://127.0.0.1:8081/apis/ccompat/v7', 'Confluent-compatible schema registry base URL.'),
  registryPort: s('FABRIC_REGISTRY_PORT', port, '8081', 'Port of the local schema registry.'),

  redisUrl: s('FABRIC_REDIS_URL', z.string().min(1), 'redis://127.0.0.1:6379', 'Redis URL (redis://user:pass@host:port/db).'),
  redisPort: s('FABRIC_REDIS_PORT', port, '6379', 'Port of the local Redis.'),
  redisKeyPrefix: s('FABRIC_REDIS_PREFIX', z.string(), 'fabric:', 'Prefix of every Redis key the fabric owns.'),

  clickhouseUrl: s('FABRIC_CLICKHOUSE_URL', z.string().url(), 'http://127.0.0.1:8123', 'ClickHouse HTTP URL.'),
  clickhouseUser: s('FABRIC_CLICKHOUSE_USER', z.string(), 'default', 'ClickHouse user.'),
  clickhousePassword: s('FABRIC_CLICKHOUSE_PASSWORD', z.string(), '', 'ClickHouse password.'),
  clickhouseDatabase: s('FABRIC_CLICKHOUSE_DATABASE', z.string().regex(/^[A-Za-z_][A-Za-z0-9_]*$/), 'fabric', 'ClickHouse database.'),
  clickhousePort: s('FABRIC_CLICKHOUSE_PORT', port, '8123', 'HTTP port of the local ClickHouse.'),
  clickhouseTcpPort: s('FABRIC_CLICKHOUSE_TCP_PORT', port, '9000', 'Native TCP port of the local ClickHouse.'),

  gatewayHost: s('FABRIC_GATEWAY_HOST', z.string().min(1), '0.0.0.0', 'Gateway listen address.'),
  gatewayPort: s('FABRIC_GATEWAY_PORT', z.coerce.number().int().min(0).max(65535), '8080', 'Gateway port (0 picks a free one).'),
  gatewayApiKeys: s('FABRIC_GATEWAY_API_KEYS', z.string(), 'dev-key:*', 'API keys as key:stream|stream,key2:* (`*` allows every stream).'),
  gatewayMaxBodyBytes: s('FABRIC_GATEWAY_MAX_BODY_BYTES', positive, '1048576', 'Largest accepted request body; larger gets 413.'),
  gatewayMaxInFlight: s('FABRIC_GATEWAY_MAX_IN_FLIGHT', positive, '20000', 'Events accepted but not yet acknowledged by Kafka before new requests get 429.'),

  producerLingerMs: s('FABRIC_PRODUCER_LINGER_MS', ms, '5', 'How long the batching producer waits to fill a batch.'),
  producerBatchSize: s('FABRIC_PRODUCER_BATCH_SIZE', positive, '2000', 'Messages per Kafka produce request.'),
  producerMaxRequestBytes: s('FABRIC_PRODUCER_MAX_REQUEST_BYTES', positive, '524288', 'Largest produce request in bytes; keep it below the broker\'s message.max.bytes (1 MiB by default).'),
  producerMaxQueued: s('FABRIC_PRODUCER_MAX_QUEUED', positive, '50000', 'Messages queued in the producer before enqueue is refused (backpressure).'),

  consumerMaxWaitMs: s('FABRIC_CONSUMER_MAX_WAIT_MS', positive, '100', 'Longest a fetch waits for minBytes.'),
  processingGuarantee: s('FABRIC_PROCESSING_GUARANTEE', z.enum(['exactly_once', 'at_least_once']), 'exactly_once', 'exactly_once: each batch\'s outputs and input offsets in one Kafka transaction; at_least_once: outputs acknowledged, then offsets committed (a crash may repeat outputs; for comparison and for sinks that dedupe).'),
  consumerSessionTimeoutMs: s('FABRIC_CONSUMER_SESSION_TIMEOUT_MS', z.coerce.number().int().min(6000), '30000', 'How long the group waits for a silent processor instance (killed, hung) before giving its partitions to others.'),
  consumerRebalanceTimeoutMs: s('FABRIC_CONSUMER_REBALANCE_TIMEOUT_MS', z.coerce.number().int().min(1000), '60000', 'How long a rebalance waits for members to rejoin.'),
  sinkRetryMs: s('FABRIC_SINK_RETRY_MS', positive, '500', 'First backoff when a sink fails (doubles, jittered, up to 10 s).'),

  scoringTimeoutMs: s('FABRIC_SCORING_TIMEOUT_MS', positive, '2000', 'How long one model run may take; beyond it the worker is recycled and the batch is retried (the stream never commits a timing-dependent fallback).'),
  scoringProvider: s('FABRIC_SCORING_PROVIDER', z.enum(['auto', 'cuda', 'cpu']), 'auto', 'ONNX execution provider, chosen at start: cpu; cuda (only cuda: a model fails to load rather than silently run on cpu); auto (cuda when FABRIC_GPU is true and it loads, else cpu). Reported on every prediction and in metrics.'),
  scoringThreads: s('FABRIC_SCORING_THREADS', ms, '0', 'Intra-op threads of each ONNX session; 0: the cores divided by the serving workers (at least 1). Idle threads do not spin.'),
  servingIsolation: s('FABRIC_SERVING_ISOLATION', z.enum(['thread', 'process']), 'thread', 'Where ONNX sessions run: thread (worker threads, rows transferred without copies, near bare onnxruntime speed) or process (child processes: a native crash or hang is killed without touching the fabric, at the cost of IPC).'),
  servingWorkers: s('FABRIC_SERVING_WORKERS', ms, '0', 'ONNX workers of the serving engine per fabric process; 0: one per core.'),
  servingMaxBatch: s('FABRIC_SERVING_MAX_BATCH', positive, '64', 'Most rows in one ONNX run (the micro-batch size cap).'),
  servingMaxQueueDelayMs: s('FABRIC_SERVING_MAX_QUEUE_DELAY_MS', z.coerce.number().min(0).max(1000), '0', 'How long a request may wait for others to fill a micro-batch while a worker is free (decimals allowed); 0: requests batch only while the workers are busy.'),
  servingConcurrency: s('FABRIC_SERVING_CONCURRENCY', ms, '0', 'Micro-batches of one model in flight at once; 0: two per worker (one running, one waiting, so a worker never idles on a round trip).'),
  modelStoreDir: s('FABRIC_MODEL_STORE_DIR', z.string().min(1), '.stack/model-store', 'Folder of the content-addressed model store (artifacts by sha256), relative to the project unless absolute.'),
  predictTimeoutMs: s('FABRIC_PREDICT_TIMEOUT_MS', positive, '100', 'Budget of POST /v1/predict: beyond it the answer is 504 with the fallback decision (reason model_timeout).'),
  predictCacheTtlSec: s('FABRIC_PREDICT_CACHE_TTL_SEC', ms, '0', 'TTL of the prediction cache in Redis (keyed by model version and a hash of the feature vector); 0 turns it off.'),

  maxClockSkewSec: s('FABRIC_MAX_CLOCK_SKEW_SEC', positive, '300', 'How far in the future (event time vs. arrival) an event may be: beyond it the gateway refuses it and processors dead-letter it (FABRIC_EVENT_TIME_SKEW).'),
  featuresLatenessSec: s('FABRIC_FEATURES_LATENESS_SEC', ms, '600', 'How far behind its entity\'s newest event (in event time) an event may arrive and still update features, for groups that declare no lateness; it corrects the rows it changes. Later events go to late.<stream> with the reason.'),
  processorRestarts: s('FABRIC_PROCESSOR_MAX_RESTARTS', positive, '10', 'Consecutive unexpected failures a processor restarts its consumer for (with backoff) before the process exits non-zero.'),
  experimentsIntervalSec: s('FABRIC_EXPERIMENTS_INTERVAL_SEC', positive, '15', 'How often the experiment judge (one instance of the fleet at a time) reads the ledger and decides running experiments.'),
  experimentsWindowSec: s('FABRIC_EXPERIMENTS_WINDOW_SEC', positive, '600', 'Length (event time) of the windows `fabric experiments status` shows each arm\'s metric for, beside the cumulative test.'),
  driftWindowSec: s('FABRIC_DRIFT_WINDOW_SEC', positive, '60', 'Drift window length in event time.'),
  driftHopSec: s('FABRIC_DRIFT_HOP_SEC', ms, '0', 'A drift window ends every this many seconds (hopping windows; it must divide FABRIC_DRIFT_WINDOW_SEC); 0: tumbling windows.'),
  driftAllowedLatenessSec: s('FABRIC_DRIFT_LATENESS_SEC', ms, '5', 'How long after a window ends (in event time) late events are still counted.'),
  driftIdleSec: s('FABRIC_DRIFT_IDLE_SEC', positive, '120', 'Wall-clock seconds without predictions from a partition after which it no longer holds drift results back: the windows the other partitions passed fire early (final=false), and when every partition is idle (traffic stopped) every window that has ended does; the final result follows once every watermark passes.'),
  driftHoldSec: s('FABRIC_DRIFT_HOLD_SEC', positive, '600', 'How far (event time) a drift partition that sends nothing may hold final results back behind the others (at least one window): older windows are final without it, and what it sends for them later counts as late. Bounds the merge\'s state when a partition gets no traffic.'),
  performanceWindowSec: s('FABRIC_PERFORMANCE_WINDOW_SEC', positive, '600', 'Length (event time of the predictions) of the windows model performance is measured over, per version and experiment arm.'),
  outcomeHorizonSec: s('FABRIC_OUTCOME_HORIZON_SEC', positive, '3600', 'An outcome counts for performance when it arrives within this long of its prediction\'s event time; later ones are counted as late labels, not joined.'),
  performanceGraceSec: s('FABRIC_PERFORMANCE_GRACE_SEC', ms, '60', 'Extra wait after a window\'s end plus the horizon before its performance is measured (outcomes on their way into ClickHouse).'),
  performanceIntervalSec: s('FABRIC_PERFORMANCE_INTERVAL_SEC', positive, '30', 'How often the performance monitor (one instance of the fleet at a time) looks for windows ready to measure.'),
  alertRules: s('FABRIC_ALERT_RULES', z.string(), 'psi>0.25 fire=1 severity=critical; missing_rate>0.2; out_of_range_rate>0.2; unseen_rate>0.2', 'Monitoring alert rules, `;`-separated: `<metric>[:<variable or glob>] <op> <threshold> [fire=N] [clear=N] [severity=info|warning|critical]` (drift metrics: psi, js, ks, wasserstein, chi2_p, missing_rate, out_of_range_rate, unseen_rate, invalid, per variable; performance: auc, log_loss, ece, ctr, conversion and dead_letters per arm (`model` outside an experiment), precision, recall, f1 per threshold; fire and clear: consecutive windows, default 2; severity default warning).'),
  alertWebhookUrl: s('FABRIC_ALERT_WEBHOOK_URL', z.union([z.literal(''), z.string().url()]), '', 'Where every alert is POSTed as JSON (header Idempotency-Key: the alert id), at least once; empty: no webhook.'),
  alertWebhookAttempts: s('FABRIC_ALERT_WEBHOOK_ATTEMPTS', positive, '5', 'Tries per alert (exponential backoff from 0.5 s) before the webhook gives it up (logged and counted).'),
  driftMinCount: s('FABRIC_DRIFT_MIN_COUNT', positive, '50', 'Values a drift window needs for a status other than low_count (and for alert rules to judge it).'),

  clickhouseLingerMs: s('FABRIC_CLICKHOUSE_LINGER_MS', ms, '1000', 'How long the ClickHouse sink gathers rows from all partitions before one insert per table.'),
  clickhouseFlushRows: s('FABRIC_CLICKHOUSE_FLUSH_ROWS', positive, '5000', 'Rows buffered per table before an insert.'),
  clickhouseRetention: s(
    'FABRIC_CLICKHOUSE_RETENTION',
    z.string().transform((v, ctx) => {
      try {
        return parseRetention(v);
      } catch (err) {
        ctx.addIssue({ code: z.ZodIssueCode.custom, message: (err as Error).message });
        return z.NEVER;
      }
    }),
    'events_*=30d,features_*=90d,predictions*=90d,recommendations*=90d,outcomes=180d,drift_metrics=365d,alerts=365d',
    'Days of event time each ClickHouse table keeps, as table=Nd (a trailing * matches a prefix; keep: forever); the first matching rule applies, a table no rule matches is kept. Applied by `fabric retention apply`.',
  ),

  modelsDir: s('FABRIC_MODELS_DIR', z.string().min(1), 'models', 'Folder of the demo model artifacts (model.onnx + model.json per model) that `npm start` registers and promotes when the registry has no production version of them.'),
  metricsPort: s('FABRIC_METRICS_PORT', z.coerce.number().int().min(0).max(65535), '9464', 'Port of /metrics for processors run outside the gateway process.'),
  gpu: s('FABRIC_GPU', bool, 'false', 'Allow the CUDA provider (needs onnxruntime-node installed with CUDA).'),
} as const satisfies Record<string, Setting>;

type Settings = typeof SETTINGS;
export type FabricConfig = { readonly [K in keyof Settings]: z.output<Settings[K]['schema']> };

/** Reads, validates and freezes the configuration. `overrides` take precedence over the environment. */
export function loadConfig(env: Record<string, string | undefined> = process.env, overrides: Partial<Record<keyof Settings, string | number | boolean>> = {}): FabricConfig {
  const out: Record<string, unknown> = {};
  const problems: string[] = [];
  for (const [key, setting] of Object.entries(SETTINGS) as [keyof Settings, Setting][]) {
    const override = overrides[key];
    const raw = override !== undefined ? String(override) : env[setting.env] ?? setting.default;
    const parsed = setting.schema.safeParse(raw);
    if (parsed.success) out[key] = parsed.data;
    else problems.push(`${setting.env}=${JSON.stringify(raw)}: ${parsed.error.issues.map((i) => i.message).join('; ')} (${setting.doc} Default: ${JSON.stringify(setting.default)})`);
  }
  if (problems.length > 0) throw new FabricError('FABRIC_CONFIG_INVALID', `invalid configuration: ${problems.join(' | ')}`);
  return Object.freeze(out) as FabricConfig;
}

/** `name` with the configured prefix, for topics and consumer groups. */
export function prefixed(config: Pick<FabricConfig, 'topicPrefix'>, name: string): string {
  return `${config.topicPrefix}${name}`;
}
