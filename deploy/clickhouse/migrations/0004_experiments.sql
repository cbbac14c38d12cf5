-- Migration 0004: experiments. The experiment and arm of every prediction and recommendation and the
-- model time that produced it, shadow predictions apart from the decisions, experiment records, and
-- alerts with their subject and details.

ALTER TABLE {db}.predictions ADD COLUMN experiment String DEFAULT '';

ALTER TABLE {db}.predictions ADD COLUMN arm String DEFAULT '';

ALTER TABLE {db}.predictions ADD COLUMN latency_ms Float64 DEFAULT 0;

ALTER TABLE {db}.predictions_online ADD COLUMN experiment String DEFAULT '';

ALTER TABLE {db}.predictions_online ADD COLUMN arm String DEFAULT '';

ALTER TABLE {db}.predictions_online ADD COLUMN latency_ms Float64 DEFAULT 0;

ALTER TABLE {db}.recommendations ADD COLUMN experiment String DEFAULT '';

ALTER TABLE {db}.recommendations ADD COLUMN arm String DEFAULT '';

ALTER TABLE {db}.recommendations ADD COLUMN latency_ms Float64 DEFAULT 0;

-- Shadow outputs (predictions.<model>.shadow): the shadow version's score and the decision it would have
-- taken for the same event; never the decision that was served.
CREATE TABLE IF NOT EXISTS {db}.predictions_shadow AS {db}.predictions
ENGINE = ReplacingMergeTree(source_offset)
PARTITION BY toYYYYMMDD(toDateTime(intDiv(event_ts_ms, 1000)))
ORDER BY (model, version, event_id);

CREATE TABLE IF NOT EXISTS {db}.recommendations_shadow AS {db}.recommendations
ENGINE = ReplacingMergeTree(source_offset)
PARTITION BY toYYYYMMDD(toDateTime(intDiv(event_ts_ms, 1000)))
ORDER BY (model, version, event_id, rank);

ALTER TABLE {db}.alerts ADD COLUMN alert_id String DEFAULT '';

ALTER TABLE {db}.alerts ADD COLUMN severity String DEFAULT '';

ALTER TABLE {db}.alerts ADD COLUMN version String DEFAULT '';

ALTER TABLE {db}.alerts ADD COLUMN subject String DEFAULT '';

ALTER TABLE {db}.alerts ADD COLUMN detail_names Array(String);

ALTER TABLE {db}.alerts ADD COLUMN detail_values Array(String);

-- Every revision of every experiment (_fabric.experiments); v_experiments keeps the latest per id.
CREATE TABLE IF NOT EXISTS {db}.experiments (
  id String,
  model String,
  control String,
  treatment String,
  split Float64,
  shadow String,
  metric String,
  min_samples UInt64,
  max_duration_ms UInt64,
  guardrails Array(String),
  auto String,
  alpha Float64,
  state String,
  revision UInt32,
  started_at_ms UInt64,
  started_by String,
  ended_at_ms UInt64,
  outcome String,
  action String,
  reason String,
  decided_by String,
  stats_json String,
  source_topic String,
  source_partition Int32,
  source_offset UInt64
) ENGINE = ReplacingMergeTree(revision)
PARTITION BY toYYYYMMDD(toDateTime(intDiv(started_at_ms, 1000)))
ORDER BY id;

DROP TABLE IF EXISTS {db}.v_predictions;

CREATE VIEW IF NOT EXISTS {db}.v_predictions AS SELECT * FROM {db}.predictions FINAL;

DROP TABLE IF EXISTS {db}.v_recommendations;

CREATE VIEW IF NOT EXISTS {db}.v_recommendations AS SELECT * FROM {db}.recommendations FINAL;

DROP TABLE IF EXISTS {db}.v_alerts;

CREATE VIEW IF NOT EXISTS {db}.v_alerts AS SELECT * FROM {db}.alerts FINAL;

CREATE VIEW IF NOT EXISTS {db}.v_predictions_shadow AS SELECT * FROM {db}.predictions_shadow FINAL;

CREATE VIEW IF NOT EXISTS {db}.v_recommendations_shadow AS SELECT * FROM {db}.recommendations_shadow FINAL;

CREATE VIEW IF NOT EXISTS {db}.v_experiments AS SELECT * FROM {db}.experiments FINAL;

-- The shadow next to what was served, per event: score deltas and the decisions that would have changed.
CREATE VIEW IF NOT EXISTS {db}.v_shadow_comparison AS
SELECT s.model AS model, s.version AS shadow_version, s.experiment AS experiment, s.event_id AS event_id, s.event_ts_ms AS event_ts_ms,
  s.score AS shadow_score, s.decision AS shadow_decision, s.latency_ms AS shadow_latency_ms,
  p.version AS served_version, p.arm AS served_arm, p.score AS served_score, p.decision AS served_decision, p.latency_ms AS served_latency_ms
FROM (SELECT model, version, experiment, event_id, event_ts_ms, score, decision, latency_ms FROM {db}.predictions_shadow FINAL) AS s
ANY LEFT JOIN (SELECT model, event_id, version, arm, score, decision, latency_ms FROM {db}.predictions FINAL) AS p USING (model, event_id);
