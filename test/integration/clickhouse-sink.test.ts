import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../topology/config.js';
import { applyClickHouse } from '../../topology/apply.js';
import { fabricTopology } from '../../app/fabric-topology.js';
import { createClickHouse, sqlLiteral, type ClickHouseClient } from '../../topology/runtime/clickhouse.js';
import type { SourceRecord, TaskId } from '../../topology/runtime/processor.js';
import { ClickHouseSink } from '../../processors/tracking/clickhouse-sink.js';
import { mappingFor } from '../../processors/tracking/rows.js';
import type { AccountFeatureUpdate, DriftMetric, Interaction, Outcome, PerformanceMetric, Prediction, Recommendation, Transaction } from '../../schemas/types.generated.js';

/**
 * The versioned, deduplicated tables on the running ClickHouse (18.16 locally): rows go through the
 * tracking row mappings and the group-commit sink into a database of this run's own, created from
 * the migrations (deploy/clickhouse/migrations) and dropped afterwards.
 */
const config = loadConfig();
const db = `it_sink_${randomBytes(4).toString('hex')}`;
let client: ClickHouseClient;

const TS = Date.UTC(2026, 0, 15, 12, 0, 0);

/** One value per tracked topic; `n` varies a non-key field so a test can tell which copy survived. */
const samples: Record<string, (n: number) => unknown> = {
  'events.transactions': (n): Transaction => ({ event_id: 'e-1', account_id: 'acc-1', counterparty_id: 'cp-1', type: 'TRANSFER', amount: n, old_balance: 100, new_balance: 100 - n, channel: 'web', ts: TS }),
  'events.interactions': (n): Interaction => ({ event_id: 'e-1', user_id: 'u-1', item_id: `item-${n}`, action: 'click', ts: TS }),
  'features.account': (n): AccountFeatureUpdate => ({
    event_id: 'e-1', entity_id: 'acc-1', ts: TS, txn_count_1h: n, txn_count_24h: n, amount_sum_1h: 1, amount_sum_24h: 1, amount_avg_24h: null, amount_max_24h: 1,
    distinct_counterparties_24h: 1, seconds_since_last_txn: null, amount: 1, counterparty_id: 'cp-1', source_topic: 'events.transactions', source_partition: 0, source_offset: 1, version: n,
  }),
  'predictions.fraud': (n): Prediction => ({
    event_id: 'e-1', entity_id: 'acc-1', model: 'fraud', version: '1', score: n / 100, decision: 'review', reasons: ['r'], fallback: false, provider: 'cpu', event_ts: TS,
    features: { amount_sum_1h: 1, seconds_since_last_txn: null }, source_topic: 'features.account', source_partition: 0, source_offset: 1, origin: 'stream', rules_version: 0, rules_fired: [], experiment: '', arm: '', latency_ms: 0,
  }),
  'predictions.recs': (n): Recommendation => ({
    event_id: 'e-1', user_id: 'u-1', model: 'recs', version: '1', provider: 'cpu', event_ts: TS, candidates: n, reasons: ['top 1 of 1 candidates'], fallback: false, source_topic: 'events.interactions', source_partition: 0, source_offset: 1, origin: 'stream',
    rules_version: 1, rules_fired: ['top'], experiment: '', arm: '', latency_ms: 0, items: [{ item_id: 'item-1', rank: 1, score: 0.5, features: { f: 1 }, attributes: { title: 'T', category: 'c', price: 9.5 } }],
  }),
  'outcomes.transactions': (n): Outcome => ({ event_id: 'e-1', entity_id: 'acc-1', label: 'fraud', value: n, ts: TS, item_id: null }),
  'performance.metrics': (n): PerformanceMetric => ({
    model: 'fraud', version: '1', experiment: '', arm: '', window_start: TS, window_end: TS + 60_000, horizon_ms: 3_600_000, predictions: n, scored: n, labelled: n, positives: 1, late_labels: 0, auc: 0.9, log_loss: 0.2, ece: 0.01, base_rate: 0.1,
    items: 0, clicks: 0, purchases: 0, ctr: null, conversion: null, dead_letters: 0, thresholds: [{ name: 'block', threshold: 0.5, flagged: 1, precision: null, recall: 0.5, f1: null }],
  }),
  'dlq.events.transactions': (n): Buffer => Buffer.from('x'.repeat(n)),
  'drift.metrics': (n): DriftMetric => ({ model: 'fraud', version: '1', variable: 'score', window_start: TS, window_end: TS + 60_000, count: n, psi: 0.01, mean: 0.5, status: 'ok', kind: 'numeric', total: n, js: 0.02, ks: 0.03, wasserstein: 1.5, chi2_p: null, missing_rate: 0, invalid: 0, out_of_range_rate: 0, unseen_rate: 0, late: 0, final: true }),
};

/** The column that carries `n` in each table (as a string), to check which copy the view kept. */
const marker: Record<string, string> = {
  events_transactions: 'toString(amount)',
  events_interactions: "replaceAll(item_id, 'item-', '')",
  features_account: 'toString(txn_count_1h)',
  predictions: 'toString(round(score * 100))',
  recommendations: 'toString(candidates)',
  outcomes: 'toString(value)',
  drift_metrics: 'toString(count)',
  model_performance: 'toString(predictions)',
  dead_letters: 'toString(bytes)',
};

function record(topic: string, offset: number, n: number): SourceRecord {
  return { topic, partition: 0, offset: String(offset), key: 'acc-1', value: samples[topic]!(n), timestamp: TS, headers: {} };
}

async function rows<T>(query: string): Promise<T[]> {
  const rs = await client.query({ query, format: 'JSONEachRow' });
  return rs.json<T>();
}

beforeAll(async () => {
  client = createClickHouse(config);
  // Twice: applying the schema again must change nothing.
  for (let i = 0; i < 2; i++) await applyClickHouse({ ...config, clickhouseDatabase: db }, fabricTopology());
});

afterAll(async () => {
  await client.command({ query: `DROP DATABASE IF EXISTS ${db}` });
  await client.close();
});

/** The version column of each table: feature rows carry their own (the offset that computed them). */
const versionOf = (table: string): string => (table.startsWith('features_') ? 'version' : table === 'experiments' ? 'revision' : 'source_offset');

describe('ClickHouse tables versioned by source offset (feature rows by version)', () => {
  it('every table is a ReplacingMergeTree versioned by source_offset, feature tables by version, experiments by revision', async () => {
    const tables = await rows<{ name: string; engine_full: string }>(`SELECT name, engine_full FROM system.tables WHERE database = ${sqlLiteral(db)} AND engine != 'View' AND name != 'schema_migrations' ORDER BY name`);
    expect(tables.map((t) => t.name)).toEqual(['alerts', 'dead_letters', 'drift_metrics', 'events_interactions', 'events_transactions', 'experiments', 'features_account', 'features_item', 'features_user', 'model_performance', 'outcomes', 'predictions', 'predictions_online', 'predictions_shadow', 'recommendations', 'recommendations_shadow']);
    for (const t of tables) expect(t.engine_full, t.name).toMatch(new RegExp(`^ReplacingMergeTree\\(${versionOf(t.name)}\\)`));
  });

  it('an event written again (same offset, older and newer offsets, in separate inserts) shows once through its v_* view, at the highest offset', async () => {
    const sink = new ClickHouseSink(client, { database: db, flushRows: 10_000, lingerMs: 10 });
    const task: TaskId = { group: 'tracking', topic: 'any', partition: 0 };
    // Each write is its own round, so the copies land in separate parts; the highest offset is not written last.
    for (const [offset, n] of [[5, 5], [5, 5], [9, 9], [7, 7]] as const) {
      for (const topic of Object.keys(samples)) {
        const mapping = mappingFor(topic)!;
        sink.add(mapping.table, mapping.rows(record(topic, offset, n)), task);
      }
      await sink.flush(task);
    }
    await sink.close();
    for (const [table, column] of Object.entries(marker)) {
      const version = versionOf(table);
      expect(await rows(`SELECT ${version} AS v, ${column} AS n FROM ${db}.v_${table}`), table).toEqual([{ v: '9', n: '9' }]);
      // A merge keeps the same single row as FINAL does.
      await client.command({ query: `OPTIMIZE TABLE ${db}.${table} FINAL` });
      expect(await rows(`SELECT ${version} AS v FROM ${db}.${table}`), table).toEqual([{ v: '9' }]);
    }
  });

  it('the analyst views answer, joined on deduplicated rows', async () => {
    const views = await rows<{ name: string }>(`SELECT name FROM system.tables WHERE database = ${sqlLiteral(db)} AND engine = 'View' ORDER BY name`);
    expect(views.map((v) => v.name)).toEqual([
      'v_alerts', 'v_dead_letters', 'v_decisions_hourly', 'v_drift_metrics', 'v_entity_story', 'v_events_interactions', 'v_events_transactions', 'v_experiments', 'v_features_account', 'v_features_item', 'v_features_user',
      'v_fraud_performance', 'v_fraud_precision_recall', 'v_model_performance', 'v_outcomes', 'v_predictions', 'v_predictions_shadow', 'v_recommendation_ctr', 'v_recommendation_outcomes', 'v_recommendations', 'v_recommendations_shadow', 'v_rule_hits', 'v_shadow_comparison',
    ]);
    for (const { name } of views) await expect(rows(`SELECT count() AS c FROM ${db}.${name}`), name).resolves.toHaveLength(1);
    expect(await rows(`SELECT event_id, entity_id, version, rules_version, score, decision, label, label_value FROM ${db}.v_fraud_performance`)).toEqual([
      { event_id: 'e-1', entity_id: 'acc-1', version: '1', rules_version: 0, score: 0.09, decision: 'review', label: 'fraud', label_value: 9 },
    ]);
    // The recommendation's one item, one row, with its attributes.
    expect(await rows(`SELECT item_id, rank, attribute_names, attribute_values, rules_version, rules_fired FROM ${db}.v_recommendations`)).toEqual([
      { item_id: 'item-1', rank: 1, attribute_names: ['category', 'price', 'title'], attribute_values: ['c', '9.5', 'T'], rules_version: 1, rules_fired: ['top'] },
    ]);
    // The story of acc-1, in time order: its event, features, prediction and outcome.
    expect((await rows<{ kind: string }>(`SELECT kind FROM ${db}.v_entity_story WHERE entity_id = 'acc-1' ORDER BY ts_ms, kind`)).map((r) => r.kind).sort()).toEqual(['event', 'features', 'outcome', 'prediction']);
  });
});
