import { Ajv, type ErrorObject } from 'ajv';
import { parse as parseYaml } from 'yaml';
import { FabricError } from '../../topology/errors.js';

/**
 * The rule-set document (`fabric rules set --model M rules.yaml`): what a model's output becomes.
 * YAML or JSON, validated by the JSON Schema below (ajv), then by the checks a schema cannot express
 * (kinds allowed for the model's task, expressions that parse and type-check, unreachable rules).
 *
 * Scoring models (fraud) walk `rules` in order: the first list, condition or threshold rule that
 * matches decides; a frequency cap then limits how often one decision may be given per entity and
 * window (beyond it the decision becomes the cap's `otherwise`). Recommendation models filter their
 * ranked candidates (deny/allow lists, exclude conditions), then select the top k under the
 * frequency caps and the diversity constraint, and enrich the items with metadata.
 */

export type Decision = 'block' | 'review' | 'allow';
export const DECISIONS: readonly Decision[] = ['block', 'review', 'allow'];

/** Why the model gave no score; each may be given its own fallback decision. */
export const FALLBACK_REASONS = ['features_missing', 'features_late', 'model_timeout', 'model_error', 'rule_error'] as const;
export type FallbackReason = (typeof FALLBACK_REASONS)[number];
/** Why the model gave no score (a rule failing is the rules' own reason). */
export type ModelFallbackReason = Exclude<FallbackReason, 'rule_error'>;

export interface ListMatch {
  /** `entity`, `event.<field>`, `item.id` or `item.<attribute>` (recs). */
  readonly field: string;
  readonly values: readonly string[];
}

export interface ListRule {
  readonly name: string;
  readonly kind: 'deny' | 'allow';
  readonly description?: string;
  readonly match: ListMatch;
  /** Scoring models: the decision a match gives (deny: block, allow: allow by default). */
  readonly decision?: Decision;
}

export interface ConditionRule {
  readonly name: string;
  readonly kind: 'condition';
  readonly description?: string;
  /** A CEL expression over `event`, `features`, `score`, `entity`, `model` (and `item`, `user` for recs). */
  readonly when: string;
  /** Scoring models: the decision when `when` holds. */
  readonly decision?: Decision;
  /** Recommendation models: what happens to a candidate item when `when` holds. Default exclude. */
  readonly action?: 'exclude';
}

export interface Threshold {
  readonly decision: Decision;
  /** The decision applies when score >= min. */
  readonly min: number;
}

export interface ThresholdRule {
  readonly name: string;
  readonly kind: 'threshold';
  readonly description?: string;
  /** Thresholds, or `model`: the ones registered with the serving model version. */
  readonly thresholds: readonly Threshold[] | 'model';
  /** The decision below every threshold. */
  readonly otherwise: Decision;
}

export interface FrequencyCapRule {
  readonly name: string;
  readonly kind: 'frequency_cap';
  readonly description?: string;
  /** Event-time window, e.g. `24h`, `1h`, `30m`. */
  readonly window: string;
  readonly max: number;
  /** Scoring models: the decision capped (per entity), and what it becomes beyond the cap. */
  readonly decision?: Decision;
  readonly otherwise?: Decision;
}

export interface TopKRule {
  readonly name: string;
  readonly kind: 'top_k';
  readonly description?: string;
  readonly k: number;
  readonly diversity?: { readonly attribute: string; readonly max_per_value: number };
}

export interface EnrichRule {
  readonly name: string;
  readonly kind: 'enrich';
  readonly description?: string;
  /** The metadata kind joined (default `item`). */
  readonly from?: string;
  readonly attributes: readonly string[];
}

export type Rule = ListRule | ConditionRule | ThresholdRule | FrequencyCapRule | TopKRule | EnrichRule;
export type RuleKind = Rule['kind'];

export interface RuleSet {
  readonly model: string;
  readonly description?: string;
  readonly rules: readonly Rule[];
  readonly fallback?: {
    /** Scoring models: the decision when the model gives no score (default review). */
    readonly decision?: Decision;
    /** Per-reason overrides. */
    readonly reasons?: Partial<Record<FallbackReason, Decision>>;
  };
}

const name = { type: 'string', pattern: '^[a-z][a-z0-9_-]{0,62}$' };
const decision = { enum: DECISIONS };
const duration = { type: 'string', pattern: '^[1-9][0-9]*(ms|s|m|h|d)$' };
const base = { name, kind: { type: 'string' }, description: { type: 'string', maxLength: 1000 } };

/** The JSON Schema of a rule set (draft 2020-12 subset; ajv with the discriminator keyword). */
export const RULE_SET_JSON_SCHEMA = {
  type: 'object',
  additionalProperties: false,
  required: ['model', 'rules'],
  properties: {
    model: { type: 'string', pattern: '^[a-z][a-z0-9_-]{0,62}$' },
    description: { type: 'string', maxLength: 2000 },
    rules: {
      type: 'array',
      maxItems: 200,
      items: {
        type: 'object',
        required: ['name', 'kind'],
        properties: { name, kind: { type: 'string' } },
        discriminator: { propertyName: 'kind' },
        oneOf: [
          {
            additionalProperties: false,
            required: ['match'],
            properties: {
              ...base,
              kind: { enum: ['deny', 'allow'] },
              match: {
                type: 'object',
                additionalProperties: false,
                required: ['field', 'values'],
                properties: { field: { type: 'string', pattern: '^(entity|(event|item|features)\\.[A-Za-z_][A-Za-z0-9_]*)$' }, values: { type: 'array', items: { type: 'string' }, minItems: 1, maxItems: 100000 } },
              },
              decision,
            },
          },
          { additionalProperties: false, required: ['when'], properties: { ...base, kind: { const: 'condition' }, when: { type: 'string', minLength: 1, maxLength: 4000 }, decision, action: { const: 'exclude' } } },
          {
            additionalProperties: false,
            required: ['thresholds', 'otherwise'],
            properties: {
              ...base,
              kind: { const: 'threshold' },
              thresholds: {
                oneOf: [
                  { const: 'model' },
                  { type: 'array', minItems: 1, maxItems: 10, items: { type: 'object', additionalProperties: false, required: ['decision', 'min'], properties: { decision, min: { type: 'number', minimum: 0, maximum: 1 } } } },
                ],
              },
              otherwise: decision,
            },
          },
          { additionalProperties: false, required: ['window', 'max'], properties: { ...base, kind: { const: 'frequency_cap' }, window: duration, max: { type: 'integer', minimum: 1, maximum: 1000000 }, decision, otherwise: decision } },
          {
            additionalProperties: false,
            required: ['k'],
            properties: {
              ...base,
              kind: { const: 'top_k' },
              k: { type: 'integer', minimum: 1, maximum: 100 },
              diversity: { type: 'object', additionalProperties: false, required: ['attribute', 'max_per_value'], properties: { attribute: { type: 'string', pattern: '^[A-Za-z_][A-Za-z0-9_]*$' }, max_per_value: { type: 'integer', minimum: 1 } } },
            },
          },
          { additionalProperties: false, required: ['attributes'], properties: { ...base, kind: { const: 'enrich' }, from: { type: 'string', pattern: '^[a-z][a-z0-9_]*$' }, attributes: { type: 'array', minItems: 1, items: { type: 'string', pattern: '^[A-Za-z_][A-Za-z0-9_]*$' } } } },
        ],
      },
    },
    fallback: {
      type: 'object',
      additionalProperties: false,
      properties: {
        decision,
        reasons: { type: 'object', additionalProperties: false, properties: Object.fromEntries(FALLBACK_REASONS.map((r) => [r, decision])) },
      },
    },
  },
} as const;

const ajv = new Ajv({ allErrors: true, discriminator: true, strict: true, allowUnionTypes: true });
const validateSchema = ajv.compile(RULE_SET_JSON_SCHEMA);

/** A rule set that failed validation; `path` points into the document (JSON pointer). */
export class RuleSetInvalid extends FabricError {
  constructor(readonly problems: readonly { path: string; message: string }[], source?: string) {
    super('FABRIC_RULES_INVALID', `${source ? `${source}: ` : ''}invalid rule set: ${problems.map((p) => `${p.path || '/'}: ${p.message}`).join('; ')}`);
  }
}

function describe(e: ErrorObject): { path: string; message: string } {
  const path = e.instancePath || '/';
  if (e.keyword === 'additionalProperties') return { path, message: `unknown property ${JSON.stringify(e.params.additionalProperty)}` };
  if (e.keyword === 'enum') return { path, message: `must be one of ${(e.params.allowedValues as unknown[]).map((v) => JSON.stringify(v)).join(', ')}` };
  if (e.keyword === 'discriminator' && e.params.error === 'mapping') return { path: `${path}/kind`, message: `unknown rule kind ${JSON.stringify(e.params.tagValue)}: one of deny, allow, condition, threshold, frequency_cap, top_k, enrich` };
  return { path, message: e.message ?? e.keyword };
}

/** Parses a YAML or JSON document (YAML is a superset) into a rule set, schema-checked. */
export function parseRuleSet(text: string, source?: string): RuleSet {
  let doc: unknown;
  try {
    doc = parseYaml(text, { maxAliasCount: 100, prettyErrors: true });
  } catch (err) {
    throw new RuleSetInvalid([{ path: '/', message: `not YAML or JSON: ${(err as Error).message.split('\n')[0]}` }], source);
  }
  return checkRuleSetShape(doc, source);
}

export function checkRuleSetShape(doc: unknown, source?: string): RuleSet {
  if (!validateSchema(doc)) {
    // The discriminator reports the branch's errors only; keep the first few, most specific first.
    const problems = (validateSchema.errors ?? []).map(describe);
    const unique = problems.filter((p, i) => problems.findIndex((q) => q.path === p.path && q.message === p.message) === i);
    throw new RuleSetInvalid(unique.slice(0, 8), source);
  }
  return doc as unknown as RuleSet;
}

/** Milliseconds of a duration such as `24h`, `90m`, `30s`, `500ms`, `7d`. */
export function durationMs(text: string): number {
  const m = /^([1-9][0-9]*)(ms|s|m|h|d)$/.exec(text);
  if (!m) throw new Error(`${JSON.stringify(text)} is not a duration like 30s, 15m, 24h or 7d`);
  const unit = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 }[m[2] as 'ms' | 's' | 'm' | 'h' | 'd'];
  return Number(m[1]) * unit;
}

/** The canonical text of a rule set (stable key order as written, 2-space JSON): what is stored and hashed. */
export function canonicalRuleSet(rules: RuleSet): string {
  return `${JSON.stringify(rules, null, 2)}\n`;
}
