import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createHash } from 'node:crypto';
import { copyFile, mkdtemp, rm, writeFile, readFile, mkdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { chRows, isolatedConfig, post, readAll, startTestFabric, waitFor, type TestFabric } from './harness.js';
import { AvroSerde } from '../../schemas/serde.js';
import { loadAvroSchema } from '../../schemas/catalog.js';
import type { Alert, Experiment, Outcome, Prediction, Recommendation } from '../../schemas/types.generated.js';
import { prefixed, type FabricConfig } from '../../topology/config.js';
import { createLogger } from '../../topology/runtime/log.js';
import { createKafka } from '../../topology/runtime/kafka.js';
import { BatchingProducer } from '../../topology/runtime/producer.js';
import { packagePath } from '../../topology/paths.js';
import { isFabricError } from '../../topology/errors.js';
import { startFabric } from '../../app/fabric.js';
import { experimentsAdmin, registryAdmin } from '../../app/serving.js';
import { RegistryAdmin } from '../../serving/registry/admin.js';
import { TASKS } from '../../serving/models/tasks.js';
import { FEATURE_GROUPS } from '../../topology/features/groups.js';
import type { ExperimentsAdmin } from '../../serving/experiments/registry.js';
import { runSimulation } from '../../sim/run.js';
import { writeInvertedVariant } from '../../scripts/model-variant.js';

/**
 * Experiments end to end, on the real stack: a 20% sticky split recorded on every prediction (checked
 * against an independent hash here), kept across a restart, with a shadow that scores every event and
 * changes no decision; a better treatment promoted and a worse one rolled back by the judge from the
 * ledger's labels, each with its alert; an experiment interrupted by a promotion by hand, one that ends
 * inconclusive when labels never come, a guardrail breach, and a treatment that cannot load refused.
 */
const execFileP = promisify(execFile);
let f: TestFabric;
let admin: ExperimentsAdmin;
let models: RegistryAdmin;
let work: string;
let serde: AvroSerde;
let producer: BatchingProducer;
let outcomesWriter: Awaited<ReturnType<AvroSerde['writer']>>;

/** The arm of an entity, computed here from the documented rule (not the fabric's function). */
function expectedArm(id: string, split: number, entity: string): string {
  const h = createHash('sha256').update(`${id}:${entity}`).digest('hex');
  return parseInt(h.slice(0, 8), 16) / 2 ** 32 < split / 100 ? 'treatment' : 'control';
}

async function decoded<T>(topic: string): Promise<T[]> {
  const records = await readAll(f.kafka, f.config, topic);
  await serde.prefetch(records.map((r) => r.value));
  return records.filter((r) => r.value).map((r) => serde.decode<T>(r.value!));
}

async function simulate(runId: string, seed: number, durationSec: number, rate = 300): Promise<string[]> {
  const outcomesTopic = prefixed(f.config, 'outcomes.transactions');
  const summary = await runSimulation({
    stream: 'transactions', gatewayUrl: f.url, apiKey: 'dev-key', ratePerSec: rate, durationSec, seed, drift: false, runId, outcomeDelayMs: 300,
    publishOutcomes: (outcomes: Outcome[]) => producer.send(outcomes.map((o) => ({ topic: outcomesTopic, key: o.entity_id, value: outcomesWriter.encode(o) }))),
  });
  expect(summary.failedRequests).toBe(0);
  return summary.acceptedIds;
}

async function experiment(id: string): Promise<Experiment | undefined> {
  return (await admin.read()).get(id);
}

async function ended(id: string, timeoutMs = 120_000): Promise<Experiment> {
  return (await waitFor(() => experiment(id), (e) => e !== undefined && e.state !== 'running', { timeoutMs, intervalMs: 500, what: `experiment ${id} to end` }))!;
}

async function production(): Promise<string | undefined> {
  return (await models.entries({ ownWrites: false })).find((e) => e.name === 'fraud' && e.stage === 'production')?.version;
}

function cliEnv(config: FabricConfig): NodeJS.ProcessEnv {
  return { ...process.env, FABRIC_TOPIC_PREFIX: config.topicPrefix, FABRIC_REDIS_PREFIX: config.redisKeyPrefix, FABRIC_CLICKHOUSE_DATABASE: config.clickhouseDatabase, FABRIC_LOG_LEVEL: 'warn' };
}

async function cli(...args: string[]): Promise<unknown> {
  return JSON.parse((await execFileP('npx', ['tsx', 'app/cli/main.ts', 'experiments', ...args, '--json'], { env: cliEnv(f.config), timeout: 120_000 })).stdout);
}

beforeAll(async () => {
  const config = isolatedConfig({ experimentsIntervalSec: 1, experimentsWindowSec: 5 });
  f = await startTestFabric(config, { processors: ['features', 'features-user', 'features-item', 'tracking'] });
  const log = createLogger(config);
  serde = new AvroSerde({ url: config.registryUrl });
  admin = experimentsAdmin({ kafka: createKafka(config, log, 'it-experiments'), serde, config, log });
  models = registryAdmin({ kafka: createKafka(config, log, 'it-models'), serde, config, log });
  producer = new BatchingProducer(createKafka(config, log, 'it-outcomes'), { lingerMs: 5, batchSize: 500, maxQueued: 20_000, ackTimeoutMs: 10_000 }, log);
  await producer.start();
  outcomesWriter = await serde.writer<Outcome>(`${prefixed(config, 'outcomes.transactions')}-value`, loadAvroSchema('outcome'));
  work = await mkdtemp(join(tmpdir(), 'fabric-experiments-'));
  // 1.1.0: the demo model's bytes again (an A/A pair with 1.0.0); 0.9.0: the demo model inverted (much worse).
  await mkdir(join(work, 'same'));
  await copyFile(packagePath('models/fraud/model.onnx'), join(work, 'same', 'model.onnx'));
  const manifest = JSON.parse(await readFile(packagePath('models/fraud/model.json'), 'utf8')) as Record<string, unknown>;
  await writeFile(join(work, 'same', 'model.json'), JSON.stringify({ ...manifest, version: '1.1.0' }));
  await models.register({ artifact: join(work, 'same'), registeredBy: 'test' });
  await models.register({ artifact: await writeInvertedVariant(packagePath('models/fraud'), join(work, 'inverted'), '0.9.0'), registeredBy: 'test' });
}, 240_000);

afterAll(async () => {
  await producer?.close();
  await f?.cleanup();
  if (work) await rm(work, { recursive: true, force: true });
});

describe('experiments on the stream', () => {
  const split = 20;
  const id = 'split_aa';
  let events: string[] = [];

  it('splits 20% of accounts to the treatment, sticky by account, recorded on every prediction, with a shadow for every event', async () => {
    const started = (await cli('start', '--model', 'fraud', '--control', '1.0.0', '--treatment', '1.1.0', '--split', String(split), '--shadow', '0.9.0', '--min-samples', '100000', '--auto', 'none', '--id', id)) as Experiment & { view: string };
    expect(started).toMatchObject({ id, model: 'fraud', control: '1.0.0', treatment: '1.1.0', split, shadow: '0.9.0', metric: 'auc', state: 'running', revision: 1 });
    expect(started.view).toBe(`v_experiment_${id}`);
    // Every scoring instance follows the topic: wait until this one took it.
    await new Promise((r) => setTimeout(r, 1500));
    events = await simulate('split', 21, 6);
    const stream = await waitFor(() => decoded<Prediction>('predictions.fraud'), (ps) => ps.length >= events.length, { timeoutMs: 120_000, what: 'a prediction per event' });
    const byAccount = new Map<string, Set<string>>();
    for (const p of stream) {
      expect(p.experiment, p.event_id).toBe(id);
      expect(p.arm, p.event_id).toBe(expectedArm(id, split, p.entity_id));
      expect(p.version).toBe(p.arm === 'treatment' ? '1.1.0' : '1.0.0');
      (byAccount.get(p.entity_id) ?? byAccount.set(p.entity_id, new Set()).get(p.entity_id)!).add(p.arm);
    }
    for (const arms of byAccount.values()) expect(arms.size).toBe(1);
    // Within sampling error: 4 standard deviations of a binomial share of the accounts.
    const accounts = byAccount.size;
    const treated = [...byAccount.values()].filter((a) => a.has('treatment')).length;
    expect(accounts).toBeGreaterThan(300);
    expect(Math.abs(treated / accounts - 0.2)).toBeLessThan(4 * Math.sqrt((0.2 * 0.8) / accounts));
    // The shadow scored every event with the inverted model: its score is 1 - the served score (same
    // vector), its decision is recorded apart, and the decisions served are the demo model's, not its.
    const shadow = await waitFor(() => decoded<Prediction>('predictions.fraud.shadow'), (ps) => ps.length >= events.length, { timeoutMs: 60_000, what: 'a shadow prediction per event' });
    expect(new Set(shadow.map((s) => s.event_id))).toEqual(new Set(events));
    const served = new Map(stream.map((p) => [p.event_id, p]));
    let differ = 0;
    for (const s of shadow) {
      const p = served.get(s.event_id)!;
      expect(s).toMatchObject({ version: '0.9.0', arm: 'shadow', experiment: id });
      if (p.score !== null && s.score !== null) expect(s.score + p.score).toBeCloseTo(1, 5);
      if (s.decision !== p.decision) differ++;
    }
    // The inverted shadow would block most events; the served decisions block few.
    expect(differ).toBeGreaterThan(events.length / 2);
    expect(stream.filter((p) => p.decision === 'block').length).toBeLessThan(events.length / 10);
    // The ledger has both, and the experiment's view.
    const view = await waitFor(() => chRows<{ arm: string; n: string }>(f.clickhouse, `SELECT arm, count() AS n FROM ${f.config.clickhouseDatabase}.v_experiment_${id} GROUP BY arm ORDER BY arm`), (r) => r.reduce((a, x) => a + Number(x.n), 0) >= events.length, { timeoutMs: 60_000, what: 'the experiment view' });
    expect(view.map((r) => r.arm)).toEqual(['control', 'treatment']);
    expect(view.reduce((a, r) => a + Number(r.n), 0)).toBe(events.length);
  }, 240_000);

  it('POST /v1/predict answers from the entity\'s arm, and an explicit @version is outside the experiment', async () => {
    const pick = (arm: string): string => {
      for (let i = 0; ; i++) if (expectedArm(id, split, `P${i}`) === arm) return `P${i}`;
    };
    for (const arm of ['control', 'treatment']) {
      const account = pick(arm);
      const body = JSON.stringify({ event_id: `predict-${arm}`, account_id: account, counterparty_id: 'M1', type: 'PAYMENT', amount: 25, old_balance: 500, new_balance: 475, channel: 'web', ts: Date.now() });
      const res = await post(f.url, '/v1/predict/fraud', body);
      expect(res.status, JSON.stringify(res.body)).toBe(200);
      expect(res.body).toMatchObject({ experiment: id, arm, version: arm === 'treatment' ? '1.1.0' : '1.0.0' });
      const pinned = await post(f.url, '/v1/predict/fraud@1.0.0', body);
      expect(pinned.body.version).toBe('1.0.0');
      expect(pinned.body.experiment).toBeUndefined();
    }
  }, 60_000);

  it('status prints both arms with samples, the metric and its interval; list shows it running', async () => {
    type ArmJson = { outputs: number; samples: number; metric: { value: number; interval: number[] } | null };
    type StatusJson = { stats: { arms: { control: ArmJson; treatment: ArmJson }; test: { difference: number; interval: number[]; significant: boolean } | null; shadow: { outputs: number } }; latency: { control: { rows: number }; shadow: { rows: number } } };
    // The metric recomputed here from Kafka alone: each arm's predictions joined with the labels on
    // outcomes.transactions, AUC by its pairwise definition on the raw scores.
    const labels = new Map((await decoded<Outcome>('outcomes.transactions')).map((o) => [o.event_id, o.value]));
    const byArm = { control: { pos: [] as number[], neg: [] as number[] }, treatment: { pos: [] as number[], neg: [] as number[] } };
    for (const p of await decoded<Prediction>('predictions.fraud')) {
      const label = labels.get(p.event_id);
      if (p.experiment !== id || label === undefined || p.score === null) continue;
      (label === 1 ? byArm[p.arm as 'control' | 'treatment'].pos : byArm[p.arm as 'control' | 'treatment'].neg).push(p.score);
    }
    const pairwise = ({ pos, neg }: { pos: number[]; neg: number[] }): number => {
      let wins = 0;
      for (const x of pos) for (const y of neg) wins += x > y ? 1 : x === y ? 0.5 : 0;
      return wins / (pos.length * neg.length);
    };
    const labelled = (arm: 'control' | 'treatment'): number => byArm[arm].pos.length + byArm[arm].neg.length;
    expect(byArm.control.pos.length).toBeGreaterThan(0);
    expect(byArm.treatment.pos.length).toBeGreaterThan(0);
    const statuses = await waitFor(() => cli('status', id) as Promise<StatusJson[]>,
      (s) => s[0]?.stats?.arms.control.samples === labelled('control') && s[0]?.stats?.arms.treatment.samples === labelled('treatment') && (s[0]?.stats.shadow.outputs ?? 0) >= events.length, { timeoutMs: 60_000, intervalMs: 1000, what: 'every label in the status' });
    const status = statuses[0]!;
    expect(status.stats.arms.control.outputs + status.stats.arms.treatment.outputs).toBe(events.length);
    for (const arm of ['control', 'treatment'] as const) {
      // The fabric groups scores rounded to 1e-4 (ties count half): within a hundredth of the exact value.
      expect(status.stats.arms[arm].metric!.value, arm).toBeCloseTo(pairwise(byArm[arm]), 2);
      const m = status.stats.arms[arm].metric!;
      expect(m.interval[0]).toBeLessThanOrEqual(m.value);
      expect(m.interval[1]).toBeGreaterThanOrEqual(m.value);
    }
    // Both arms run the same bytes (A/A): the difference is inside its interval, not significant.
    expect(status.stats.test!.significant).toBe(false);
    expect(status.stats.test!.difference).toBeCloseTo(pairwise(byArm.treatment) - pairwise(byArm.control), 2);
    expect(status.stats.shadow.outputs).toBe(events.length);
    expect(status.latency.control.rows).toBeGreaterThan(0);
    expect(status.latency.shadow.rows).toBeGreaterThan(0);
    const list = (await cli('list')) as Experiment[];
    expect(list.find((e) => e.id === id)?.state).toBe('running');
  }, 180_000);

});

describe('experiment decisions from the ledger', () => {
  async function start(request: Parameters<ExperimentsAdmin['start']>[0]): Promise<Experiment> {
    const e = await admin.start(request, 'test');
    await new Promise((r) => setTimeout(r, 1500));
    return e;
  }

  async function alertsOf(id: string): Promise<Alert[]> {
    return (await decoded<Alert>('alerts')).filter((a) => a.subject === id);
  }

  it('refuses bad starts with every problem named: split, unknown versions, a control not in production, a second experiment', async () => {
    const bad = await execFileP('npx', ['tsx', 'app/cli/main.ts', 'experiments', 'start', '--model', 'fraud', '--control', '1.0.0', '--treatment', '7.7.7', '--split', '150'], { env: cliEnv(f.config), timeout: 120_000 }).then(() => null, (e: { code: number; stderr: string }) => e);
    expect(bad?.code).not.toBe(0);
    expect(bad?.stderr).toMatch(/FABRIC_EXPERIMENT_INVALID/);
    expect(bad?.stderr).toMatch(/treatment version 7\.7\.7 of fraud is not registered/);
    expect(bad?.stderr).toMatch(/split 150 is outside 0-100/);
    const second = await admin.start({ model: 'fraud', control: '1.0.0', treatment: '0.9.0', split: 10 }, 'test').then(() => null, (e: unknown) => e);
    expect(isFabricError(second, 'FABRIC_EXPERIMENT_INVALID')).toBe(true);
    expect((second as Error).message).toMatch(/experiment split_aa is already running on fraud/);
    const notProduction = await admin.start({ model: 'fraud', control: '0.9.0', treatment: '1.0.0', split: 10, id: 'np' }, 'test').then(() => null, (e: unknown) => e);
    expect((notProduction as Error).message).toMatch(/the control must be the version in production \(1\.0\.0\), not 0\.9\.0/);
  }, 120_000);

  it('two starts on one model at the same moment: exactly one runs, the other is refused and writes nothing', async () => {
    for (const e of (await admin.read()).list().filter((x) => x.model === 'fraud' && x.state === 'running')) await admin.stop(e.id, 'test', 'making room');
    const [a, b] = await Promise.allSettled([
      admin.start({ model: 'fraud', control: '1.0.0', treatment: '1.1.0', split: 10, minSamples: 100000, auto: 'none', id: 'race_a' }, 'test'),
      admin.start({ model: 'fraud', control: '1.0.0', treatment: '1.1.0', split: 10, minSamples: 100000, auto: 'none', id: 'race_b' }, 'test'),
    ]);
    const settled = [a, b].map((r) => r.status);
    expect(settled.sort()).toEqual(['fulfilled', 'rejected']);
    // The later one either read the earlier one's record (refused) or was fenced while deciding (conflict).
    const lost = ([a, b].find((r) => r.status === 'rejected') as PromiseRejectedResult).reason as Error;
    if (isFabricError(lost, 'FABRIC_EXPERIMENT_INVALID')) expect(lost.message).toMatch(/experiment race_[ab] is already running on fraud/);
    else expect(isFabricError(lost, 'FABRIC_CONTROL_CONFLICT'), lost.message).toBe(true);
    const running = (await admin.read()).list().filter((e) => e.model === 'fraud' && e.state === 'running');
    expect(running).toHaveLength(1);
    await admin.stop(running[0]!.id, 'test', 'race checked');
  }, 120_000);

  it('stops by hand: all traffic back on the control, recorded and alerted', async () => {
    await admin.start({ model: 'fraud', control: '1.0.0', treatment: '1.1.0', split: 10, minSamples: 100000, auto: 'none', id: 'by_cli' }, 'test');
    const stopped = (await cli('stop', 'by_cli', '--reason', 'A/A done')) as Experiment;
    expect(stopped).toMatchObject({ state: 'stopped', revision: 2, decision: { outcome: 'stopped', action: 'none', reason: 'A/A done' } });
    expect((await alertsOf('by_cli')).map((a) => a.message)).toEqual([expect.stringMatching(/started/), expect.stringMatching(/stopped by .*: A\/A done/)]);
    expect((await cli('stop', 'nope').catch((e: { stderr: string }) => e.stderr)) as string).toMatch(/FABRIC_EXPERIMENT_UNKNOWN/);
    // A decision taken on the record as it was before the stop (a judge's round) is refused, nothing written.
    const late = await admin.change('fraud', 'by_cli', 1, (current) => ({ experiment: { ...current, state: 'concluded', revision: 2 } })).then(() => null, (e: unknown) => e);
    expect(isFabricError(late, 'FABRIC_CONTROL_CONFLICT'), String(late)).toBe(true);
    expect(await experiment('by_cli')).toMatchObject({ state: 'stopped', revision: 2 });
  }, 120_000);

  it('refuses a treatment that fails to load: nothing is written', async () => {
    const dir = join(work, 'broken');
    await mkdir(dir, { recursive: true });
    await copyFile(packagePath('models/fraud/model.onnx'), join(dir, 'model.onnx'));
    const manifest = JSON.parse(await readFile(packagePath('models/fraud/model.json'), 'utf8')) as Record<string, unknown>;
    delete manifest.sha256;
    await writeFile(join(dir, 'model.json'), JSON.stringify({ ...manifest, version: '3.0.0-broken', output_name: 'no_such_output' }));
    // Registered without the load check (an older fabric, or a hand-written registry record).
    const log = createLogger(f.config);
    const unchecked = new RegistryAdmin({ kafka: createKafka(f.config, log, 'it-unchecked'), serde, config: f.config, store: (await import('../../app/serving.js')).modelStore(f.config), tasks: TASKS, groups: FEATURE_GROUPS, log });
    await unchecked.register({ artifact: dir, registeredBy: 'test' });
    const refused = await admin.start({ model: 'fraud', control: '1.0.0', treatment: '3.0.0-broken', split: 10, id: 'broken' }, 'test').then(() => null, (e: unknown) => e);
    expect(isFabricError(refused, 'FABRIC_EXPERIMENT_INVALID')).toBe(true);
    expect((refused as Error).message).toMatch(/the treatment fraud@3\.0\.0-broken does not load/);
    expect(await experiment('broken')).toBeUndefined();
  }, 120_000);

  it('promotes a better treatment once the labels show it, in one transaction with its alert', async () => {
    await models.promote('fraud', '0.9.0', 'production', 'test', 'a bad model in production, for the experiment');
    await waitFor(production, (v) => v === '0.9.0', { what: '0.9.0 in production' });
    await new Promise((r) => setTimeout(r, 1500));
    await start({ model: 'fraud', control: '0.9.0', treatment: '1.0.0', split: 50, metric: 'auc', minSamples: 30, auto: 'promote', id: 'better' });
    await simulate('better', 31, 6);
    const e = await ended('better');
    expect(e).toMatchObject({ state: 'concluded', decision: { outcome: 'win', action: 'promoted' } });
    expect(e.decision!.reason).toMatch(/^treatment wins: auc /);
    const stats = JSON.parse(e.decision!.stats_json) as { arms: Record<string, { samples: number; metric: { value: number } }>; test: { significant: boolean; difference: number } };
    expect(stats.test.significant).toBe(true);
    expect(stats.arms.treatment!.metric.value).toBeGreaterThan(stats.arms.control!.metric.value);
    expect(stats.arms.control!.samples).toBeGreaterThanOrEqual(30);
    expect(await production()).toBe('1.0.0');
    const entry = (await models.entries({ ownWrites: false })).find((x) => x.name === 'fraud' && x.version === '1.0.0')!;
    expect(entry.stage_history.at(-1)).toMatchObject({ to: 'production', reason: expect.stringMatching(/^experiment better: treatment wins/) });
    expect((await alertsOf('better')).map((a) => a.details.outcome ?? '')).toContain('win');
    // The ledger keeps the decision.
    const rows = await waitFor(() => chRows<{ state: string; outcome: string; action: string }>(f.clickhouse, `SELECT state, outcome, action FROM ${f.config.clickhouseDatabase}.v_experiments WHERE id = 'better'`), (r) => r[0]?.state === 'concluded', { what: 'the experiment in ClickHouse' });
    expect(rows).toEqual([{ state: 'concluded', outcome: 'win', action: 'promoted' }]);
  }, 240_000);

  it('rolls back a worse treatment: production untouched, the loss recorded', async () => {
    await start({ model: 'fraud', control: '1.0.0', treatment: '0.9.0', split: 50, metric: 'auc', minSamples: 30, id: 'worse' });
    await simulate('worse', 41, 6);
    const e = await ended('worse');
    expect(e).toMatchObject({ state: 'concluded', decision: { outcome: 'loss', action: 'rolled_back' } });
    expect(await production()).toBe('1.0.0');
    expect((await alertsOf('worse')).find((a) => a.details.outcome === 'loss')).toMatchObject({ severity: 'warning', model: 'fraud' });
  }, 240_000);

  it('rolls back a treatment that breaks a guardrail', async () => {
    await start({ model: 'fraud', control: '1.0.0', treatment: '1.1.0', split: 50, minSamples: 10, guardrails: ['p99_latency_ms<0.001'], id: 'slow' });
    await simulate('slow', 51, 2, 200);
    const e = await ended('slow');
    expect(e).toMatchObject({ state: 'concluded', decision: { outcome: 'guardrail', action: 'rolled_back' } });
    expect(e.decision!.reason).toMatch(/^guardrail p99_latency_ms<0.001 breached: the treatment's p99_latency_ms is /);
  }, 180_000);

  it('is interrupted by a promotion by hand', async () => {
    await start({ model: 'fraud', control: '1.0.0', treatment: '1.1.0', split: 50, minSamples: 100000, auto: 'none', id: 'by_hand' });
    await models.promote('fraud', '1.1.0', 'production', 'test', 'an operator chose');
    const e = await ended('by_hand');
    expect(e).toMatchObject({ state: 'stopped', decision: { outcome: 'interrupted', action: 'none' } });
    expect(e.decision!.reason).toMatch(/the treatment 1\.1\.0 was promoted by hand/);
  }, 120_000);

  it('ends inconclusive at max duration when labels never arrive', async () => {
    await start({ model: 'fraud', control: '1.1.0', treatment: '1.0.0', split: 50, minSamples: 1000, maxDuration: '3s', id: 'no_labels' });
    const e = await ended('no_labels', 60_000);
    expect(e).toMatchObject({ state: 'concluded', decision: { outcome: 'inconclusive', action: 'none' } });
    expect(e.decision!.reason).toMatch(/max duration .* reached with 0 control and 0 treatment samples \(1000 needed per arm\)/);
    expect(await production()).toBe('1.1.0');
  }, 120_000);
});

describe('an experiment on the recommendations', () => {
  it('splits users, ranks each arm with its version, shadows every interaction, and is judged on CTR', async () => {
    const manifest = JSON.parse(await readFile(packagePath('models/recs/model.json'), 'utf8')) as Record<string, unknown>;
    delete manifest.sha256;
    for (const version of ['2.0.0', '2.1.0']) {
      const dir = join(work, `recs-${version}`);
      await mkdir(dir, { recursive: true });
      await copyFile(packagePath('models/recs/model.onnx'), join(dir, 'model.onnx'));
      await writeFile(join(dir, 'model.json'), JSON.stringify({ ...manifest, version }));
      await models.register({ artifact: dir, registeredBy: 'test' });
    }
    const id = 'recs_ab';
    const e = await admin.start({ model: 'recs', control: '1.0.0', treatment: '2.0.0', shadow: '2.1.0', split: 50, minSamples: 100000, auto: 'none', id }, 'test');
    expect(e.metric).toBe('ctr');
    await new Promise((r) => setTimeout(r, 1500));
    const outcomesTopic = prefixed(f.config, 'outcomes.interactions');
    const writer = await serde.writer<Outcome>(`${outcomesTopic}-value`, loadAvroSchema('outcome'));
    const summary = await runSimulation({
      stream: 'interactions', gatewayUrl: f.url, apiKey: 'dev-key', ratePerSec: 100, durationSec: 4, seed: 61, drift: false, runId: 'recs', outcomeDelayMs: 300,
      publishOutcomes: (outcomes: Outcome[]) => producer.send(outcomes.map((o) => ({ topic: outcomesTopic, key: o.entity_id, value: writer.encode(o) }))),
    });
    expect(summary.failedRequests).toBe(0);
    const recs = await waitFor(() => decoded<Recommendation>('predictions.recs'), (rs) => rs.length >= summary.accepted, { timeoutMs: 120_000, what: 'a recommendation per interaction' });
    for (const r of recs) {
      expect(r.experiment).toBe(id);
      expect(r.arm, r.user_id).toBe(expectedArm(id, 50, r.user_id));
      expect(r.version).toBe(r.arm === 'treatment' ? '2.0.0' : '1.0.0');
    }
    expect(new Set(recs.map((r) => r.arm))).toEqual(new Set(['control', 'treatment']));
    const shadow = await waitFor(() => decoded<Recommendation>('predictions.recs.shadow'), (rs) => rs.length >= summary.accepted, { timeoutMs: 60_000, what: 'a shadow recommendation per interaction' });
    expect(new Set(shadow.map((r) => r.event_id))).toEqual(new Set(recs.map((r) => r.event_id)));
    expect(shadow.every((r) => r.version === '2.1.0' && r.arm === 'shadow')).toBe(true);
    // Same bytes: the shadow ranks the same candidates the same way (caps aside: it never counts them).
    const served = new Map(recs.map((r) => [r.event_id, r]));
    for (const s of shadow) {
      const r = served.get(s.event_id)!;
      if (r.items.length > 0) expect(s.items[0]?.score).toBe(Math.max(...r.items.map((i) => i.score), s.items[0]?.score ?? -1));
    }
    // The ledger's outputs per arm are the items each arm showed, as on predictions.recs.
    const shown = (arm: string): number => recs.filter((r) => r.arm === arm).reduce((n, r) => n + r.items.length, 0);
    type RecsStatus = { stats: { metric: string; arms: { control: { outputs: number }; treatment: { outputs: number } } } };
    const [status] = await waitFor(() => cli('status', id) as Promise<RecsStatus[]>, (s) => s[0]?.stats.arms.control.outputs === shown('control') && s[0]?.stats.arms.treatment.outputs === shown('treatment'), { timeoutMs: 60_000, intervalMs: 1000, what: 'every item shown in the status' });
    expect(status!.stats.metric).toBe('ctr');
    expect(shown('control')).toBeGreaterThan(0);
    expect(shown('treatment')).toBeGreaterThan(0);
    await admin.stop(id, 'test', 'done');
  }, 240_000);
});

describe('after a restart', () => {
  const id = 'sticky';
  it('keeps every account in its arm across a restart of the scoring processor', async () => {
    await admin.start({ model: 'fraud', control: '1.1.0', treatment: '1.0.0', split: 20, minSamples: 100000, auto: 'none', id }, 'test');
    await f.handle.stop();
    const again = await startFabric(f.config, createLogger(f.config), { processors: ['features'], gateway: false, apply: false });
    try {
      const before = await decoded<Prediction>('predictions.fraud');
      const arms = new Map(before.filter((p) => p.experiment === 'split_aa').map((p) => [p.entity_id, expectedArm(id, 20, p.entity_id)]));
      // Replaying the same accounts through the restarted processor: new events for 50 known accounts.
      const writer = await serde.writer(`${prefixed(f.config, 'events.transactions')}-value`, loadAvroSchema('transaction'));
      const now = Date.now();
      const accounts = [...arms.keys()].slice(0, 50);
      await producer.send(accounts.map((a, i) => ({ topic: prefixed(f.config, 'events.transactions'), key: a, value: writer.encode({ event_id: `restart-${i}`, account_id: a, counterparty_id: 'M1', type: 'PAYMENT', amount: 10 + i, old_balance: 1000, new_balance: 990 - i, channel: 'web', ts: now + i }) })));
      const after = await waitFor(() => decoded<Prediction>('predictions.fraud'), (ps) => ps.filter((p) => p.event_id.startsWith('restart-')).length >= 50, { timeoutMs: 90_000, what: 'predictions after the restart' });
      for (const p of after.filter((x) => x.event_id.startsWith('restart-'))) {
        expect(p.experiment).toBe(id);
        expect(p.arm, p.entity_id).toBe(arms.get(p.entity_id));
      }
    } finally {
      await again.stop();
    }
  }, 180_000);
});
