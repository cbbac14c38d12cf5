import type { ClickHouseClient } from '../../topology/runtime/clickhouse.js';
import type { FeatureGroup, FeatureType } from '../../topology/features/definition.js';
import { evaluate } from '../../topology/features/engine.js';
import { FabricError } from '../../topology/errors.js';
import { loadHistory, type History } from './offline.js';
import { readLabels, writeTable, type ColumnType, type LabelsTable, type OutputColumn } from './labels-io.js';

export interface TrainingSetProgress {
  readonly phase: 'labels' | 'history' | 'features' | 'done';
  readonly done: number;
  readonly total: number;
}

export interface TrainingSetReport {
  readonly rows: number;
  readonly columns: readonly string[];
  /** Labels whose entity has no event at all in a group, per group (their features are null). */
  readonly unknownEntities: Readonly<Record<string, number>>;
  readonly historyRows: number;
  readonly seconds: { readonly labels: number; readonly history: number; readonly features: number };
}

/**
 * A point-in-time training set: for every label (an entity key per group and a `ts`), every feature
 * of every group as of the label's instant, evaluated by the stream's engine over the group's offline
 * history (events with ts <= the instant only: nothing after it can leak in). One output row per label,
 * in label order: the label's columns unchanged, then one column per feature named as in its
 * definition. An entity the group has never seen gets null features.
 */
export async function buildTrainingSet(options: {
  ch: ClickHouseClient;
  database: string;
  groups: readonly FeatureGroup[];
  labels: string;
  out: string;
  onProgress?: (p: TrainingSetProgress) => void;
}): Promise<TrainingSetReport> {
  const { groups } = options;
  if (groups.length === 0) throw new FabricError('FABRIC_CLI_USAGE', 'name at least one feature group');
  const t0 = performance.now();
  const labels = await readLabels(options.labels, [...new Set(groups.map((g) => g.entity))]);
  options.onProgress?.({ phase: 'labels', done: labels.rows.length, total: labels.rows.length });
  const t1 = performance.now();
  const histories: History[] = [];
  let historyRows = 0;
  for (const g of groups) {
    const column = labels.columns.indexOf(g.entity);
    const entities = new Set(labels.rows.map((r) => String(r[column])));
    const history = await loadHistory(options.ch, options.database, g, { entities, onRows: (n) => options.onProgress?.({ phase: 'history', done: historyRows + n, total: 0 }) });
    for (const list of history.values()) historyRows += list.length;
    histories.push(history);
  }
  const t2 = performance.now();
  const unknown: Record<string, number> = Object.fromEntries(groups.map((g) => [g.name, 0]));
  const keyColumns = groups.map((g) => labels.columns.indexOf(g.entity));
  const total = labels.rows.length;
  function* rows(): Generator<unknown[]> {
    for (let i = 0; i < total; i++) {
      const label = labels.rows[i]!;
      const out: unknown[] = [...label];
      groups.forEach((g, k) => {
        const events = histories[k]!.get(String(label[keyColumns[k]!]));
        if (!events) unknown[g.name]!++;
        const values = events ? evaluate(g, events, { instant: labels.ts[i]! }) : null;
        for (const name of g.featureNames) out.push(values ? values[name] : null);
      });
      if ((i + 1) % 10_000 === 0) options.onProgress?.({ phase: 'features', done: i + 1, total });
      yield out;
    }
  }
  const columns: OutputColumn[] = [...labels.columns.map((name, j) => ({ name, type: labelColumnType(labels, j) })), ...groups.flatMap((g) => g.features.map((f) => ({ name: f.name, type: outputType(f.type) })))];
  const clash = findClash(columns.map((c) => c.name));
  if (clash) throw new FabricError('FABRIC_LABELS_INVALID', `${options.labels}: column ${clash} of the labels is also a feature name; rename it`);
  const written = await writeTable(options.out, columns, rows());
  options.onProgress?.({ phase: 'done', done: written, total });
  const t3 = performance.now();
  return {
    rows: written,
    columns: columns.map((c) => c.name),
    unknownEntities: unknown,
    historyRows,
    seconds: { labels: (t1 - t0) / 1000, history: (t2 - t1) / 1000, features: (t3 - t2) / 1000 },
  };
}

function outputType(t: FeatureType): ColumnType {
  return t === 'long' ? 'long' : t === 'double' ? 'double' : 'string';
}

/** A label column stays numeric when every value is a number (Parquet input), else it is text. */
function labelColumnType(labels: LabelsTable, j: number): ColumnType {
  return labels.rows.length > 0 && labels.rows.every((r) => typeof r[j] === 'number' || r[j] === null) ? 'double' : 'string';
}

function findClash(names: readonly string[]): string | null {
  const seen = new Set<string>();
  for (const n of names) {
    if (seen.has(n)) return n;
    seen.add(n);
  }
  return null;
}
