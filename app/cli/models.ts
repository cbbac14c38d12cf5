import type { Command } from 'commander';
import type { ModelStage, ModelVersion } from '../../schemas/types.generated.js';
import { AvroSerde } from '../../schemas/serde.js';
import { FabricError } from '../../topology/errors.js';
import { createKafka } from '../../topology/runtime/kafka.js';
import type { FabricConfig } from '../../topology/config.js';
import { parseModelRef } from '../../serving/registry/entry.js';
import { productionOf } from '../../serving/registry/registry.js';
import { experimentsAdmin, loadStatusKey, modelStore, registryAdmin, verifier } from '../serving.js';
import { cliLog, config, connectRedis, out, operator } from './common.js';

interface LoadReport {
  readonly state: string;
  readonly error?: string;
  readonly instance: string;
  readonly provider?: string;
  readonly at: number;
}

function admin(cfg: FabricConfig, verify: boolean) {
  const log = cliLog(cfg, true);
  const store = modelStore(cfg);
  return registryAdmin({ kafka: createKafka(cfg, log, 'cli'), serde: new AvroSerde({ url: cfg.registryUrl }), config: cfg, log, store, ...(verify ? { verify: verifier(cfg, store) } : {}) });
}

/** Latest load report per name@version and instance, from the serving instances (Redis). */
async function loadReports(cfg: FabricConfig): Promise<Map<string, LoadReport[]>> {
  const out = new Map<string, LoadReport[]>();
  const redis = await connectRedis(cfg).catch(() => null);
  if (!redis) return out;
  try {
    const all = await redis.hgetall(loadStatusKey(cfg));
    for (const [field, value] of Object.entries(all)) {
      const key = field.split('|')[0]!;
      try {
        const list = out.get(key) ?? [];
        list.push(JSON.parse(value) as LoadReport);
        out.set(key, list);
      } catch {
        // a malformed report is skipped
      }
    }
  } finally {
    redis.disconnect();
  }
  return out;
}

/** Reports older than this are from instances long gone (the hash keeps one field per instance). */
const REPORT_MAX_AGE_MS = 7 * 86_400_000;

/** `loaded`, `failed: <why>`, `loading` or `-` (no instance tried it), from the instances' recent reports. */
function loadSummary(all: readonly LoadReport[] | undefined): { load: string; error?: string } {
  const reports = (all ?? []).filter((r) => Date.now() - r.at < REPORT_MAX_AGE_MS);
  if (reports.length === 0) return { load: '-' };
  const failed = reports.filter((r) => r.state === 'failed');
  const loaded = reports.filter((r) => r.state === 'loaded');
  if (failed.length > 0 && failed.some((f) => !loaded.some((l) => l.at > f.at && l.instance === f.instance))) return { load: 'failed', error: failed.sort((a, b) => b.at - a.at)[0]!.error ?? '' };
  if (loaded.length > 0) return { load: `loaded (${[...new Set(loaded.map((l) => l.provider ?? '?'))].join(',')})` };
  return { load: reports[0]!.state };
}

function describe(e: ModelVersion, load?: { load: string; error?: string }): string {
  const lines = [
    `${e.name}@${e.version}  stage ${e.stage}  task ${e.task}  owner ${e.owner}`,
    `  artifact ${e.artifact.uri} (${e.artifact.size} bytes, ${e.artifact.files.length} file(s))`,
    `  registered ${new Date(e.registered_at).toISOString()} by ${e.registered_by}`,
    `  training ${e.training.from_ts ? new Date(e.training.from_ts).toISOString() : '?'} .. ${e.training.to_ts ? new Date(e.training.to_ts).toISOString() : '?'}${e.training.rows !== null ? `, ${e.training.rows} rows` : ''}${e.training.source ? ` (${e.training.source})` : ''}`,
    `  inputs (${e.signature.inputs.length}, tensor ${e.signature.input_name}): ${e.signature.inputs.map((i) => `${i.source === 'feature' ? `${i.group}.` : ''}${i.name}${i.missing === 'fallback' ? '[fallback]' : `[=${i.default_value}]`}`).join(', ')}`,
    `  output ${e.signature.output_name}[${e.signature.positive_class_index}]: ${e.signature.output_kind}${e.signature.output_meaning ? ` (${e.signature.output_meaning})` : ''}`,
    `  thresholds ${Object.entries(e.thresholds).map(([k, v]) => `${k}=${v}`).join(' ') || '-'}${Object.keys(e.params).length ? `  params ${Object.entries(e.params).map(([k, v]) => `${k}=${v}`).join(' ')}` : ''}`,
    `  metrics ${Object.entries(e.metrics).slice(0, 12).map(([k, v]) => `${k}=${Number(v.toFixed(6))}`).join(' ') || '-'}`,
    `  reference profile: ${Object.keys(JSON.parse(e.reference_json || '{}') as object).join(', ') || '-'}`,
    ...(load ? [`  load: ${load.load}${load.error ? ` — ${load.error}` : ''}`] : []),
    '  stage history:',
    ...(e.stage_history.length ? e.stage_history.map((c) => `    ${new Date(c.at).toISOString()} ${c.from} -> ${c.to} by ${c.by}${c.reason ? ` (${c.reason})` : ''}`) : ['    (none)']),
  ];
  return lines.join('\n');
}

export function registerModelCommands(program: Command): void {
  const models = program.command('models').description('the model registry: versions on _fabric.models, artifacts in the content-addressed model store');

  models
    .command('register')
    .description('store an artifact (a .onnx file or a folder with one .onnx and its external data), check it loads and matches its signature, and add the version to the registry (stage none)')
    .requiredOption('--name <name>', 'model name (lower case)')
    .requiredOption('--version <version>', 'version, e.g. 1.1.0')
    .requiredOption('--artifact <path>', 'model file or folder')
    .option('--manifest <file>', 'model.json (default: in the folder, or beside the file)')
    .option('--metrics <file>', 'validation metrics (JSON) to record')
    .option('--reference <file>', 'reference profile for drift (JSON) to record')
    .option('--owner <owner>', 'owning team or person')
    .option('--json', 'print the entry as JSON')
    .action(async (o: { name: string; version: string; artifact: string; manifest?: string; metrics?: string; reference?: string; owner?: string; json?: boolean }) => {
      parseModelRef(`${o.name}@${o.version}`);
      const cfg = config();
      const { entry, created } = await admin(cfg, true).register({
        artifact: o.artifact,
        name: o.name,
        version: o.version,
        registeredBy: operator(),
        ...(o.manifest ? { manifest: o.manifest } : {}),
        ...(o.metrics ? { metricsFile: o.metrics } : {}),
        ...(o.reference ? { referenceFile: o.reference } : {}),
        ...(o.owner ? { owner: o.owner } : {}),
      });
      out(!!o.json, { ...entry, created }, () => `${created ? 'registered' : 'already registered (same bytes)'} ${entry.name}@${entry.version} sha256:${entry.artifact.sha256.slice(0, 12)} stage ${entry.stage}`);
    });

  models
    .command('promote')
    .description('move a version to staging, production (the previous production version is archived in the same transaction) or archived; serving instances follow within seconds')
    .argument('<model@version>', 'e.g. fraud@1.1.0')
    .requiredOption('--to <stage>', 'staging | production | archived')
    .option('--reason <text>', 'why, kept in the stage history', '')
    .option('--json', 'print the changed entries as JSON')
    .action(async (ref: string, o: { to: string; reason: string; json?: boolean }) => {
      const { name, version } = parseModelRef(ref);
      if (version === null) throw new FabricError('FABRIC_CLI_USAGE', `promote needs name@version, got ${JSON.stringify(ref)}`);
      if (!['staging', 'production', 'archived'].includes(o.to)) throw new FabricError('FABRIC_CLI_USAGE', `--to takes staging, production or archived; got ${JSON.stringify(o.to)}`);
      const cfg = config();
      const changes = await admin(cfg, o.to === 'production').promote(name, version, o.to as ModelStage, operator(), o.reason);
      // A promotion by hand interrupts a running experiment on the model (its judge records it): say so.
      const running = o.to === 'production' ? (await experimentsAdmin({ kafka: createKafka(cfg, cliLog(cfg, true), 'cli'), serde: new AvroSerde({ url: cfg.registryUrl }), config: cfg, log: cliLog(cfg, true) }).read()).running(name) : undefined;
      if (running) process.stderr.write(`note: experiment ${running.id} was running on ${name} (${running.treatment} against ${running.control}); it is interrupted and all traffic follows ${name}@${version}\n`);
      out(!!o.json, changes, () => changes.map((c) => `${c.name}@${c.version}: ${c.stage_history.at(-1)?.from ?? c.stage} -> ${c.stage}`).join('\n'));
    });

  models
    .command('list')
    .description('every registered version: stage, load state on the serving instances (failed loads with the reason), owner, key metrics')
    .option('--json', 'print as JSON')
    .action(async (o: { json?: boolean }) => {
      const cfg = config();
      const entries = await admin(cfg, false).entries();
      const reports = await loadReports(cfg);
      const rows = entries.map((e) => ({ ...e, ...loadSummary(reports.get(`${e.name}@${e.version}`)), serving: productionOf(entries, e.name)?.version === e.version }));
      out(!!o.json, rows, () => {
        if (rows.length === 0) return '(no models registered)';
        const head = ['MODEL', 'VERSION', 'STAGE', 'LOAD', 'OWNER', 'SHA256', 'METRICS'];
        const body = rows.map((r) => [r.name, r.version, r.stage, r.load, r.owner, r.artifact.sha256.slice(0, 12), Object.entries(r.metrics).filter(([k]) => /auc|ndcg|precision|hit/.test(k)).slice(0, 3).map(([k, v]) => `${k}=${v.toFixed(4)}`).join(' ')]);
        const widths = head.map((h, i) => Math.max(h.length, ...body.map((b) => b[i]!.length)));
        const fmt = (cols: string[]): string => cols.map((c, i) => c.padEnd(widths[i]!)).join('  ').trimEnd();
        const failures = rows.filter((r) => r.error).map((r) => `${r.name}@${r.version} failed to load: ${r.error}`);
        return [fmt(head), ...body.map(fmt), ...failures].join('\n');
      });
    });

  models
    .command('show')
    .description('one model (every version) or one version: artifact, signature, training data, metrics, reference profile, stage history, load state')
    .argument('<model[@version]>')
    .option('--json', 'print as JSON')
    .action(async (ref: string, o: { json?: boolean }) => {
      const { name, version } = parseModelRef(ref);
      const cfg = config();
      const entries = (await admin(cfg, false).entries()).filter((e) => e.name === name && (version === null || e.version === version));
      if (entries.length === 0) throw new FabricError('FABRIC_MODEL_UNKNOWN', `model ${ref} is not registered`);
      const reports = await loadReports(cfg);
      const rows = entries.map((e) => ({ ...e, ...loadSummary(reports.get(`${e.name}@${e.version}`)) }));
      out(!!o.json, version === null ? rows : rows[0], () => rows.map((r) => describe(r, { load: r.load, ...(r.error ? { error: r.error } : {}) })).join('\n\n'));
    });
}
