import type { EntityMetadata } from '../schemas/types.generated.js';
import type { AvroWriter } from '../schemas/serde.js';
import { checkAttributes, checkMetadataId, metadataKey, metadataKind } from '../topology/metadata.js';
import type { Attributes, MetadataStore } from '../serving/metadata/store.js';

/** How the webhook writes to `_fabric.metadata`: resolves once Kafka acknowledged (acks=all). */
export interface MetadataSink {
  send(key: string, value: Buffer | null): Promise<void>;
}

/**
 * The metadata source's webhook (`PUT|DELETE /v1/metadata/{kind}/{id}`, admin scope): a change is
 * checked against its kind and written to `_fabric.metadata` (a tombstone for a delete); the metadata
 * processor applies it to the store. The answer comes once Kafka acknowledged it; the store follows
 * within a fetch. `GET` reads the store.
 */
export class MetadataService {
  constructor(private readonly deps: { sink: MetadataSink; writer: AvroWriter<EntityMetadata>; store: MetadataStore; now?: () => number }) {}

  async put(kind: string, id: string, attributes: unknown, source: string): Promise<{ kind: string; id: string; updated_at: number }> {
    metadataKind(kind);
    checkMetadataId(id);
    const checked = checkAttributes(kind, attributes);
    const record: EntityMetadata = { kind, id, attributes: checked, updated_at: (this.deps.now ?? Date.now)(), source };
    await this.deps.sink.send(metadataKey(kind, id), this.deps.writer.encode(record));
    return { kind, id, updated_at: record.updated_at };
  }

  async delete(kind: string, id: string): Promise<{ kind: string; id: string; deleted: true }> {
    metadataKind(kind);
    checkMetadataId(id);
    await this.deps.sink.send(metadataKey(kind, id), null);
    return { kind, id, deleted: true };
  }

  async get(kind: string, id: string): Promise<{ kind: string; id: string; attributes: Attributes; updated_at: number } | null> {
    metadataKind(kind);
    checkMetadataId(id);
    const found = await this.deps.store.get(kind, id);
    return found ? { kind, id, attributes: found.attributes, updated_at: found.updatedAt } : null;
  }
}
