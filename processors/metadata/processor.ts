import type { BatchContext, Output, ProcessorLogic, SourceRecord } from '../../topology/runtime/processor.js';
import { reject, wholeBatch } from '../../topology/runtime/processor.js';
import { FabricError, messageOf } from '../../topology/errors.js';
import { checkAttributes, parseMetadataKey } from '../../topology/metadata.js';
import type { EntityMetadata } from '../../schemas/types.generated.js';
import type { MetadataChange, MetadataStore } from '../../serving/metadata/store.js';

/**
 * Keeps the metadata store (Redis) equal to `_fabric.metadata`: each record upserts its entity's
 * attributes, a tombstone deletes it, in offset order, each write applied only if newer than what is
 * stored (see MetadataStore). A record whose key is not `<kind>/<id>`, whose kind is unknown, whose
 * value names another entity than its key, or whose attributes do not match the kind goes to
 * `dlq._fabric.metadata` with the reason; the others of the batch are applied.
 */
export function metadataProcessor(options: { store: MetadataStore }): ProcessorLogic {
  async function handle(records: SourceRecord[], ctx: BatchContext): Promise<Output[]> {
    const rejects: Output[] = [];
    const changes: MetadataChange[] = [];
    for (const record of records) {
      try {
        const { kind, id } = parseMetadataKey(record.key);
        const offset = Number(record.offset);
        if (record.value === null || record.value === undefined) {
          changes.push({ kind, id, offset, deleted: true });
          continue;
        }
        const m = record.value as EntityMetadata;
        if (m.kind !== kind || m.id !== id) throw new FabricError('FABRIC_METADATA_INVALID', `record key ${record.key} does not match its value (${m.kind}/${m.id})`);
        changes.push({ kind, id, offset, attributes: checkAttributes(kind, m.attributes), updatedAt: m.updated_at });
      } catch (err) {
        rejects.push(reject(record, err instanceof FabricError && !err.retriable ? err : new FabricError('FABRIC_RECORD_REJECTED', messageOf(err))));
      }
    }
    const applied = await options.store.apply(changes);
    if (applied < changes.length) ctx.log.debug({ applied, changes: changes.length }, 'metadata: older writes ignored');
    return rejects;
  }
  return { name: 'metadata', process: wholeBatch(handle) };
}
