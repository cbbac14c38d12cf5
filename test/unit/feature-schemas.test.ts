import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { FEATURE_GROUPS, accountGroup } from '../../topology/features/groups.js';
import { featureColumns, featureRowSchema, featureTableStatements } from '../../topology/features/rows.js';
import { featureSchemaFiles } from '../../scripts/feature-schemas.js';
import { packagePath } from '../../topology/paths.js';
import { fabricTopology } from '../../app/fabric-topology.js';

describe('feature rows generated from the definitions', () => {
  it('the committed Avro schemas equal the generated ones (npm run codegen rewrites them)', () => {
    for (const { file, text } of featureSchemaFiles()) expect(readFileSync(packagePath('schemas', 'avro', file), 'utf8'), `${file} is stale: run npm run codegen`).toBe(text);
  });

  it('keeps the account group\'s eight features, names and order, as the fraud model was trained with', () => {
    expect(accountGroup.featureNames).toEqual(['txn_count_1h', 'txn_count_24h', 'amount_sum_1h', 'amount_sum_24h', 'amount_avg_24h', 'amount_max_24h', 'distinct_counterparties_24h', 'seconds_since_last_txn']);
    const schema = featureRowSchema(accountGroup);
    const type = (name: string) => schema.fields.find((f) => f.name === name)?.type;
    expect([type('txn_count_1h'), type('amount_avg_24h'), type('amount_max_24h'), type('seconds_since_last_txn'), type('amount'), type('counterparty_id'), type('version')]).toEqual(['long', ['null', 'double'], 'double', ['null', 'double'], 'double', 'string', 'long']);
  });

  it('generates a ReplacingMergeTree(version) table and a FINAL view per group, columns in row order', () => {
    for (const g of FEATURE_GROUPS) {
      const [table, view] = featureTableStatements(g, 'db');
      expect(table).toContain(`CREATE TABLE IF NOT EXISTS db.features_${g.name} (`);
      expect(table).toContain('ENGINE = ReplacingMergeTree(version)');
      expect(view).toBe(`CREATE VIEW IF NOT EXISTS db.v_features_${g.name} AS SELECT * FROM db.features_${g.name} FINAL`);
      const names = featureColumns(g).map((c) => c.name);
      expect(names.slice(0, 3)).toEqual(['event_id', 'entity_id', 'ts_ms']);
      expect(names.slice(-4)).toEqual(['source_topic', 'source_partition', 'source_offset', 'version']);
      for (const f of g.featureNames) expect(names).toContain(f);
    }
    expect(featureColumns(accountGroup).find((c) => c.name === 'amount_avg_24h')?.type).toBe('Nullable(Float64)');
  });

  it('binds every group to a processor writing features.<group> and tracked to ClickHouse; item reads the repartition topic', () => {
    const t = fabricTopology();
    for (const g of FEATURE_GROUPS) {
      const writers = t.processors.filter((p) => p.outputs.includes(`features.${g.name}`));
      expect(writers, g.name).toHaveLength(1);
      expect(t.processor('tracking').inputs).toContain(`features.${g.name}`);
      expect(t.topic(`features.${g.name}`).schema).toBe(`${g.name}_features`);
    }
    expect(t.processor('features-user').outputs).toContain('repartition.interactions.item');
    expect(t.processor('features-item').inputs).toEqual(['repartition.interactions.item']);
  });
});
