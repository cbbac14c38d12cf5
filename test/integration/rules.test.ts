import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { chRows, isolatedConfig, post, readAll, startTestFabric, waitFor, type TestFabric } from './harness.js';
import { AvroSerde } from '../../schemas/serde.js';
import { createLogger } from '../../topology/runtime/log.js';
import { createKafka } from '../../topology/runtime/kafka.js';
import { packagePath } from '../../topology/paths.js';
import type { Prediction } from '../../schemas/types.generated.js';
import { RulesAdmin } from '../../serving/rules/registry.js';
import { parseRuleSet, RuleSetInvalid } from '../../serving/rules/spec.js';
import { demoModel } from '../shared/models.js';

/**
 * Serving rules end to end: the demo rule set set at start, decisions on the stream checked against
 * an independent reading of that rule set (written out here, not the engine), a new version hot-
 * reloaded by the scoring processor and POST /v1/predict, invalid sets refused without replacing the
 * working one, a rule failing at run time, and the CLI (list, show, diff, dry run over the ledger).
 */
const execFileP = promisify(execFile);
let f: TestFabric;
let admin: RulesAdmin;
let work: string;
const { entry: fraud } = demoModel('fraud');
const HOUR = 3_600_000;

beforeAll(async () => {
  const config = isolatedConfig();
  f = await startTestFabric(config, { processors: ['features', 'tracking'] });
  const log = createLogger(config);
  admin = new RulesAdmin({ kafka: createKafka(config, log, 'it-rules'), serde: new AvroSerde({ url: config.registryUrl }), config, log });
  work = await mkdtemp(join(tmpdir(), 'fabric-rules-'));
});

afterAll(async () => {
  await f?.cleanup();
  if (work) await rm(work, { recursive: true, force: true });
});

async function predictions(): Promise<Prediction[]> {
  const serde = new AvroSerde({ url: f.config.registryUrl });
  const records = await readAll(f.kafka, f.config, 'predictions.fraud');
  await serde.prefetch(records.map((r) => r.value));
  return records.map((r) => serde.decode<Prediction>(r.value!));
}

async function send(events: Record<string, unknown>[]): Promise<void> {
  const res = await post(f.url, '/v1/events/transactions', JSON.stringify(events));
  expect(res.status, JSON.stringify(res.body)).toBe(202);
  expect(res.body.accepted).toBe(events.length);
}

const T0 = Date.now() - 2 * HOUR;
let n = 0;
/** Every event made here, by id: what the independent reading of the rules looks at. */
const allEvents = new Map<string, Record<string, unknown>>();
function txn(over: Record<string, unknown>): Record<string, unknown> {
  n++;
  const e = { event_id: `r-${n}-${Math.random().toString(36).slice(2, 8)}`, account_id: `R${n % 7}`, counterparty_id: 'M1', type: 'PAYMENT', amount: 50 + n, old_balance: 10_000, new_balance: 10_000 - 50 - n, channel: 'web', ts: T0 + n * 1000, ...over };
  allEvents.set(e.event_id, e);
  return e;
}

/** The demo rule set, read independently: lists, the emptying-transfer condition, the model's thresholds, then the review cap. */
function expectedDemo(stream: Prediction[], events: Map<string, Record<string, unknown>>): Map<string, string> {
  const out = new Map<string, string>();
  const reviews = new Map<string, number[]>();
  for (const p of [...stream].sort((a, b) => a.source_partition - b.source_partition || a.source_offset - b.source_offset)) {
    const e = events.get(p.event_id)!;
    let d: string;
    if (e.account_id === 'C9999999') d = 'block';
    else if (e.counterparty_id === 'M0000000') d = 'allow';
    else if ((e.type === 'TRANSFER' || e.type === 'CASH_OUT') && Number(e.amount) >= 100_000 && e.new_balance === 0 && Number(e.old_balance) >= Number(e.amount)) d = 'review';
    else if (p.score === null) d = 'review';
    else d = p.score >= fraud.thresholds.block! ? 'block' : p.score >= fraud.thresholds.review! ? 'review' : 'allow';
    if (d === 'review') {
      const times = reviews.get(p.entity_id) ?? [];
      if (times.filter((t) => Math.abs(t - p.event_ts) < HOUR).length >= 3) d = 'block';
      else reviews.set(p.entity_id, [...times, p.event_ts]);
    }
    out.set(p.event_id, d);
  }
  return out;
}

describe('serving rules on the stream', () => {
  const events = new Map<string, Record<string, unknown>>();

  it('sets the demo rules at start, and every decision follows them (lists, condition, thresholds, review cap)', async () => {
    const registry = await admin.read();
    expect(registry.versions('fraud').map((v) => v.version)).toEqual([1]);
    expect(JSON.parse(registry.versions('fraud')[0]!.spec)).toEqual(parseRuleSet(await readFile(packagePath('models/fraud/rules.yaml'), 'utf8')));
    const batch = [
      txn({ account_id: 'C9999999' }),
      txn({ counterparty_id: 'M0000000', type: 'TRANSFER', amount: 900_000, old_balance: 900_000, new_balance: 0 }),
      // Five emptying transfers of one account within the hour: three reviews, then the cap blocks.
      ...Array.from({ length: 5 }, (_, i) => txn({ account_id: 'CAP1', type: 'TRANSFER', amount: 150_000 + i, old_balance: 150_000 + i, new_balance: 0, ts: T0 + 10 * 60_000 + i * 60_000 })),
      // Two hours later the same account gets reviews again.
      txn({ account_id: 'CAP1', type: 'CASH_OUT', amount: 200_000, old_balance: 200_000, new_balance: 0, ts: T0 + 80 * 60_000 }),
      ...Array.from({ length: 30 }, () => txn({})),
    ];
    for (const e of batch) events.set(String(e.event_id), e);
    await send(batch);
    const stream = await waitFor(predictions, (ps) => ps.length >= batch.length, { timeoutMs: 90_000, what: 'predictions of the batch' });
    const expected = expectedDemo(stream, events);
    for (const p of stream) {
      expect(p.rules_version, p.event_id).toBe(1);
      expect(p.decision, `${p.event_id} ${JSON.stringify(p.reasons)}`).toBe(expected.get(p.event_id));
    }
    const byAccount = stream.filter((p) => p.entity_id === 'CAP1').sort((a, b) => a.event_ts - b.event_ts);
    expect(byAccount.map((p) => p.decision)).toEqual(['review', 'review', 'review', 'block', 'block', 'review']);
    expect(byAccount[3]!.rules_fired).toEqual(['emptying-transfer', 'review-cap']);
    expect(stream.find((p) => p.entity_id === 'C9999999')).toMatchObject({ decision: 'block', rules_fired: ['blocked-accounts'] });
  });

  it('hot-reloads a new version: later events are decided by it (stream and POST /v1/predict), earlier ones keep theirs', async () => {
    const strict = { model: 'fraud', description: 'everything is blocked', rules: [{ name: 'all', kind: 'threshold' as const, thresholds: [{ decision: 'block' as const, min: 0 }], otherwise: 'allow' as const }] };
    const { version } = await admin.set(RulesAdmin.validate(strict, 'fraud', 'decision').spec, { by: 'it', comment: 'strict' });
    expect(version.version).toBe(2);
    const probe = txn({ account_id: 'HOT1' });
    await waitFor(
      async () => (await post(f.url, '/v1/predict/fraud', JSON.stringify({ ...probe, event_id: `${String(probe.event_id)}-p${Math.random()}` }))).body,
      (b) => b.rulesVersion === 2,
      { timeoutMs: 30_000, what: 'predict on rule set version 2' },
    );
    const answer = await post(f.url, '/v1/predict/fraud', JSON.stringify(probe));
    expect(answer.body).toMatchObject({ decision: 'block', rulesVersion: 2, rulesFired: ['all'] });
    const later = Array.from({ length: 10 }, () => txn({ account_id: 'HOT2' }));
    await send(later);
    const stream = await waitFor(predictions, (ps) => later.every((e) => ps.some((p) => p.event_id === e.event_id && p.origin === 'stream')), { timeoutMs: 60_000, what: 'predictions of the later batch' });
    for (const e of later) expect(stream.find((p) => p.event_id === e.event_id && p.origin === 'stream')).toMatchObject({ decision: 'block', rules_version: 2 });
    expect(stream.filter((p) => events.has(p.event_id)).every((p) => p.rules_version === 1)).toBe(true);
  });

  it('refuses an invalid rule set with the path of each problem, and the working version stays in force', async () => {
    const bad = 'model: fraud\nrules:\n  - {name: x, kind: condition, when: "event.amount >> 3", decision: review}\n  - {name: t, kind: threshold, thresholds: model, otherwise: sometimes}\n';
    let err: unknown;
    try {
      RulesAdmin.validate(parseRuleSet(bad, 'bad.yaml'), 'fraud', 'decision', 'bad.yaml');
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(RuleSetInvalid);
    expect((err as RuleSetInvalid).message).toMatch(/^bad.yaml: invalid rule set: \/rules\/1\/otherwise: must be one of "block", "review", "allow"/);
    // Through the CLI: exit non-zero, one line naming the path; nothing written.
    await writeFile(join(work, 'bad.yaml'), 'model: fraud\nrules:\n  - {name: t, kind: threshold, thresholds: model, otherwise: allow}\n  - {name: c, kind: condition, when: "event.amount >> 3", decision: review}\n');
    const env = { ...process.env, FABRIC_TOPIC_PREFIX: f.config.topicPrefix, FABRIC_REDIS_PREFIX: f.config.redisKeyPrefix, FABRIC_CLICKHOUSE_DATABASE: f.config.clickhouseDatabase, FABRIC_LOG_LEVEL: 'warn' };
    const failed = await execFileP('npx', ['tsx', 'app/cli/main.ts', 'rules', 'set', '--model', 'fraud', join(work, 'bad.yaml')], { env, timeout: 120_000 }).then(() => null, (e: { code: number; stderr: string }) => e);
    expect(failed?.code).not.toBe(0);
    expect(failed?.stderr).toMatch(/FABRIC_RULES_INVALID/);
    expect(failed?.stderr).toMatch(/\/rules\/1: rule c comes after the threshold rule t/);
    expect((await admin.read()).versions('fraud').map((v) => v.version)).toEqual([1, 2]);
  });

  it('a condition that fails at run time gives the declared fallback, names the rule, and is counted', async () => {
    const failing = parseRuleSet('model: fraud\nrules:\n  - {name: broken, kind: condition, when: "event.channel > 3.0", decision: block}\n  - {name: t, kind: threshold, thresholds: model, otherwise: allow}\nfallback: {decision: review, reasons: {rule_error: allow}}\n');
    await admin.set(RulesAdmin.validate(failing, 'fraud', 'decision').spec, { by: 'it' });
    const e = txn({ account_id: 'ERR1' });
    await waitFor(async () => (await post(f.url, '/v1/predict/fraud', JSON.stringify({ ...e, event_id: `${String(e.event_id)}-${Math.random()}` }))).body, (b) => b.rulesVersion === 3, { timeoutMs: 30_000 });
    const answer = await post(f.url, '/v1/predict/fraud', JSON.stringify(e));
    expect(answer.body).toMatchObject({ decision: 'allow', fallback: true, rulesVersion: 3, rulesFired: ['broken'] });
    expect((answer.body.reasons as string[])[0]).toBe('fallback:rule_error');
    expect((answer.body.reasons as string[])[1]).toMatch(/^broken: no such overload/);
    const metrics = await (await fetch(`${f.url}/metrics`)).text();
    expect(metrics).toMatch(/fabric_rule_errors_total\{model="fraud",rule="broken"\} [1-9]/);
  });

  it('lists, shows and diffs versions, and a dry run replays the ledger\'s last predictions through a file', async () => {
    const env = { ...process.env, FABRIC_TOPIC_PREFIX: f.config.topicPrefix, FABRIC_REDIS_PREFIX: f.config.redisKeyPrefix, FABRIC_CLICKHOUSE_DATABASE: f.config.clickhouseDatabase, FABRIC_LOG_LEVEL: 'warn' };
    const cli = async (...args: string[]): Promise<unknown> => JSON.parse((await execFileP('npx', ['tsx', 'app/cli/main.ts', 'rules', ...args, '--json'], { env, timeout: 120_000 })).stdout);
    const list = (await cli('list')) as { model: string; version: number; versions: number }[];
    expect(list.find((r) => r.model === 'fraud')).toMatchObject({ version: 3, versions: 3 });
    expect(list.find((r) => r.model === 'recs')).toMatchObject({ version: 1 });
    const shown = (await cli('show', '--model', 'fraud', '--version', '2')) as { spec: { description: string } };
    expect(shown.spec.description).toBe('everything is blocked');
    const diff = (await cli('diff', '--model', 'fraud', '--from', '1', '--to', '2')) as { same: boolean; patch: string };
    expect(diff.same).toBe(false);
    expect(diff.patch).toMatch(/^-\s+- name: blocked-accounts$/m);
    expect(diff.patch).toMatch(/^\+description: everything is blocked$/m);
    // The ledger has the stream's predictions; a dry run of the demo rules against them.
    const stream = (await predictions()).filter((p) => p.origin === 'stream');
    await waitFor(async () => chRows<{ c: string }>(f.clickhouse, `SELECT count() AS c FROM ${f.config.clickhouseDatabase}.v_predictions`), (r) => Number(r[0]!.c) >= stream.length, { timeoutMs: 60_000, what: 'predictions in ClickHouse' });
    const report = (await cli('set', '--model', 'fraud', packagePath('models/fraud/rules.yaml'), '--dry-run', '--last', '1000')) as { predictions: number; changed: number; before: Record<string, number>; after: Record<string, number>; transitions: Record<string, number> };
    expect(report.predictions).toBe(stream.length);
    // Independently: the demo rules on the same scores and events, against what was decided.
    const expected = expectedDemo(stream, allEvents);
    const changed = stream.filter((p) => expected.get(p.event_id) !== p.decision).length;
    expect(report.changed).toBe(changed);
    expect(report.after.block ?? 0).toBe([...expected.values()].filter((d) => d === 'block').length);
    // Nothing was written by the dry run.
    expect((await admin.read()).versions('fraud')).toHaveLength(3);
  });
});
