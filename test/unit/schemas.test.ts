import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import avro from 'avsc';
import { generateTypes } from '../../schemas/codegen.js';
import { SCHEMA_FILES, loadAvroSchema, type SchemaName } from '../../schemas/catalog.js';

describe('schemas', () => {
  it('types.generated.ts is up to date with the .avsc files (run `npm run codegen`)', () => {
    expect(readFileSync(new URL('../../schemas/types.generated.ts', import.meta.url), 'utf8')).toBe(generateTypes());
  });

  it('every schema parses and nullable fields default to null (so adding them stays BACKWARD compatible)', () => {
    for (const name of Object.keys(SCHEMA_FILES) as SchemaName[]) {
      const schema = loadAvroSchema(name);
      expect(() => avro.Type.forSchema(schema as avro.Schema)).not.toThrow();
      for (const f of schema.fields) if (Array.isArray(f.type) && f.type[0] === 'null') expect(f.default, `${name}.${f.name}`).toBeNull();
    }
  });
});
