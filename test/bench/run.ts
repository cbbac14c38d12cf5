/**
 * `npm run bench`: side-by-side pairs, ours vs a reference on the same broker, data and machine,
 * measured back to back (reference, ours, reference, ours, ...), median of the repetitions.
 *
 *   1. gateway ingest (HTTP, acks=all)        vs kcat -P of the same events' Avro bytes
 *   2. BatchingProducer alone                 vs kcat -P
 *   3. no-op kafkajs eachBatch consumer       vs kcat -C
 *   4. end-to-end latency to predictions      vs latency to the input topic (the Kafka hop floor)
 *
 * Prints a Markdown table and writes the same data to bench-results.json at the repository root.
 * Every run uses its own topic prefix (bench-<timestamp>.) and deletes its topics at the end.
 * `--quick` runs smaller sizes (for working on the harness itself).
 */
import os from 'node:os';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { pino } from 'pino';
import type { Admin, Kafka } from 'kafkajs';
import { loadConfig, prefixed, type FabricConfig } from '../../topology/config.js';
import { messageOf } from '../../topology/errors.js';
import { createKafka } from '../../topology/runtime/kafka.js';
import type { Logger } from '../../topology/runtime/log.js';
import { startFabric, type FabricHandle } from '../../app/fabric.js';
import { stackStatus, stackUp } from '../../deploy/stack.js';
import { AvroSerde } from '../../schemas/serde.js';
import { loadAvroSchema } from '../../schemas/catalog.js';
import type { Transaction } from '../../schemas/types.generated.js';
import { encodeEvents, makeEvents, writeKcatInput, type KcatInput } from './data.js';
import { kcatProduce, kcatVersion } from './kcat.js';
import { HttpLoadClient } from './http-client.js';
import { gatewaySample, gatewayWarmup, kafkajsConsumeSample, kcatConsumeSample, kcatProduceSample, ProducerBench, topicEnd, type GatewayContext, type ProduceContext, type Sample } from './throughput.js';
import { runLatency, type LatencyResult } from './latency.js';
import { cleanupRun, type CleanupReport } from './cleanup.js';
import { formatNumber, formatRatio, markdownTable, median } from './stats.js';

const quick = process.argv.includes('--quick');
const SIZES = quick
  ? { events: 20_000, consumeCopies: 2, repetitions: 3, warmupRequests: 100, e2eSec: 5, e2eWarmupSec: 1 }
  : { events: 100_000, consumeCopies: 2, repetitions: 5, warmupRequests: 400, e2eSec: 20, e2eWarmupSec: 2 };
const BATCH = 50;
const HTTP_IN_FLIGHT = 8;
/** A second gateway measurement with more requests in flight: separates client concurrency from gateway cost. */
const HTTP_IN_FLIGHT_HIGH = 64;
const PRODUCER_WINDOW = 400;
const E2E_RATE = 200;
const E2E_TICK_MS = 50;
const SEED = 20_250_101;
const API_KEY = 'dev-key';
const RESULTS_FILE = fileURLToPath(new URL('../../bench-results.json', import.meta.url));

interface Row {
  readonly id: string;
  readonly benchmark: string;
  readonly unit: string;
  readonly reference_name: string;
  /** higher: throughput (ratio > 1 means ours is faster); lower: latency (ratio = times the reference). */
  readonly better: 'higher' | 'lower';
  ours: number | null;
  reference: number | null;
  ratio: number | null;
  samples: { ours: Sample[] | number[]; reference: Sample[] | number[] };
  notes: string[];
  error?: string;
}

function row(id: string, benchmark: string, unit: string, reference_name: string, better: 'higher' | 'lower'): Row {
  return { id, benchmark, unit, reference_name, better, ours: null, reference: null, ratio: null, samples: { ours: [], reference: [] }, notes: [] };
}

const progress = (line: string): void => void process.stderr.write(`bench: ${line}\n`);

function die(reason: string): never {
  process.stderr.write(`bench: ${reason.split('\n')[0]}\n`);
  process.exit(1);
}

async function ensureStack(config: FabricConfig): Promise<void> {
  const down = (await stackStatus(config)).filter((s) => !s.up);
  if (down.length === 0) return;
  progress(`stack: ${down.map((s) => `${s.name} down (${s.detail})`).join(', ')}; running stackUp`);
  try {
    await stackUp(config, (line) => progress(`stack: ${line}`));
  } catch (err) {
    die(`local stack cannot be reached: ${messageOf(err)}`);
  }
  const still = (await stackStatus(config)).filter((s) => !s.up);
  if (still.length > 0) die(`local stack cannot be reached: ${still.map((s) => `${s.name} at ${s.address}: ${s.detail}`).join('; ')}`);
}

function finish(r: Row, ours: Sample[], reference: Sample[]): void {
  r.samples = { ours, reference };
  r.ours = median(ours.map((s) => s.rate));
  r.reference = median(reference.map((s) => s.rate));
  r.ratio = r.ours / r.reference;
}

async function attempt(r: Row, body: () => Promise<void>): Promise<void> {
  try {
    await body();
  } catch (err) {
    r.error = messageOf(err);
    progress(`${r.id} failed: ${r.error}`);
  }
}

interface ThroughputSetup {
  readonly kafka: Kafka;
  readonly admin: Admin;
  readonly topic: string;
  readonly kcatInput: KcatInput;
  readonly producer: ProducerBench;
  readonly fabric: FabricHandle;
}

async function throughputPairs(config: FabricConfig, log: Logger, client: HttpLoadClient, runId: string, tmp: string, rows: Row[]): Promise<void> {
  const [gw, gwHigh, prod, prodNarrow, cons] = rows as [Row, Row, Row, Row, Row];
  progress('throughput: starting the gateway (no processors) and applying the topology');
  const fabric = await startFabric(config, log, { processors: [] });
  let setup: ThroughputSetup | null = null;
  try {
    const kafka = createKafka(config, log, 'bench');
    const admin = kafka.admin();
    await admin.connect();
    const topic = prefixed(config, 'events.transactions');
    const serde = new AvroSerde({ url: config.registryUrl });
    const writer = await serde.writer<Transaction>(`${topic}-value`, loadAvroSchema('transaction'));
    progress(`throughput: generating and encoding ${formatNumber(SIZES.events)} transactions`);
    const data = makeEvents({ seed: SEED, count: SIZES.events, runId, batchSize: BATCH });
    const encoded = encodeEvents(data.events, writer);
    const kcatInput = await writeKcatInput(join(tmp, 'events.bin'), encoded);
    await client.load('events', data.bodies);
    const producer = new ProducerBench(kafka, config, log, topic, encoded);
    setup = { kafka, admin, topic, kcatInput, producer, fabric };
    const base: ProduceContext = { config, admin, topic, kcatInput };
    const gctx: GatewayContext = { ...base, client, bodiesKey: 'events', url: `http://127.0.0.1:${fabric.gatewayPort}/v1/events/transactions`, apiKey: API_KEY, concurrency: HTTP_IN_FLIGHT, events: data.events.length };
    const avgBytes = encoded.reduce((s, e) => s + e.value.length, 0) / encoded.length;
    const avgBody = data.bodies.reduce((s, b) => s + b.length, 0) / data.bodies.length;
    const facts = `${formatNumber(SIZES.events)} events, Avro ${avgBytes.toFixed(0)} B/event, JSON body ${formatNumber(avgBody / 1024, 1)} KiB/request`;

    await attempt(gw, async () => {
      progress('1/4 gateway ingest vs kcat: warm-up');
      await gatewayWarmup(gctx, SIZES.warmupRequests);
      await kcatProduceSample(base);
      await gatewayWarmup({ ...gctx, concurrency: HTTP_IN_FLIGHT_HIGH }, SIZES.warmupRequests);
      const ours: Sample[] = [];
      const high: Sample[] = [];
      const ref: Sample[] = [];
      for (let i = 0; i < SIZES.repetitions; i++) {
        ref.push(await kcatProduceSample(base));
        ours.push(await gatewaySample(gctx));
        high.push(await gatewaySample(gctx, HTTP_IN_FLIGHT_HIGH));
        progress(`1/4 rep ${i + 1}: kcat ${formatNumber(ref.at(-1)!.rate)}/s, gateway ${formatNumber(ours.at(-1)!.rate)}/s, gateway at ${HTTP_IN_FLIGHT_HIGH} in flight ${formatNumber(high.at(-1)!.rate)}/s`);
      }
      finish(gw, ours, ref);
      finish(gwHigh, high, ref);
      gw.notes.push(facts);
      gwHigh.notes.push('same kcat samples as the row above (measured in the same alternation)');
    });

    await attempt(prod, async () => {
      progress('2/4 BatchingProducer vs kcat: warm-up');
      await producer.start();
      await producer.run(BATCH, PRODUCER_WINDOW, Math.min(encoded.length, SIZES.warmupRequests * BATCH));
      const wide: Sample[] = [];
      const narrow: Sample[] = [];
      const ref: Sample[] = [];
      for (let i = 0; i < SIZES.repetitions; i++) {
        ref.push(await kcatProduceSample(base));
        wide.push(await producer.sample(base, BATCH, PRODUCER_WINDOW));
        narrow.push(await producer.sample(base, BATCH, HTTP_IN_FLIGHT));
        progress(`2/4 rep ${i + 1}: kcat ${formatNumber(ref.at(-1)!.rate)}/s, producer ${formatNumber(wide.at(-1)!.rate)}/s, producer at 8x50 ${formatNumber(narrow.at(-1)!.rate)}/s`);
      }
      finish(prod, wide, ref);
      finish(prodNarrow, narrow, ref);
      prodNarrow.notes.push('same kcat samples as the row above (measured in the same alternation)');
      prod.notes.push(`linger ${config.producerLingerMs} ms, ${config.producerBatchSize} messages/request, one request in flight`);
    });

    await attempt(cons, async () => {
      const consumeTopic = prefixed(config, 'bench.consume');
      await admin.createTopics({ topics: [{ topic: consumeTopic, numPartitions: 3, replicationFactor: -1 }], waitForLeaders: true });
      for (let i = 0; i < SIZES.consumeCopies; i++) await kcatProduce(config.kafkaBrokers, consumeTopic, kcatInput);
      const expected = SIZES.consumeCopies * kcatInput.count;
      const size = await topicEnd(admin, consumeTopic);
      if (size !== expected) throw new Error(`${consumeTopic} holds ${size} messages, expected ${expected}`);
      progress(`3/4 consumer vs kcat: ${formatNumber(expected)} messages, 3 partitions`);
      await kcatConsumeSample(config.kafkaBrokers, consumeTopic, expected);
      await kafkajsConsumeSample(kafka, prefixed(config, 'bench.consume.warmup'), consumeTopic, expected);
      const ours: Sample[] = [];
      const ref: Sample[] = [];
      for (let i = 0; i < SIZES.repetitions; i++) {
        ref.push(await kcatConsumeSample(config.kafkaBrokers, consumeTopic, expected));
        ours.push(await kafkajsConsumeSample(kafka, prefixed(config, `bench.consume.${i}`), consumeTopic, expected));
        progress(`3/4 rep ${i + 1}: kcat ${formatNumber(ref.at(-1)!.rate)}/s, kafkajs ${formatNumber(ours.at(-1)!.rate)}/s (${ours.at(-1)!.note ?? ''})`);
      }
      finish(cons, ours, ref);
      cons.notes.push(`${formatNumber(expected)} messages; times include connect and partition assignment on both sides`);
    });
  } finally {
    await setup?.producer.close().catch(() => undefined);
    await setup?.admin.disconnect().catch(() => undefined);
    await fabric.stop();
  }
}

function latencyRows(result: LatencyResult | null, error: string | null): Row[] {
  const name = 'e2e latency, send → prediction (ref: send → input topic)';
  const rows: Row[] = [
    row('e2e_p50', `${name} p50`, 'ms', 'input topic', 'lower'),
    row('e2e_p99', `${name} p99`, 'ms', 'input topic', 'lower'),
    row('e2e_max', `${name} max`, 'ms', 'input topic', 'lower'),
    row('e2e_received', 'e2e events received (of sent)', 'events', 'input topic', 'higher'),
  ];
  if (!result) {
    for (const r of rows) r.error = error ?? 'not run';
    return rows;
  }
  const set = (r: Row, ours: number, ref: number): void => {
    r.ours = ours;
    r.reference = ref;
    r.ratio = ours / ref;
  };
  set(rows[0]!, result.predictions.p50, result.input.p50);
  set(rows[1]!, result.predictions.p99, result.input.p99);
  set(rows[2]!, result.predictions.max, result.input.max);
  set(rows[3]!, result.predictions.received, result.input.received);
  if (result.predictions.received !== result.sent) rows[3]!.error = `only ${result.predictions.received} of ${result.sent} predictions arrived`;
  if (result.accepted !== result.sent) rows[3]!.error = `the gateway accepted ${result.accepted} of ${result.sent} events: ${result.requestErrors.join(' | ')}`;
  rows[0]!.notes.push(`${result.sent} events at ${result.ratePerSec}/s for ${result.durationSec} s (achieved ${result.achievedRate.toFixed(0)}/s), ${Math.round((result.ratePerSec * E2E_TICK_MS) / 1000)} per request every ${E2E_TICK_MS} ms`);
  return rows;
}

function cell(r: Row, which: 'ours' | 'reference'): string {
  const v = r[which];
  if (v === null) return r.error ? 'failed' : 'n/a';
  if (r.id === 'e2e_received') return `${formatNumber(v)}`;
  return r.unit === 'ms' ? `${formatNumber(v, 1)} ms` : `${formatNumber(v)} ${r.unit}`;
}

async function main(): Promise<void> {
  const started = performance.now();
  const date = new Date();
  const runId = date.toISOString().replace(/[-:TZ]/g, '').replace('.', '');
  const prefix = `bench-${runId}.`;
  let base: FabricConfig;
  try {
    base = loadConfig();
  } catch (err) {
    die(messageOf(err));
  }
  const redisPrefix = `${base.redisKeyPrefix}bench-${runId}:`;
  const common = { gatewayPort: 0, gatewayHost: '127.0.0.1', logLevel: 'warn', redisKeyPrefix: redisPrefix, clickhouseDatabase: `${base.clickhouseDatabase}_bench` } as const;
  const tpConfig = loadConfig(undefined, { ...common, topicPrefix: `${prefix}tp.` });
  const e2eConfig = loadConfig(undefined, { ...common, topicPrefix: `${prefix}e2e.` });
  const log: Logger = pino({ level: tpConfig.logLevel, base: { bench: runId }, timestamp: pino.stdTimeFunctions.isoTime }, pino.destination(2));

  await ensureStack(base);
  const kcat = await kcatVersion();
  if (!kcat) die('kcat is not installed (stackUp installs it with apt-get: run `fabric stack up`)');
  progress(`run ${runId}, topic prefix ${prefix}${quick ? ' (quick sizes)' : ''}`);

  const tmp = await mkdtemp(join(os.tmpdir(), `bench-${runId}-`));
  const client = new HttpLoadClient();
  let cleaned: Promise<CleanupReport> | null = null;
  const cleanup = (): Promise<CleanupReport> =>
    (cleaned ??= (async () => {
      await client.close().catch(() => undefined);
      await rm(tmp, { recursive: true, force: true }).catch(() => undefined);
      return cleanupRun(base, log, prefix, redisPrefix);
    })());
  process.once('SIGINT', () => {
    progress('interrupted: cleaning up');
    void cleanup().finally(() => process.exit(130));
  });

  const rows: Row[] = [
    row('gateway_ingest', `gateway ingest: HTTP POST ${BATCH}/request, ${HTTP_IN_FLIGHT} in flight, acks=all`, 'events/s', 'kcat -P acks=all', 'higher'),
    row('gateway_ingest_high', `gateway ingest: same, ${HTTP_IN_FLIGHT_HIGH} in flight`, 'events/s', 'kcat -P acks=all', 'higher'),
    row('producer', `producer alone: BatchingProducer, ${BATCH}-message sends, ${PRODUCER_WINDOW} in flight`, 'msg/s', 'kcat -P acks=all', 'higher'),
    row('producer_gateway_concurrency', `producer alone at the gateway's concurrency (${HTTP_IN_FLIGHT} × ${BATCH})`, 'msg/s', 'kcat -P acks=all', 'higher'),
    row('consumer', 'consumer: kafkajs no-op eachBatch, new group, from beginning', 'msg/s', 'kcat -C -c N', 'higher'),
  ];
  let latency: LatencyResult | null = null;
  let latencyError: string | null = null;
  let cleanupReport: CleanupReport | null = null;
  try {
    try {
      await throughputPairs(tpConfig, log, client, runId, tmp, rows);
    } catch (err) {
      for (const r of rows) if (r.ours === null && !r.error) r.error = messageOf(err);
      progress(`throughput pairs failed: ${messageOf(err)}`);
    }
    try {
      progress('4/4 end-to-end latency');
      latency = await runLatency({ config: e2eConfig, log, client, runId, seed: SEED + 1, apiKey: API_KEY, ratePerSec: E2E_RATE, durationSec: SIZES.e2eSec, tickMs: E2E_TICK_MS, warmupSec: SIZES.e2eWarmupSec, progress });
    } catch (err) {
      latencyError = messageOf(err);
      progress(`e2e latency failed: ${latencyError}`);
    }
  } finally {
    progress('cleaning up (topics, groups, subjects, Redis keys)');
    cleanupReport = await cleanup();
  }
  rows.push(...latencyRows(latency, latencyError));

  const durationSec = (performance.now() - started) / 1000;
  const cpus = os.cpus();
  const machine = {
    cores: cpus.length,
    cpu: cpus[0]?.model.trim() ?? 'unknown',
    memoryGiB: Number((os.totalmem() / 2 ** 30).toFixed(1)),
    node: process.version,
    platform: `${os.platform()} ${os.release()} ${os.arch()}`,
    kcat,
  };

  const table = markdownTable(
    ['benchmark', 'ours', 'reference', 'ratio'],
    rows.map((r) => [r.benchmark, cell(r, 'ours'), `${cell(r, 'reference')} (${r.reference_name})`, r.error ? `failed: ${r.error.slice(0, 80)}` : formatRatio(r.ratio ?? Number.NaN)]),
  );
  const lines = [
    '',
    `Benchmark ${date.toISOString()} — ${machine.cores} cores (${machine.cpu}), ${machine.memoryGiB} GiB, Node ${machine.node}, ${machine.platform}, ${kcat}`,
    `Median of ${SIZES.repetitions} back-to-back repetitions (reference then ours) per throughput pair; run ${runId}; total ${durationSec.toFixed(0)} s.`,
    '',
    table,
    '',
    'ratio = ours / reference. Throughput rows: > 1 means faster than kcat. Latency rows: how many times the raw Kafka hop (send → visible on the input topic).',
  ];
  for (const r of rows) for (const n of r.notes) lines.push(`- ${r.id}: ${n}`);
  for (const r of rows.slice(0, 5)) {
    if (r.ours === null) continue;
    const fmt = (s: Sample[] | number[]): string => (s as Sample[]).map((x) => formatNumber(x.rate)).join(', ');
    lines.push(`- ${r.id} samples/s: ours [${fmt(r.samples.ours)}], reference [${fmt(r.samples.reference)}]`);
  }
  if (latency) {
    const d = (x: { p50: number; p99: number; max: number }): string => `p50 ${x.p50.toFixed(1)} / p99 ${x.p99.toFixed(1)} / max ${x.max.toFixed(1)} ms`;
    lines.push(`- e2e stages (send → ...): gateway 202 (acks=all) ${d(latency.gatewayAck)}; input topic ${d(latency.input)}; features.account ${d(latency.features)} (${latency.features.received} received); predictions.fraud ${d(latency.predictions)}`);
    lines.push(`- e2e predictions with a fallback decision: ${latency.fallbacks} of ${latency.predictions.received}`);
    const shares = latency.processors.map((p) => `${p.processor} ${p.meanBatchMs.toFixed(1)} ms (${p.batches} batches, ${p.recordsPerBatch.toFixed(1)} records each)`).join('; ');
    lines.push(`- e2e processor batch start → commit, mean: ${shares}; model run ${latency.meanModelRunMs.toFixed(2)} ms mean over ${latency.modelRuns} runs`);
  }
  if (cleanupReport) {
    lines.push(`- cleanup: ${cleanupReport.topics} topics, ${cleanupReport.groups} consumer groups, ${cleanupReport.subjects} subjects, ${cleanupReport.redisKeys} Redis keys deleted${cleanupReport.errors.length ? `; problems: ${cleanupReport.errors.join('; ')}` : ''}`);
  }
  process.stdout.write(`${lines.join('\n')}\n`);

  const json = {
    date: date.toISOString(),
    runId,
    topicPrefix: prefix,
    quick,
    durationSec: Number(durationSec.toFixed(1)),
    machine,
    sizes: { ...SIZES, batch: BATCH, httpInFlight: HTTP_IN_FLIGHT, producerWindow: PRODUCER_WINDOW, e2eRatePerSec: E2E_RATE, e2eTickMs: E2E_TICK_MS },
    rows,
    latency,
    cleanup: cleanupReport,
  };
  await writeFile(RESULTS_FILE, `${JSON.stringify(json, null, 2)}\n`);
  progress(`results written to ${RESULTS_FILE}`);
  const failed = rows.filter((r) => r.error);
  if (failed.length > 0) die(`${failed.length} benchmark row(s) failed: ${failed.map((r) => `${r.id}: ${r.error}`).join('; ')}`);
  process.exit(0);
}

main().catch((err: unknown) => die(`failed: ${messageOf(err)}`));
