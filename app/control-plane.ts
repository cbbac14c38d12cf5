import type { Kafka } from 'kafkajs';
import { prefixed, type FabricConfig } from '../topology/config.js';
import type { BatchingProducer } from '../topology/runtime/producer.js';
import { readToEnd } from '../topology/runtime/topic-reader.js';
import type { ModelArtifact } from '../processors/scoring/model-artifact.js';

/** A model registration as written to the compacted _fabric.models topic (latest per model name wins). */
export interface ModelRegistration {
  readonly name: string;
  readonly version: string;
  readonly sha256: string;
  readonly path: string;
  readonly thresholds: { readonly block: number; readonly review: number };
  readonly stage: 'production' | 'staging';
}

/** The registration of a verified model artifact, as `npm start` and `fabric models register` publish it. */
export function registrationFor(model: ModelArtifact, config: Pick<FabricConfig, 'modelsDir'>): ModelRegistration {
  return { name: model.name, version: model.version, sha256: model.sha256, path: `${config.modelsDir}/${model.name}`, thresholds: model.thresholds, stage: 'production' };
}

export async function publishModel(producer: BatchingProducer, config: FabricConfig, registration: ModelRegistration): Promise<void> {
  await producer.send([{ topic: prefixed(config, '_fabric.models'), key: registration.name, value: Buffer.from(JSON.stringify(registration)) }]);
}

/** Latest value per key of a compacted control topic, read from the beginning to its current end. */
export async function readCompacted(kafka: Kafka, config: FabricConfig, topic: string, timeoutMs = 15_000): Promise<Map<string, Buffer>> {
  const latest = new Map<string, Buffer>();
  for (const r of await readToEnd(kafka, prefixed(config, topic), { groupPrefix: prefixed(config, 'fabric.cp-reader'), timeoutMs })) {
    if (r.key === null) continue;
    if (r.value) latest.set(r.key, r.value);
    else latest.delete(r.key);
  }
  return latest;
}
