import { describe, expect, it } from 'vitest';
import { isFabricError } from '../../topology/errors.js';
import { METADATA_KINDS, MAX_METADATA_ID, checkAttributes, checkMetadataId, metadataKey, metadataKind, parseMetadataKey } from '../../topology/metadata.js';
import { CATALOGUE_UPDATED_AT, catalogueMetadata, itemCatalog } from '../../sim/interactions.js';
import { loadAvroSchema } from '../../schemas/catalog.js';

/** The message of the FabricError `fn` throws (FABRIC_METADATA_INVALID, 400), or a failure. */
function refusal(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    expect(isFabricError(err, 'FABRIC_METADATA_INVALID'), String(err)).toBe(true);
    expect((err as { status: number }).status).toBe(400);
    return (err as Error).message;
  }
  throw new Error('expected FABRIC_METADATA_INVALID, nothing was thrown');
}

describe('metadata kinds', () => {
  it('declares item with its attributes and types', () => {
    expect(Object.keys(METADATA_KINDS)).toEqual(['item']);
    const item = metadataKind('item');
    expect(Object.fromEntries(Object.entries(item.attributes).map(([n, d]) => [n, [d.type, d.required]]))).toEqual({
      title: ['string', true],
      category: ['string', true],
      price: ['number', true],
      brand: ['string', false],
      available: ['boolean', false],
    });
    expect(item.attributes.price!.min).toBe(0);
  });

  it('refuses an unknown kind with a typed error listing the known ones', () => {
    expect(refusal(() => metadataKind('planet'))).toBe('unknown metadata kind "planet"; known: item');
    // Not fooled by the object prototype.
    expect(refusal(() => metadataKind('constructor'))).toBe('unknown metadata kind "constructor"; known: item');
    expect(refusal(() => checkAttributes('planet', { title: 'x' }))).toBe('unknown metadata kind "planet"; known: item');
  });
});

describe('metadata attributes', () => {
  it('accepts and returns valid attributes, optional ones included or left out', () => {
    expect(checkAttributes('item', { title: 'Red kettle', category: 'kitchen', price: 24.5 })).toEqual({ title: 'Red kettle', category: 'kitchen', price: 24.5 });
    expect(checkAttributes('item', { title: 'T', category: 'c', price: 0, brand: 'Acme', available: false })).toEqual({ title: 'T', category: 'c', price: 0, brand: 'Acme', available: false });
    // An optional attribute may be null (unknown); a required one may not.
    expect(checkAttributes('item', { title: 'T', category: 'c', price: 1, brand: null })).toEqual({ title: 'T', category: 'c', price: 1, brand: null });
  });

  it('names each attribute that is wrong: type, bound, unknown, missing, null when required', () => {
    expect(refusal(() => checkAttributes('item', { title: 'x', category: 'c', price: 'cheap' }))).toBe('invalid item metadata: price: must be a finite number, got "cheap"');
    expect(refusal(() => checkAttributes('item', { title: 'x', category: 'c', price: -0.5 }))).toBe('invalid item metadata: price: must be >= 0, got -0.5');
    expect(refusal(() => checkAttributes('item', { title: 7, category: 'c', price: 1 }))).toBe('invalid item metadata: title: must be a string, got 7');
    expect(refusal(() => checkAttributes('item', { title: 'x', category: 'c', price: 1, available: 'yes' }))).toBe('invalid item metadata: available: must be true or false, got "yes"');
    expect(refusal(() => checkAttributes('item', { title: 'x', category: 'c', price: 1, colour: 'red' }))).toBe(
      'invalid item metadata: colour: not an attribute of item (one of title, category, price, brand, available)',
    );
    expect(refusal(() => checkAttributes('item', { title: 'x' }))).toBe('invalid item metadata: category: required; price: required');
    expect(refusal(() => checkAttributes('item', { title: null, category: 'c', price: 1 }))).toBe('invalid item metadata: title: required, got null');
    expect(refusal(() => checkAttributes('item', { title: 'x'.repeat(501), category: 'c', price: 1 }))).toBe('invalid item metadata: title: longer than 500 characters');
    // Every problem at once, in body order then the missing ones.
    expect(refusal(() => checkAttributes('item', { price: 'cheap', colour: 'red', title: 'x' }))).toBe(
      'invalid item metadata: price: must be a finite number, got "cheap"; colour: not an attribute of item (one of title, category, price, brand, available); category: required',
    );
  });

  it('refuses a body that is not an object of attributes', () => {
    for (const body of [null, [], 'x', 3]) expect(refusal(() => checkAttributes('item', body))).toBe('metadata of kind item must be a JSON object of attributes');
  });
});

describe('metadata ids and keys', () => {
  it('accepts ids of 1 to 256 characters without control characters or "/"', () => {
    expect(checkMetadataId('I00042')).toBe('I00042');
    expect(checkMetadataId('x'.repeat(MAX_METADATA_ID))).toHaveLength(256);
    expect(checkMetadataId('café élan')).toBe('café élan');
    for (const bad of ['', 'x'.repeat(257), 'a\nb', 'a\u0000b', 'a\u007fb', 'a/b']) expect(refusal(() => checkMetadataId(bad))).toMatch(/^metadata id ".*" must be 1 to 256 characters, without control characters or "\/"$/);
  });

  it('builds and splits Kafka keys <kind>/<id>, refusing keys that are not one', () => {
    expect(metadataKey('item', 'I1')).toBe('item/I1');
    expect(parseMetadataKey('item/I1')).toEqual({ kind: 'item', id: 'I1' });
    expect(refusal(() => parseMetadataKey(null))).toBe('metadata record key null is not <kind>/<id>');
    expect(refusal(() => parseMetadataKey('item'))).toBe('metadata record key "item" is not <kind>/<id>');
    expect(refusal(() => parseMetadataKey('/I1'))).toBe('metadata record key "/I1" is not <kind>/<id>');
    expect(refusal(() => parseMetadataKey('widget/W1'))).toBe('unknown metadata kind "widget"; known: item');
    expect(refusal(() => parseMetadataKey('item/'))).toMatch(/^metadata id "" must be/);
  });
});

describe('the metadata Avro schema', () => {
  it('carries kind, id, typed attributes, updated_at and source', () => {
    const schema = loadAvroSchema('metadata');
    expect(schema.fields.map((f) => f.name)).toEqual(['kind', 'id', 'attributes', 'updated_at', 'source']);
    expect(schema.fields.find((f) => f.name === 'attributes')!.type).toEqual({ type: 'map', values: ['null', 'boolean', 'double', 'string'] });
  });
});

describe('the simulator catalogue', () => {
  it('is the same records for a seed: one valid item per catalogue entry, title from its category', () => {
    const a = catalogueMetadata({ seed: 3 });
    expect(catalogueMetadata({ seed: 3 })).toEqual(a);
    const catalog = itemCatalog({ seed: 3 });
    expect(a).toHaveLength(catalog.length);
    a.forEach((item, i) => {
      expect(item.id).toBe(catalog[i]!.item_id);
      expect(checkAttributes('item', item.attributes)).toEqual(item.attributes);
      expect(item.attributes.category).toBe(catalog[i]!.category);
      expect(item.attributes.price).toBe(catalog[i]!.price);
    });
    expect(a[0]!.attributes.title).toBe('Books item 0');
    expect(a[13]!.attributes.title).toBe('Music item 13');
    // Items of one category share the title's word.
    expect(new Set(a.filter((i) => i.attributes.category === 'cat-03').map((i) => i.attributes.title.split(' ')[0]))).toEqual(new Set(['Kitchen']));
    expect(Number.isInteger(CATALOGUE_UPDATED_AT)).toBe(true);
  });
});
