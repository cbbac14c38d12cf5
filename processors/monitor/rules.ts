import { FabricError } from '../../topology/errors.js';

/** What a rule can watch on a drift metric (a window of one variable of one model version). */
export const ALERT_METRICS = ['psi', 'js', 'ks', 'wasserstein', 'chi2_p', 'missing_rate', 'out_of_range_rate', 'unseen_rate', 'invalid', 'dead_letters', 'auc', 'log_loss', 'ece', 'ctr', 'conversion', 'precision', 'recall', 'f1'] as const;
/**
 * Metrics of performance.metrics: auc, log_loss, ece, ctr and conversion per arm (variable: the arm,
 * `model` outside an experiment), the others per threshold (variable: its name, `<arm>/<name>` under an
 * experiment). dead_letters comes with them (variable `model`) but is data quality, not performance.
 */
export const PERFORMANCE_METRICS: ReadonlySet<string> = new Set(['auc', 'log_loss', 'ece', 'ctr', 'conversion', 'precision', 'recall', 'f1']);
export type AlertMetric = (typeof ALERT_METRICS)[number];

export interface AlertRule {
  /** The rule as written (its identity in alert subjects and state). */
  readonly text: string;
  readonly metric: AlertMetric;
  /** Variables it applies to: a name, or a glob with `*` (default every variable). */
  readonly variable: string;
  readonly op: '>' | '<';
  readonly threshold: number;
  /** Consecutive breaching windows that fire the alert. */
  readonly fire: number;
  /** Consecutive windows within the threshold that clear a firing alert. */
  readonly clear: number;
  readonly severity: 'info' | 'warning' | 'critical';
}

/**
 * Parses `FABRIC_ALERT_RULES`: rules separated by `;`, each
 * `<metric>[:<variable or glob>] <op> <threshold> [fire=N] [clear=N] [severity=info|warning|critical]`,
 * e.g. `psi:amount*>0.2 fire=3 severity=critical; chi2_p<0.001`. Defaults: fire=2, clear=2,
 * severity=warning. The configuration's default (topology/config.ts): significant drift (PSI above
 * 0.25) is critical and fires on the first such window (an undrifted window of at least the minimum
 * count of values has a PSI near (bins - 1) / n, about 0.02 at 500 values: above 0.25 is not noise),
 * clearing after 2 clean ones; data-quality shifts (missing, out-of-range, unseen above 20%) are
 * warnings, 2 windows either way. Refuses a rule it does not understand with FABRIC_CONFIG_INVALID naming it.
 */
export function parseAlertRules(text: string): AlertRule[] {
  const rules: AlertRule[] = [];
  for (const raw of text.split(';').map((r) => r.trim()).filter(Boolean)) {
    const m = /^([a-z0-9_]+)(?::([A-Za-z0-9_*.-]+))?\s*([<>])\s*(-?[0-9.]+(?:e-?[0-9]+)?)((?:\s+[a-z]+=[a-z0-9]+)*)\s*$/.exec(raw);
    if (!m) throw new FabricError('FABRIC_CONFIG_INVALID', `alert rule ${JSON.stringify(raw)}: expected "<metric>[:<variable>] <op> <threshold> [fire=N] [clear=N] [severity=S]"`);
    const metric = m[1] as AlertMetric;
    if (!ALERT_METRICS.includes(metric)) throw new FabricError('FABRIC_CONFIG_INVALID', `alert rule ${JSON.stringify(raw)}: unknown metric ${metric} (one of ${ALERT_METRICS.join(', ')})`);
    const threshold = Number(m[4]);
    if (!Number.isFinite(threshold)) throw new FabricError('FABRIC_CONFIG_INVALID', `alert rule ${JSON.stringify(raw)}: threshold ${m[4]} is not a number`);
    const opts: Record<string, string> = {};
    for (const kv of (m[5] ?? '').trim().split(/\s+/).filter(Boolean)) {
      const [k, v] = kv.split('=') as [string, string];
      if (!['fire', 'clear', 'severity'].includes(k)) throw new FabricError('FABRIC_CONFIG_INVALID', `alert rule ${JSON.stringify(raw)}: unknown option ${k} (fire, clear, severity)`);
      opts[k] = v;
    }
    const count = (k: string): number => {
      const n = Number(opts[k] ?? '2');
      if (!(Number.isSafeInteger(n) && n >= 1 && n <= 1000)) throw new FabricError('FABRIC_CONFIG_INVALID', `alert rule ${JSON.stringify(raw)}: ${k} must be a whole number of windows from 1 to 1000`);
      return n;
    };
    const severity = (opts.severity ?? 'warning') as AlertRule['severity'];
    if (!['info', 'warning', 'critical'].includes(severity)) throw new FabricError('FABRIC_CONFIG_INVALID', `alert rule ${JSON.stringify(raw)}: severity must be info, warning or critical`);
    rules.push({ text: raw.replace(/\s+/g, ' '), metric, variable: m[2] ?? '*', op: m[3] as '>' | '<', threshold, fire: count('fire'), clear: count('clear'), severity });
  }
  const seen = new Set<string>();
  for (const r of rules) {
    if (seen.has(r.text)) throw new FabricError('FABRIC_CONFIG_INVALID', `alert rule ${JSON.stringify(r.text)} is given twice`);
    seen.add(r.text);
  }
  return rules;
}

/** Whether a rule applies to a variable (`*` matches any run of characters). */
export function ruleMatches(rule: AlertRule, variable: string): boolean {
  if (rule.variable === '*') return true;
  const pattern = new RegExp(`^${rule.variable.split('*').map((p) => p.replace(/[.+?^${}()|[\]\\-]/g, '\\$&')).join('.*')}$`);
  return pattern.test(variable);
}

/** Whether `value` breaches the rule (a null value, e.g. no KS for a categorical variable, never does). */
export function breaches(rule: AlertRule, value: number | null): boolean {
  if (value === null || !Number.isFinite(value)) return false;
  return rule.op === '>' ? value > rule.threshold : value < rule.threshold;
}
