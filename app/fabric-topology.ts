import type { Redis } from 'ioredis';
import { buildTopology, processor, stream, topic, DAY_MS, type ProcessorSpec, type Topology } from '../topology/graph.js';
import { accountGroup, itemGroup, userGroup } from '../topology/features/groups.js';
import type { FeatureGroup } from '../topology/features/definition.js';
import { featureTopic } from '../topology/features/rows.js';
import type { FabricConfig } from '../topology/config.js';
import type { Metrics } from '../topology/runtime/metrics.js';
import type { ClickHouseClient } from '../topology/runtime/clickhouse.js';
import { featuresProcessor } from '../processors/features/processor.js';
import { scoringProcessor } from '../processors/scoring/processor.js';
import { recsProcessor } from '../processors/recs/processor.js';
import type { LiveModels } from '../serving/models/live.js';
import type { FrequencyCaps } from '../serving/rules/caps.js';
import type { MetadataStore } from '../serving/metadata/store.js';
import type { ExperimentRegistry } from '../serving/experiments/registry.js';
import type { RedisExperimentLatency } from '../serving/experiments/latency.js';
import { metadataProcessor } from '../processors/metadata/processor.js';
import type { ServingRules } from '../processors/scoring/processor.js';
import type { ReferenceSource } from './monitoring.js';
import { trackingProcessor } from '../processors/tracking/processor.js';
import { ClickHouseSink } from '../processors/tracking/clickhouse-sink.js';
import { driftMergeProcessor, driftProcessor } from '../processors/drift/processor.js';
import { alertsProcessor } from '../processors/monitor/alerts.js';
import { parseAlertRules } from '../processors/monitor/rules.js';
import { alertWebhookProcessor } from '../processors/monitor/webhook.js';

/**
 * What the composition root lends to processors: shared clients it owns and closes. Each is opened
 * on first use, so a process running only some processors opens only what they need.
 */
export interface FabricResources {
  readonly config: FabricConfig;
  readonly metrics: Metrics;
  redis(): Promise<Redis>;
  clickhouse(): ClickHouseClient;
  /**
   * The registry's live models (shared with the gateway), following `name`: resolves once its production
   * version is loaded in the serving engine (or none is in production yet).
   */
  models(follow: string): Promise<LiveModels>;
  /** The serving engine's state, for readiness. */
  engineState(): string;
  /** The rule sets in force (following _fabric.rules), shared with the gateway. */
  rules(): Promise<ServingRules>;
  /** The frequency-cap store in Redis. */
  caps(): Promise<FrequencyCaps>;
  /** The metadata store in Redis (items' attributes for rules and enrichment). */
  metadata(): Promise<MetadataStore>;
  /** The experiments in force (following _fabric.experiments), shared with the gateway. */
  experiments(): Promise<ExperimentRegistry>;
  /** Where the arms' model time goes (Redis histograms per experiment and arm). */
  latency(): Promise<RedisExperimentLatency>;
  /** The reference profiles of a model's versions (drift), from the registry: no model is loaded for them. */
  references(model: string): Promise<ReferenceSource>;
}

/** Every topic the tracking processor writes to ClickHouse (its inputs). */
const TRACKED = ['events.transactions', 'events.interactions', 'features.account', 'features.user', 'features.item', 'predictions.fraud', 'predictions.recs', 'predictions.fraud.shadow', 'predictions.recs.shadow', 'outcomes.transactions', 'outcomes.interactions', 'drift.metrics', 'performance.metrics', 'alerts', '_fabric.experiments', 'dlq.events.transactions', 'dlq.events.interactions'];

/** Interactions re-keyed by item, so each item's events are in one partition of the item group's input. */
export const ITEM_REPARTITION_TOPIC = 'repartition.interactions.item';

/** The processor keeping a feature group online (Redis) and emitting its rows. */
function featuresNode(group: FeatureGroup, spec: { name: string; group: string; input: string; repartition?: { topic: string; by: string }; doc: string }): ProcessorSpec<FabricResources> {
  return processor<FabricResources>({
    name: spec.name,
    group: spec.group,
    inputs: [spec.input],
    outputs: [featureTopic(group), `late.${group.stream}`, ...(spec.repartition ? [spec.repartition.topic] : [])],
    sinks: ['redis'],
    doc: spec.doc,
    create: async (r) =>
      featuresProcessor({
        group,
        redis: await r.redis(),
        keyPrefix: r.config.redisKeyPrefix,
        maxClockSkewMs: r.config.maxClockSkewSec * 1000,
        latenessMs: group.latenessMs ?? r.config.featuresLatenessSec * 1000,
        metrics: r.metrics,
        ...(spec.repartition ? { repartition: spec.repartition } : {}),
      }),
  });
}

/** The drift panes' length: the hop of hopping windows, or the whole window (tumbling). */
function driftHopMs(config: FabricResources['config']): number {
  return (config.driftHopSec || config.driftWindowSec) * 1000;
}

/** The fabric's graph: the two demo streams, their features, model, tracking and drift, each processor bound to its logic here. */
export function fabricTopology(): Topology<FabricResources> {
  const predictionsPartitions = 3;
  return buildTopology<FabricResources>({
    streams: [stream('transactions', 'transaction', 'account_id', { outcomes: true }), stream('interactions', 'interaction', 'user_id', { outcomes: true })],
    topics: [
      topic('features.account', { schema: 'account_features', doc: 'Features of an account as of each of its transactions (rows corrected by late events follow with a greater version).' }),
      topic('features.user', { schema: 'user_features', doc: 'Features of a user as of each of their interactions.' }),
      topic('features.item', { schema: 'item_features', doc: 'Features of an item as of each interaction with it.' }),
      topic(ITEM_REPARTITION_TOPIC, { schema: 'interaction', doc: 'Interactions keyed by item_id (written by features-user in its transaction): the item group\'s input.' }),
      topic('predictions.fraud', { partitions: predictionsPartitions, schema: 'prediction', doc: 'Fraud scores and decisions, one per transaction (origin stream), plus the answers of POST /v1/predict/fraud (origin online).' }),
      topic('predictions.recs', { partitions: predictionsPartitions, schema: 'recommendation', doc: 'The recs model\'s top candidate items for a user at each interaction, with scores and the vectors served.' }),
      topic('drift.partials', { partitions: 1, schema: 'drift_partial', doc: 'Per-partition drift window aggregates, merged into drift.metrics once every partition passed a window.' }),
      topic('drift.metrics', { partitions: 1, schema: 'drift_metric', retentionMs: 30 * DAY_MS, doc: 'PSI per variable per tumbling window.' }),
      topic('predictions.fraud.shadow', { partitions: predictionsPartitions, schema: 'prediction', doc: 'The shadow version of a fraud experiment: its score and the decision the rules would take with it, for every event the stream scored; never served.' }),
      topic('predictions.recs.shadow', { schema: 'recommendation', doc: 'The shadow version of a recs experiment: the items it would have recommended (caps neither consulted nor counted); never served.' }),
      topic('alerts', { partitions: 1, retentionMs: 30 * DAY_MS, schema: 'alert', doc: 'Alerts: experiment decisions, drift, data quality and performance (monitor-alerts), key: the subject.' }),
      // Declared here (and not only made for every processor input) because tracking reads them into dead_letters.
      topic('dlq.events.transactions', { partitions: 1, retentionMs: 30 * DAY_MS, doc: 'Records of events.transactions a processor could not handle, original bytes plus fabric.error.* headers; tracked into dead_letters (data quality).' }),
      topic('dlq.events.interactions', { partitions: 1, retentionMs: 30 * DAY_MS, doc: 'Records of events.interactions a processor could not handle, original bytes plus fabric.error.* headers; tracked into dead_letters (data quality).' }),
      topic('performance.metrics', { partitions: 1, retentionMs: 30 * DAY_MS, schema: 'performance_metric', doc: 'Model performance per window, version and experiment arm from outcomes joined within the horizon (AUC, log loss, calibration, precision/recall/F1 at the thresholds), key: model/version/arm.' }),
      topic('_fabric.models', { partitions: 1, compacted: true, retentionMs: null, schema: 'model_version', doc: 'The model registry: one record per model version (key name@version, the latest wins; a promotion rewrites the versions it moves in one transaction).' }),
      topic('_fabric.rules', { partitions: 1, compacted: true, retentionMs: null, schema: 'rule_set', doc: 'Serving rules: one record per rule-set version (key model@version); a model\'s highest version is in force.' }),
      topic('_fabric.experiments', { partitions: 1, compacted: true, retentionMs: null, schema: 'experiment', doc: 'Experiments (key: id; every change rewrites the record with a greater revision): the split, shadow, metric and guardrails, state and decision.' }),
      topic('_fabric.metadata', { partitions: 1, compacted: true, retentionMs: null, schema: 'metadata', doc: 'Entity metadata (key <kind>/<id>; a tombstone deletes): from PUT|DELETE /v1/metadata, fabric simulate\'s catalogue, or any producer.' }),
    ],
    processors: [
      featuresNode(accountGroup, {
        name: 'features',
        group: 'fabric.features',
        input: 'events.transactions',
        doc: 'The account feature group: event windows in Redis (exact event time), a row per event to features.account (corrections for late events); events beyond the lateness go to late.transactions.',
      }),
      processor({
        name: 'scoring',
        after: 'features',
        outputs: ['predictions.fraud', 'predictions.fraud.shadow'],
        sinks: [],
        doc: 'Chained after features in its task: scores each event with the features computed for it, one ONNX run per batch and arm (an experiment splits entities by a sticky hash; its shadow scores every event into predictions.fraud.shadow), then the rules.',
        create: async (r) => scoringProcessor({ models: await r.models('fraud'), rules: await r.rules(), caps: await r.caps(), experiments: await r.experiments(), latency: await r.latency(), model: 'fraud', metrics: r.metrics, engineState: () => r.engineState() }),
      }),
      featuresNode(userGroup, {
        name: 'features-user',
        group: 'fabric.features-user',
        input: 'events.interactions',
        repartition: { topic: ITEM_REPARTITION_TOPIC, by: 'item_id' },
        doc: 'The user feature group over interactions; forwards every valid interaction, keyed by item, to the item group in the same transaction.',
      }),
      processor({
        name: 'recs',
        after: 'features-user',
        outputs: ['predictions.recs', 'predictions.recs.shadow'],
        sinks: [],
        doc: 'Chained after features-user in its task: at each interaction, scores the user\'s candidate items (their last 24 h) with the recs model and emits the top-k.',
        create: async (r) => recsProcessor({ models: await r.models('recs'), rules: await r.rules(), caps: await r.caps(), metadata: await r.metadata(), experiments: await r.experiments(), latency: await r.latency(), redis: await r.redis(), keyPrefix: r.config.redisKeyPrefix, metrics: r.metrics }),
      }),
      featuresNode(itemGroup, {
        name: 'features-item',
        group: 'fabric.features-item',
        input: ITEM_REPARTITION_TOPIC,
        doc: 'The item feature group over interactions re-keyed by item.',
      }),
      processor({
        name: 'metadata',
        group: 'fabric.metadata',
        inputs: ['_fabric.metadata'],
        outputs: [],
        sinks: ['redis'],
        doc: 'Keeps the metadata store (Redis) equal to _fabric.metadata: upserts checked against their kind, tombstones delete, older writes ignored.',
        create: async (r) => metadataProcessor({ store: await r.metadata() }),
      }),
      processor({
        name: 'tracking',
        group: 'fabric.tracking',
        inputs: TRACKED,
        outputs: [],
        sinks: ['clickhouse'],
        doc: 'Writes events, features, predictions (and shadow predictions), outcomes, drift metrics, alerts and experiment records to ClickHouse (one row per event through the deduplicated views).',
        create: (r) => {
          const sink = new ClickHouseSink(r.clickhouse(), { database: r.config.clickhouseDatabase, flushRows: r.config.clickhouseFlushRows, lingerMs: r.config.clickhouseLingerMs, metrics: r.metrics });
          return trackingProcessor({ sink, topics: TRACKED, metrics: r.metrics });
        },
      }),
      processor({
        name: 'drift',
        group: 'fabric.drift',
        inputs: ['predictions.fraud'],
        outputs: ['drift.partials'],
        sinks: ['redis'],
        doc: 'Per partition: event-time panes (hop-long) of every model input and the score, per model version, against the version\'s reference bins; snapshots of the panes a batch changed go to drift.partials.',
        create: async (r) => {
          const source = await r.references('fraud');
          return driftProcessor({ model: 'fraud', version: () => source.production(), references: source.references, prepare: (v) => source.prepare(v), paneMs: driftHopMs(r.config), latenessMs: r.config.driftAllowedLatenessSec * 1000, maxClockSkewMs: r.config.maxClockSkewSec * 1000, partitions: predictionsPartitions });
        },
      }),
      processor({
        name: 'drift-recs',
        group: 'fabric.drift-recs',
        inputs: ['predictions.recs'],
        outputs: ['drift.partials'],
        sinks: ['redis'],
        doc: 'The recs model\'s drift, per partition: every item shown (its score and the inputs it was served with) in the panes of its version, against the version\'s reference bins.',
        create: async (r) => {
          const source = await r.references('recs');
          return driftProcessor({ model: 'recs', input: 'recommendations', name: 'drift-recs', version: () => source.production(), references: source.references, prepare: (v) => source.prepare(v), paneMs: driftHopMs(r.config), latenessMs: r.config.driftAllowedLatenessSec * 1000, maxClockSkewMs: r.config.maxClockSkewSec * 1000, partitions: predictionsPartitions });
        },
      }),
      processor({
        name: 'drift-merge-recs',
        group: 'fabric.drift-merge-recs',
        inputs: ['drift.partials'],
        outputs: ['drift.metrics'],
        sinks: ['redis'],
        doc: 'The recs model\'s windows from drift.partials (its partials only), measured like drift-merge\'s.',
        create: async (r) => {
          const source = await r.references('recs');
          return driftMergeProcessor({ model: 'recs', name: 'drift-merge-recs', references: source.references, prepare: (v) => source.prepare(v), windowMs: r.config.driftWindowSec * 1000, hopMs: driftHopMs(r.config), idleMs: r.config.driftIdleSec * 1000, holdMs: r.config.driftHoldSec * 1000, minCount: r.config.driftMinCount, partitions: predictionsPartitions });
        },
      }),
      processor({
        name: 'monitor-alerts',
        group: 'fabric.monitor-alerts',
        inputs: ['drift.metrics', 'performance.metrics'],
        outputs: ['alerts'],
        sinks: ['redis'],
        doc: 'Alert rules (FABRIC_ALERT_RULES) over the drift, data-quality and performance metrics, with hysteresis: an alert fires after N consecutive breaching windows and resolves after M clean ones, on alerts.',
        create: (r) => alertsProcessor({ rules: parseAlertRules(r.config.alertRules), metrics: r.metrics }),
      }),
      processor({
        name: 'alert-webhook',
        group: 'fabric.alert-webhook',
        inputs: ['alerts'],
        outputs: [],
        sinks: ['webhook'],
        doc: 'POSTs every alert to FABRIC_ALERT_WEBHOOK_URL (when set), at least once, with the alert id as Idempotency-Key and retries with backoff.',
        create: (r) => alertWebhookProcessor({ url: r.config.alertWebhookUrl, attempts: r.config.alertWebhookAttempts, metrics: r.metrics }),
      }),
      processor({
        name: 'drift-merge',
        group: 'fabric.drift-merge',
        inputs: ['drift.partials'],
        outputs: ['drift.metrics'],
        sinks: ['redis'],
        doc: 'Merges the partitions\' panes into windows; a window closes once every partition\'s watermark passed it (or every partition is idle), then PSI, Jensen-Shannon, KS, Wasserstein or chi-square and data quality per version and variable go to drift.metrics.',
        create: async (r) => {
          const source = await r.references('fraud');
          return driftMergeProcessor({ model: 'fraud', references: source.references, prepare: (v) => source.prepare(v), windowMs: r.config.driftWindowSec * 1000, hopMs: driftHopMs(r.config), idleMs: r.config.driftIdleSec * 1000, holdMs: r.config.driftHoldSec * 1000, minCount: r.config.driftMinCount, partitions: predictionsPartitions });
        },
      }),
    ],
  });
}
