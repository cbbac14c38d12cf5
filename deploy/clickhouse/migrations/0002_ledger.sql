-- Migration 0002: the prediction ledger. Rule-set versions on predictions, recommendations one row per
-- item shown, outcomes about items, and the analyst views.

ALTER TABLE {db}.predictions ADD COLUMN rules_version UInt32 DEFAULT 0;

ALTER TABLE {db}.predictions ADD COLUMN rules_fired Array(String);

ALTER TABLE {db}.predictions_online ADD COLUMN rules_version UInt32 DEFAULT 0;

ALTER TABLE {db}.predictions_online ADD COLUMN rules_fired Array(String);

ALTER TABLE {db}.outcomes ADD COLUMN item_id String DEFAULT '';

-- A view's columns are fixed when it is created: the SELECT * views of the tables that gained columns
-- are created again.
DROP TABLE IF EXISTS {db}.v_predictions;

CREATE VIEW IF NOT EXISTS {db}.v_predictions AS SELECT * FROM {db}.predictions FINAL;

DROP TABLE IF EXISTS {db}.v_outcomes;

CREATE VIEW IF NOT EXISTS {db}.v_outcomes AS SELECT * FROM {db}.outcomes FINAL;

-- One row per item shown: the stream's recommendation at an interaction (origin stream, request_id 0)
-- or an answer of POST /v1/predict/recs (origin online, request_id its instant).
CREATE TABLE IF NOT EXISTS {db}.recommendations (
  event_id String,
  user_id String,
  model String,
  version String,
  rules_version UInt32,
  rules_fired Array(String),
  origin String,
  request_id UInt64,
  candidates UInt32,
  item_id String,
  rank UInt16,
  score Float64,
  attribute_names Array(String),
  attribute_values Array(String),
  event_ts_ms UInt64,
  event_ts DateTime MATERIALIZED toDateTime(intDiv(event_ts_ms, 1000)),
  source_topic String,
  source_partition Int32,
  source_offset UInt64
) ENGINE = ReplacingMergeTree(source_offset)
PARTITION BY toYYYYMMDD(toDateTime(intDiv(event_ts_ms, 1000)))
ORDER BY (model, origin, event_id, request_id, rank);

-- Fraud decisions with their labels (labels arrive later on outcomes.transactions), now with the rule set.
DROP TABLE IF EXISTS {db}.v_fraud_performance;

CREATE VIEW IF NOT EXISTS {db}.v_fraud_performance AS
SELECT p.event_id AS event_id, p.entity_id AS entity_id, p.version AS version, p.rules_version AS rules_version, p.score AS score, p.decision AS decision, p.event_ts_ms AS event_ts_ms, o.label AS label, o.value AS label_value
FROM (SELECT event_id, entity_id, version, rules_version, score, decision, event_ts_ms FROM {db}.predictions FINAL WHERE model = 'fraud') AS p
ANY INNER JOIN (SELECT event_id, label, value FROM {db}.outcomes FINAL WHERE stream = 'transactions') AS o USING event_id;

CREATE VIEW IF NOT EXISTS {db}.v_recommendations AS SELECT * FROM {db}.recommendations FINAL;

-- Decisions per hour (event time) by model, model version and rule-set version.
CREATE VIEW IF NOT EXISTS {db}.v_decisions_hourly AS
SELECT toStartOfHour(toDateTime(intDiv(event_ts_ms, 1000))) AS hour, model, version, rules_version, decision, count() AS predictions, sum(fallback) AS fallbacks
FROM {db}.predictions FINAL
GROUP BY hour, model, version, rules_version, decision;

-- Precision and recall of the fraud decisions once labels arrived, per model and rule-set version:
-- "blocked" is decision block, "flagged" is block or review; a fraud is a label value of 1.
CREATE VIEW IF NOT EXISTS {db}.v_fraud_precision_recall AS
SELECT version, rules_version, count() AS labelled, sum(label_value = 1) AS frauds,
  sum(decision = 'block') AS blocked, sum(decision = 'block' AND label_value = 1) AS blocked_frauds,
  sum(decision IN ('block', 'review')) AS flagged, sum(decision IN ('block', 'review') AND label_value = 1) AS flagged_frauds,
  if(blocked > 0, blocked_frauds / blocked, nan) AS precision_block, if(frauds > 0, blocked_frauds / frauds, nan) AS recall_block,
  if(flagged > 0, flagged_frauds / flagged, nan) AS precision_flagged, if(frauds > 0, flagged_frauds / frauds, nan) AS recall_flagged
FROM {db}.v_fraud_performance
GROUP BY version, rules_version;

-- What happened after each item shown by the stream: the user's views, clicks and purchases of that
-- item within an hour after the recommendation (outcomes.interactions joined by user and item).
CREATE VIEW IF NOT EXISTS {db}.v_recommendation_outcomes AS
SELECT event_id, user_id, model, version, rules_version, item_id, rank, score, event_ts_ms,
  max(o_label = 'view' AND o_ts > event_ts_ms AND o_ts <= event_ts_ms + 3600000) AS viewed,
  max(o_label = 'click' AND o_ts > event_ts_ms AND o_ts <= event_ts_ms + 3600000) AS clicked,
  max(o_label = 'purchase' AND o_ts > event_ts_ms AND o_ts <= event_ts_ms + 3600000) AS purchased
FROM (SELECT event_id, user_id, model, version, rules_version, item_id, rank, score, event_ts_ms FROM {db}.recommendations FINAL WHERE origin = 'stream')
ALL LEFT JOIN (SELECT entity_id AS user_id, item_id, ts_ms AS o_ts, label AS o_label FROM {db}.outcomes FINAL WHERE stream = 'interactions') USING (user_id, item_id)
GROUP BY event_id, user_id, model, version, rules_version, item_id, rank, score, event_ts_ms;

-- Click-through and conversion by model version, rule-set version and position.
CREATE VIEW IF NOT EXISTS {db}.v_recommendation_ctr AS
SELECT model, version, rules_version, rank AS position, count() AS shown, sum(clicked) AS clicks, sum(purchased) AS purchases, clicks / shown AS ctr, purchases / shown AS conversion
FROM {db}.v_recommendation_outcomes
GROUP BY model, version, rules_version, position;

-- How often each rule fired, per model and rule-set version (a recommendation counts once).
CREATE VIEW IF NOT EXISTS {db}.v_rule_hits AS
SELECT model, rules_version, rule, fired, total, fired / total AS rate
FROM (
  SELECT model, rules_version, arrayJoin(rules_fired) AS rule, count() AS fired
  FROM (SELECT model, rules_version, rules_fired FROM {db}.predictions FINAL UNION ALL SELECT model, rules_version, rules_fired FROM {db}.recommendations FINAL WHERE origin = 'stream' AND rank = 1)
  GROUP BY model, rules_version, rule
)
ANY LEFT JOIN (
  SELECT model, rules_version, count() AS total
  FROM (SELECT model, rules_version FROM {db}.predictions FINAL UNION ALL SELECT model, rules_version FROM {db}.recommendations FINAL WHERE origin = 'stream' AND rank = 1)
  GROUP BY model, rules_version
) USING (model, rules_version);
