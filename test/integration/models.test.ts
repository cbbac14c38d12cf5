import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { copyFile, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { join } from 'node:path';
import avro from 'avsc';
import * as ort from 'onnxruntime-node';
import { isolatedConfig, readAll, startTestFabric, transaction, waitFor, type TestFabric } from './harness.js';
import { AvroSerde } from '../../schemas/serde.js';
import { createLogger } from '../../topology/runtime/log.js';
import { createKafka } from '../../topology/runtime/kafka.js';
import { packagePath } from '../../topology/paths.js';
import { loadStatusKey, modelStore, registryAdmin, verifier } from '../../app/serving.js';
import type { RegistryAdmin } from '../../serving/registry/admin.js';
import type { ModelVersion, Prediction } from '../../schemas/types.generated.js';
import { OnlinePredictor, PredictTimeout } from '../../serving/predict.js';
import type { ModelHandle } from '../../serving/engine/engine.js';
import type { LiveModels } from '../../serving/models/live.js';
import { demoModel } from '../shared/models.js';
import { flatMetrics } from '../../serving/registry/entry.js';
import { MODEL_DEFAULT_RULES } from '../../serving/rules/engine.js';

const execFileP = promisify(execFile);
let f: TestFabric;
let admin: RegistryAdmin;
let unverified: RegistryAdmin;
let work: string;
const serde = new AvroSerde({ url: isolatedConfig().registryUrl });
const FRAUD_DIR = packagePath('models/fraud');

/** Decodes Confluent wire format with nothing of ours: the registry's REST API and avsc. */
const types = new Map<number, avro.Type>();
async function decode<T>(buf: Buffer): Promise<T> {
  const id = buf.readInt32BE(1);
  let type = types.get(id);
  if (!type) {
    const res = await fetch(`${f.config.registryUrl}/schemas/ids/${id}`);
    type = avro.Type.forSchema(JSON.parse(((await res.json()) as { schema: string }).schema) as avro.Schema);
    types.set(id, type);
  }
  return type.fromBuffer(buf.subarray(5)) as T;
}

async function post(path: string, body: unknown): Promise<{ status: number; json: Record<string, unknown> }> {
  const res = await fetch(`${f.url}${path}`, { method: 'POST', headers: { authorization: 'Bearer dev-key', 'content-type': 'application/json' }, body: JSON.stringify(body) });
  return { status: res.status, json: (await res.json()) as Record<string, unknown> };
}

/** The fraud model run directly by onnxruntime-node on a logged vector, in the entry's input order. */
let session: ort.InferenceSession;
async function directScore(entry: ModelVersion, features: Record<string, number | null>): Promise<number> {
  const names = entry.signature.inputs.map((i) => i.name);
  const out = await session.run({ [entry.signature.input_name]: new ort.Tensor('float32', Float32Array.from(names.map((n) => features[n]!)), [1, names.length]) });
  const probs = out[entry.signature.output_name]!;
  return Number((probs.data as Float32Array)[entry.signature.positive_class_index]!.toFixed(6));
}

async function predictions(): Promise<Prediction[]> {
  return Promise.all((await readAll(f.kafka, f.config, 'predictions.fraud')).map((r) => decode<Prediction>(r.value!)));
}

beforeAll(async () => {
  const config = isolatedConfig({ predictCacheTtlSec: 60 });
  f = await startTestFabric(config, { processors: ['features'] });
  const log = createLogger(config);
  const store = modelStore(config);
  admin = registryAdmin({ kafka: createKafka(config, log, 'it-admin'), serde, config, log, store, verify: verifier(config, store) });
  unverified = registryAdmin({ kafka: createKafka(config, log, 'it-admin'), serde, config, log, store });
  session = await ort.InferenceSession.create(await readFile(join(FRAUD_DIR, 'model.onnx')));
  work = await mkdtemp(join(tmpdir(), 'fabric-models-'));
});

afterAll(async () => {
  await f?.cleanup();
  if (work) await rm(work, { recursive: true, force: true });
});

describe('the model registry on _fabric.models', () => {
  it('has the demo models registered and in production after start, with hash, signature, owner, training range, metrics and stage history', async () => {
    const entries = await admin.entries();
    const fraud = entries.find((e) => e.name === 'fraud' && e.stage === 'production')!;
    expect(fraud).toBeDefined();
    const manifest = JSON.parse(await readFile(join(FRAUD_DIR, 'model.json'), 'utf8')) as { sha256: string; inputs: string[]; version: string; owner: string; metrics: unknown; training: { from_ts: number; to_ts: number } };
    expect(fraud.version).toBe(manifest.version);
    expect(fraud.artifact.sha256).toBe(manifest.sha256);
    expect(fraud.signature.inputs.map((i) => i.name)).toEqual(manifest.inputs);
    expect(fraud.signature.inputs.find((i) => i.name === 'txn_count_1h')).toMatchObject({ source: 'feature', group: 'account', missing: 'default', default_value: -1 });
    expect(fraud.stage_history.map((c) => [c.from, c.to])).toEqual([['none', 'production']]);
    expect(Object.keys(fraud.metrics).length).toBeGreaterThan(0);
    expect(fraud.owner).not.toBe('');
    // The values themselves: the manifest's metrics (numeric leaves), owner and training range.
    expect(fraud.metrics).toEqual(flatMetrics(manifest.metrics));
    expect(JSON.parse(fraud.metrics_json)).toEqual(manifest.metrics);
    expect(fraud.owner).toBe(manifest.owner);
    expect(fraud.training).toMatchObject({ from_ts: manifest.training.from_ts, to_ts: manifest.training.to_ts });
  });

  it('refuses a version registered again with other bytes, a signature asking for an undefined feature, and a corrupt artifact', async () => {
    const other = join(work, 'other');
    await rm(other, { recursive: true, force: true });
    await import('node:fs/promises').then((fs) => fs.mkdir(other, { recursive: true }));
    const bytes = await readFile(join(FRAUD_DIR, 'model.onnx'));
    const manifest = JSON.parse(await readFile(join(FRAUD_DIR, 'model.json'), 'utf8')) as Record<string, unknown> & { signature: { inputs: { name: string; source: string; group?: string }[] } };
    // Same version, other bytes (the model plus an unknown protobuf field, still a valid model): a conflict, never a silent overwrite.
    await writeFile(join(other, 'model.onnx'), Buffer.concat([bytes, Buffer.from([0x98, 0x06, 0x01])]));
    await writeFile(join(other, 'model.json'), JSON.stringify({ ...manifest, sha256: undefined }));
    await expect(admin.register({ artifact: other, registeredBy: 'it' })).rejects.toMatchObject({ code: 'FABRIC_REGISTRY_CONFLICT' });
    // A truncated file under a new version: refused before anything is written.
    await writeFile(join(other, 'model.onnx'), bytes.subarray(0, bytes.length - 10));
    await expect(admin.register({ artifact: other, version: '9.0.0-corrupt', registeredBy: 'it' })).rejects.toMatchObject({ code: 'FABRIC_MODEL_INVALID' });
    // A signature naming a feature no group defines.
    await copyFile(join(FRAUD_DIR, 'model.onnx'), join(other, 'model.onnx'));
    const inputs = manifest.signature.inputs.map((i) => (i.name === 'txn_count_1h' ? { ...i, name: 'txn_count_7d' } : i));
    await writeFile(join(other, 'model.json'), JSON.stringify({ ...manifest, sha256: undefined, version: '9.0.1', inputs: inputs.map((i) => i.name), signature: { ...manifest.signature, inputs } }));
    await expect(admin.register({ artifact: other, registeredBy: 'it' })).rejects.toThrow(/txn_count_7d is not a feature of group account/);
    expect((await admin.entries()).map((e) => e.version)).not.toContain('9.0.1');
  });
});

describe('POST /v1/predict and the stream agree', () => {
  it('answers with the score, decision and vector the stream gave the same event, and caches by version and vector', async () => {
    const events = Array.from({ length: 12 }, (_, i) => transaction(i, { account_id: 'P1', amount: 100 + i * 50, ts: Date.now() - 60_000 + i * 1000 }));
    const ingest = await post('/v1/events/transactions', events);
    expect(ingest.status).toBe(202);
    const stream = await waitFor(predictions, (p) => p.filter((x) => x.origin === 'stream').length >= events.length, { what: 'stream predictions' });
    const production = (await admin.entries()).find((e) => e.name === 'fraud' && e.stage === 'production')!;
    for (const event of events.slice(-4)) {
      const s = stream.find((p) => p.event_id === event.event_id && p.origin === 'stream')!;
      const { status, json } = await post('/v1/predict/fraud', event);
      expect(status).toBe(200);
      expect(json).toMatchObject({ model: 'fraud', version: production.version, score: s.score, decision: s.decision, features: s.features, provider: 'cpu', fallback: false });
      expect(json.score).toBe(await directScore(production, s.features));
      expect(typeof json.latencyMs).toBe('number');
    }
    // The same event again: the same vector, answered from the cache.
    const again = await post('/v1/predict/fraud', events.at(-1));
    expect(again.json).toMatchObject({ cached: true, score: stream.find((p) => p.event_id === events.at(-1)!.event_id)!.score });
    // A new event (not in the store yet) is scored as if it arrived now: its own row counts it.
    const fresh = transaction(99, { account_id: 'P1', amount: 777, ts: Date.now() });
    const answer = await post('/v1/predict/fraud', fresh);
    expect(answer.status).toBe(200);
    expect((answer.json.features as Record<string, number>).txn_count_24h).toBe(events.length + 1);
    expect(answer.json.score).toBe(await directScore(production, answer.json.features as Record<string, number>));
    // Online answers are on predictions.fraud too, marked online.
    const online = await waitFor(predictions, (p) => p.some((x) => x.origin === 'online' && x.event_id === fresh.event_id), { what: 'online prediction on Kafka' });
    expect(online.find((x) => x.origin === 'online' && x.event_id === fresh.event_id)).toMatchObject({ source_topic: 'online', score: answer.json.score });
  });

  it('answers 404 FABRIC_MODEL_UNKNOWN for an unknown model or version and 400 naming the field of an invalid event', async () => {
    expect(await post('/v1/predict/nope', transaction(1))).toMatchObject({ status: 404, json: { error: { code: 'FABRIC_MODEL_UNKNOWN' } } });
    expect(await post('/v1/predict/fraud@0.0.0-none', transaction(1))).toMatchObject({ status: 404, json: { error: { code: 'FABRIC_MODEL_UNKNOWN' } } });
    const bad = await post('/v1/predict/fraud', transaction(2, { amount: 'a lot' }));
    expect(bad.status).toBe(400);
    expect(bad.json).toMatchObject({ error: { code: 'FABRIC_EVENT_INVALID' } });
    expect(String((bad.json.error as { message: string }).message)).toContain('amount');
  });
});

describe('promotion: hot swap while events flow', () => {
  it('switches every instance to the promoted version within seconds, with no event unscored or scored twice', async () => {
    const before = (await admin.entries()).find((e) => e.name === 'fraud' && e.stage === 'production')!;
    const next = `${before.version}-next`;
    await admin.register({ artifact: FRAUD_DIR, version: next, registeredBy: 'it' });
    const sent: string[] = [];
    let stop = false;
    const flow = (async () => {
      for (let i = 0; !stop; i++) {
        const batch = Array.from({ length: 10 }, (_, k) => transaction(1000 + i * 10 + k, { account_id: `H${k}`, ts: Date.now() }));
        const r = await post('/v1/events/transactions', batch);
        if (r.status === 202) sent.push(...batch.map((e) => e.event_id as string));
        await new Promise((res) => setTimeout(res, 50));
      }
    })();
    await new Promise((res) => setTimeout(res, 1500));
    const promotedAt = Date.now();
    await admin.promote('fraud', next, 'production', 'it', 'hot swap test');
    // The instance follows: predictions by the new version appear within 10 s.
    await waitFor(predictions, (p) => p.some((x) => x.version === next && x.origin === 'stream'), { timeoutMs: 10_000, intervalMs: 250, what: `a prediction by ${next}` });
    const tookMs = Date.now() - promotedAt;
    expect(tookMs).toBeLessThan(10_000);
    await new Promise((res) => setTimeout(res, 1000));
    stop = true;
    await flow;
    const all = (await waitFor(predictions, (p) => sent.every((id) => p.some((x) => x.event_id === id)), { what: 'a prediction per sent event' })).filter((p) => p.origin === 'stream' && sent.includes(p.event_id));
    // Exactly one prediction per event, by one version, and once the new version scored, the old never again (per partition).
    expect(all.length).toBe(sent.length);
    expect(new Set(all.map((p) => p.event_id)).size).toBe(sent.length);
    expect(new Set(all.map((p) => p.version))).toEqual(new Set([before.version, next]));
    for (const partition of new Set(all.map((p) => p.source_partition))) {
      const versions = all.filter((p) => p.source_partition === partition).sort((x, y) => x.source_offset - y.source_offset).map((p) => p.version);
      const firstNew = versions.indexOf(next);
      if (firstNew >= 0) expect(versions.slice(firstNew).every((v) => v === next), `partition ${partition}: ${versions.join(',')}`).toBe(true);
    }
    const entries = await admin.entries();
    expect(entries.find((e) => e.version === before.version && e.name === 'fraud')!.stage).toBe('archived');
    expect(entries.find((e) => e.version === next && e.name === 'fraud')!.stage_history.at(-1)).toMatchObject({ from: 'none', to: 'production', by: 'it', reason: 'hot swap test' });
  });

  it('keeps the working version when the promoted one cannot be loaded, and reports it failed', async () => {
    const current = (await admin.entries()).find((e) => e.name === 'fraud' && e.stage === 'production')!;
    // An entry whose artifact is not in the store (as if written by another store): registration
    // without the load check, then a promotion the serving instances cannot follow.
    const broken: ModelVersion = { ...current, version: 'broken-1', stage: 'none', stage_history: [], artifact: { ...current.artifact, sha256: 'f'.repeat(64), uri: `store:sha256/${'f'.repeat(64)}`, files: [{ path: current.artifact.file, sha256: 'f'.repeat(64), size: 1 }] } };
    await unverified.write([broken]);
    await unverified.promote('fraud', 'broken-1', 'production', 'it', 'bad artifact');
    await waitFor(
      async () => Object.entries(await f.redis.hgetall(loadStatusKey(f.config))).filter(([k]) => k.startsWith('fraud@broken-1|')).map(([, v]) => JSON.parse(v) as { state: string; error: string }),
      (s) => s.some((x) => x.state === 'failed'),
      { what: 'a failed load report' },
    );
    const event = transaction(5000, { account_id: 'B1', ts: Date.now() });
    expect((await post('/v1/events/transactions', [event])).status).toBe(202);
    const p = await waitFor(predictions, (all) => all.some((x) => x.event_id === event.event_id), { what: 'the prediction of an event after the failed promotion' });
    expect(p.find((x) => x.event_id === event.event_id)).toMatchObject({ version: current.version, fallback: false });
    const predict = await post('/v1/predict/fraud', transaction(5001, { account_id: 'B1', ts: Date.now() }));
    expect(predict).toMatchObject({ status: 200, json: { version: current.version } });
  });
});

describe('POST /v1/predict faults', () => {
  it('answers a slow model with the fallback decision after the budget (PredictTimeout, 504), and a missing input under a fallback policy with features_missing', async () => {
    const { entry } = demoModel('fraud');
    const hanging = { key: 'fraud@slow', provider: 'cpu', score: () => new Promise<never>(() => undefined) } as unknown as ModelHandle;
    const models = { isRegistered: () => true, served: () => ({ entry, handle: hanging }), follow: async () => undefined, require: () => ({ entry, handle: hanging }), version: async () => ({ entry, handle: hanging }) } as unknown as LiveModels;
    const predictor = new OnlinePredictor({ rules: MODEL_DEFAULT_RULES, models, redis: f.redis, keyPrefix: f.config.redisKeyPrefix, timeoutMs: 50, cacheTtlSec: 0 });
    const started = performance.now();
    const err = await predictor.predict('fraud', transaction(7000, { account_id: 'S1', ts: Date.now() })).then(() => null, (e: unknown) => e);
    expect(err).toBeInstanceOf(PredictTimeout);
    expect(performance.now() - started).toBeLessThan(5_000);
    const timeout = err as PredictTimeout;
    expect(timeout.status).toBe(504);
    expect(timeout.result).toMatchObject({ score: null, decision: 'review', reasons: ['fallback:model_timeout'], fallback: true, provider: 'none' });
    expect(timeout.result.features.amount).toBe(7010);

    // A signature whose seconds_since_last_txn falls back when missing: the first event of an account has none.
    const strict = { ...entry, signature: { ...entry.signature, inputs: entry.signature.inputs.map((i) => (i.name === 'seconds_since_last_txn' ? { ...i, missing: 'fallback' as const, default_value: null } : i)) } };
    const strictModels = { ...models, served: () => ({ entry: strict, handle: hanging }) } as unknown as LiveModels;
    const missing = await new OnlinePredictor({ rules: MODEL_DEFAULT_RULES, models: strictModels, redis: f.redis, keyPrefix: f.config.redisKeyPrefix, timeoutMs: 50, cacheTtlSec: 0 }).predict('fraud', transaction(7001, { account_id: `new-${Date.now()}`, ts: Date.now() }));
    expect(missing).toMatchObject({ score: null, decision: 'review', reasons: ['fallback:features_missing'], fallback: true });
    expect(missing.features.seconds_since_last_txn).toBeNull();
  });
});

describe('fabric models (the CLI an operator runs)', () => {
  it('registers a bare model file under a new version (signature inherited), promotes it, and lists and shows it as JSON', async () => {
    const env = { ...process.env, FABRIC_TOPIC_PREFIX: f.config.topicPrefix, FABRIC_REDIS_PREFIX: f.config.redisKeyPrefix, FABRIC_CLICKHOUSE_DATABASE: f.config.clickhouseDatabase, FABRIC_LOG_LEVEL: 'warn' };
    const cli = async (...args: string[]): Promise<unknown> => JSON.parse((await execFileP('npx', ['tsx', 'app/cli/main.ts', 'models', ...args, '--json'], { env, timeout: 120_000 })).stdout);
    const bare = join(work, 'bare');
    await import('node:fs/promises').then((fs) => fs.mkdir(bare, { recursive: true }));
    await copyFile(join(FRAUD_DIR, 'model.onnx'), join(bare, 'fraud-v3.onnx'));
    const registered = (await cli('register', '--name', 'fraud', '--version', '3.0.0', '--artifact', join(bare, 'fraud-v3.onnx'))) as ModelVersion & { created: boolean };
    expect(registered).toMatchObject({ name: 'fraud', version: '3.0.0', stage: 'none', created: true, task: 'fraud' });
    expect(registered.signature.inputs.map((i) => i.name)).toEqual(JSON.parse(await readFile(join(FRAUD_DIR, 'model.json'), 'utf8')).inputs);
    // Stored under its bytes' address as model.onnx: the same artifact as 1.0.0's.
    expect(registered.artifact).toMatchObject({ file: 'model.onnx', sha256: JSON.parse(await readFile(join(FRAUD_DIR, 'model.json'), 'utf8')).sha256 });
    const changes = (await cli('promote', 'fraud@3.0.0', '--to', 'production', '--reason', 'cli test')) as ModelVersion[];
    expect(changes.map((c) => [c.version, c.stage])).toContainEqual(['3.0.0', 'production']);
    const list = (await cli('list')) as (ModelVersion & { load: string; serving: boolean })[];
    expect(list.filter((e) => e.name === 'fraud' && e.stage === 'production').map((e) => e.version)).toEqual(['3.0.0']);
    expect(list.find((e) => e.name === 'fraud' && e.version === 'broken-1')).toMatchObject({ load: 'failed' });
    const shown = (await cli('show', 'fraud@3.0.0')) as ModelVersion;
    expect(shown.stage_history.at(-1)).toMatchObject({ from: 'none', to: 'production', reason: 'cli test' });
    // The CLI refuses bad input with a one-line reason and a non-zero exit.
    const bad = await execFileP('npx', ['tsx', 'app/cli/main.ts', 'models', 'promote', 'fraud@9.9.9', '--to', 'production'], { env, timeout: 60_000 }).then(() => null, (e: { code: number; stderr: string }) => e);
    expect(bad?.code).not.toBe(0);
    expect(bad?.stderr).toMatch(/FABRIC_MODEL_UNKNOWN.*fraud@9\.9\.9 is not registered/);
  });
});
