import type { Kafka } from 'kafkajs';
import type { ModelVersion } from '../../schemas/types.generated.js';
import { loadAvroSchema } from '../../schemas/catalog.js';
import type { AvroSerde } from '../../schemas/serde.js';
import { prefixed, type FabricConfig } from '../../topology/config.js';
import { AvroControlFollower } from '../../topology/runtime/control-topic.js';
import type { Logger } from '../../topology/runtime/log.js';
import { entryKey } from './entry.js';

export const MODELS_TOPIC = '_fabric.models';

export type RegistryListener = (entry: ModelVersion, previous: ModelVersion | undefined) => void;

/**
 * Follows the compacted `_fabric.models` topic from its beginning, for as long as the process runs:
 * the latest record per `name@version` is that version's state (tombstones delete). Every processor
 * and gateway instance has one, so a promotion written by `fabric models promote` reaches all of
 * them within a fetch (no restart). Records that do not decode (another format, a newer schema the
 * process cannot read) are skipped with a warning, never fatal.
 *
 * The consumer is in a group of its own that commits nothing (every instance reads everything) and
 * is deleted on close.
 */
export class ModelRegistry extends AvroControlFollower<ModelVersion> {
  constructor(kafka: Kafka, serde: AvroSerde, config: Pick<FabricConfig, 'topicPrefix'>, log: Logger) {
    super(kafka, serde, log, {
      topic: prefixed(config, MODELS_TOPIC),
      groupPrefix: prefixed(config, 'fabric.registry'),
      what: 'model version',
      keyOf: (e) => entryKey(e.name, e.version),
      // A version's stage history only grows: a record with a shorter one is a registration that raced
      // a promotion (two instances bootstrapping the demo models at once), not a change.
      supersedes: (next, current) => next.stage_history.length >= current.stage_history.length,
    });
    this.topic.onChange((key, entry) => {
      if (!entry) log.info({ model: key }, 'model version deleted from the registry');
    });
  }

  onChange(listener: RegistryListener): () => void {
    return this.topic.onChange((_key, entry, previous) => {
      if (entry) listener(entry, previous);
    });
  }

  get(name: string, version: string): ModelVersion | undefined {
    return this.topic.get(entryKey(name, version));
  }

  /** The version in production (at most one per model: promotion archives the previous one). */
  production(name: string): ModelVersion | undefined {
    return productionOf(this.topic.values(), name);
  }

  list(): ModelVersion[] {
    return sortEntries(this.topic.values());
  }
}

/** If two versions claim production (a write raced), the one promoted last wins. */
export function productionOf(entries: readonly ModelVersion[], name: string): ModelVersion | undefined {
  let best: ModelVersion | undefined;
  const promotedAt = (e: ModelVersion): number => Math.max(0, ...e.stage_history.filter((c) => c.to === 'production').map((c) => c.at));
  for (const e of entries) if (e.name === name && e.stage === 'production' && (!best || promotedAt(e) > promotedAt(best))) best = e;
  return best;
}

export function sortEntries(entries: ModelVersion[]): ModelVersion[] {
  return entries.sort((a, b) => a.name.localeCompare(b.name) || a.registered_at - b.registered_at || a.version.localeCompare(b.version));
}

/** Subject of the registry records' schema. */
export function modelsSubject(config: Pick<FabricConfig, 'topicPrefix'>): string {
  return `${prefixed(config, MODELS_TOPIC)}-value`;
}

export const MODEL_VERSION_SCHEMA = () => loadAvroSchema('model_version');
