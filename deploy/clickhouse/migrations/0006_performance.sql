-- Migration 0006: model performance with delayed labels (topic performance.metrics): one row per event-time
-- window, model version and experiment arm, from the outcomes joined to the predictions by event id within
-- the horizon. Thresholds are parallel arrays (name, threshold, flagged, precision, recall, F1; null where a
-- measure is undefined, e.g. the precision of a threshold that flagged nothing). A window measured twice
-- (the monitor crashed before marking it done) has the same values; the view keeps one row.

CREATE TABLE IF NOT EXISTS {db}.model_performance (
  model String,
  version String,
  experiment String,
  arm String,
  window_start_ms UInt64,
  window_end_ms UInt64,
  horizon_ms UInt64,
  predictions UInt64,
  scored UInt64,
  labelled UInt64,
  positives UInt64,
  late_labels UInt64,
  auc Nullable(Float64),
  log_loss Nullable(Float64),
  ece Nullable(Float64),
  base_rate Nullable(Float64),
  threshold_names Array(String),
  threshold_values Array(Float64),
  threshold_flagged Array(UInt64),
  threshold_precision Array(Nullable(Float64)),
  threshold_recall Array(Nullable(Float64)),
  threshold_f1 Array(Nullable(Float64)),
  source_topic String,
  source_partition Int32,
  source_offset UInt64
) ENGINE = ReplacingMergeTree(source_offset)
PARTITION BY toYYYYMMDD(toDateTime(intDiv(window_start_ms, 1000)))
ORDER BY (model, version, experiment, arm, window_end_ms, window_start_ms);

CREATE VIEW IF NOT EXISTS {db}.v_model_performance AS SELECT * FROM {db}.model_performance FINAL;
