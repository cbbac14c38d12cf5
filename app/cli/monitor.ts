import { writeFile } from 'node:fs/promises';
import type { Command } from 'commander';
import { FabricError } from '../../topology/errors.js';
import { createClickHouse, sqlLiteral } from '../../topology/runtime/clickhouse.js';
import { categoricalProfile, numericProfile, type ReferenceProfile } from '../../serving/registry/reference.js';
import { AvroSerde } from '../../schemas/serde.js';
import { createKafka } from '../../topology/runtime/kafka.js';
import { ModelRegistry } from '../../serving/registry/registry.js';
import { gatherReport, renderReport } from '../monitor-report.js';
import { cliLog, config, instant, out, positiveInt } from './common.js';

interface AlertRow {
  alert_id: string;
  ts_ms: string;
  kind: string;
  severity: string;
  model: string;
  version: string;
  subject: string;
  message: string;
  detail_names: string[];
  detail_values: string[];
}

function modelAtVersion(v: string): { model: string; version: string } {
  const m = /^([^@\s]+)@([^@\s]+)$/.exec(v);
  if (!m) throw new FabricError('FABRIC_CLI_USAGE', `--model takes model@version (e.g. fraud@1.0.0), got ${JSON.stringify(v)}`);
  return { model: m[1]!, version: m[2]! };
}

export function registerMonitorCommands(program: Command): void {
  const monitor = program.command('monitor').description('model monitoring: alerts, reference profiles, the HTML report');

  monitor
    .command('alerts')
    .description('monitoring alerts from ClickHouse, newest first (drift, data quality, experiments)')
    .option('--model <name>', 'only this model')
    .option('--since <iso>', 'only alerts at or after this instant (ISO 8601 or epoch ms)', instant('since'))
    .option('--active', 'only what is firing now: the latest alert of each subject, when it fired')
    .option('--limit <n>', 'at most this many', positiveInt('limit'), 100)
    .option('--json', 'print as JSON')
    .action(async (o: { model?: string; since?: number; active?: boolean; limit: number; json?: boolean }) => {
      const cfg = config();
      const ch = createClickHouse(cfg);
      try {
        const where = [o.model ? `model = ${sqlLiteral(o.model)}` : '1', o.since !== undefined ? `ts_ms >= ${Math.floor(o.since)}` : '1'].join(' AND ');
        const rs = await ch.query({ query: `SELECT alert_id, ts_ms, kind, severity, model, version, subject, message, detail_names, detail_values FROM ${cfg.clickhouseDatabase}.v_alerts WHERE ${where} ORDER BY ts_ms DESC, subject LIMIT 100000`, format: 'JSONEachRow' });
        let rows = (await rs.json<AlertRow>()).map((r) => {
          const details = Object.fromEntries(r.detail_names.map((n, i) => [n, r.detail_values[i] ?? '']));
          return { alert_id: r.alert_id, ts: Number(r.ts_ms), kind: r.kind, severity: r.severity, model: r.model, version: r.version, subject: r.subject, state: details.state ?? '', message: r.message, details };
        });
        if (o.active) {
          const latest = new Map<string, (typeof rows)[number]>();
          for (const r of rows) if (!latest.has(r.subject)) latest.set(r.subject, r);
          rows = [...latest.values()].filter((r) => r.state === 'firing');
        }
        rows = rows.slice(0, o.limit);
        out(!!o.json, rows, () => rows.map((r) => `${new Date(r.ts).toISOString()} ${r.severity.padEnd(8)} ${r.kind.padEnd(12)} ${(r.state || '-').padEnd(8)} ${r.subject}  ${r.message}`).join('\n') || (o.active ? '(nothing firing)' : '(no alerts)'));
      } finally {
        await ch.close();
      }
    });

  monitor
    .command('profile')
    .description('a reference profile of every model input and the score of one version, from its predictions in the ClickHouse ledger (the bins drift uses; register a version with it: fabric models register ... --reference FILE)')
    .requiredOption('--model <model@version>', 'the model version whose predictions are profiled')
    .requiredOption('--from <iso>', 'first event time (inclusive; ISO 8601 or epoch ms)', instant('from'))
    .requiredOption('--to <iso>', 'last event time (exclusive)', instant('to'))
    .option('--bins <n>', 'numeric bins wanted before merging small ones', positiveInt('bins'), 10)
    .option('--min-count <n>', 'minimum reference values per bin (default: 1% of the values)', positiveInt('min-count'))
    .option('--out <file>', 'write the profile JSON here (default: print it)')
    .option('--json', 'print the profile (and a summary) as JSON')
    .action(async (o: { model: string; from: number; to: number; bins: number; minCount?: number; out?: string; json?: boolean }) => {
      const { model, version } = modelAtVersion(o.model);
      if (!(o.to > o.from)) throw new FabricError('FABRIC_CLI_USAGE', '--to must be after --from');
      if (o.bins < 2) throw new FabricError('FABRIC_CLI_USAGE', '--bins must be at least 2');
      const cfg = config();
      const ch = createClickHouse(cfg);
      const values = new Map<string, (number | null)[]>();
      let rows = 0;
      try {
        const rs = await ch.query({
          query: `SELECT score, feature_names, feature_values FROM ${cfg.clickhouseDatabase}.v_predictions WHERE model = ${sqlLiteral(model)} AND version = ${sqlLiteral(version)} AND event_ts_ms >= ${Math.floor(o.from)} AND event_ts_ms < ${Math.floor(o.to)} ORDER BY event_ts_ms, event_id`,
          format: 'JSONEachRow',
        });
        for await (const batch of rs.stream<{ score: number | null; feature_names: string[]; feature_values: (number | null)[] }>()) {
          for (const row of batch) {
            const r = row.json();
            const at = rows++;
            const add = (name: string, x: number | null) => {
              let list = values.get(name);
              // A variable first seen late is missing in the rows before.
              if (!list) values.set(name, (list = new Array<number | null>(at).fill(null)));
              list.push(x === null ? null : Number(x));
            };
            add('score', r.score);
            r.feature_names.forEach((n, i) => add(n, r.feature_values[i] ?? null));
            for (const list of values.values()) if (list.length < rows) list.push(null);
          }
        }
      } finally {
        await ch.close();
      }
      if (rows === 0) throw new FabricError('FABRIC_MODEL_UNKNOWN', `no predictions of ${model}@${version} with event time in [${new Date(o.from).toISOString()}, ${new Date(o.to).toISOString()})`);
      const options = { bins: o.bins, ...(o.minCount ? { minCount: o.minCount } : {}) };
      const profile: Record<string, ReferenceProfile> = {};
      for (const name of [...values.keys()].sort()) {
        const list = values.get(name)!;
        profile[name] = list.some((x) => typeof x === 'string') ? categoricalProfile(list as unknown as (string | null)[], options) : numericProfile(list, options);
      }
      const text = `${JSON.stringify(profile, null, 2)}\n`;
      if (o.out) await writeFile(o.out, text);
      const summary = { model, version, from: o.from, to: o.to, predictions: rows, variables: Object.keys(profile), ...(o.out ? { out: o.out } : {}) };
      if (o.json) out(true, { ...summary, profile }, () => '');
      else if (o.out) out(false, summary, () => `profiled ${rows} predictions of ${model}@${version}: ${Object.keys(profile).length} variables -> ${o.out}`);
      else process.stdout.write(text);
    });

  monitor
    .command('report')
    .description('one self-contained HTML file (no network at view time): alerts, PSI over time with thresholds, reference-vs-current histograms per input, performance over time, ROC and calibration')
    .requiredOption('--model <name>', 'the model (every version with predictions in the period)')
    .option('--from <iso>', 'start of the period (event time; default 24 h before --to)', instant('from'))
    .option('--to <iso>', 'end of the period (exclusive; default now)', instant('to'))
    .requiredOption('--out <file>', 'where to write the HTML')
    .option('--json', 'print a summary as JSON')
    .action(async (o: { model: string; from?: number; to?: number; out: string; json?: boolean }) => {
      const to = o.to ?? Date.now();
      const from = o.from ?? to - 86_400_000;
      if (!(to > from)) throw new FabricError('FABRIC_CLI_USAGE', '--to must be after --from');
      const cfg = config();
      const log = cliLog(cfg, true);
      const registry = new ModelRegistry(createKafka(cfg, log, 'cli'), new AvroSerde({ url: cfg.registryUrl }), cfg, log);
      await registry.readOnce();
      const ch = createClickHouse(cfg);
      try {
        const data = await gatherReport(ch, { database: cfg.clickhouseDatabase, model: o.model, from, to, horizonMs: cfg.outcomeHorizonSec * 1000, entries: registry.list(), stream: o.model === 'recs' ? 'interactions' : 'transactions' });
        await writeFile(o.out, renderReport(data));
        const summary = { out: o.out, model: o.model, from, to, versions: data.versions, histograms: data.histograms.length, driftWindows: data.drift.length, performanceWindows: data.performance.length, alerts: data.alerts.length };
        out(!!o.json, summary, () => `wrote ${o.out}: ${data.versions.map((v) => `${v.version} (${v.predictions} predictions)`).join(', ')}; ${data.histograms.length} histograms, ${data.drift.length} drift rows, ${data.performance.length} performance windows, ${data.alerts.length} alerts`);
      } finally {
        await ch.close();
      }
    });
}
