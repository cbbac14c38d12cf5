import { describe, expect, it } from 'vitest';
import { parseRetention, planRetention, retentionFor } from '../../topology/retention.js';
import { loadConfig } from '../../topology/config.js';

const NOW = Date.UTC(2026, 10, 22, 9, 30);

describe('retention rules', () => {
  it('parse table=Nd, prefix*=Nd and keep, first match wins, and refuse anything else with the rule named', () => {
    const rules = parseRetention('events_*=30d, predictions_online=7d,predictions*=90d,alerts=keep');
    expect(rules).toEqual([
      { pattern: 'events_*', days: 30 },
      { pattern: 'predictions_online', days: 7 },
      { pattern: 'predictions*', days: 90 },
      { pattern: 'alerts', days: null },
    ]);
    expect(retentionFor(rules, 'predictions_online')?.days).toBe(7);
    expect(retentionFor(rules, 'predictions')?.days).toBe(90);
    expect(retentionFor(rules, 'outcomes')).toBeNull();
    expect(() => parseRetention('events=30 days')).toThrow('retention rule "events=30 days" is not table=Nd, table_prefix*=Nd or table=keep');
    expect(() => loadConfig({ FABRIC_CLICKHOUSE_RETENTION: 'x=0d' })).toThrow(/FABRIC_CLICKHOUSE_RETENTION="x=0d": retention rule "x=0d" is not table=Nd/);
    expect(loadConfig({}).clickhouseRetention.find((r) => r.pattern === 'outcomes')).toEqual({ pattern: 'outcomes', days: 180 });
  });

  it('plan the day partitions before the first day kept, months only when wholly before, never a table without a rule or kept', () => {
    const rules = parseRetention('events_*=30d,alerts=keep,drift_metrics=365d');
    const parts = [
      { table: 'events_transactions', partition: '20261022', rows: 5 },
      { table: 'events_transactions', partition: '20261023', rows: 6 },
      { table: 'events_transactions', partition: '20261121', rows: 7 },
      { table: 'alerts', partition: '20200101', rows: 1 },
      { table: 'outcomes', partition: '20200101', rows: 1 },
      { table: 'drift_metrics', partition: '202510', rows: 2 },
      { table: 'drift_metrics', partition: '202511', rows: 3 },
      { table: 'drift_metrics', partition: 'all', rows: 3 },
    ];
    // Now minus 30 days is 2026-10-23: the 22nd goes, the 23rd stays. 365 days back is 2025-11-22: October 2025 goes, November stays.
    expect(planRetention(rules, parts, NOW)).toEqual([
      { table: 'drift_metrics', partition: '202510', rows: 2, rule: 'drift_metrics=365d', days: 365, keepFrom: '2025-11-22' },
      { table: 'events_transactions', partition: '20261022', rows: 5, rule: 'events_*=30d', days: 30, keepFrom: '2026-10-23' },
    ]);
  });
});
