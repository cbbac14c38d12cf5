import type { Alert, DriftMetric, Experiment, Interaction, Outcome, PerformanceMetric, Prediction, Recommendation, Transaction } from '../../schemas/types.generated.js';
import type { SourceRecord } from '../../topology/runtime/processor.js';
import type { Row } from './clickhouse-sink.js';
import { featureTable, featureTableRow, type FeatureRow } from '../../topology/features/rows.js';
import { featureGroupNamed } from '../../topology/features/groups.js';

/** How each tracked topic becomes rows of a ClickHouse table. Every row carries its source position. */
export interface TableMapping {
  readonly table: string;
  /** A record's table when it is not always `table`. */
  tableOf?(record: SourceRecord): string;
  /** The record's rows: one, or several (a recommendation: one per item shown). */
  rows(record: SourceRecord): Row[];
}

function source(r: SourceRecord): Row {
  return { source_topic: r.topic, source_partition: r.partition, source_offset: r.offset };
}

function headerText(v: unknown): string {
  if (v === undefined || v === null) return '';
  if (Array.isArray(v)) return headerText(v[0]);
  return Buffer.isBuffer(v) ? v.toString('utf8') : String(v);
}

const mappings: Record<string, (topic: string) => TableMapping> = {
  // Dead letters (original bytes plus fabric.error.* headers): who refused what and why, for data quality.
  'dlq.': (topic) => ({
    table: 'dead_letters',
    rows(r) {
      const h = (name: string): string => headerText(r.headers[name]);
      const originalTs = Number(h('fabric.source.timestamp'));
      return [{
        dlq_topic: topic, original_topic: topic.slice('dlq.'.length), code: h('fabric.error.code'), processor: h('fabric.error.processor'), message: h('fabric.error.message'),
        original_partition: Number(h('fabric.source.partition')) || 0, original_offset: h('fabric.source.offset'), original_ts_ms: Number.isFinite(originalTs) && originalTs > 0 ? originalTs : r.timestamp, ts_ms: r.timestamp,
        bytes: Buffer.isBuffer(r.value) ? r.value.length : 0, ...source(r),
      }];
    },
  }),
  'events.transactions': () => ({
    table: 'events_transactions',
    rows(r) {
      const t = r.value as Transaction;
      return [{ event_id: t.event_id, account_id: t.account_id, counterparty_id: t.counterparty_id, type: t.type, amount: t.amount, old_balance: t.old_balance, new_balance: t.new_balance, channel: t.channel, ts_ms: t.ts, ...source(r) }];
    },
  }),
  'events.interactions': () => ({
    table: 'events_interactions',
    rows(r) {
      const i = r.value as Interaction;
      return [{ event_id: i.event_id, user_id: i.user_id, item_id: i.item_id, action: i.action, ts_ms: i.ts, ...source(r) }];
    },
  }),
  // A feature row carries its event's own source position and its version (the input offset that
  // computed it): corrected rows replace earlier ones in ReplacingMergeTree(version).
  'features.': (topic) => {
    const group = featureGroupNamed(topic.slice('features.'.length));
    if (!group) throw new Error(`no feature group writes ${topic}`);
    return { table: featureTable(group), rows: (r) => [featureTableRow(group, r.value as FeatureRow)] };
  },
  // Recommendations: one row per item shown, with its rank (and none for a fallback with no items).
  // Answers of POST /v1/predict/recs are kept apart by request (request_id, their instant).
  'predictions.recs': () => ({
    table: 'recommendations',
    rows(r) {
      const rec = r.value as Recommendation;
      const base = {
        event_id: rec.event_id, user_id: rec.user_id, model: rec.model, version: rec.version, rules_version: rec.rules_version, rules_fired: rec.rules_fired, origin: rec.origin,
        experiment: rec.experiment, arm: rec.arm, latency_ms: rec.latency_ms,
        request_id: rec.origin === 'online' ? rec.source_offset : 0, candidates: rec.candidates, event_ts_ms: rec.event_ts, ...source(r),
      };
      return rec.items.map((item) => {
        const names = Object.keys(item.attributes).sort();
        return { ...base, item_id: item.item_id, rank: item.rank, score: item.score, attribute_names: names, attribute_values: names.map((n) => (item.attributes[n] === null || item.attributes[n] === undefined ? '' : String(item.attributes[n]))) };
      });
    },
  }),
  'predictions.': () => ({
    table: 'predictions',
    // Answers of POST /v1/predict have their own table: they must not replace the stream's row of the same event.
    tableOf: (r) => ((r.value as Prediction).origin === 'online' ? 'predictions_online' : 'predictions'),
    rows(r) {
      const p = r.value as Prediction;
      const names = Object.keys(p.features).sort();
      return [{
        event_id: p.event_id, entity_id: p.entity_id, model: p.model, version: p.version, score: p.score, decision: p.decision, reasons: p.reasons, fallback: p.fallback ? 1 : 0, provider: p.provider,
        event_ts_ms: p.event_ts, feature_names: names, feature_values: names.map((n) => p.features[n] ?? null), rules_version: p.rules_version, rules_fired: p.rules_fired,
        experiment: p.experiment, arm: p.arm, latency_ms: p.latency_ms, ...source(r),
      }];
    },
  }),
  'outcomes.': (topic) => ({
    table: 'outcomes',
    rows(r) {
      const o = r.value as Outcome;
      return [{ stream: topic.slice('outcomes.'.length), event_id: o.event_id, entity_id: o.entity_id, label: o.label, value: o.value, ts_ms: o.ts, item_id: o.item_id ?? '', ...source(r) }];
    },
  }),
  alerts: () => ({
    table: 'alerts',
    rows(r) {
      const a = r.value as Alert;
      const names = Object.keys(a.details).sort();
      return [{ alert_id: a.alert_id, ts_ms: a.ts, kind: a.kind, severity: a.severity, model: a.model, version: a.version, subject: a.subject, message: a.message, detail_names: names, detail_values: names.map((n) => a.details[n]!), ...source(r) }];
    },
  }),
  'performance.metrics': () => ({
    table: 'model_performance',
    rows(r) {
      const m = r.value as PerformanceMetric;
      return [{
        model: m.model, version: m.version, experiment: m.experiment, arm: m.arm, window_start_ms: m.window_start, window_end_ms: m.window_end, horizon_ms: m.horizon_ms,
        predictions: m.predictions, scored: m.scored, labelled: m.labelled, positives: m.positives, late_labels: m.late_labels, auc: m.auc, log_loss: m.log_loss, ece: m.ece, base_rate: m.base_rate, items: m.items, clicks: m.clicks, purchases: m.purchases, ctr: m.ctr, conversion: m.conversion, dead_letters: m.dead_letters,
        threshold_names: m.thresholds.map((t) => t.name), threshold_values: m.thresholds.map((t) => t.threshold), threshold_flagged: m.thresholds.map((t) => t.flagged),
        threshold_precision: m.thresholds.map((t) => t.precision), threshold_recall: m.thresholds.map((t) => t.recall), threshold_f1: m.thresholds.map((t) => t.f1), ...source(r),
      }];
    },
  }),
  '_fabric.experiments': () => ({
    table: 'experiments',
    rows(r) {
      const e = r.value as Experiment | null;
      if (!e) return [];
      const d = e.decision;
      return [{
        id: e.id, model: e.model, control: e.control, treatment: e.treatment, split: e.split, shadow: e.shadow ?? '', metric: e.metric, min_samples: e.min_samples, max_duration_ms: e.max_duration_ms,
        guardrails: e.guardrails.map((g) => `${g.metric}${g.op}${g.threshold}`), auto: e.auto, alpha: e.alpha, state: e.state, revision: e.revision, started_at_ms: e.started_at, started_by: e.started_by,
        ended_at_ms: e.ended_at ?? 0, outcome: d?.outcome ?? '', action: d?.action ?? '', reason: d?.reason ?? '', decided_by: d?.by ?? '', stats_json: d?.stats_json ?? '', ...source(r),
      }];
    },
  }),
  'drift.metrics': () => ({
    table: 'drift_metrics',
    rows(r) {
      const d = r.value as DriftMetric;
      return [{
        model: d.model, version: d.version, variable: d.variable, window_start_ms: d.window_start, window_end_ms: d.window_end, count: d.count, psi: d.psi, mean: d.mean, status: d.status,
        kind: d.kind, total: d.total, js: d.js, ks: d.ks, wasserstein: d.wasserstein, chi2_p: d.chi2_p, missing_rate: d.missing_rate, invalid: d.invalid, out_of_range_rate: d.out_of_range_rate, unseen_rate: d.unseen_rate, late: d.late, final: d.final ? 1 : 0, ...source(r),
      }];
    },
  }),
};

/** The mapping for a logical topic: shadow outputs, then the exact name, then its family prefix (features.*, predictions.*, outcomes.*). */
export function mappingFor(topic: string): TableMapping | null {
  // Shadow outputs (predictions.<model>.shadow) have the rows of their model's outputs, in <table>_shadow.
  if (topic.startsWith('predictions.') && topic.endsWith('.shadow')) {
    const base = mappingFor(topic.slice(0, -'.shadow'.length));
    return base && { table: `${base.table}_shadow`, rows: base.rows };
  }
  const exact = mappings[topic];
  if (exact) return exact(topic);
  const family = Object.keys(mappings).find((k) => k.endsWith('.') && topic.startsWith(k));
  return family ? mappings[family]!(topic) : null;
}
