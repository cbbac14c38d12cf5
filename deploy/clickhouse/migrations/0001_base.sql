-- Migration 0001: the fabric's base ClickHouse schema. Runs on 18.16 and current ClickHouse: no
-- DateTime64, TTL, Map or query parameters. `{db}` is replaced by the configured database (validated
-- identifier).
--
-- Migrations: every file NNNN_name.sql in this folder is applied by `fabric topology apply` (and at
-- fabric start) in order, once, and recorded in {db}.schema_migrations with its sha256; a recorded file
-- that changed is refused (add a new migration instead). A migration that fails is recorded nowhere and
-- runs again whole next time, so its statements are written to be re-run: CREATE ... IF NOT EXISTS,
-- DROP ... IF EXISTS; an ALTER TABLE ... ADD COLUMN of a column that exists counts as done. Statements
-- end with ";" at the end of a line; lines starting with "--" are comments. Feature tables
-- (features_<group>) and the entity story view are generated from the definitions after the migrations.
--
-- Exactly one row per event: every table is a ReplacingMergeTree versioned by `source_offset` (the
-- Kafka offset the row was read from), and its ORDER BY key holds the event's identity: its event id
-- (drift metrics: model, variable and window; alerts, which carry no id: their source position).
-- A redelivered or retried insert of the same event collapses into one row, the one with the highest
-- offset; rows inserted twice from the same offset are identical. Merges happen in the background, so
-- readers use the v_* views, which read with FINAL and never show an event twice. Partitions are days
-- of the event's own time, so an event's duplicates share a partition (where merges dedupe), and
-- `fabric retention apply` drops whole days. (Databases created before migrations keep drift_metrics
-- and alerts partitioned by month; retention drops such a month once all of it is past retention.)

CREATE DATABASE IF NOT EXISTS {db};

CREATE TABLE IF NOT EXISTS {db}.events_transactions (
  event_id String,
  account_id String,
  counterparty_id String,
  type String,
  amount Float64,
  old_balance Float64,
  new_balance Float64,
  channel String,
  ts_ms UInt64,
  ts DateTime MATERIALIZED toDateTime(intDiv(ts_ms, 1000)),
  source_topic String,
  source_partition Int32,
  source_offset UInt64
) ENGINE = ReplacingMergeTree(source_offset)
PARTITION BY toYYYYMMDD(toDateTime(intDiv(ts_ms, 1000)))
ORDER BY (account_id, event_id);

CREATE TABLE IF NOT EXISTS {db}.events_interactions (
  event_id String,
  user_id String,
  item_id String,
  action String,
  ts_ms UInt64,
  ts DateTime MATERIALIZED toDateTime(intDiv(ts_ms, 1000)),
  source_topic String,
  source_partition Int32,
  source_offset UInt64
) ENGINE = ReplacingMergeTree(source_offset)
PARTITION BY toYYYYMMDD(toDateTime(intDiv(ts_ms, 1000)))
ORDER BY (user_id, event_id);

-- features_<group> tables and their v_ views are generated from the feature definitions
-- (topology/features/rows.ts) when the topology is applied.

CREATE TABLE IF NOT EXISTS {db}.predictions (
  event_id String,
  entity_id String,
  model String,
  version String,
  score Nullable(Float64),
  decision String,
  reasons Array(String),
  fallback UInt8,
  provider String,
  event_ts_ms UInt64,
  event_ts DateTime MATERIALIZED toDateTime(intDiv(event_ts_ms, 1000)),
  feature_names Array(String),
  feature_values Array(Nullable(Float64)),
  source_topic String,
  source_partition Int32,
  source_offset UInt64
) ENGINE = ReplacingMergeTree(source_offset)
PARTITION BY toYYYYMMDD(toDateTime(intDiv(event_ts_ms, 1000)))
ORDER BY (model, event_id);

-- Answers of POST /v1/predict (origin online): one row per request (versioned by its record's offset in
-- predictions.<model>), kept apart from the stream's prediction of the same event.
CREATE TABLE IF NOT EXISTS {db}.predictions_online AS {db}.predictions
ENGINE = ReplacingMergeTree(source_offset)
PARTITION BY toYYYYMMDD(toDateTime(intDiv(event_ts_ms, 1000)))
ORDER BY (model, event_id, source_offset);

CREATE TABLE IF NOT EXISTS {db}.outcomes (
  stream String,
  event_id String,
  entity_id String,
  label String,
  value Float64,
  ts_ms UInt64,
  source_topic String,
  source_partition Int32,
  source_offset UInt64
) ENGINE = ReplacingMergeTree(source_offset)
PARTITION BY toYYYYMMDD(toDateTime(intDiv(ts_ms, 1000)))
ORDER BY (stream, event_id);

CREATE TABLE IF NOT EXISTS {db}.drift_metrics (
  model String,
  version String,
  variable String,
  window_start_ms UInt64,
  window_end_ms UInt64,
  count UInt64,
  psi Float64,
  mean Nullable(Float64),
  status String,
  source_topic String,
  source_partition Int32,
  source_offset UInt64
) ENGINE = ReplacingMergeTree(source_offset)
PARTITION BY toYYYYMMDD(toDateTime(intDiv(window_start_ms, 1000)))
ORDER BY (model, variable, window_start_ms);

CREATE TABLE IF NOT EXISTS {db}.alerts (
  ts_ms UInt64,
  kind String,
  model String,
  message String,
  source_topic String,
  source_partition Int32,
  source_offset UInt64
) ENGINE = ReplacingMergeTree(source_offset)
PARTITION BY toYYYYMMDD(toDateTime(intDiv(ts_ms, 1000)))
ORDER BY (kind, ts_ms, source_partition, source_offset);

-- The deduplicated views, one per table: what analysts and checks read.
CREATE VIEW IF NOT EXISTS {db}.v_events_transactions AS SELECT * FROM {db}.events_transactions FINAL;

CREATE VIEW IF NOT EXISTS {db}.v_events_interactions AS SELECT * FROM {db}.events_interactions FINAL;

CREATE VIEW IF NOT EXISTS {db}.v_predictions AS SELECT * FROM {db}.predictions FINAL;

CREATE VIEW IF NOT EXISTS {db}.v_outcomes AS SELECT * FROM {db}.outcomes FINAL;

CREATE VIEW IF NOT EXISTS {db}.v_drift_metrics AS SELECT * FROM {db}.drift_metrics FINAL;

CREATE VIEW IF NOT EXISTS {db}.v_alerts AS SELECT * FROM {db}.alerts FINAL;

CREATE VIEW IF NOT EXISTS {db}.v_fraud_performance AS
SELECT p.event_id AS event_id, p.entity_id AS entity_id, p.version AS version, p.score AS score, p.decision AS decision, o.label AS label, o.value AS label_value
FROM (SELECT event_id, entity_id, version, score, decision FROM {db}.predictions FINAL WHERE model = 'fraud') AS p
ANY INNER JOIN (SELECT event_id, label, value FROM {db}.outcomes FINAL WHERE stream = 'transactions') AS o USING event_id;
