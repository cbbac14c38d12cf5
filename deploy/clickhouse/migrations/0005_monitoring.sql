-- Migration 0005: model monitoring. drift_metrics gets a row per window, model version and variable
-- (its sorting key had no version, so two versions' rows of one window would have collapsed into one,
-- and hopping windows share a start: the window end is in the key too) and the drift and data-quality
-- measures beside PSI (Jensen-Shannon, KS, Wasserstein, chi-square p-value, missing, invalid,
-- out-of-range and unseen rates, late predictions). ClickHouse cannot change a sorting key to one with
-- an existing column, so the table is recreated and its rows copied, with 0003's steps (safe to stop
-- after any statement and run again; see 0003_partition_by_day.sql): rows are always in drift_metrics
-- or drift_metrics_0005_old, never only in drift_metrics_0005_new. Rows of earlier releases keep their
-- columns and get the defaults (kind numeric, no Jensen-Shannon or KS). The view is recreated: a view's
-- columns are fixed when it is created.

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
  kind String DEFAULT 'numeric',
  total UInt64 DEFAULT 0,
  js Nullable(Float64),
  ks Nullable(Float64),
  wasserstein Nullable(Float64),
  chi2_p Nullable(Float64),
  missing_rate Float64 DEFAULT 0,
  invalid UInt64 DEFAULT 0,
  out_of_range_rate Float64 DEFAULT 0,
  unseen_rate Float64 DEFAULT 0,
  late UInt64 DEFAULT 0,
  source_topic String,
  source_partition Int32,
  source_offset UInt64
) ENGINE = ReplacingMergeTree(source_offset)
PARTITION BY toYYYYMMDD(toDateTime(intDiv(window_start_ms, 1000)))
ORDER BY (model, version, variable, window_end_ms, window_start_ms);

CREATE TABLE IF NOT EXISTS {db}.drift_metrics_0005_old AS {db}.drift_metrics;

INSERT INTO {db}.drift_metrics (model, version, variable, window_start_ms, window_end_ms, count, psi, mean, status, source_topic, source_partition, source_offset)
SELECT model, version, variable, window_start_ms, window_end_ms, count, psi, mean, status, source_topic, source_partition, source_offset FROM {db}.drift_metrics_0005_old;

DROP TABLE IF EXISTS {db}.drift_metrics_0005_old;

CREATE TABLE IF NOT EXISTS {db}.drift_metrics_0005_new (
  model String,
  version String,
  variable String,
  window_start_ms UInt64,
  window_end_ms UInt64,
  count UInt64,
  psi Float64,
  mean Nullable(Float64),
  status String,
  kind String DEFAULT 'numeric',
  total UInt64 DEFAULT 0,
  js Nullable(Float64),
  ks Nullable(Float64),
  wasserstein Nullable(Float64),
  chi2_p Nullable(Float64),
  missing_rate Float64 DEFAULT 0,
  invalid UInt64 DEFAULT 0,
  out_of_range_rate Float64 DEFAULT 0,
  unseen_rate Float64 DEFAULT 0,
  late UInt64 DEFAULT 0,
  source_topic String,
  source_partition Int32,
  source_offset UInt64
) ENGINE = ReplacingMergeTree(source_offset)
PARTITION BY toYYYYMMDD(toDateTime(intDiv(window_start_ms, 1000)))
ORDER BY (model, version, variable, window_end_ms, window_start_ms);

RENAME TABLE {db}.drift_metrics TO {db}.drift_metrics_0005_old, {db}.drift_metrics_0005_new TO {db}.drift_metrics;

INSERT INTO {db}.drift_metrics (model, version, variable, window_start_ms, window_end_ms, count, psi, mean, status, source_topic, source_partition, source_offset)
SELECT model, version, variable, window_start_ms, window_end_ms, count, psi, mean, status, source_topic, source_partition, source_offset FROM {db}.drift_metrics_0005_old;

DROP TABLE IF EXISTS {db}.drift_metrics_0005_old;

DROP TABLE IF EXISTS {db}.v_drift_metrics;

CREATE VIEW IF NOT EXISTS {db}.v_drift_metrics AS SELECT * FROM {db}.drift_metrics FINAL;
