import { loadAvroSchema, type AvroRecordSchema, type SchemaName } from '../../schemas/catalog.js';

/**
 * Feature definitions as code: a feature group names an entity key of a stream and declares its
 * features as event-time aggregations over the entity's events. One definition drives every path:
 * the streaming processor, online reads, training sets, backfill and the consistency check all
 * evaluate it with engine.ts, so there is one source of truth for the semantics.
 *
 * ```ts
 * featureGroup({
 *   name: 'account', stream: 'transactions', schema: 'transaction', entity: 'account_id',
 *   features: {
 *     txn_count_1h: count('1h'),
 *     amount_sum_24h: sum('amount', '24h'),
 *     big_txn_count_24h: count('24h', { where: { amount: { gt: 1000 } } }),
 *     seconds_since_last_txn: timeSincePrevious(),
 *   },
 * });
 * ```
 * Definitions are validated when built: unknown fields, bad windows, type mismatches and name clashes
 * throw a FeatureDefinitionError naming the group and the feature.
 */

/** A value of an event field as the engine sees it (Avro enums are strings). */
export type Scalar = string | number | boolean | null;
export type FieldKind = 'number' | 'string' | 'boolean';

/** Conditions on one field, all of which must hold. A bare scalar means equality. */
export type FieldCondition = Scalar | { readonly eq?: Scalar; readonly ne?: Scalar; readonly in?: readonly Scalar[]; readonly gt?: number; readonly gte?: number; readonly lt?: number; readonly lte?: number };
/** Every listed field's condition must hold (AND). */
export type Filter = Readonly<Record<string, FieldCondition>>;

interface Windowed {
  /** Event-time window: '30s', '15m', '1h', '7d' or milliseconds. Covers `t - W < ts <= t`. */
  readonly window: string | number;
  readonly where?: Filter;
}

export type AggregationSpec =
  | ({ readonly kind: 'count' } & Windowed)
  | ({ readonly kind: 'sum' | 'avg'; readonly field: string } & Windowed)
  /** `empty`: the value when the window holds no event (default null). */
  | ({ readonly kind: 'min' | 'max'; readonly field: string; readonly empty?: number | null } & Windowed)
  | ({ readonly kind: 'distinct'; readonly field: string } & Windowed)
  /**
   * The field's value on the entity's latest event (by the total order) at or before the instant.
   * Without a window it looks back without limit; a filtered one needs a window (its look-back), as
   * the online store keeps only the newest event beyond the group's longest window.
   */
  | { readonly kind: 'last'; readonly field: string; readonly where?: Filter; readonly window?: string | number }
  /** Seconds since the entity's previous event (at an event) or its latest event (at an instant); null without one. Same window rule as `last`. */
  | { readonly kind: 'since_previous'; readonly where?: Filter; readonly window?: string | number }
  /** numerator / denominator, two other features of the group; null when the denominator is 0 or null. */
  | { readonly kind: 'ratio'; readonly numerator: string; readonly denominator: string };

/** A per-event (on-demand) transformation: a derived event field computed from declared inputs. */
export interface TransformSpec {
  readonly type: FieldKind;
  readonly inputs: readonly string[];
  /** Pure and deterministic; gets the event's input fields, returns the value (null allowed). */
  readonly fn: (event: Readonly<Record<string, Scalar>>) => Scalar;
}

export interface FeatureGroupSpec {
  /** Lower snake case; the topic is features.<name>, the ClickHouse table features_<name>. */
  readonly name: string;
  /** The stream whose events feed the group. */
  readonly stream: string;
  /** The stream's Avro schema (fields are validated against it). */
  readonly schema: SchemaName;
  /** The entity key field of the event (a string field). */
  readonly entity: string;
  /** Event time field (epoch ms), default `ts`. */
  readonly timeField?: string;
  /** Event id field (dedupe key), default `event_id`. */
  readonly idField?: string;
  /** How far behind the entity's newest event an event may be and still be applied; default: the configured FABRIC_FEATURES_LATENESS_SEC. */
  readonly lateness?: string | number;
  readonly transforms?: Readonly<Record<string, TransformSpec>>;
  readonly features: Readonly<Record<string, AggregationSpec>>;
  readonly doc?: string;
}

export type FeatureType = 'long' | 'double' | 'string' | 'boolean';

export interface FeatureDef {
  readonly name: string;
  readonly spec: AggregationSpec;
  readonly type: FeatureType;
  readonly nullable: boolean;
  /** Window in ms (windowed aggregations; last and since_previous when given one), else null. */
  readonly windowMs: number | null;
  readonly where: CompiledFilter | null;
}

export interface CompiledFilter {
  readonly fields: readonly string[];
  test(event: Readonly<Record<string, Scalar>>): boolean;
}

export interface FeatureGroup {
  readonly name: string;
  readonly stream: string;
  readonly schema: SchemaName;
  readonly entity: string;
  readonly timeField: string;
  readonly idField: string;
  readonly latenessMs: number | null;
  /** Raw event fields the group stores per event (read by aggregations, filters, transforms), sorted. */
  readonly fields: readonly string[];
  readonly fieldKinds: Readonly<Record<string, FieldKind>>;
  /** Avro type of each stored raw field (for the update record and ClickHouse columns). */
  readonly fieldTypes: Readonly<Record<string, FeatureType>>;
  readonly transforms: Readonly<Record<string, TransformSpec>>;
  /** The transforms as a list, for the per-event hot paths (no allocation per event). */
  readonly transformList: readonly (readonly [string, TransformSpec])[];
  readonly features: readonly FeatureDef[];
  readonly featureNames: readonly string[];
  /** The longest window (ms); 0 when the group has none. */
  readonly maxWindowMs: number;
  readonly doc: string;
}

export class FeatureDefinitionError extends Error {
  override readonly name = 'FeatureDefinitionError';
}

/** Columns every feature row carries besides the features and the stored event fields. */
export const ROW_COLUMNS = ['event_id', 'entity_id', 'ts', 'source_topic', 'source_partition', 'source_offset', 'version'] as const;

const UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };
/** Longest window accepted: 400 days. */
const MAX_WINDOW_MS = 400 * 86_400_000;

/** '90s', '15m', '1h', '7d', '250ms' or a number of milliseconds; null when malformed. */
export function parseDuration(v: string | number): number | null {
  if (typeof v === 'number') return Number.isSafeInteger(v) ? v : null;
  const m = /^(\d+)(ms|s|m|h|d)$/.exec(v.trim());
  return m ? Number(m[1]) * UNITS[m[2]!]! : null;
}

export const count = (window: string | number, options: { where?: Filter } = {}): AggregationSpec => ({ kind: 'count', window, ...options });
export const sum = (field: string, window: string | number, options: { where?: Filter } = {}): AggregationSpec => ({ kind: 'sum', field, window, ...options });
export const avg = (field: string, window: string | number, options: { where?: Filter } = {}): AggregationSpec => ({ kind: 'avg', field, window, ...options });
export const min = (field: string, window: string | number, options: { where?: Filter; empty?: number | null } = {}): AggregationSpec => ({ kind: 'min', field, window, ...options });
export const max = (field: string, window: string | number, options: { where?: Filter; empty?: number | null } = {}): AggregationSpec => ({ kind: 'max', field, window, ...options });
export const distinctCount = (field: string, window: string | number, options: { where?: Filter } = {}): AggregationSpec => ({ kind: 'distinct', field, window, ...options });
export const lastValue = (field: string, options: { where?: Filter; window?: string | number } = {}): AggregationSpec => ({ kind: 'last', field, ...options });
export const timeSincePrevious = (options: { where?: Filter; window?: string | number } = {}): AggregationSpec => ({ kind: 'since_previous', ...options });
export const ratio = (numerator: string, denominator: string): AggregationSpec => ({ kind: 'ratio', numerator, denominator });

const NAME = /^[a-z][a-z0-9_]*$/;

function avroKind(type: unknown): { kind: FieldKind; avro: FeatureType; nullable: boolean; symbols?: readonly string[] } | null {
  if (Array.isArray(type)) {
    const nonNull = type.filter((t) => t !== 'null');
    if (nonNull.length !== 1) return null;
    const inner = avroKind(nonNull[0]);
    return inner ? { ...inner, nullable: true } : null;
  }
  if (typeof type === 'object' && type !== null) {
    const t = type as { type: string; symbols?: string[] };
    if (t.type === 'enum') return { kind: 'string', avro: 'string', nullable: false, symbols: t.symbols ?? [] };
    return avroKind(t.type);
  }
  switch (type) {
    case 'int': case 'long': return { kind: 'number', avro: 'long', nullable: false };
    case 'float': case 'double': return { kind: 'number', avro: 'double', nullable: false };
    case 'string': return { kind: 'string', avro: 'string', nullable: false };
    case 'boolean': return { kind: 'boolean', avro: 'boolean', nullable: false };
    default: return null;
  }
}

/** Builds and validates a group; every error names the group and, where it applies, the feature. */
export function featureGroup(spec: FeatureGroupSpec, schemaOverride?: AvroRecordSchema): FeatureGroup {
  const fail = (what: string, msg: string): never => {
    throw new FeatureDefinitionError(`feature group ${spec.name}${what ? `, ${what}` : ''}: ${msg}`);
  };
  if (!NAME.test(spec.name)) fail('', 'the name must be lower snake case');
  const schema = schemaOverride ?? loadAvroSchema(spec.schema);
  const schemaFields = new Map<string, NonNullable<ReturnType<typeof avroKind>>>();
  for (const f of schema.fields) {
    const k = avroKind(f.type);
    if (k) schemaFields.set(f.name, k);
  }
  const timeField = spec.timeField ?? 'ts';
  const idField = spec.idField ?? 'event_id';
  const need = (field: string, kind: FieldKind | null, what: string): void => {
    const f = schemaFields.get(field);
    if (!f) fail(what, `unknown field ${JSON.stringify(field)} (stream ${spec.stream} has ${[...schemaFields.keys()].join(', ')})`);
    else if (kind && f.kind !== kind) fail(what, `field ${field} is ${f.kind}, ${kind} needed`);
  };
  need(spec.entity, 'string', 'entity');
  need(timeField, 'number', 'time field');
  need(idField, 'string', 'id field');

  // Transforms: derived fields over raw fields, usable like fields of the event.
  const transforms = spec.transforms ?? {};
  const kinds = new Map<string, FieldKind>();
  for (const [name, f] of schemaFields) kinds.set(name, f.kind);
  for (const [name, t] of Object.entries(transforms)) {
    const what = `transform ${name}`;
    if (!NAME.test(name)) fail(what, 'the name must be lower snake case');
    if (schemaFields.has(name)) fail(what, `clashes with the event field of the same name`);
    if (typeof t.fn !== 'function') fail(what, 'fn must be a function');
    if (t.inputs.length === 0) fail(what, 'declare the event fields it reads in inputs');
    for (const input of t.inputs) need(input, null, what);
    kinds.set(name, t.type);
  }
  const stored = new Set<string>();
  const use = (field: string, kind: FieldKind | null, what: string): void => {
    if (transforms[field]) {
      if (kind && transforms[field].type !== kind) fail(what, `transform ${field} is ${transforms[field].type}, ${kind} needed`);
      for (const input of transforms[field].inputs) stored.add(input);
      return;
    }
    need(field, kind, what);
    stored.add(field);
  };
  const compileFilter = (where: Filter | undefined, what: string): CompiledFilter | null => {
    if (!where) return null;
    const fields = Object.keys(where);
    if (fields.length === 0) fail(what, 'an empty where matches everything; omit it');
    const tests: ((e: Readonly<Record<string, Scalar>>) => boolean)[] = [];
    for (const field of fields) {
      use(field, null, what);
      const kind = kinds.get(field)!;
      const symbols = schemaFields.get(field)?.symbols;
      const cond = where[field]!;
      const checkValue = (v: Scalar, op: string): void => {
        if (v === null) return;
        if (typeof v !== kind) fail(what, `where ${field} ${op} ${JSON.stringify(v)}: ${field} is ${kind}`);
        if (symbols && !symbols.includes(v as string)) fail(what, `where ${field} ${op} ${JSON.stringify(v)}: not one of ${symbols.join(', ')}`);
      };
      if (cond === null || typeof cond !== 'object') {
        checkValue(cond, '==');
        tests.push((e) => e[field] === cond);
        continue;
      }
      const ops = Object.keys(cond);
      if (ops.length === 0) fail(what, `where ${field} has no condition`);
      for (const op of ops) {
        const v = (cond as Record<string, unknown>)[op];
        switch (op) {
          case 'eq': checkValue(v as Scalar, op); tests.push((e) => e[field] === v); break;
          case 'ne': checkValue(v as Scalar, op); tests.push((e) => e[field] !== v); break;
          case 'in': {
            if (!Array.isArray(v) || v.length === 0) fail(what, `where ${field} in needs a non-empty list`);
            for (const x of v as Scalar[]) checkValue(x, op);
            const set = new Set(v as Scalar[]);
            tests.push((e) => set.has(e[field] ?? null));
            break;
          }
          case 'gt': case 'gte': case 'lt': case 'lte': {
            if (kind !== 'number') fail(what, `where ${field} ${op}: ${field} is ${kind}, not a number`);
            if (typeof v !== 'number' || !Number.isFinite(v)) fail(what, `where ${field} ${op} needs a finite number`);
            const n = v as number;
            const cmp = op === 'gt' ? (x: number) => x > n : op === 'gte' ? (x: number) => x >= n : op === 'lt' ? (x: number) => x < n : (x: number) => x <= n;
            tests.push((e) => typeof e[field] === 'number' && cmp(e[field]));
            break;
          }
          default: fail(what, `where ${field}: unknown operator ${op} (eq, ne, in, gt, gte, lt, lte)`);
        }
      }
    }
    return Object.freeze({ fields, test: (e: Readonly<Record<string, Scalar>>) => tests.every((t) => t(e)) });
  };

  const entries = Object.entries(spec.features);
  if (entries.length === 0) fail('', 'declares no feature');
  const reserved = new Set<string>([...ROW_COLUMNS, 'entity', timeField, idField]);
  const features: FeatureDef[] = [];
  for (const [name, agg] of entries) {
    const what = `feature ${name}`;
    if (!NAME.test(name)) fail(what, 'the name must be lower snake case');
    if (reserved.has(name)) fail(what, `the name is reserved for a row column (${[...reserved].join(', ')})`);
    let windowMs: number | null = null;
    if ((agg.kind === 'last' || agg.kind === 'since_previous') && agg.where && agg.window === undefined) {
      fail(what, `a filtered ${agg.kind} needs a window (its look-back): the online store keeps only the newest event beyond the longest window`);
    }
    if ('window' in agg && agg.window !== undefined) {
      windowMs = parseDuration(agg.window);
      if (windowMs === null) fail(what, `window ${JSON.stringify(agg.window)} is not a duration like 30s, 15m, 1h, 7d or a number of ms`);
      if (windowMs! <= 0 || windowMs! > MAX_WINDOW_MS) fail(what, `window ${JSON.stringify(agg.window)} must be positive and at most 400d`);
    }
    let type: FeatureType = 'double';
    let nullable = false;
    switch (agg.kind) {
      case 'count': type = 'long'; break;
      case 'distinct': use(agg.field, null, what); type = 'long'; break;
      case 'sum': use(agg.field, 'number', what); break;
      case 'avg': use(agg.field, 'number', what); nullable = true; break;
      case 'min': case 'max':
        use(agg.field, 'number', what);
        if (agg.empty !== undefined && agg.empty !== null && !Number.isFinite(agg.empty)) fail(what, 'empty must be a finite number or null');
        nullable = agg.empty === undefined || agg.empty === null;
        break;
      case 'last': {
        use(agg.field, null, what);
        const k = kinds.get(agg.field)!;
        type = k === 'number' ? (schemaFields.get(agg.field)?.avro ?? 'double') : k === 'boolean' ? 'boolean' : 'string';
        nullable = true;
        break;
      }
      case 'since_previous': nullable = true; break;
      case 'ratio': nullable = true; break;
      default: fail(what, `unknown aggregation ${JSON.stringify((agg as { kind: unknown }).kind)}`);
    }
    features.push({ name, spec: agg, type, nullable, windowMs, where: compileFilter('where' in agg ? agg.where : undefined, what) });
  }
  // Ratios refer to numeric features of the group (not to other ratios, which keeps evaluation one pass).
  for (const f of features) {
    if (f.spec.kind !== 'ratio') continue;
    for (const ref of [f.spec.numerator, f.spec.denominator]) {
      const target = features.find((x) => x.name === ref);
      if (!target) fail(`feature ${f.name}`, `ratio refers to ${JSON.stringify(ref)}, which the group does not declare`);
      else if (target.spec.kind === 'ratio' || (target.type !== 'long' && target.type !== 'double')) fail(`feature ${f.name}`, `ratio operand ${ref} must be a numeric aggregation`);
    }
  }
  const fields = [...stored].sort();
  for (const f of fields) if (features.some((x) => x.name === f)) fail(`feature ${f}`, `clashes with the event field ${f} stored in every row`);
  for (const f of fields) if (reserved.has(f)) fail(`field ${f}`, 'a stored event field cannot be a row column');
  for (const f of fields) if (features.some((x) => x.name === `${f}_exact`)) fail(`feature ${f}_exact`, `clashes with the exact-value column of the stored field ${f}`);
  const latenessMs = spec.lateness === undefined ? null : parseDuration(spec.lateness);
  if (spec.lateness !== undefined && (latenessMs === null || latenessMs < 0)) fail('lateness', `${JSON.stringify(spec.lateness)} is not a duration`);
  const fieldKinds: Record<string, FieldKind> = {};
  const fieldTypes: Record<string, FeatureType> = {};
  for (const f of fields) {
    fieldKinds[f] = schemaFields.get(f)!.kind;
    fieldTypes[f] = schemaFields.get(f)!.avro;
  }
  return Object.freeze({
    name: spec.name,
    stream: spec.stream,
    schema: spec.schema,
    entity: spec.entity,
    timeField,
    idField,
    latenessMs,
    fields: Object.freeze(fields),
    fieldKinds: Object.freeze(fieldKinds),
    fieldTypes: Object.freeze(fieldTypes),
    transforms: Object.freeze({ ...transforms }),
    transformList: Object.freeze(Object.entries(transforms).map(([name, t]) => Object.freeze([name, t] as const))),
    features: Object.freeze(features),
    featureNames: Object.freeze(features.map((f) => f.name)),
    maxWindowMs: Math.max(0, ...features.map((f) => f.windowMs ?? 0)),
    doc: spec.doc ?? '',
  });
}

/** Checks names across groups: a feature name identifies one feature in training sets and predictions. */
export function validateGroups(groups: readonly FeatureGroup[]): void {
  const byName = new Map<string, string>();
  const groupNames = new Set<string>();
  for (const g of groups) {
    if (groupNames.has(g.name)) throw new FeatureDefinitionError(`feature group ${g.name} is declared twice`);
    groupNames.add(g.name);
    for (const f of g.featureNames) {
      const other = byName.get(f);
      if (other) throw new FeatureDefinitionError(`feature group ${g.name}, feature ${f}: the name is also a feature of group ${other}; feature names must be unique across groups`);
      byName.set(f, g.name);
    }
  }
}
