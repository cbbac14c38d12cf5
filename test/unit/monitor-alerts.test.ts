import { describe, expect, it } from 'vitest';
import { TestDriver } from '../../topology/runtime/test-driver.js';
import { alertsProcessor } from '../../processors/monitor/alerts.js';
import { parseAlertRules, ruleMatches } from '../../processors/monitor/rules.js';
import { alertWebhookProcessor, type Post } from '../../processors/monitor/webhook.js';
import { loadConfig } from '../../topology/config.js';
import type { Alert, DriftMetric, PerformanceMetric } from '../../schemas/types.generated.js';

const W = 60_000;
function metric(i: number, psi: number, overrides: Partial<DriftMetric> = {}): DriftMetric {
  return {
    model: 'fraud', version: '1', variable: 'amount', window_start: i * W, window_end: (i + 1) * W, count: 500, psi, mean: 1, status: psi < 0.1 ? 'ok' : psi < 0.25 ? 'warn' : 'drift',
    kind: 'numeric', total: 500, js: 0, ks: 0, wasserstein: 0, chi2_p: null, missing_rate: 0, invalid: 0, out_of_range_rate: 0, unseen_rate: 0, late: 0, final: true, ...overrides,
  };
}

describe('alert rules', () => {
  it('parse the configuration default and custom rules', () => {
    const rules = parseAlertRules(loadConfig({}, {}).alertRules);
    expect(rules.map((r) => [r.metric, r.op, r.threshold, r.fire, r.clear, r.severity])).toEqual([
      ['psi', '>', 0.25, 1, 2, 'critical'],
      ['missing_rate', '>', 0.2, 2, 2, 'warning'],
      ['out_of_range_rate', '>', 0.2, 2, 2, 'warning'],
      ['unseen_rate', '>', 0.2, 2, 2, 'warning'],
    ]);
    const [custom] = parseAlertRules('ks:amount*>0.3 fire=3 clear=4 severity=info');
    expect(custom).toMatchObject({ metric: 'ks', variable: 'amount*', fire: 3, clear: 4, severity: 'info' });
    expect([ruleMatches(custom!, 'amount'), ruleMatches(custom!, 'amount_sum_1h'), ruleMatches(custom!, 'old_amount')]).toEqual([true, true, false]);
    expect(parseAlertRules('chi2_p<1e-3')[0]).toMatchObject({ op: '<', threshold: 0.001 });
  });

  it('refuse what they do not understand, naming the rule (FABRIC_CONFIG_INVALID)', () => {
    for (const [text, why] of [
      ['psi>>0.2', /expected/],
      ['accuracy>0.2', /unknown metric accuracy/],
      ['psi>0.2 fire=0', /fire must be/],
      ['psi>0.2 after=2', /unknown option after/],
      ['psi>0.2 severity=loud', /severity/],
      ['psi>0.2; psi>0.2', /twice/],
    ] as const) {
      expect(() => parseAlertRules(text), text).toThrow(why);
    }
  });
});

describe('alerts processor: hysteresis', () => {
  const rules = parseAlertRules('psi>0.25 fire=2 clear=2 severity=critical');
  const open = () => new TestDriver(alertsProcessor({ rules })).open();

  it('fires after 2 consecutive breaching windows and resolves after 2 clean ones; a lone spike or dip changes nothing', async () => {
    const d = await open();
    const psis = [0.3, 0.1, 0.3, 0.3, 0.3, 0.1, 0.3, 0.1, 0.1, 0.05];
    await d.pipe('drift.metrics', psis.map((p, i) => metric(i, p)));
    const alerts = d.emitted<Alert>('alerts');
    expect(alerts.map((a) => [a.details.state, a.ts / W, a.severity])).toEqual([
      ['firing', 4, 'critical'],
      ['resolved', 9, 'info'],
    ]);
    expect(alerts[0]).toMatchObject({ kind: 'drift', subject: 'fraud@1/amount/psi', model: 'fraud', version: '1' });
    expect(alerts[0]!.details).toMatchObject({ value: '0.3', threshold: '0.25', windows: '2', window_end: String(4 * W) });
    expect(alerts[1]!.message).toContain('worst 0.300');
  });

  it('windows too small to judge, or without a reference, neither breach nor clear', async () => {
    const d = await open();
    await d.pipe('drift.metrics', [metric(0, 0.4), metric(1, 0.9, { status: 'low_count', count: 3 }), metric(2, 0, { status: 'no_reference' }), metric(3, 0.4)]);
    expect(d.emitted<Alert>('alerts').map((a) => a.ts / W)).toEqual([4]);
  });

  it('a replayed or retried stretch of windows raises the same alerts, once', async () => {
    const once = await open();
    const metrics = [0.3, 0.3, 0.1, 0.1].map((p, i) => metric(i, p));
    await once.pipe('drift.metrics', metrics);
    const d = await open();
    await d.pipe('drift.metrics', metrics.slice(0, 3), { commit: false });
    await d.pipe('drift.metrics', metrics.slice(0, 1));
    await d.pipe('drift.metrics', metrics.slice(1));
    // The same windows again (a replayed topic): already judged.
    await d.pipe('drift.metrics', metrics);
    expect(d.emitted('alerts')).toEqual(once.emitted('alerts'));
    expect(once.emitted<Alert>('alerts').map((a) => a.details.state)).toEqual(['firing', 'resolved']);
  });

  it('tracks each version and variable apart, and dead-letters what is not a drift metric', async () => {
    const d = await open();
    await d.pipe('drift.metrics', [metric(0, 0.3), metric(0, 0.3, { version: '2' }), metric(1, 0.3, { variable: 'score' }), metric(1, 0.3, { version: '2' }), { nope: true }]);
    expect(d.emitted<Alert>('alerts').map((a) => a.subject)).toEqual(['fraud@2/amount/psi']);
    expect(d.rejected().map((r) => r.error.code)).toEqual(['FABRIC_RECORD_REJECTED']);
  });
});

describe('alerts processor: performance windows', () => {
  const perf = (i: number, auc: number | null, precision: number | null, overrides: Partial<PerformanceMetric> = {}): PerformanceMetric => ({
    model: 'fraud', version: '1', experiment: '', arm: '', window_start: i * W, window_end: (i + 1) * W, horizon_ms: W, predictions: 500, scored: 500, labelled: 400, positives: 40, late_labels: 0,
    auc, log_loss: 0.2, ece: 0.01, base_rate: 0.1, thresholds: [{ name: 'block', threshold: 0.5, flagged: 30, precision, recall: 0.5, f1: 0.5 }], items: 0, clicks: 0, purchases: 0, ctr: null, conversion: null, dead_letters: 0, ...overrides,
  });

  it('judges the dead letters of the input stream per window (data quality)', async () => {
    const d = await new TestDriver(alertsProcessor({ rules: parseAlertRules('dead_letters>0 fire=1 clear=1') })).open();
    await d.pipe('performance.metrics', [perf(0, 0.9, 0.9), perf(1, 0.9, 0.9, { dead_letters: 3 }), perf(2, 0.9, 0.9)]);
    expect(d.emitted<Alert>('alerts').map((a) => [a.subject, a.kind, a.details.state, a.details.value])).toEqual([
      ['fraud@1/model/dead_letters', 'data_quality', 'firing', '3'],
      ['fraud@1/model/dead_letters', 'data_quality', 'resolved', '0'],
    ]);
  });

  it('judges AUC per arm and precision per threshold; windows with too few labels are not judged', async () => {
    const d = await new TestDriver(alertsProcessor({ rules: parseAlertRules('auc<0.8 fire=2 severity=critical; precision:block<0.5 fire=1'), minLabels: 100 })).open();
    await d.pipe('performance.metrics', [perf(0, 0.7, 0.9), perf(1, 0.9, 0.3, { labelled: 20 }), perf(2, 0.7, 0.4), perf(3, 0.75, 0.9, { arm: 'treatment', experiment: 'x' })]);
    expect(d.emitted<Alert>('alerts').map((a) => [a.subject, a.kind, a.details.state, a.ts / W])).toEqual([
      ['fraud@1/model/auc', 'performance', 'firing', 3],
      ['fraud@1/block/precision', 'performance', 'firing', 3],
    ]);
  });
});

describe('alert webhook', () => {
  const alert = (id: string): Alert => ({ alert_id: id, ts: 1, kind: 'drift', severity: 'critical', model: 'fraud', version: '1', subject: 's', message: 'm', details: {} });
  const run = async (statuses: (number | Error)[], attempts = 4) => {
    const calls: { body: string; headers: Record<string, string> }[] = [];
    const post: Post = async (_url, body, headers) => {
      calls.push({ body, headers });
      const s = statuses[Math.min(calls.length - 1, statuses.length - 1)]!;
      if (s instanceof Error) throw s;
      return s;
    };
    const waits: number[] = [];
    const d = await new TestDriver(alertWebhookProcessor({ url: 'http://hook', attempts, post, sleep: async (ms) => void waits.push(ms) })).open();
    await d.pipe('alerts', [alert('a1')]);
    return { calls, waits };
  };

  it('retries 5xx, 429 and network errors with exponential backoff until delivered, with the alert id as Idempotency-Key', async () => {
    const { calls, waits } = await run([503, new Error('ECONNRESET'), 429, 204]);
    expect(calls).toHaveLength(4);
    expect(waits).toEqual([500, 1000, 2000]);
    expect(calls[3]!.headers['idempotency-key']).toBe('a1');
    expect(JSON.parse(calls[3]!.body)).toMatchObject({ alert_id: 'a1', subject: 's' });
  });

  it('does not retry a refusal (4xx), and gives up after the last attempt without holding the topic', async () => {
    expect((await run([400])).calls).toHaveLength(1);
    expect((await run([500], 3)).calls).toHaveLength(3);
  });
});
