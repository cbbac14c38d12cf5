import { FabricError } from './errors.js';

/**
 * Metadata kinds: what the metadata store holds about entities (items for the recommender), declared
 * once. Records arrive on `_fabric.metadata` (compacted, key `<kind>/<id>`) and through the gateway's
 * webhook (`PUT|DELETE /v1/metadata/{kind}/{id}`); both are checked here, so the store only ever
 * holds attributes of the declared types.
 */
export type AttributeType = 'string' | 'number' | 'boolean';
export type AttributeValue = string | number | boolean | null;

export interface AttributeDef {
  readonly type: AttributeType;
  readonly required: boolean;
  /** Numbers: the smallest value allowed. */
  readonly min?: number;
  /** Strings: the longest value allowed (default 1000). */
  readonly maxLength?: number;
  readonly doc: string;
}

export interface MetadataKind {
  readonly name: string;
  readonly doc: string;
  readonly attributes: Readonly<Record<string, AttributeDef>>;
}

export const METADATA_KINDS: Readonly<Record<string, MetadataKind>> = Object.freeze({
  item: {
    name: 'item',
    doc: 'A catalogue item the recommender can show.',
    attributes: {
      title: { type: 'string', required: true, maxLength: 500, doc: 'Display title.' },
      category: { type: 'string', required: true, maxLength: 200, doc: 'Category (the demo rules keep at most 2 items per category).' },
      price: { type: 'number', required: true, min: 0, doc: 'Price in the catalogue currency.' },
      brand: { type: 'string', required: false, maxLength: 200, doc: 'Brand or seller.' },
      available: { type: 'boolean', required: false, doc: 'False when the item cannot be sold (rules may exclude it).' },
    },
  },
});

/** The longest id accepted (ids are Redis and Kafka keys). */
export const MAX_METADATA_ID = 256;

export function metadataKind(kind: string): MetadataKind {
  const k = Object.hasOwn(METADATA_KINDS, kind) ? METADATA_KINDS[kind] : undefined;
  if (!k) throw new FabricError('FABRIC_METADATA_INVALID', `unknown metadata kind ${JSON.stringify(kind)}; known: ${Object.keys(METADATA_KINDS).join(', ')}`);
  return k;
}

export function checkMetadataId(id: string): string {
  // eslint-disable-next-line no-control-regex
  if (id.length === 0 || id.length > MAX_METADATA_ID || /[\u0000-\u001f\u007f/]/.test(id)) {
    throw new FabricError('FABRIC_METADATA_INVALID', `metadata id ${JSON.stringify(id.slice(0, 80))} must be 1 to ${MAX_METADATA_ID} characters, without control characters or "/"`);
  }
  return id;
}

/** The Kafka key of a metadata record. */
export function metadataKey(kind: string, id: string): string {
  return `${kind}/${id}`;
}

/** Splits a Kafka key `<kind>/<id>`; throws when it is not one. */
export function parseMetadataKey(key: string | null): { kind: string; id: string } {
  const slash = key?.indexOf('/') ?? -1;
  if (!key || slash <= 0) throw new FabricError('FABRIC_METADATA_INVALID', `metadata record key ${JSON.stringify(key)} is not <kind>/<id>`);
  const kind = key.slice(0, slash);
  metadataKind(kind);
  return { kind, id: checkMetadataId(key.slice(slash + 1)) };
}

/**
 * Checks attributes against their kind: every required one present, none unknown, each of its type
 * (numbers finite and within bounds, strings within their length). Returns them as stored.
 */
export function checkAttributes(kind: string, attributes: unknown): Record<string, AttributeValue> {
  const k = metadataKind(kind);
  if (attributes === null || typeof attributes !== 'object' || Array.isArray(attributes)) throw new FabricError('FABRIC_METADATA_INVALID', `metadata of kind ${kind} must be a JSON object of attributes`);
  const problems: string[] = [];
  const out: Record<string, AttributeValue> = {};
  for (const [name, value] of Object.entries(attributes as Record<string, unknown>)) {
    const def = Object.hasOwn(k.attributes, name) ? k.attributes[name] : undefined;
    if (!def) {
      problems.push(`${name}: not an attribute of ${kind} (one of ${Object.keys(k.attributes).join(', ')})`);
      continue;
    }
    if (value === null) {
      if (def.required) problems.push(`${name}: required, got null`);
      else out[name] = null;
      continue;
    }
    if (def.type === 'number') {
      if (typeof value !== 'number' || !Number.isFinite(value)) problems.push(`${name}: must be a finite number, got ${JSON.stringify(value)?.slice(0, 40)}`);
      else if (def.min !== undefined && value < def.min) problems.push(`${name}: must be >= ${def.min}, got ${value}`);
      else out[name] = value;
    } else if (def.type === 'string') {
      if (typeof value !== 'string') problems.push(`${name}: must be a string, got ${JSON.stringify(value)?.slice(0, 40)}`);
      else if (value.length > (def.maxLength ?? 1000)) problems.push(`${name}: longer than ${def.maxLength ?? 1000} characters`);
      else out[name] = value;
    } else if (typeof value !== 'boolean') problems.push(`${name}: must be true or false, got ${JSON.stringify(value)?.slice(0, 40)}`);
    else out[name] = value;
  }
  for (const [name, def] of Object.entries(k.attributes)) if (def.required && !(name in (attributes as object))) problems.push(`${name}: required`);
  if (problems.length > 0) throw new FabricError('FABRIC_METADATA_INVALID', `invalid ${kind} metadata: ${problems.join('; ')}`);
  return out;
}
