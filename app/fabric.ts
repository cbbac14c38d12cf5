import { Redis } from 'ioredis';
import type { Kafka } from 'kafkajs';
import { AvroSerde } from '../schemas/serde.js';
import { loadAvroSchema } from '../schemas/catalog.js';
import { prefixed, type FabricConfig } from '../topology/config.js';
import { messageOf } from '../topology/errors.js';
import type { Topology } from '../topology/graph.js';
import { fabricTopology } from './fabric-topology.js';
import { applyTopology } from '../topology/apply.js';
import { createKafka } from '../topology/runtime/kafka.js';
import type { Logger } from '../topology/runtime/log.js';
import { Metrics } from '../topology/runtime/metrics.js';
import { BatchingProducer } from '../topology/runtime/producer.js';
import { ProcessorRunner, type StreamDeps } from '../topology/runtime/stream.js';
import type { ProcessorLogic } from '../topology/runtime/processor.js';
import { createClickHouse, type ClickHouseClient } from '../topology/runtime/clickhouse.js';
import { packagePath } from '../topology/paths.js';
import { publishModel, registrationFor } from './control-plane.js';
import { featuresProcessor } from '../processors/features/processor.js';
import { scoringProcessor } from '../processors/scoring/processor.js';
import { loadModelArtifact, type ModelArtifact } from '../processors/scoring/model-artifact.js';
import { ModelRunner } from '../processors/scoring/model-runner.js';
import { trackingProcessor } from '../processors/tracking/processor.js';
import { ClickHouseSink } from '../processors/tracking/clickhouse-sink.js';
import { driftProcessor } from '../processors/drift/processor.js';
import { Gateway } from '../gateways/server.js';
import { IngestService, type BoundStream } from '../gateways/ingest/ingest.js';
import { ApiKeys } from '../gateways/ingest/auth.js';

export interface FabricOptions {
  /** Processors to run (default: all in the topology). */
  readonly processors?: readonly string[];
  readonly gateway?: boolean;
  /** Create topics, register schemas and apply the ClickHouse DDL first (default true). */
  readonly apply?: boolean;
}

export interface FabricHandle {
  readonly gatewayPort: number | null;
  readonly metrics: Metrics;
  readonly model: ModelArtifact | null;
  stop(): Promise<void>;
}

/**
 * The composition root: owns every resource it opens (Kafka clients, producer, Redis, ClickHouse,
 * model worker, gateway) and closes them in reverse order: gateway first (drains in-flight events),
 * then processors (finish their batch, flush, commit), then the producer, then the stores.
 */
export async function startFabric(config: FabricConfig, log: Logger, options: FabricOptions = {}): Promise<FabricHandle> {
  const topology: Topology = fabricTopology();
  const metrics = new Metrics();
  const closers: { name: string; close: () => Promise<unknown> }[] = [];
  const stop = async (): Promise<void> => {
    for (const { name, close } of closers.splice(0).reverse()) {
      await close().catch((err: unknown) => log.error({ err: messageOf(err), component: name }, 'close failed'));
    }
  };
  try {
    const kafka: Kafka = createKafka(config, log, 'fabric');
    const serde = new AvroSerde({ url: config.registryUrl });
    const wanted = options.processors ?? topology.processors.map((p) => p.name);
    if (options.apply ?? true) {
      const report = await applyTopology(topology, config, kafka, serde);
      log.info({ created: report.topicsCreated.length, subjects: report.subjects.length, clickhouse: report.clickhouseStatements }, 'topology applied');
    }
    const producer = new BatchingProducer(kafka, { lingerMs: config.producerLingerMs, batchSize: config.producerBatchSize, maxQueued: config.producerMaxQueued, ackTimeoutMs: config.kafkaAckTimeoutMs }, log.child({ component: 'producer' }), metrics);
    closers.push({ name: 'producer', close: () => producer.close() });
    // Wait briefly: the producer keeps reconnecting in the background, and the gateway must listen
    // (and say not-ready) rather than wait out kafkajs' connect retries when Kafka is down.
    const kafkaUp = await Promise.race([producer.start(), new Promise<boolean>((r) => setTimeout(() => r(false), 2000).unref())]);
    if (!kafkaUp) log.warn({ brokers: config.kafkaBrokers }, 'Kafka is not reachable yet; the gateway answers 503 until it is');

    const needs = (name: string): boolean => wanted.includes(name);
    let redis: Redis | null = null;
    if (needs('features') || needs('scoring') || needs('drift')) {
      const r = new Redis(config.redisUrl, { maxRetriesPerRequest: 5, enableOfflineQueue: true, lazyConnect: true });
      await r.connect();
      redis = r;
      closers.push({ name: 'redis', close: () => r.quit() });
    }
    let clickhouse: ClickHouseClient | null = null;
    if (needs('tracking')) {
      const ch = createClickHouse(config);
      clickhouse = ch;
      closers.push({ name: 'clickhouse', close: () => ch.close() });
    }
    let model: ModelArtifact | null = null;
    if (needs('scoring') || needs('drift')) {
      model = await loadModelArtifact(packagePath(config.modelsDir), 'fraud');
      const registration = registrationFor(model, config);
      const register = (): Promise<void> => publishModel(producer, config, registration);
      if (kafkaUp) await register();
      else void producer.whenConnected.then(register).catch((err: unknown) => log.warn({ err: messageOf(err) }, 'model registration failed'));
    }

    const deps: StreamDeps = { kafka, producer, serde, topology, config, log, metrics };
    const logicFor = async (name: string): Promise<ProcessorLogic> => {
      switch (name) {
        case 'features':
          return featuresProcessor({ redis: redis!, keyPrefix: config.redisKeyPrefix, snapshotTtlSec: config.featureSnapshotTtlSec });
        case 'scoring': {
          const runner = new ModelRunner(model!, { provider: config.scoringProvider, threads: config.scoringThreads, timeoutMs: config.scoringTimeoutMs, gpu: config.gpu });
          await runner.start();
          log.info({ model: model!.name, version: model!.version, provider: runner.provider }, 'model loaded');
          return scoringProcessor({ redis: redis!, keyPrefix: config.redisKeyPrefix, runner, rules: { ...model!.thresholds, fallbackDecision: 'review' }, featureWaitMs: config.scoringFeatureWaitMs, metrics });
        }
        case 'tracking': {
          const sink = new ClickHouseSink(clickhouse!, { database: config.clickhouseDatabase, flushRows: config.clickhouseFlushRows, lingerMs: config.clickhouseLingerMs, metrics });
          return trackingProcessor({ sink, topics: topology.processor('tracking').inputs });
        }
        case 'drift':
        {
          const key = `${config.redisKeyPrefix}drift:state:${prefixed(config, 'drift')}:${model!.name}`;
          const r = redis!;
          return driftProcessor({
            model: model!.name, version: model!.version, reference: model!.reference, windowMs: config.driftWindowSec * 1000, latenessMs: config.driftAllowedLatenessSec * 1000,
            store: { load: () => r.get(key), save: async (state) => void (await r.set(key, state)) },
          });
        }
        default:
          throw new Error(`no processor named ${name}`);
      }
    };
    const runners: ProcessorRunner[] = [];
    for (const name of wanted) {
      const runner = new ProcessorRunner(topology.processor(name), await logicFor(name), deps);
      runners.push(runner);
      closers.push({ name: `processor ${name}`, close: () => runner.stop() });
    }
    await Promise.all(runners.map((r) => r.start()));

    let gatewayPort: number | null = null;
    if (options.gateway ?? true) {
      const streams = new Map<string, BoundStream>();
      for (const s of topology.streams) {
        const physicalTopic = prefixed(config, s.topic);
        streams.set(s.name, { def: s, physicalTopic, writer: await serde.writer(`${physicalTopic}-value`, loadAvroSchema(s.schema)) });
      }
      const ingest = new IngestService(streams, producer, { maxInFlight: config.gatewayMaxInFlight }, metrics);
      const gateway = new Gateway(
        { ingest, apiKeys: new ApiKeys(config.gatewayApiKeys), metrics, log: log.child({ component: 'gateway' }), readiness: () => ({ ready: producer.isReady, checks: { kafka: producer.isReady, registry: true } }) },
        { host: config.gatewayHost, port: config.gatewayPort, maxBodyBytes: config.gatewayMaxBodyBytes },
      );
      gatewayPort = await gateway.listen();
      // Registered last so it closes first: no new events while processors drain.
      closers.push({ name: 'gateway', close: () => gateway.close() });
      log.info({ port: gatewayPort }, 'gateway listening');
    }
    return { gatewayPort, metrics, model, stop };
  } catch (err) {
    await stop();
    throw err;
  }
}
