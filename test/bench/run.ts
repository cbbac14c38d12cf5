/**
 * `npm run bench`: side-by-side pairs, ours vs a reference on the same broker, data and machine,
 * measured back to back (reference, ours, reference, ours, ...), median of the repetitions.
 *
 *   1. gateway ingest (HTTP, acks=all)        vs kcat -P of the same events' Avro bytes
 *   2. BatchingProducer alone                 vs kcat -P
 *   3. no-op kafkajs eachBatch consumer       vs kcat -C
 *   4. features→scoring processing, exactly-once vs the same chain at-least-once (the cost of transactions)
 *   5. end-to-end latency to predictions at 200 and at 2,000 events/s
 *                                             vs latency to the input topic (the Kafka hop floor), same run
 *   6. features-user processor (user features over events.interactions, repartition included)
 *                                             vs a no-op kafkajs eachBatch consumer of the same topic
 *   7. online read of 64 entities (readOnlineFeatures) p50 and p99
 *                                             vs redis-benchmark -P 64 sending the same EVALSHA
 *   8. training set for 100,000 labels (buildTrainingSet, end to end)
 *                                             vs Feast get_historical_features on the same history
 *   9. serving (test/bench/serving.ts): ServingEngine rows/s at batches of 1, 8, 32, 64 vs a bare
 *      onnxruntime-node session.run loop; sustained single-row rows/s at p95 <= 5 ms, micro-batching
 *      (maxBatch 32) vs none (maxBatch 1); POST /v1/predict/fraud latency at 200/s (client-side and
 *      server-reported) vs the floor (one Redis window read + a bare session.run), and its p99 vs the budget
 *
 *  10. ledger (test/bench/ledger.ts): tracking sink rows/s vs clickhouse-client inserting the same rows
 *      from a JSONEachRow file (same block size); rule evaluation per prediction, a 20-rule set vs the
 *      defaults; frequency-cap check p50/p99 vs a Redis PING
 *
 *  11. experiments (test/bench/experiments.ts): scoring processor events/s under a 20% A/B split, and under
 *      the split plus a shadow version, vs the same batches with no experiment
 *
 *  12. monitoring (test/bench/evidently.ts, monitoring.ts): window metrics over 1M rows vs Evidently's data
 *      drift preset on the same data (venv via scripts/setup-peer-venv.sh evidently); drift's time per event (both stages, every fraud input and
 *      the score) as a share of the scoring path's time per event, same predictions, alternated

 * Prints a Markdown table and writes the same data to bench-results.json at the repository root.
 * Every run uses its own topic prefix (bench-<timestamp>.) and deletes its topics at the end (the
 * features pairs' ClickHouse database too).
 * `--quick` runs smaller sizes (for working on the harness itself); `--only=throughput,processing,e2e,features,serving`
 * runs only the named sections (the others' rows are left out of the table and the JSON).
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
import { processingSample, type Guarantee, type ProcessingSample } from './processing.js';
import { cleanupRun, type CleanupReport } from './cleanup.js';
import { featuresProcessorPair, onlineReadPair, trainingSetPair, ONLINE_ENTITIES, type FeaturesContext, type FeaturesSizes, type RowSlot } from './features.js';
import { batchingGainPair, engineThroughputPair, predictLatencyPair, BATCHING_MAX_BATCH, BATCHING_P95_BOUND_MS, BATCHING_TARGET_RATIO, ENGINE_BATCH_SIZES, ENGINE_TARGET_BATCH, ENGINE_TARGET_RATIO, PREDICT_RATE, type BatchingSearch, type ServingContext, type ServingSizes } from './serving.js';
import { formatNumber, formatRatio, markdownTable, median } from './stats.js';
import { capCheckPair, ruleEvaluationPair, sinkPair, type LedgerSizes, type Pair } from './ledger.js';
import { experimentsPairs, type ExperimentSizes } from './experiments.js';
import { monitoringPair, type MonitoringSizes } from './monitoring.js';
import { evidentlyComparison, type EvidentlySizes } from './evidently.js';

const quick = process.argv.includes('--quick');
const SECTIONS = ['throughput', 'processing', 'e2e', 'features', 'serving', 'ledger', 'experiments', 'monitoring'] as const;
type Section = (typeof SECTIONS)[number];
const onlyArg = process.argv.find((a) => a.startsWith('--only='));
const only = new Set<string>(onlyArg ? onlyArg.slice('--only='.length).split(',').filter(Boolean) : SECTIONS);
const runs = (section: Section): boolean => only.has(section);
const SIZES = quick
  ? { events: 20_000, consumeCopies: 2, repetitions: 3, warmupRequests: 100, processingEvents: 4_000, processingRepetitions: 2, e2eSec: 5, e2eWarmupSec: 1 }
  : { events: 100_000, consumeCopies: 2, repetitions: 5, warmupRequests: 400, processingEvents: 50_000, processingRepetitions: 5, e2eSec: 20, e2eWarmupSec: 2 };
/** Sizes of the features section (test/bench/features.ts). */
const FEATURES_SIZES: FeaturesSizes = quick
  ? { featuresEvents: 10_000, featuresRepetitions: 2, onlineCalls: 400, onlineWarmupCalls: 100, onlineRepetitions: 2, trainingLabels: 20_000, trainingEvents: 20_000, trainingRepetitions: 2 }
  : { featuresEvents: 50_000, featuresRepetitions: 5, onlineCalls: 1_000, onlineWarmupCalls: 200, onlineRepetitions: 3, trainingLabels: 100_000, trainingEvents: 100_000, trainingRepetitions: 3 };
/** Sizes of the serving section (test/bench/serving.ts). */
const SERVING_SIZES: ServingSizes = quick
  ? { engineRows: 20_000, engineRepetitions: 2, batchingStepSec: 0.4, batchingBudgetSec: 6, batchingRefineSteps: 1, predictSec: 3, predictWarmupSec: 1, predictRepetitions: 2 }
  : { engineRows: 200_000, engineRepetitions: 3, batchingStepSec: 1.5, batchingBudgetSec: 25, batchingRefineSteps: 2, predictSec: 10, predictWarmupSec: 2, predictRepetitions: 3 };
/** Sizes of the ledger section (test/bench/ledger.ts). */
const LEDGER_SIZES: LedgerSizes = quick ? { sinkRows: 50_000, sinkBatch: 5_000, repetitions: 2, ruleEvaluations: 100_000, capChecks: 2_000 } : { sinkRows: 300_000, sinkBatch: 5_000, repetitions: 5, ruleEvaluations: 1_000_000, capChecks: 10_000 };
/** Sizes of the experiments section (test/bench/experiments.ts). */
const EXPERIMENT_SIZES: ExperimentSizes = quick ? { events: 10_000, batch: 500, repetitions: 2 } : { events: 50_000, batch: 500, repetitions: 5 };
/** Sizes of the monitoring section (test/bench/monitoring.ts). */
const MONITORING_SIZES: MonitoringSizes = quick ? { events: 10_000, batch: 500, repetitions: 2 } : { events: 50_000, batch: 500, repetitions: 5 };
const EVIDENTLY_SIZES: EvidentlySizes = quick ? { reference: 10_000, current: 100_000, windows: 10 } : { reference: 40_000, current: 1_000_000, windows: 10 };
const BATCH = 50;
const HTTP_IN_FLIGHT = 8;
/** A second gateway measurement with more requests in flight: separates client concurrency from gateway cost. */
const HTTP_IN_FLIGHT_HIGH = 64;
const PRODUCER_WINDOW = 400;
/** The e2e latency is measured at each of these rates, each in its own namespace and fabric. */
const E2E_RATES = [200, 2_000] as const;
const E2E_TICK_MS = 50;
/** Event-time rate of the pre-produced processing input (event times end about now). */
const PROCESSING_EVENT_RATE = 200;
const SEED = 20_250_101;
const API_KEY = 'dev-key';
const RESULTS_FILE = fileURLToPath(new URL('../../bench-results.json', import.meta.url));

interface Row extends RowSlot {
  readonly id: string;
  readonly benchmark: string;
  readonly unit: string;
  readonly reference_name: string;
  /**
   * higher: throughput (ratio > 1 means ours is faster); lower: latency (ratio = times the reference,
   * except where ratio_definition says 'reference/ours': the online-read rows, whose target is >= 0.4).
   */
  readonly better: 'higher' | 'lower';
  /** Set when the ratio is not the default ours / reference. */
  ratio_definition?: 'reference/ours';
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

type ConfigOverrides = Parameters<typeof loadConfig>[1];

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
      progress('1/5 gateway ingest vs kcat: warm-up');
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
        progress(`1/5 rep ${i + 1}: kcat ${formatNumber(ref.at(-1)!.rate)}/s, gateway ${formatNumber(ours.at(-1)!.rate)}/s, gateway at ${HTTP_IN_FLIGHT_HIGH} in flight ${formatNumber(high.at(-1)!.rate)}/s`);
      }
      finish(gw, ours, ref);
      finish(gwHigh, high, ref);
      gw.notes.push(facts);
      gwHigh.notes.push('same kcat samples as the row above (measured in the same alternation)');
    });

    await attempt(prod, async () => {
      progress('2/5 BatchingProducer vs kcat: warm-up');
      await producer.start();
      await producer.run(BATCH, PRODUCER_WINDOW, Math.min(encoded.length, SIZES.warmupRequests * BATCH));
      const wide: Sample[] = [];
      const narrow: Sample[] = [];
      const ref: Sample[] = [];
      for (let i = 0; i < SIZES.repetitions; i++) {
        ref.push(await kcatProduceSample(base));
        wide.push(await producer.sample(base, BATCH, PRODUCER_WINDOW));
        narrow.push(await producer.sample(base, BATCH, HTTP_IN_FLIGHT));
        progress(`2/5 rep ${i + 1}: kcat ${formatNumber(ref.at(-1)!.rate)}/s, producer ${formatNumber(wide.at(-1)!.rate)}/s, producer at 8x50 ${formatNumber(narrow.at(-1)!.rate)}/s`);
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
      progress(`3/5 consumer vs kcat: ${formatNumber(expected)} messages, 3 partitions`);
      await kcatConsumeSample(config.kafkaBrokers, consumeTopic, expected);
      await kafkajsConsumeSample(kafka, prefixed(config, 'bench.consume.warmup'), consumeTopic, expected);
      const ours: Sample[] = [];
      const ref: Sample[] = [];
      for (let i = 0; i < SIZES.repetitions; i++) {
        ref.push(await kcatConsumeSample(config.kafkaBrokers, consumeTopic, expected));
        ours.push(await kafkajsConsumeSample(kafka, prefixed(config, `bench.consume.${i}`), consumeTopic, expected));
        progress(`3/5 rep ${i + 1}: kcat ${formatNumber(ref.at(-1)!.rate)}/s, kafkajs ${formatNumber(ours.at(-1)!.rate)}/s (${ours.at(-1)!.note ?? ''})`);
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

/**
 * Exactly-once vs at-least-once on the features→scoring chain, alternating the two (at-least-once
 * first, as the reference goes first in every pair), each sample in a fresh namespace.
 */
async function processingPairs(common: ConfigOverrides, log: Logger, runId: string, prefix: string, redisPrefix: string, rows: Row[]): Promise<void> {
  const [total, steady] = rows as [Row, Row];
  const n = SIZES.processingEvents;
  const spanMs = Math.round((n / PROCESSING_EVENT_RATE) * 1000);
  // Event times end a minute before now: inside the allowed clock skew (future only) and the lateness.
  const data = makeEvents({ seed: SEED + 2, count: n, runId: `${runId}-proc`, batchSize: BATCH, ratePerSec: PROCESSING_EVENT_RATE, startTs: Date.now() - spanMs - 60_000 });
  const namespace = (i: number, guarantee: Guarantee): FabricConfig => {
    const tag = `proc${i}${guarantee === 'exactly_once' ? 'eos' : 'alos'}`;
    return loadConfig(undefined, { ...common, topicPrefix: `${prefix}${tag}.`, redisKeyPrefix: `${redisPrefix}${tag}:`, processingGuarantee: guarantee });
  };
  const ours: ProcessingSample[] = [];
  const ref: ProcessingSample[] = [];
  for (let i = 0; i < SIZES.processingRepetitions; i++) {
    ref.push(await processingSample(namespace(i, 'at_least_once'), log, data.events));
    ours.push(await processingSample(namespace(i, 'exactly_once'), log, data.events));
    const a = ref.at(-1)!;
    const e = ours.at(-1)!;
    progress(`4/5 rep ${i + 1}: at-least-once ${formatNumber(a.rate)}/s (${formatNumber(a.processingRate)}/s after a ${formatNumber(a.startupMs)} ms start), exactly-once ${formatNumber(e.rate)}/s (${formatNumber(e.processingRate)}/s after a ${formatNumber(e.startupMs)} ms start)`);
  }
  finish(total, ours, ref);
  steady.samples = { ours, reference: ref };
  steady.ours = median(ours.map((x) => x.processingRate));
  steady.reference = median(ref.map((x) => x.processingRate));
  steady.ratio = steady.ours / steady.reference;
  const ms = (xs: readonly ProcessingSample[], f: (x: ProcessingSample) => number): string => formatNumber(median(xs.map(f)));
  total.notes.push(
    `${formatNumber(n)} pre-produced transactions (3 partitions, event times spanning ${formatNumber(spanMs / 1000)} s and ending 1 min before the run), one fresh namespace per sample, at-least-once then exactly-once, ${SIZES.processingRepetitions} times; clock from startFabric (apply on, model load, group join) until the features group committed every input offset AND ${formatNumber(n)} predictions were visible to a read_committed kcat; afterwards every sample is checked: ${formatNumber(n)} predictions read_committed, one per input event`,
    `median start-up (startFabric until it resolved): exactly-once ${ms(ours, (x) => x.startupMs)} ms, at-least-once ${ms(ref, (x) => x.startupMs)} ms; offsets committed / predictions visible after ${ms(ours, (x) => x.offsetsCommittedMs)} / ${ms(ours, (x) => x.predictionsVisibleMs)} ms (exactly-once), ${ms(ref, (x) => x.offsetsCommittedMs)} / ${ms(ref, (x) => x.predictionsVisibleMs)} ms (at-least-once)`,
    `batches committed (median): exactly-once ${ms(ours, (x) => x.batches)} (one transaction each), at-least-once ${ms(ref, (x) => x.batches)}; a backlog is fetched in large batches (up to 1 MiB per partition), so the per-transaction cost is paid rarely here, far more often at low rates (see the e2e rows)`,
    `predictions.fraud end offsets (records + transaction markers, so not a record count): exactly-once ${ms(ours, (x) => x.predictionsEndOffsets)}, at-least-once ${ms(ref, (x) => x.predictionsEndOffsets)}, for ${formatNumber(n)} records read_committed in every sample; fallback predictions: exactly-once ${ms(ours, (x) => x.fallbacks)}, at-least-once ${ms(ref, (x) => x.fallbacks)}`,
  );
  steady.notes.push('same samples as the row above, clock from startFabric() resolved (consumer joined and running) instead of from the call: the processing alone, without start-up');
}

function latencyRows(rate: number, result: LatencyResult | null, error: string | null): Row[] {
  const name = `e2e latency at ${formatNumber(rate)} events/s, send → prediction read_committed (ref: send → input topic)`;
  // The 200/s rows keep the ids they had when only that rate was measured.
  const id = (suffix: string): string => (rate === 200 ? `e2e_${suffix}` : `e2e_${rate}_${suffix}`);
  const rows: Row[] = [
    row(id('p50'), `${name} p50`, 'ms', 'input topic', 'lower'),
    row(id('p99'), `${name} p99`, 'ms', 'input topic', 'lower'),
    row(id('max'), `${name} max`, 'ms', 'input topic', 'lower'),
    row(id('received'), `e2e at ${formatNumber(rate)} events/s: events received (of sent)`, 'events', 'input topic', 'higher'),
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
  if (result.duplicatePredictions > 0) rows[3]!.error = `${result.duplicatePredictions} duplicate predictions visible read_committed`;
  if (result.accepted !== result.sent) rows[3]!.error = `the gateway accepted ${result.accepted} of ${result.sent} events: ${result.requestErrors.join(' | ')}`;
  rows[0]!.notes.push(`${formatNumber(result.sent)} events at ${formatNumber(result.ratePerSec)}/s for ${result.durationSec} s (achieved ${result.achievedRate.toFixed(0)}/s), ${Math.round((result.ratePerSec * E2E_TICK_MS) / 1000)} per request every ${E2E_TICK_MS} ms, whole fabric (gateway and every processor) in one process`);
  return rows;
}

function cell(r: Row, which: 'ours' | 'reference'): string {
  const v = r[which];
  if (v === null) return r.error ? 'failed' : 'n/a';
  if (r.id.endsWith('_received')) return `${formatNumber(v)}`;
  if (r.id.startsWith('features_online') || r.id.startsWith('serving_predict')) return `${formatNumber(v, 3)} ms`;
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
  // One namespace (topics, groups, Redis state) per rate: each rate starts from an empty fabric.
  const e2eConfig = (rate: number): FabricConfig => loadConfig(undefined, { ...common, topicPrefix: `${prefix}e2e${rate}.`, redisKeyPrefix: `${redisPrefix}e2e${rate}:` });
  const log: Logger = pino({ level: tpConfig.logLevel, base: { bench: runId }, timestamp: pino.stdTimeFunctions.isoTime }, pino.destination(2));

  await ensureStack(base);
  const kcat = await kcatVersion();
  if (!kcat) die('kcat is not installed (stackUp installs it with apt-get: run `fabric stack up`)');
  progress(`run ${runId}, topic prefix ${prefix}${quick ? ' (quick sizes)' : ''}${onlyArg ? `, only ${[...only].join(', ')}` : ''}`);

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
  const processingRows: Row[] = [
    row('processing_eos', `features→scoring processing throughput, exactly-once vs at-least-once (${formatNumber(SIZES.processingEvents)} events, from start)`, 'records/s', 'same chain, at-least-once', 'higher'),
    row('processing_eos_after_start', 'features→scoring processing throughput, exactly-once vs at-least-once, after start-up', 'records/s', 'same chain, at-least-once', 'higher'),
  ];
  const featuresRows: Row[] = [
    row('features_processor', `features-user processor: ${formatNumber(FEATURES_SIZES.featuresEvents)} interactions → features.user + repartition (from start)`, 'events/s', 'no-op kafkajs eachBatch consumer', 'higher'),
    { ...row('features_online_read_p50', `online read of ${ONLINE_ENTITIES} entities (readOnlineFeatures) p50`, 'ms', `redis-benchmark -P ${ONLINE_ENTITIES} EVALSHA`, 'lower'), ratio_definition: 'reference/ours' },
    { ...row('features_online_read_p99', `online read of ${ONLINE_ENTITIES} entities (readOnlineFeatures) p99`, 'ms', `redis-benchmark -P ${ONLINE_ENTITIES} EVALSHA`, 'lower'), ratio_definition: 'reference/ours' },
    row('features_training_set', `training set: ${formatNumber(FEATURES_SIZES.trainingLabels)} labels, buildTrainingSet end to end`, 'rows/s', 'Feast get_historical_features', 'higher'),
  ];
  const cores = os.availableParallelism();
  const servingRows: Row[] = [
    ...ENGINE_BATCH_SIZES.map((b) =>
      row(`serving_engine_b${b}`, `serving engine throughput, requests of ${b} row${b === 1 ? '' : 's'} (${cores} workers, ${4 * cores} in flight)${b === ENGINE_TARGET_BATCH ? ` (target >= ${ENGINE_TARGET_RATIO})` : ''}`, 'rows/s', 'bare onnxruntime-node session.run, 1 thread', 'higher'),
    ),
    row('serving_batching_gain', `micro-batching: sustained single-row rows/s at p95 <= ${BATCHING_P95_BOUND_MS} ms, maxBatch ${BATCHING_MAX_BATCH} vs 1 (target >= ${BATCHING_TARGET_RATIO}x)`, 'rows/s', 'same engine, maxBatch 1', 'higher'),
    row('serving_predict_p50', `POST /v1/predict/fraud at ${PREDICT_RATE}/s, client-side p50`, 'ms', 'Redis window read + bare session.run', 'lower'),
    row('serving_predict_p99', `POST /v1/predict/fraud at ${PREDICT_RATE}/s, client-side p99`, 'ms', 'Redis window read + bare session.run', 'lower'),
    row('serving_predict_server_p50', `POST /v1/predict/fraud at ${PREDICT_RATE}/s, server-reported latencyMs p50`, 'ms', 'Redis window read + bare session.run', 'lower'),
    row('serving_predict_server_p99', `POST /v1/predict/fraud at ${PREDICT_RATE}/s, server-reported latencyMs p99`, 'ms', 'Redis window read + bare session.run', 'lower'),
    row('serving_predict_budget', 'POST /v1/predict/fraud client-side p99 vs its budget', 'ms', 'FABRIC_PREDICT_TIMEOUT_MS', 'lower'),
  ];
  const ledgerRows: Row[] = [
    row('ledger_sink', `tracking sink: ${formatNumber(LEDGER_SIZES.sinkRows)} prediction rows, inserts of ${formatNumber(LEDGER_SIZES.sinkBatch)} (target >= 0.5)`, 'rows/s', `clickhouse-client JSONEachRow from a file, blocks of ${formatNumber(LEDGER_SIZES.sinkBatch)}`, 'higher'),
    row('rules_eval', 'rule evaluation per prediction, 20-rule set (lists, 16 CEL conditions, thresholds, cap request)', 'ns', 'defaults: one threshold rule', 'lower'),
    row('rules_cap_p50', 'frequency-cap check (one Lua script) p50', 'ms', 'Redis PING, same client', 'lower'),
    row('rules_cap_p99', 'frequency-cap check (one Lua script) p99', 'ms', 'Redis PING, same client', 'lower'),
  ];
  const experimentRows: Row[] = [
    row('experiment_ab', `scoring under a 20% A/B split (two engine calls per batch of ${EXPERIMENT_SIZES.batch}), ${formatNumber(EXPERIMENT_SIZES.events)} events`, 'events/s', 'the same batches, no experiment', 'higher'),
    row('experiment_shadow', 'scoring under the split plus a shadow version (the shadow scores every event: its cost)', 'events/s', 'the same batches, no experiment', 'higher'),
  ];
  const monitoringRows: Row[] = [
    row('monitoring_vs_evidently', `drift window metrics (PSI, Jensen-Shannon, KS, Wasserstein per column) over ${formatNumber(EVIDENTLY_SIZES.current)} rows x 17 columns in ${EVIDENTLY_SIZES.windows} windows against a ${formatNumber(EVIDENTLY_SIZES.reference)}-row reference`, 'rows/s', "Evidently's DataDriftPreset (default tests) on the same windows, CSV reading excluded", 'higher'),
    row('monitoring_cost', `drift (per-partition panes of every fraud input and the score, then the merge and metrics) per event, ${formatNumber(MONITORING_SIZES.events)} predictions in batches of ${MONITORING_SIZES.batch}; ratio: its share of scoring (target <= 0.05)`, 'µs/event', 'the scoring path per event (features row, ONNX run per batch, rules)', 'lower'),
  ];
  let batchingSearches: BatchingSearch[] = [];
  const latency = new Map<number, LatencyResult>();
  const latencyErrors = new Map<number, string>();
  let cleanupReport: CleanupReport | null = null;
  try {
    if (runs('throughput')) {
      try {
        await throughputPairs(tpConfig, log, client, runId, tmp, rows);
      } catch (err) {
        for (const r of rows) if (r.ours === null && !r.error) r.error = messageOf(err);
        progress(`throughput pairs failed: ${messageOf(err)}`);
      }
    }
    if (runs('processing')) {
      progress(`4/5 features→scoring processing, exactly-once vs at-least-once: ${formatNumber(SIZES.processingEvents)} events, ${SIZES.processingRepetitions} alternations`);
      await attempt(processingRows[0]!, () => processingPairs(common, log, runId, prefix, redisPrefix, processingRows));
      if (processingRows[0]!.error) processingRows[1]!.error = processingRows[0]!.error;
    }
    if (runs('e2e')) {
      for (const rate of E2E_RATES) {
        try {
          progress(`5/5 end-to-end latency at ${formatNumber(rate)} events/s`);
          latency.set(rate, await runLatency({ config: e2eConfig(rate), log, client, runId, seed: SEED + 1, apiKey: API_KEY, ratePerSec: rate, durationSec: SIZES.e2eSec, tickMs: E2E_TICK_MS, warmupSec: SIZES.e2eWarmupSec, progress }));
        } catch (err) {
          latencyErrors.set(rate, messageOf(err));
          progress(`e2e latency at ${rate}/s failed: ${messageOf(err)}`);
        }
      }
    }
    if (runs('features')) {
      const [fp, p50, p99, ts] = featuresRows as [Row, Row, Row, Row];
      const fctx: FeaturesContext = { common, base, log, runId, prefix, redisPrefix, tmp, seed: SEED + 3, sizes: FEATURES_SIZES, progress };
      progress(`features 1/3 features-user processor vs a no-op consumer: ${formatNumber(FEATURES_SIZES.featuresEvents)} interactions, ${FEATURES_SIZES.featuresRepetitions} alternations`);
      await attempt(fp, () => featuresProcessorPair(fctx, fp));
      progress(`features 2/3 online read of ${ONLINE_ENTITIES} entities vs redis-benchmark: ${FEATURES_SIZES.onlineRepetitions} × ${formatNumber(FEATURES_SIZES.onlineCalls)} calls`);
      await attempt(p50, () => onlineReadPair(fctx, p50, p99));
      if (p50.error && !p99.error) p99.error = p50.error;
      progress(`features 3/3 training set vs Feast: ${formatNumber(FEATURES_SIZES.trainingLabels)} labels, ${FEATURES_SIZES.trainingRepetitions} alternations`);
      await attempt(ts, () => trainingSetPair(fctx, ts));
    }
    if (runs('serving')) {
      const engineRows = servingRows.slice(0, ENGINE_BATCH_SIZES.length);
      const [gain, p50, p99, serverP50, serverP99, budget] = servingRows.slice(ENGINE_BATCH_SIZES.length) as [Row, Row, Row, Row, Row, Row];
      const sctx: ServingContext = { common, base, log, runId, prefix, redisPrefix, seed: SEED + 4, apiKey: API_KEY, sizes: SERVING_SIZES, progress };
      progress(`serving 1/3 engine throughput vs bare onnxruntime-node: batches of ${ENGINE_BATCH_SIZES.join(', ')}, ${formatNumber(SERVING_SIZES.engineRows)} rows × ${SERVING_SIZES.engineRepetitions} alternations each`);
      await attempt(engineRows[0]!, () => engineThroughputPair(sctx, engineRows));
      if (engineRows[0]!.error) for (const r of engineRows) r.error ??= engineRows[0]!.error;
      progress(`serving 2/3 micro-batching: highest single-row rate with p95 <= ${BATCHING_P95_BOUND_MS} ms, maxBatch 1 then ${BATCHING_MAX_BATCH}`);
      await attempt(gain, async () => {
        batchingSearches = await batchingGainPair(sctx, gain);
      });
      progress(`serving 3/3 POST /v1/predict/fraud at ${PREDICT_RATE}/s vs the floor: ${SERVING_SIZES.predictRepetitions} × ${SERVING_SIZES.predictSec} s each`);
      const predictRows = [p50, p99, serverP50, serverP99, budget];
      await attempt(p50, () => predictLatencyPair(sctx, { p50, p99, serverP50, serverP99, budget }));
      if (p50.error) for (const r of predictRows) r.error ??= p50.error;
    }
    if (runs('ledger')) {
      const [sink, evaluation, capP50, capP99] = ledgerRows as [Row, Row, Row, Row];
      const done = (r: Row, pair: Pair): void => {
        r.samples = { ours: pair.ours.map((rate) => ({ elapsedMs: 0, messages: 0, rate })), reference: pair.reference.map((rate) => ({ elapsedMs: 0, messages: 0, rate })) };
        r.ours = median(pair.ours);
        r.reference = median(pair.reference);
        r.ratio = r.ours / r.reference;
      };
      progress(`ledger 1/3 tracking sink vs clickhouse-client: ${formatNumber(LEDGER_SIZES.sinkRows)} rows × ${LEDGER_SIZES.repetitions}`);
      await attempt(sink, async () => done(sink, await sinkPair(base, `bench_${runId.replace(/\W/g, '_')}`, tmp, LEDGER_SIZES, progress)));
      progress('ledger 2/3 rule evaluation, 20 rules vs the defaults');
      await attempt(evaluation, async () => done(evaluation, ruleEvaluationPair(LEDGER_SIZES)));
      progress(`ledger 3/3 frequency-cap check vs PING: ${formatNumber(LEDGER_SIZES.capChecks)} calls`);
      await attempt(capP50, async () => {
        const { p50, p99 } = await capCheckPair(base, redisPrefix, LEDGER_SIZES);
        done(capP50, p50);
        done(capP99, p99);
      });
      if (capP50.error) capP99.error ??= capP50.error;
    }
    if (runs('experiments')) {
      const [ab, shadow] = experimentRows as [Row, Row];
      progress(`experiments: scoring with an A/B split, and with a shadow, vs none: ${formatNumber(EXPERIMENT_SIZES.events)} events × ${EXPERIMENT_SIZES.repetitions}`);
      await attempt(ab, async () => {
        const pairs = await experimentsPairs(EXPERIMENT_SIZES);
        for (const [r, pair] of [[ab, pairs.ab], [shadow, pairs.shadow]] as const) {
          r.samples = { ours: pair.ours.map((rate) => ({ elapsedMs: 0, messages: 0, rate })), reference: pair.reference.map((rate) => ({ elapsedMs: 0, messages: 0, rate })) };
          r.ours = median(pair.ours);
          r.reference = median(pair.reference);
          r.ratio = r.ours / r.reference;
        }
      });
      if (ab.error) shadow.error ??= ab.error;
    }
    if (runs('monitoring')) {
      const [vsEvidently, cost] = monitoringRows as [Row, Row];
      progress(`monitoring: window metrics vs Evidently's data drift preset: ${formatNumber(EVIDENTLY_SIZES.current)} rows`);
      await attempt(vsEvidently, async () => {
        const r = await evidentlyComparison(EVIDENTLY_SIZES);
        vsEvidently.ours = r.oursRowsPerSec;
        vsEvidently.reference = r.evidentlyRowsPerSec;
        vsEvidently.ratio = r.oursRowsPerSec / r.evidentlyRowsPerSec;
        vsEvidently.notes.push(`Evidently with PSI: ${formatNumber(r.evidentlyPsiRowsPerSec)} rows/s; PSI of the shifted columns in the last window, ours (reference deciles) vs Evidently's: ${Object.entries(r.psi).map(([c, v]) => `${c} ${v.ours.toFixed(3)} vs ${v.evidently.toFixed(3)}`).join(', ')}`);
      });
      progress(`monitoring: drift vs scoring per event: ${formatNumber(MONITORING_SIZES.events)} events × ${MONITORING_SIZES.repetitions}`);
      await attempt(cost, async () => {
        const pair = await monitoringPair(MONITORING_SIZES);
        cost.samples = { ours: pair.ours.map((rate) => ({ elapsedMs: 0, messages: 0, rate })), reference: pair.reference.map((rate) => ({ elapsedMs: 0, messages: 0, rate })) };
        cost.ours = median(pair.ours);
        cost.reference = median(pair.reference);
        cost.ratio = cost.ours / cost.reference;
      });
    }
  } finally {
    progress('cleaning up (topics, groups, subjects, Redis keys)');
    cleanupReport = await cleanup();
  }
  // Rows of sections left out with --only are not reported.
  if (!runs('throughput')) rows.length = 0;
  if (runs('processing')) rows.push(...processingRows);
  if (runs('e2e')) for (const rate of E2E_RATES) rows.push(...latencyRows(rate, latency.get(rate) ?? null, latencyErrors.get(rate) ?? null));
  if (runs('features')) rows.push(...featuresRows);
  if (runs('serving')) rows.push(...servingRows);
  if (runs('ledger')) rows.push(...ledgerRows);
  if (runs('experiments')) rows.push(...experimentRows);
  if (runs('monitoring')) rows.push(...monitoringRows);

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
    `Median of ${SIZES.repetitions} back-to-back repetitions (reference then ours) per throughput pair, ${SIZES.processingRepetitions} alternations (at-least-once then exactly-once) for the processing pair; run ${runId}; total ${durationSec.toFixed(0)} s.`,
    '',
    table,
    '',
    'ratio = ours / reference. Throughput rows: > 1 means faster than the reference (kcat; for the processing rows the same chain at-least-once, target >= 0.70). Latency rows: how many times the raw Kafka hop (send → visible on the input topic), measured in the same run at the same rate.',
  ];
  if (runs('features')) {
    lines.push(
      `Features rows: median of ${FEATURES_SIZES.featuresRepetitions} (processor), ${FEATURES_SIZES.onlineRepetitions} (online read) and ${FEATURES_SIZES.trainingRepetitions} (training set) back-to-back repetitions, reference first. The online-read rows are the exception to ratio = ours / reference: there ratio = reference / ours (redis-benchmark latency / ours), so higher is better and 1 is redis-benchmark's latency; target >= 0.4 (ratio_definition in the JSON).`,
    );
  }
  if (runs('serving')) {
    lines.push(
      `Serving rows: engine rows = median of ${SERVING_SIZES.engineRepetitions} back-to-back repetitions (bare session first), ratio = engine / bare (target >= ${ENGINE_TARGET_RATIO} at batch ${ENGINE_TARGET_BATCH}); micro-batching: highest offered single-row rate whose p95 stays <= ${BATCHING_P95_BOUND_MS} ms, ratio = maxBatch ${BATCHING_MAX_BATCH} / maxBatch 1 (target >= ${BATCHING_TARGET_RATIO}x); predict rows: median over ${SERVING_SIZES.predictRepetitions} repetitions of the floor then ours, ratio = ours / floor (the budget row: p99 / budget, must stay < 1).`,
    );
  }
  for (const r of rows) for (const n of r.notes) lines.push(`- ${r.id}: ${n}`);
  for (const r of rows) {
    if (r.ours === null || r.samples.ours.length === 0) continue;
    const rate = r.id === 'processing_eos_after_start' ? (x: Sample): number => (x as ProcessingSample).processingRate : (x: Sample): number => x.rate;
    const fmt = (s: readonly Sample[]): string => s.map((x) => formatNumber(rate(x))).join(', ');
    lines.push(`- ${r.id} samples/s: ours [${fmt(r.samples.ours)}], reference [${fmt(r.samples.reference)}]`);
  }
  for (const [rate, l] of latency) {
    const d = (x: { p50: number; p99: number; max: number }): string => `p50 ${x.p50.toFixed(1)} / p99 ${x.p99.toFixed(1)} / max ${x.max.toFixed(1)} ms`;
    const at = `at ${formatNumber(rate)}/s`;
    lines.push(`- e2e ${at} stages (send → ...): gateway 202 (acks=all) ${d(l.gatewayAck)}; input topic ${d(l.input)}; features.account ${d(l.features)} (${l.features.received} received); predictions.fraud ${d(l.predictions)}`);
    lines.push(`- e2e ${at} predictions with a fallback decision: ${l.fallbacks} of ${l.predictions.received}; duplicate predictions read_committed: ${l.duplicatePredictions}`);
    const shares = l.processors.map((p) => `${p.processor} ${p.meanBatchMs.toFixed(1)} ms (${p.batches} batches, ${p.recordsPerBatch.toFixed(1)} records each)`).join('; ');
    lines.push(`- e2e ${at} processor batch start → commit, mean: ${shares}; model run ${l.meanModelRunMs.toFixed(2)} ms mean over ${l.modelRuns} runs`);
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
    sections: [...only],
    sizes: { ...SIZES, features: FEATURES_SIZES, serving: SERVING_SIZES, batch: BATCH, httpInFlight: HTTP_IN_FLIGHT, producerWindow: PRODUCER_WINDOW, e2eRatesPerSec: E2E_RATES, e2eTickMs: E2E_TICK_MS, processingEventRatePerSec: PROCESSING_EVENT_RATE },
    rows,
    /** Per rate (events/s): every stage's distribution and the processors' batch times. */
    latency: Object.fromEntries(latency),
    /** Serving pair 2: every offered-load step of both configurations. */
    ...(runs('serving') ? { servingBatching: batchingSearches } : {}),
    cleanup: cleanupReport,
  };
  await writeFile(RESULTS_FILE, `${JSON.stringify(json, null, 2)}\n`);
  progress(`results written to ${RESULTS_FILE}`);
  const failed = rows.filter((r) => r.error);
  if (failed.length > 0) die(`${failed.length} benchmark row(s) failed: ${failed.map((r) => `${r.id}: ${r.error}`).join('; ')}`);
  process.exit(0);
}

main().catch((err: unknown) => die(`failed: ${messageOf(err)}`));
