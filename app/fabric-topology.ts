import { buildTopology, processor, stream, topic, DAY_MS, type Topology } from '../topology/graph.js';

/** The fabric's graph: the two demo streams, their features, model, tracking and drift. */
export function fabricTopology(): Topology {
  return buildTopology({
    streams: [stream('transactions', 'transaction', 'account_id', { outcomes: true }), stream('interactions', 'interaction', 'user_id', { outcomes: true })],
    topics: [
      topic('features.account', { schema: 'account_features', doc: 'Point-in-time features of an account after each of its transactions.' }),
      topic('predictions.fraud', { schema: 'prediction', doc: 'Fraud scores and decisions, one per transaction.' }),
      topic('drift.metrics', { partitions: 1, schema: 'drift_metric', retentionMs: 30 * DAY_MS, doc: 'PSI per variable per tumbling window.' }),
      topic('alerts', { partitions: 1, retentionMs: 30 * DAY_MS, doc: 'Operational and drift alerts.' }),
      topic('_fabric.models', { partitions: 1, compacted: true, retentionMs: null, doc: 'Registered models (latest per name wins).' }),
      topic('_fabric.rules', { partitions: 1, compacted: true, retentionMs: null, doc: 'Serving rules per model.' }),
      topic('_fabric.metadata', { partitions: 1, compacted: true, retentionMs: null, doc: 'Entity metadata for enrichment.' }),
    ],
    processors: [
      processor({ name: 'features', group: 'fabric.features', inputs: ['events.transactions'], outputs: ['features.account'], sinks: ['redis'], doc: 'Keeps account windows in Redis, writes point-in-time feature updates.' }),
      processor({ name: 'scoring', group: 'fabric.scoring', inputs: ['events.transactions'], outputs: ['predictions.fraud'], sinks: [], doc: 'Reads features from Redis, scores micro-batches with the fraud ONNX model, applies rules.' }),
      processor({
        name: 'tracking',
        group: 'fabric.tracking',
        inputs: ['events.transactions', 'events.interactions', 'features.account', 'predictions.fraud', 'outcomes.transactions', 'outcomes.interactions', 'drift.metrics'],
        outputs: [],
        sinks: ['clickhouse'],
        doc: 'Writes events, features, predictions, outcomes and drift metrics to ClickHouse (deduplicated by event id).',
      }),
      processor({ name: 'drift', group: 'fabric.drift', inputs: ['predictions.fraud'], outputs: ['drift.metrics'], sinks: ['redis'], sequential: true, doc: 'Tumbling event-time windows of model inputs and scores; PSI against the model reference profile.' }),
    ],
  });
}
