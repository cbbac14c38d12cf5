-- Migration 0003: drift_metrics and alerts partitioned by day, like every other table, with their rows.
-- Databases created before the migrations existed have them partitioned by month (toYYYYMM), and
-- ClickHouse cannot change a table's partition key: each table is recreated and its rows copied. On a
-- database 0001 created (already by day) the same statements run and change nothing but the table.
--
-- Per table T, with T_0003_new (the new, empty table) and T_0003_old (the table set aside):
--   1. T exists (recreated empty if a failed run left it renamed away); 2-4. rows a failed run left in
--   T_0003_old are copied back into T and T_0003_old is dropped; 5-6. T_0003_new is created and the
--   names are swapped in one RENAME: writers insert into the new T from then on (RENAME waits for
--   inserts in flight on the old table); 7. the old rows are copied into the new T; 8. the old table
--   is dropped. The rows are always in T or T_0003_old (never only in T_0003_new, which is never
--   filled), so a run that fails at any statement loses nothing when it runs again. A rerun can copy a
--   row twice: identical rows (same key, same source_offset version) are one row under FINAL (the
--   v_ views) and are merged away by the ReplacingMergeTree. The v_ views name the table, so they read
--   the new one. Columns are listed: the copy does not depend on their order.

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

CREATE TABLE IF NOT EXISTS {db}.drift_metrics_0003_old AS {db}.drift_metrics;

INSERT INTO {db}.drift_metrics (model, version, variable, window_start_ms, window_end_ms, count, psi, mean, status, source_topic, source_partition, source_offset)
SELECT model, version, variable, window_start_ms, window_end_ms, count, psi, mean, status, source_topic, source_partition, source_offset FROM {db}.drift_metrics_0003_old;

DROP TABLE IF EXISTS {db}.drift_metrics_0003_old;

CREATE TABLE IF NOT EXISTS {db}.drift_metrics_0003_new (
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

RENAME TABLE {db}.drift_metrics TO {db}.drift_metrics_0003_old, {db}.drift_metrics_0003_new TO {db}.drift_metrics;

INSERT INTO {db}.drift_metrics (model, version, variable, window_start_ms, window_end_ms, count, psi, mean, status, source_topic, source_partition, source_offset)
SELECT model, version, variable, window_start_ms, window_end_ms, count, psi, mean, status, source_topic, source_partition, source_offset FROM {db}.drift_metrics_0003_old;

DROP TABLE IF EXISTS {db}.drift_metrics_0003_old;

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

CREATE TABLE IF NOT EXISTS {db}.alerts_0003_old AS {db}.alerts;

INSERT INTO {db}.alerts (ts_ms, kind, model, message, source_topic, source_partition, source_offset)
SELECT ts_ms, kind, model, message, source_topic, source_partition, source_offset FROM {db}.alerts_0003_old;

DROP TABLE IF EXISTS {db}.alerts_0003_old;

CREATE TABLE IF NOT EXISTS {db}.alerts_0003_new (
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

RENAME TABLE {db}.alerts TO {db}.alerts_0003_old, {db}.alerts_0003_new TO {db}.alerts;

INSERT INTO {db}.alerts (ts_ms, kind, model, message, source_topic, source_partition, source_offset)
SELECT ts_ms, kind, model, message, source_topic, source_partition, source_offset FROM {db}.alerts_0003_old;

DROP TABLE IF EXISTS {db}.alerts_0003_old;
