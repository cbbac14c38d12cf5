-- Migration 0007: the ranking model's performance (items shown, clicks and purchases on them within the
-- horizon, CTR, conversion) and the dead letters of the input streams in model_performance, and the
-- dead_letters table they are counted from. The view is recreated: a view's columns are fixed when it is
-- created.

ALTER TABLE {db}.model_performance ADD COLUMN items UInt64 DEFAULT 0;

ALTER TABLE {db}.model_performance ADD COLUMN clicks UInt64 DEFAULT 0;

ALTER TABLE {db}.model_performance ADD COLUMN purchases UInt64 DEFAULT 0;

ALTER TABLE {db}.model_performance ADD COLUMN ctr Nullable(Float64);

ALTER TABLE {db}.model_performance ADD COLUMN conversion Nullable(Float64);

ALTER TABLE {db}.model_performance ADD COLUMN dead_letters UInt64 DEFAULT 0;

DROP TABLE IF EXISTS {db}.v_model_performance;

CREATE VIEW IF NOT EXISTS {db}.v_model_performance AS SELECT * FROM {db}.model_performance FINAL;

-- Dead letters of the model input streams (dlq.events.<stream>): the records a processor could not handle
-- (undecodable, wrongly typed, refused), with the reason from their headers and the original record's
-- position and time; performance windows count them as data quality (dead_letters). One row per original
-- record: dead-lettered again (a re-drive that fails again), it is still one dead letter, the latest.
CREATE TABLE IF NOT EXISTS {db}.dead_letters (
  dlq_topic String,
  original_topic String,
  code String,
  processor String,
  message String,
  original_partition Int32,
  original_offset String,
  original_ts_ms UInt64,
  ts_ms UInt64,
  bytes UInt64,
  source_topic String,
  source_partition Int32,
  source_offset UInt64
) ENGINE = ReplacingMergeTree(source_offset)
PARTITION BY toYYYYMMDD(toDateTime(intDiv(original_ts_ms, 1000)))
ORDER BY (original_topic, original_partition, original_offset);

CREATE VIEW IF NOT EXISTS {db}.v_dead_letters AS SELECT * FROM {db}.dead_letters FINAL;
