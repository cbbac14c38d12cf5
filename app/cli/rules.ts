import { readFile } from 'node:fs/promises';
import type { Command } from 'commander';
import { createTwoFilesPatch } from 'diff';
import { stringify as toYaml } from 'yaml';
import { AvroSerde } from '../../schemas/serde.js';
import type { RuleSetVersion } from '../../schemas/types.generated.js';
import type { FabricConfig } from '../../topology/config.js';
import { FabricError, messageOf } from '../../topology/errors.js';
import { createKafka } from '../../topology/runtime/kafka.js';
import { createClickHouse, sqlIdentifier, sqlLiteral } from '../../topology/runtime/clickhouse.js';
import { outputKindOf, type CompiledRules, type OutputKind } from '../../serving/rules/engine.js';
import { RulesAdmin, type RuleRegistry } from '../../serving/rules/registry.js';
import { parseRuleSet, type RuleSet } from '../../serving/rules/spec.js';
import { dryRunDecisions, type DryRunReport, type PastPrediction } from '../../serving/rules/dry-run.js';
import { TASKS } from '../../serving/models/tasks.js';
import { modelStore, registryAdmin } from '../serving.js';
import { fabricTopology } from '../fabric-topology.js';
import { cliLog, config, out, positiveInt, operator } from './common.js';

function rulesAdmin(cfg: FabricConfig): RulesAdmin {
  const log = cliLog(cfg, true);
  return new RulesAdmin({ kafka: createKafka(cfg, log, 'cli'), serde: new AvroSerde({ url: cfg.registryUrl }), config: cfg, log });
}

/** The model's output kind (decision or ranking) and its versions' thresholds, from the registry. */
async function modelInfo(cfg: FabricConfig, model: string): Promise<{ output: OutputKind; task: string; entries: Map<string, { thresholds: Record<string, number> }> }> {
  const log = cliLog(cfg, true);
  const entries = (await registryAdmin({ kafka: createKafka(cfg, log, 'cli'), serde: new AvroSerde({ url: cfg.registryUrl }), config: cfg, log, store: modelStore(cfg) }).entries()).filter((e) => e.name === model);
  if (entries.length === 0) throw new FabricError('FABRIC_MODEL_UNKNOWN', `model ${model} is not registered: rules are set per registered model`);
  const task = entries.at(-1)!.task;
  return { output: outputKindOf(task), task, entries: new Map(entries.map((e) => [e.version, { thresholds: e.thresholds }])) };
}

async function readRules(file: string): Promise<string> {
  try {
    return await readFile(file, 'utf8');
  } catch (err) {
    throw new FabricError('FABRIC_CLI_USAGE', `cannot read ${file}: ${messageOf(err)}`, { cause: err });
  }
}

function specOf(v: RuleSetVersion): RuleSet {
  return JSON.parse(v.spec) as RuleSet;
}

function yamlOf(spec: RuleSet): string {
  return toYaml(spec, { lineWidth: 0 });
}

/** The last `n` predictions of a decision model in the ledger, with their events' fields. */
async function pastPredictions(cfg: FabricConfig, model: string, task: string, n: number): Promise<PastPrediction[]> {
  const schema = TASKS.find((t) => t.task === task)?.schema;
  const stream = fabricTopology().streams.find((s) => s.schema === schema);
  if (!stream) throw new FabricError('FABRIC_CONFIG_INVALID', `model ${model}: no stream carries its task's events (${schema ?? task})`);
  const db = sqlIdentifier(cfg.clickhouseDatabase);
  const events = sqlIdentifier(`events_${stream.name}`);
  const last = `SELECT event_id FROM ${db}.predictions FINAL WHERE model = ${sqlLiteral(model)} ORDER BY event_ts_ms DESC, event_id DESC LIMIT ${n}`;
  const client = createClickHouse(cfg);
  try {
    const rs = await client.query({ query: `SELECT event_id, entity_id, version, score, decision, reasons, event_ts_ms, feature_names, feature_values FROM ${db}.predictions FINAL WHERE model = ${sqlLiteral(model)} AND event_id IN (${last})`, format: 'JSONEachRow' });
    const rows = await rs.json<{ event_id: string; entity_id: string; version: string; score: number | null; decision: string; reasons: string[]; event_ts_ms: string; feature_names: string[]; feature_values: (number | null)[] }>();
    const ev = await client.query({ query: `SELECT * FROM ${db}.${events} FINAL WHERE event_id IN (${last})`, format: 'JSONEachRow' });
    const byId = new Map<string, Record<string, unknown>>();
    for (const e of await ev.json<Record<string, unknown>>()) {
      const { ts_ms, source_topic: _t, source_partition: _p, source_offset: _o, ...fields } = e;
      byId.set(String(e.event_id), { ...fields, [stream.timeField]: Number(ts_ms) });
    }
    return rows.map((r) => ({
      event_id: r.event_id,
      entity_id: r.entity_id,
      version: r.version,
      score: r.score,
      decision: r.decision,
      reasons: r.reasons,
      event_ts: Number(r.event_ts_ms),
      features: Object.fromEntries(r.feature_names.map((name, i) => [name, r.feature_values[i] ?? null])),
      event: byId.get(r.event_id) ?? {},
    }));
  } catch (err) {
    throw new FabricError('FABRIC_SINK_FAILED', `reading the last predictions of ${model} from ClickHouse: ${messageOf(err)}`, { cause: err });
  } finally {
    await client.close();
  }
}

function dryRunText(r: DryRunReport, from: number): string {
  const lines = [`dry run of ${r.model} rules over the last ${r.predictions} predictions (against what rule set version ${from} and earlier decided): ${r.changed} decision${r.changed === 1 ? '' : 's'} would change`];
  const decisions = [...new Set([...Object.keys(r.before), ...Object.keys(r.after)])].sort();
  lines.push(`  decisions   ${decisions.map((d) => `${d} ${r.before[d] ?? 0} -> ${r.after[d] ?? 0}`).join('   ')}`);
  const moves = Object.entries(r.transitions).filter(([t]) => t.split(' -> ')[0] !== t.split(' -> ')[1]);
  if (moves.length) lines.push(`  changes     ${moves.map(([t, c]) => `${t}: ${c}`).join('   ')}`);
  lines.push(`  rules fired ${Object.entries(r.fired).map(([k, v]) => `${k}: ${v}`).join('   ') || '-'}${r.ruleErrors ? `   (${r.ruleErrors} rule errors)` : ''}`);
  for (const e of r.examples) lines.push(`  ${e.event_id} ${e.entity_id} score ${e.score ?? 'null'}: ${e.from} -> ${e.to} (${e.reasons.join('; ')})`);
  return lines.join('\n');
}

function versionOf(registry: RuleRegistry, model: string, version: string | undefined): RuleSetVersion | undefined {
  const versions = registry.versions(model);
  if (version === undefined) return versions.at(-1);
  const v = versions.find((x) => x.version === Number(version));
  if (!v) throw new FabricError('FABRIC_CLI_USAGE', `model ${model} has no rule set version ${version}${versions.length ? ` (versions ${versions.map((x) => x.version).join(', ')})` : ''}`);
  return v;
}

export function registerRuleCommands(program: Command): void {
  const rules = program.command('rules').description('serving rules per model: versioned on _fabric.rules, hot-reloaded by every scoring instance and POST /v1/predict');

  rules
    .command('set')
    .description('validate a rule set (YAML or JSON) for a model and make it the version in force; --dry-run replays the last predictions from ClickHouse through it instead and prints how decisions would change')
    .argument('<file>', 'rules.yaml or rules.json')
    .requiredOption('--model <model>', 'the registered model the rules are for')
    .option('--dry-run', 'change nothing: replay the last predictions through the rules')
    .option('--last <n>', 'predictions replayed by --dry-run', positiveInt('last'), 10000)
    .option('--comment <text>', 'why, kept with the version', '')
    .option('--json', 'print as JSON')
    .action(async (file: string, o: { model: string; dryRun?: boolean; last: number; comment: string; json?: boolean }) => {
      const cfg = config();
      const info = await modelInfo(cfg, o.model);
      const { spec, rules: compiled } = RulesAdmin.validate(parseRuleSet(await readRules(file), file), o.model, info.output, file);
      const admin = rulesAdmin(cfg);
      const registry = await admin.read();
      if (o.dryRun) {
        if (info.output !== 'decision') throw new FabricError('FABRIC_CLI_USAGE', `--dry-run replays decisions; ${o.model} is a ranking model (validated: the rule set is valid, nothing was written)`);
        const report = dryRunDecisions(compiled as CompiledRules, info.entries, await pastPredictions(cfg, o.model, info.task, o.last));
        out(!!o.json, report, () => dryRunText(report, registry.versions(o.model).at(-1)?.version ?? 0));
        return;
      }
      const result = await admin.set(spec, { by: operator(), comment: o.comment, registry });
      const v = result.version;
      out(!!o.json, { ...v, spec: JSON.parse(v.spec) as unknown, created: result.created, previous: result.previous?.version ?? 0 }, () => (result.created ? `${v.model}: rule set version ${v.version} in force (sha256 ${v.sha256.slice(0, 12)}), was ${result.previous?.version ?? '0 (model defaults)'}` : `${v.model}: unchanged, version ${v.version} is already this rule set`));
    });

  rules
    .command('list')
    .description('every model with rule sets: the version in force, how many versions, who set it and when')
    .option('--json', 'print as JSON')
    .action(async (o: { json?: boolean }) => {
      const registry = await rulesAdmin(config()).read();
      const rows = registry.models().map((m) => {
        const vs = registry.versions(m);
        const cur = vs.at(-1)!;
        return { model: m, version: cur.version, versions: vs.length, rules: specOf(cur).rules.map((r) => `${r.name}(${r.kind})`), sha256: cur.sha256, created_at: new Date(cur.created_at).toISOString(), created_by: cur.created_by, comment: cur.comment };
      });
      out(!!o.json, rows, () => (rows.length === 0 ? '(no rule sets: every model runs its defaults, version 0)' : rows.map((r) => `${r.model}  version ${r.version} of ${r.versions}  set ${r.created_at} by ${r.created_by}${r.comment ? ` (${r.comment})` : ''}\n  ${r.rules.join(', ')}`).join('\n')));
    });

  rules
    .command('show')
    .description('a model\'s rule set (the version in force, or --version) as YAML')
    .requiredOption('--model <model>')
    .option('--version <n>', 'a stored version')
    .option('--json', 'print as JSON')
    .action(async (o: { model: string; version?: string; json?: boolean }) => {
      const registry = await rulesAdmin(config()).read();
      const v = versionOf(registry, o.model, o.version);
      if (!v) throw new FabricError('FABRIC_CLI_USAGE', `model ${o.model} has no rule set (it runs its defaults, version 0); set one with fabric rules set --model ${o.model} rules.yaml`);
      out(!!o.json, { ...v, spec: specOf(v) }, () => `# ${v.model} rule set version ${v.version}, set ${new Date(v.created_at).toISOString()} by ${v.created_by}${v.comment ? ` (${v.comment})` : ''}, sha256 ${v.sha256.slice(0, 12)}\n${yamlOf(specOf(v))}`);
    });

  rules
    .command('diff')
    .description('differences between two versions of a model\'s rule set, or between the version in force and a file')
    .requiredOption('--model <model>')
    .option('--from <n>', 'version (default: the one in force)')
    .option('--to <n>', 'version to compare with (instead of a file)')
    .argument('[file]', 'a rule-set file to compare with the version in force (or --from)')
    .option('--json', 'print as JSON')
    .action(async (file: string | undefined, o: { model: string; from?: string; to?: string; json?: boolean }) => {
      if ((file === undefined) === (o.to === undefined)) throw new FabricError('FABRIC_CLI_USAGE', 'rules diff compares with a file or with --to <version>: give exactly one');
      const registry = await rulesAdmin(config()).read();
      const from = versionOf(registry, o.model, o.from);
      const left = from ? yamlOf(specOf(from)) : '';
      let right: string;
      let rightName: string;
      if (file !== undefined) {
        right = yamlOf(parseRuleSet(await readRules(file), file));
        rightName = file;
      } else {
        right = yamlOf(specOf(versionOf(registry, o.model, o.to)!));
        rightName = `${o.model}@${o.to}`;
      }
      const leftName = from ? `${o.model}@${from.version}` : `${o.model}@0 (none)`;
      const patch = createTwoFilesPatch(leftName, rightName, left, right, undefined, undefined, { context: 3 });
      const same = left === right;
      out(!!o.json, { from: leftName, to: rightName, same, patch }, () => (same ? `${leftName} and ${rightName} are the same rule set` : patch.split('\n').slice(1).join('\n').trimEnd()));
    });
}
