import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import type { ClickHouseClient } from '@clickhouse/client';
import type { ModelVersion } from '../schemas/types.generated.js';
import { FabricError } from '../topology/errors.js';
import { sqlLiteral } from '../topology/runtime/clickhouse.js';
import { binCount, binOf, categoryBin, isCategorical, referenceOf, type References } from '../serving/registry/reference.js';
import { CALIBRATION_BINS, type ScoreGroup, windowQuery } from '../processors/monitor/performance.js';

/** Everything the report shows, gathered from the ledger and the registry (embedded in the page as JSON). */
export interface ReportData {
  readonly model: string;
  readonly from: number;
  readonly to: number;
  readonly generatedAt: number;
  readonly horizonMs: number;
  readonly versions: readonly { version: string; stage: string; predictions: number }[];
  /** Per version and variable: the reference's bins and the period's counts on them. */
  readonly histograms: readonly { version: string; variable: string; kind: string; labels: string[]; reference: number[]; current: number[]; missing: number; count: number }[];
  readonly drift: readonly { version: string; variable: string; window_end: number; psi: number; js: number | null; ks: number | null; wasserstein: number | null; missing_rate: number; out_of_range_rate: number; status: string }[];
  readonly performance: readonly { version: string; arm: string; window_end: number; labelled: number; auc: number | null; log_loss: number | null; ece: number | null; thresholds: { name: string; precision: number | null; recall: number | null }[] }[];
  /** Over the whole period, per version: ROC points (false and true positive rates) and calibration bins. */
  readonly curves: readonly { version: string; roc: [number, number][]; calibration: { score: number; observed: number; n: number }[]; labelled: number }[];
  readonly alerts: readonly { ts: number; kind: string; severity: string; subject: string; state: string; message: string }[];
}

const fmtBound = (x: number): string => (Math.abs(x) >= 1000 ? x.toFixed(0) : Math.abs(x) >= 1 ? x.toFixed(2) : x.toPrecision(3));

function binLabels(ref: References[string]): string[] {
  if (isCategorical(ref)) return [...ref.categories, '(others)'];
  const e = ref.edges;
  if (e.length === 0) return ['all'];
  return Array.from({ length: e.length + 1 }, (_, i) => (i === 0 ? `<= ${fmtBound(e[0]!)}` : i === e.length ? `> ${fmtBound(e[i - 1]!)}` : `(${fmtBound(e[i - 1]!)}, ${fmtBound(e[i]!)}]`));
}

async function rows<T>(ch: ClickHouseClient, query: string): Promise<T[]> {
  return (await ch.query({ query, format: 'JSONEachRow' })).json<T>();
}

/** Reads the period [from, to) of `model` from ClickHouse; `entries` are the model's registry entries (for the reference profiles). */
export async function gatherReport(ch: ClickHouseClient, options: { database: string; model: string; from: number; to: number; horizonMs: number; entries: readonly ModelVersion[]; stream: string; now?: number }): Promise<ReportData> {
  const { database: db, model, from, to } = options;
  const range = `model = ${sqlLiteral(model)}`;
  const byVersion = new Map(options.entries.filter((e) => e.name === model).map((e) => [e.version, e]));
  const counts = await rows<{ version: string; n: string }>(ch, `SELECT version, count() AS n FROM ${db}.v_predictions WHERE ${range} AND event_ts_ms >= ${from} AND event_ts_ms < ${to} GROUP BY version ORDER BY version`);
  if (counts.length === 0) throw new FabricError('FABRIC_MODEL_UNKNOWN', `no predictions of ${model} with event time in [${new Date(from).toISOString()}, ${new Date(to).toISOString()})`);
  const versions = counts.map((c) => ({ version: c.version, stage: byVersion.get(c.version)?.stage ?? 'unknown', predictions: Number(c.n) }));

  // Reference-vs-current histograms: every prediction of the period binned on its version's profile.
  const refs = new Map<string, References>();
  for (const v of versions) refs.set(v.version, byVersion.has(v.version) ? referenceOf(byVersion.get(v.version)!) : {});
  const tallies = new Map<string, { counts: number[]; missing: number; count: number }>();
  const rs = await ch.query({ query: `SELECT version, score, feature_names, feature_values FROM ${db}.v_predictions WHERE ${range} AND event_ts_ms >= ${from} AND event_ts_ms < ${to}`, format: 'JSONEachRow' });
  for await (const batch of rs.stream<{ version: string; score: number | null; feature_names: string[]; feature_values: (number | null)[] }>()) {
    for (const row of batch) {
      const r = row.json();
      const ref = refs.get(r.version) ?? {};
      const values = new Map<string, number | null>(r.feature_names.map((n, i) => [n, r.feature_values[i] ?? null]));
      values.set('score', r.score);
      for (const [variable, profile] of Object.entries(ref)) {
        const key = `${r.version}\u0000${variable}`;
        let t = tallies.get(key);
        if (!t) tallies.set(key, (t = { counts: new Array<number>(binCount(profile)).fill(0), missing: 0, count: 0 }));
        const x = values.get(variable);
        if (x === null || x === undefined || (typeof x === 'number' && !Number.isFinite(x))) {
          t.missing++;
          continue;
        }
        t.counts[isCategorical(profile) ? categoryBin(profile, String(x)) : binOf(profile.edges, Number(x))]!++;
        t.count++;
      }
    }
  }
  const histograms = [...tallies.entries()]
    .map(([key, t]) => {
      const [version, variable] = key.split('\u0000') as [string, string];
      const profile = refs.get(version)![variable]!;
      return { version, variable, kind: isCategorical(profile) ? 'categorical' : 'numeric', labels: binLabels(profile), reference: profile.proportions, current: t.counts.map((c) => (t.count ? c / t.count : 0)), missing: t.missing, count: t.count };
    })
    .sort((a, b) => (a.version === b.version ? (a.variable < b.variable ? -1 : 1) : a.version < b.version ? -1 : 1));

  const drift = (
    await rows<{ version: string; variable: string; window_end_ms: string; psi: number; js: number | null; ks: number | null; wasserstein: number | null; missing_rate: number; out_of_range_rate: number; status: string }>(
      ch,
      `SELECT version, variable, window_end_ms, psi, js, ks, wasserstein, missing_rate, out_of_range_rate, status FROM ${db}.v_drift_metrics WHERE ${range} AND window_end_ms > ${from} AND window_start_ms < ${to} ORDER BY version, variable, window_end_ms`,
    )
  ).map((r) => ({ ...r, window_end: Number(r.window_end_ms) }));

  const performance = (
    await rows<{ version: string; arm: string; window_end_ms: string; labelled: string; auc: number | null; log_loss: number | null; ece: number | null; threshold_names: string[]; threshold_precision: (number | null)[]; threshold_recall: (number | null)[] }>(
      ch,
      `SELECT version, arm, window_end_ms, labelled, auc, log_loss, ece, threshold_names, threshold_precision, threshold_recall FROM ${db}.v_model_performance WHERE ${range} AND window_end_ms > ${from} AND window_start_ms < ${to} ORDER BY version, arm, window_end_ms`,
    )
  ).map((r) => ({ version: r.version, arm: r.arm, window_end: Number(r.window_end_ms), labelled: Number(r.labelled), auc: r.auc, log_loss: r.log_loss, ece: r.ece, thresholds: r.threshold_names.map((name, i) => ({ name, precision: r.threshold_precision[i] ?? null, recall: r.threshold_recall[i] ?? null })) }));

  // ROC and calibration over the whole period, from the labels that arrived within the horizon.
  const grouped = await rows<{ version: string; score: number | null; state: string; n: string; positives: string }>(ch, windowQuery(db, model, options.stream, from, to, options.horizonMs));
  const curves = versions.map(({ version }) => {
    const groups: ScoreGroup[] = grouped.filter((g) => g.version === version && g.state === 'joined' && g.score !== null).map((g) => ({ score: Number(g.score), n: Number(g.n), positives: Number(g.positives) }));
    const pos = groups.reduce((s, g) => s + g.positives, 0);
    const total = groups.reduce((s, g) => s + g.n, 0);
    const neg = total - pos;
    const roc: [number, number][] = [[0, 0]];
    let tp = 0;
    let fp = 0;
    for (const g of [...groups].sort((a, b) => b.score - a.score)) {
      tp += g.positives;
      fp += g.n - g.positives;
      if (pos > 0 && neg > 0) roc.push([fp / neg, tp / pos]);
    }
    const bins = Array.from({ length: CALIBRATION_BINS }, () => ({ s: 0, y: 0, n: 0 }));
    for (const g of groups) {
      const b = bins[Math.min(CALIBRATION_BINS - 1, Math.max(0, Math.floor(g.score * CALIBRATION_BINS)))]!;
      b.s += g.score * g.n;
      b.y += g.positives;
      b.n += g.n;
    }
    return { version, roc: pos > 0 && neg > 0 ? roc : [], calibration: bins.filter((b) => b.n > 0).map((b) => ({ score: b.s / b.n, observed: b.y / b.n, n: b.n })), labelled: total };
  });

  const alerts = (
    await rows<{ ts_ms: string; kind: string; severity: string; subject: string; message: string; detail_names: string[]; detail_values: string[] }>(
      ch,
      `SELECT ts_ms, kind, severity, subject, message, detail_names, detail_values FROM ${db}.v_alerts WHERE ${range} AND ts_ms >= ${from} AND ts_ms < ${to} ORDER BY ts_ms DESC LIMIT 500`,
    )
  ).map((a) => ({ ts: Number(a.ts_ms), kind: a.kind, severity: a.severity, subject: a.subject, state: a.detail_values[a.detail_names.indexOf('state')] ?? '', message: a.message }));

  return { model, from, to, generatedAt: options.now ?? Date.now(), horizonMs: options.horizonMs, versions, histograms, drift, performance, curves, alerts };
}

/** Chart.js's UMD build, inlined into the page (no network at view time). */
function chartLibrary(): string {
  // The package exports no path to its UMD build: it sits beside the main entry (dist/).
  const require = createRequire(import.meta.url);
  return readFileSync(join(dirname(require.resolve('chart.js')), 'chart.umd.min.js'), 'utf8');
}

const escapeHtml = (s: string): string => s.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
/** JSON safe inside a <script> element. */
const scriptJson = (x: unknown): string => JSON.stringify(x).replace(/</g, '\\u003c');

/**
 * The report: one self-contained HTML file (Chart.js and the data inlined). Every chart is drawn
 * without animation, then marked `data-drawn` with the number of painted pixels in `data-ink`, so a
 * headless browser can check that it drew.
 */
export function renderReport(data: ReportData): string {
  const title = `${data.model}: monitoring ${new Date(data.from).toISOString()} to ${new Date(data.to).toISOString()}`;
  const firing = new Map<string, (typeof data.alerts)[number]>();
  for (const a of data.alerts) if (!firing.has(a.subject)) firing.set(a.subject, a);
  const active = [...firing.values()].filter((a) => a.state === 'firing');
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>${escapeHtml(title)}</title>
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#1d2330;background:#fff}
h1{font-size:20px}h2{font-size:16px;margin-top:28px;border-bottom:1px solid #ddd;padding-bottom:4px}
.grid{display:flex;flex-wrap:wrap;gap:16px}.card{border:1px solid #e2e5ea;border-radius:6px;padding:8px}
.card h3{font-size:13px;margin:0 0 4px}table{border-collapse:collapse}td,th{padding:3px 8px;border-bottom:1px solid #eee;text-align:left;font-size:13px}
.critical{color:#b00020;font-weight:600}.warning{color:#a15c00}.muted{color:#667}
</style></head><body>
<h1>${escapeHtml(title)}</h1>
<p class="muted">Generated ${new Date(data.generatedAt).toISOString()} by fabric monitor report. Versions: ${data.versions.map((v) => `${escapeHtml(v.version)} (${escapeHtml(v.stage)}, ${v.predictions} predictions)`).join(', ')}. Outcomes count within ${Math.round(data.horizonMs / 1000)} s of the event.</p>
<h2>Alerts firing now (${active.length}) and all alerts in the period (${data.alerts.length})</h2>
<table id="alerts"><tr><th>time</th><th>severity</th><th>kind</th><th>state</th><th>subject</th><th>message</th></tr>
${data.alerts.map((a) => `<tr><td>${new Date(a.ts).toISOString()}</td><td class="${escapeHtml(a.severity)}">${escapeHtml(a.severity)}</td><td>${escapeHtml(a.kind)}</td><td>${escapeHtml(a.state)}</td><td>${escapeHtml(a.subject)}</td><td>${escapeHtml(a.message)}</td></tr>`).join('\n')}
</table>
<h2>Drift over time (PSI per window; 0.1 and 0.25 marked)</h2>
<div class="grid" id="drift"></div>
<h2>Reference vs current, per input</h2>
<div class="grid" id="histograms"></div>
<h2>Performance with labels</h2>
<div class="grid" id="performance"></div>
<script>${chartLibrary()}</script>
<script type="application/json" id="report-data">${scriptJson(data)}</script>
<script>
(function () {
  var data = JSON.parse(document.getElementById('report-data').textContent);
  var palette = ['#3366cc','#dc3912','#ff9900','#109618','#990099','#0099c6','#dd4477','#66aa00','#b82e2e','#316395','#994499','#22aa99','#aaaa11','#6633cc','#e67300','#8b0707','#651067','#329262'];
  function card(parent, titleText, name, w, h) {
    var div = document.createElement('div'); div.className = 'card';
    var t = document.createElement('h3'); t.textContent = titleText; div.appendChild(t);
    var c = document.createElement('canvas'); c.width = w || 520; c.height = h || 260; c.setAttribute('data-chart', name); div.appendChild(c);
    document.getElementById(parent).appendChild(div);
    return c;
  }
  function draw(canvas, config) {
    config.options = Object.assign({ animation: false, responsive: false, plugins: {} }, config.options || {});
    new Chart(canvas, config);
    var px = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data, ink = 0;
    for (var i = 3; i < px.length; i += 4) if (px[i] > 0) ink++;
    canvas.setAttribute('data-drawn', '1'); canvas.setAttribute('data-ink', String(ink));
  }
  var time = function (ms) { return new Date(ms).toISOString().slice(11, 19); };
  // Drift: one chart per version, a line per variable, the thresholds as dashed lines.
  var versions = Array.from(new Set(data.drift.map(function (d) { return d.version; })));
  versions.forEach(function (v) {
    var rows = data.drift.filter(function (d) { return d.version === v; });
    var ends = Array.from(new Set(rows.map(function (d) { return d.window_end; }))).sort(function (a, b) { return a - b; });
    var vars = Array.from(new Set(rows.map(function (d) { return d.variable; }))).sort();
    var sets = vars.map(function (name, i) {
      var by = {}; rows.filter(function (d) { return d.variable === name; }).forEach(function (d) { by[d.window_end] = d.psi; });
      return { label: name, data: ends.map(function (e) { return by[e] === undefined ? null : by[e]; }), borderColor: palette[i % palette.length], pointRadius: 1, borderWidth: 1.5, spanGaps: true };
    });
    [[0.1, '#a15c00', 'PSI 0.1'], [0.25, '#b00020', 'PSI 0.25']].forEach(function (t) { sets.push({ label: t[2], data: ends.map(function () { return t[0]; }), borderColor: t[1], borderDash: [6, 4], pointRadius: 0, borderWidth: 1 }); });
    draw(card('drift', 'PSI per window, version ' + v, 'drift-psi', 1000, 380), { type: 'line', data: { labels: ends.map(time), datasets: sets }, options: { scales: { y: { title: { display: true, text: 'PSI' } } }, plugins: { legend: { position: 'right' } } } });
  });
  data.histograms.forEach(function (h) {
    draw(card('histograms', h.variable + ' (version ' + h.version + ', ' + h.count + ' values' + (h.missing ? ', ' + h.missing + ' missing' : '') + ')', 'histogram'), {
      type: 'bar', data: { labels: h.labels, datasets: [{ label: 'reference', data: h.reference, backgroundColor: '#9aa9c2' }, { label: 'current', data: h.current, backgroundColor: '#3366cc' }] },
      options: { scales: { y: { title: { display: true, text: 'share' } }, x: { ticks: { autoSkip: false, maxRotation: 60, font: { size: 9 } } } } },
    });
  });
  var perfKeys = Array.from(new Set(data.performance.map(function (p) { return p.version + (p.arm ? ' ' + p.arm : ''); })));
  if (data.performance.length) {
    var ends = Array.from(new Set(data.performance.map(function (p) { return p.window_end; }))).sort(function (a, b) { return a - b; });
    var series = function (metric) {
      return perfKeys.map(function (k, i) {
        var by = {}; data.performance.filter(function (p) { return p.version + (p.arm ? ' ' + p.arm : '') === k; }).forEach(function (p) { by[p.window_end] = metric(p); });
        return { label: k, data: ends.map(function (e) { return by[e] === undefined ? null : by[e]; }), borderColor: palette[i % palette.length], pointRadius: 2, spanGaps: true };
      });
    };
    draw(card('performance', 'AUC per window', 'performance-auc'), { type: 'line', data: { labels: ends.map(time), datasets: series(function (p) { return p.auc; }) }, options: { scales: { y: { min: 0, max: 1 } } } });
    draw(card('performance', 'Log loss and calibration error (ECE) per window', 'performance-loss'), { type: 'line', data: { labels: ends.map(time), datasets: series(function (p) { return p.log_loss; }).map(function (s) { s.label += ' log loss'; return s; }).concat(series(function (p) { return p.ece; }).map(function (s) { s.label += ' ECE'; s.borderDash = [4, 3]; return s; })) } });
    var names = Array.from(new Set([].concat.apply([], data.performance.map(function (p) { return p.thresholds.map(function (t) { return t.name; }); }))));
    names.forEach(function (n) {
      draw(card('performance', 'Precision and recall at the ' + n + ' threshold', 'performance-threshold'), { type: 'line', data: { labels: ends.map(time), datasets: series(function (p) { var t = p.thresholds.find(function (x) { return x.name === n; }); return t ? t.precision : null; }).map(function (s) { s.label += ' precision'; return s; }).concat(series(function (p) { var t = p.thresholds.find(function (x) { return x.name === n; }); return t ? t.recall : null; }).map(function (s) { s.label += ' recall'; s.borderDash = [4, 3]; return s; })) }, options: { scales: { y: { min: 0, max: 1 } } } });
    });
  }
  data.curves.filter(function (c) { return c.labelled > 0; }).forEach(function (c, i) {
    draw(card('performance', 'ROC, version ' + c.version + ' (' + c.labelled + ' labelled)', 'roc', 360, 360), { type: 'scatter', data: { datasets: [{ label: 'ROC', data: c.roc.map(function (p) { return { x: p[0], y: p[1] }; }), showLine: true, borderColor: palette[i % palette.length], pointRadius: 0 }, { label: 'chance', data: [{ x: 0, y: 0 }, { x: 1, y: 1 }], showLine: true, borderColor: '#999', borderDash: [4, 4], pointRadius: 0 }] }, options: { scales: { x: { min: 0, max: 1, title: { display: true, text: 'false positive rate' } }, y: { min: 0, max: 1, title: { display: true, text: 'true positive rate' } } } } });
    draw(card('performance', 'Calibration, version ' + c.version, 'calibration', 360, 360), { type: 'scatter', data: { datasets: [{ label: 'observed rate by mean score', data: c.calibration.map(function (b) { return { x: b.score, y: b.observed }; }), showLine: true, borderColor: palette[(i + 1) % palette.length] }, { label: 'perfect', data: [{ x: 0, y: 0 }, { x: 1, y: 1 }], showLine: true, borderColor: '#999', borderDash: [4, 4], pointRadius: 0 }] }, options: { scales: { x: { min: 0, max: 1, title: { display: true, text: 'mean score' } }, y: { min: 0, max: 1, title: { display: true, text: 'observed positive rate' } } } } });
  });
  document.body.setAttribute('data-charts', String(document.querySelectorAll('canvas[data-drawn]').length));
})();
</script>
</body></html>
`;
}
