import type { Command } from 'commander';
import { AvroSerde } from '../../schemas/serde.js';
import type { Experiment } from '../../schemas/types.generated.js';
import type { FabricConfig } from '../../topology/config.js';
import { FabricError, messageOf } from '../../topology/errors.js';
import { createKafka } from '../../topology/runtime/kafka.js';
import { createClickHouse } from '../../topology/runtime/clickhouse.js';
import { ModelRegistry } from '../../serving/registry/registry.js';
import type { ExperimentsAdmin } from '../../serving/experiments/registry.js';
import { ensureExperimentView, ledgerStats, type LedgerStats } from '../../serving/experiments/ledger.js';
import { RedisExperimentLatency, type ArmLatency } from '../../serving/experiments/latency.js';
import { judge, type Verdict } from '../../serving/experiments/judge.js';
import { experimentView, guardrailText } from '../../serving/experiments/spec.js';
import { experimentsAdmin, unloadableVersions } from '../serving.js';
import { cliLog, config, connectRedis, operator, out, positiveInt } from './common.js';

function admin(cfg: FabricConfig): ExperimentsAdmin {
  const log = cliLog(cfg, true);
  return experimentsAdmin({ kafka: createKafka(cfg, log, 'cli'), serde: new AvroSerde({ url: cfg.registryUrl }), config: cfg, log });
}

function collect(value: string, previous: string[] = []): string[] {
  return [...previous, value];
}

function pct(x: number | null | undefined): string {
  return x === null || x === undefined ? '-' : `${(x * 100).toFixed(2)}%`;
}

function num(x: number | null | undefined, digits = 4): string {
  return x === null || x === undefined || !Number.isFinite(x) ? '-' : x.toFixed(digits);
}

function summaryLine(e: Experiment): string {
  const d = e.decision;
  return `${e.id}  ${e.model}  ${e.state}  control ${e.control}, treatment ${e.treatment} (${e.split}%)${e.shadow ? `, shadow ${e.shadow}` : ''}  metric ${e.metric}  started ${new Date(e.started_at).toISOString()} by ${e.started_by}${d ? `\n  ${d.outcome}${d.action !== 'none' ? ` (${d.action})` : ''}: ${d.reason}` : ''}`;
}

interface Status {
  readonly experiment: Experiment;
  readonly view: string;
  readonly stats: LedgerStats | null;
  readonly latency: Record<string, ArmLatency> | null;
  /** What the judge would decide now (running experiments), or null when nothing yet. */
  readonly verdict: Verdict | null;
  readonly errors: string[];
}

async function statusOf(cfg: FabricConfig, e: Experiment, production: string | undefined): Promise<Status> {
  const errors: string[] = [];
  const client = createClickHouse(cfg);
  let stats: LedgerStats | null = null;
  let latency: Record<string, ArmLatency> | null = null;
  let unloadable: string | undefined;
  try {
    stats = await ledgerStats(client, cfg.clickhouseDatabase, e, { windowMs: cfg.experimentsWindowSec * 1000 });
  } catch (err) {
    errors.push(`ledger: ${messageOf(err)}`);
  } finally {
    await client.close();
  }
  try {
    const redis = await connectRedis(cfg);
    try {
      latency = await new RedisExperimentLatency(redis, cfg.redisKeyPrefix).read(e.id, ['control', 'treatment', 'shadow']);
      unloadable = await unloadableVersions(redis, cfg)(e.model, e.treatment, e.started_at);
    } finally {
      redis.disconnect();
    }
  } catch (err) {
    errors.push(`latency: ${messageOf(err)}`);
  }
  const verdict = e.state === 'running' && stats && latency ? judge({ experiment: e, stats, latency, production, ...(unloadable ? { treatmentUnloadable: unloadable } : {}), now: Date.now() }) : null;
  return { experiment: e, view: experimentView(e.id), stats, latency, verdict, errors };
}

function statusText(s: Status): string {
  const e = s.experiment;
  const lines = [summaryLine(e), `  min samples ${e.min_samples} per arm, max duration ${(e.max_duration_ms / 3_600_000).toFixed(2)} h, auto ${e.auto}, alpha ${e.alpha}${e.guardrails.length ? `, guardrails ${e.guardrails.map(guardrailText).join(' ')}` : ''}`, `  ledger view: ${s.view}`];
  if (s.stats) {
    lines.push(`  arm        version      outputs  samples  ${e.metric.padEnd(18)} always-valid ${(100 * (1 - e.alpha)).toFixed(0)}% interval   fallback  p50 ms   p99 ms`);
    for (const arm of ['control', 'treatment'] as const) {
      const a = s.stats.arms[arm];
      const l = s.latency?.[arm];
      const value = `${num(a.metric?.value)}${a.metricSamples !== a.samples ? ` (n=${a.metricSamples})` : ''}`;
      lines.push(`  ${arm.padEnd(10)} ${a.version.padEnd(12)} ${String(a.outputs).padStart(7)}  ${String(a.samples).padStart(7)}  ${value.padEnd(18)} ${a.metric ? `[${num(a.metric.interval[0])}, ${num(a.metric.interval[1])}]` : '-'.padEnd(18)}   ${pct(a.fallbackRate).padStart(8)}  ${num(l?.p50Ms, 3).padStart(7)}  ${num(l?.p99Ms, 3).padStart(7)}`);
    }
    const t = s.stats.test;
    lines.push(t ? `  difference ${num(t.difference)} in [${num(t.interval[0])}, ${num(t.interval[1])}], always-valid p ${t.pValue.toPrecision(3)}${t.significant ? ' (significant)' : ''}` : '  difference: not yet (an arm has no estimate)');
    if (s.stats.windows.length > 0) {
      lines.push(`  windows of ${s.stats.windowMs / 60_000} min (event time; samples in brackets):`);
      for (const w of s.stats.windows) lines.push(`    ${new Date(w.start).toISOString()}  control ${num(w.arms.control.value)} (${w.arms.control.samples})  treatment ${num(w.arms.treatment.value)} (${w.arms.treatment.samples})`);
    }
    if (s.stats.shadow) {
      const sh = s.stats.shadow;
      const cost = s.latency?.shadow;
      const served = (s.latency?.control?.totalMs ?? 0) + (s.latency?.treatment?.totalMs ?? 0);
      lines.push(`  shadow ${sh.version}: ${sh.outputs} outputs, ${sh.changedDecisions ?? '-'} would have changed the decision${sh.meanScoreDelta !== null ? `, mean score delta ${num(sh.meanScoreDelta)}` : ''}; cost ${num(cost?.totalMs, 1)} ms of model time (${served > 0 && cost ? `${((100 * cost.totalMs) / served).toFixed(1)}% of the arms'` : '-'}), p99 ${num(cost?.p99Ms, 3)} ms`);
    }
  }
  if (s.verdict) lines.push(`  decision so far: ${s.verdict.outcome}${s.verdict.end ? ` -> ${s.verdict.action}` : ' (reported)'}: ${s.verdict.reason}`);
  else if (e.state === 'running') lines.push('  decision so far: none (the test has not concluded)');
  for (const err of s.errors) lines.push(`  (${err})`);
  return lines.join('\n');
}

export function registerExperimentCommands(program: Command): void {
  const experiments = program.command('experiments').description('A/B experiments on a model: sticky splits, shadow versions, sequential statistics, automatic promotion or rollback');

  experiments
    .command('start')
    .description('start an experiment: a share of entities (sticky by entity key) is scored by the treatment, the rest by the control (the version in production)')
    .requiredOption('--model <model>')
    .requiredOption('--control <version>', 'the version in production')
    .requiredOption('--treatment <version>')
    .requiredOption('--split <percent>', 'treatment share of entities, between 0 and 100 (exclusive)', Number)
    .option('--shadow <version>', 'also score every event with this version into predictions.<model>.shadow (never decides)')
    .option('--metric <metric>', 'precision_at_block | auc (decision models, default auc), ctr | conversion (ranking models, default ctr)')
    .option('--min-samples <n>', 'labelled samples per arm before the test may conclude', positiveInt('min-samples'), 200)
    .option('--max-duration <duration>', 'end after this long (30m, 24h, 7d)', '24h')
    .option('--guardrail <condition>', 'a condition the treatment must keep, e.g. "p99_latency_ms<20" (repeatable)', collect)
    .option('--auto <action>', 'promote (wins promote, losses roll back) | rollback (only losses act) | none (report only)', 'promote')
    .option('--alpha <p>', 'false-positive bound of the sequential test', Number, 0.05)
    .option('--mixture-sd <effect>', 'effect size (metric units) the test is tuned for (default per metric)', Number)
    .option('--outcome-horizon <duration>', 'ranking metrics: how long after an item is shown a click or purchase counts', '1h')
    .option('--id <id>', 'experiment id (lower-case letters, digits, _); default <model>_<date>_<time>')
    .option('--json', 'print as JSON')
    .action(async (o: { model: string; control: string; treatment: string; split: number; shadow?: string; metric?: string; minSamples: number; maxDuration: string; guardrail?: string[]; auto: string; alpha: number; mixtureSd?: number; outcomeHorizon: string; id?: string; json?: boolean }) => {
      const cfg = config();
      const e = await admin(cfg).start({
        model: o.model, control: o.control, treatment: o.treatment, split: o.split, metric: o.metric, minSamples: o.minSamples, maxDuration: o.maxDuration, guardrails: o.guardrail ?? [], auto: o.auto, alpha: o.alpha, outcomeHorizon: o.outcomeHorizon,
        ...(o.shadow !== undefined ? { shadow: o.shadow } : {}), ...(o.mixtureSd !== undefined ? { mixtureSd: o.mixtureSd } : {}), ...(o.id !== undefined ? { id: o.id } : {}),
      } as Parameters<ExperimentsAdmin['start']>[0], operator());
      let view = experimentView(e.id);
      const client = createClickHouse(cfg);
      try {
        await ensureExperimentView(client, cfg.clickhouseDatabase, e);
      } catch (err) {
        view = `${view} (not created yet: ${messageOf(err)}; the judge creates it)`;
      } finally {
        await client.close();
      }
      out(!!o.json, { ...e, view }, () => `${summaryLine(e)}\n  every scoring instance and POST /v1/predict/${e.model} follow it now; ledger view ${view}`);
    });

  experiments
    .command('status')
    .description('arms, samples, the metric with its always-valid interval, latency, the shadow, and the decision so far')
    .argument('[id]', 'an experiment (default: every running one)')
    .option('--json', 'print as JSON')
    .action(async (id: string | undefined, o: { json?: boolean }) => {
      const cfg = config();
      const log = cliLog(cfg, true);
      const registry = await admin(cfg).read();
      let chosen: Experiment[];
      if (id !== undefined) {
        const e = registry.get(id);
        if (!e) throw new FabricError('FABRIC_EXPERIMENT_UNKNOWN', `no experiment ${id}${registry.list().length ? ` (experiments: ${registry.list().map((x) => x.id).join(', ')})` : ''}`);
        chosen = [e];
      } else chosen = registry.list().filter((e) => e.state === 'running');
      const models = new ModelRegistry(createKafka(cfg, log, 'cli'), new AvroSerde({ url: cfg.registryUrl }), cfg, log);
      await models.readOnce();
      const statuses: Status[] = [];
      for (const e of chosen) statuses.push(await statusOf(cfg, e, models.production(e.model)?.version));
      out(!!o.json, statuses, () => (statuses.length === 0 ? '(no experiment is running; fabric experiments list shows past ones)' : statuses.map(statusText).join('\n\n')));
    });

  experiments
    .command('stop')
    .description('stop a running experiment: all traffic back on the control, nothing promoted')
    .argument('<id>')
    .option('--reason <text>', 'why (recorded and alerted)', '')
    .option('--json', 'print as JSON')
    .action(async (id: string, o: { reason: string; json?: boolean }) => {
      const e = await admin(config()).stop(id, operator(), o.reason);
      out(!!o.json, e, () => summaryLine(e));
    });

  experiments
    .command('list')
    .description('every experiment, the latest first: state, arms and decision')
    .option('--json', 'print as JSON')
    .action(async (o: { json?: boolean }) => {
      const list = (await admin(config()).read()).list();
      out(!!o.json, list, () => (list.length === 0 ? '(no experiments)' : list.map(summaryLine).join('\n')));
    });
}
