-- Migration 0008: drift results fired early (on the idle timeout, before every partition's watermark
-- passed the window) are marked: final = 0. A later row of the same window (a larger source_offset)
-- replaces an early one under FINAL, so v_drift_metrics shows every window's latest result. The view
-- is recreated: a view's columns are fixed when it is created.

ALTER TABLE {db}.drift_metrics ADD COLUMN final UInt8 DEFAULT 1;

DROP TABLE IF EXISTS {db}.v_drift_metrics;

CREATE VIEW IF NOT EXISTS {db}.v_drift_metrics AS SELECT * FROM {db}.drift_metrics FINAL;
