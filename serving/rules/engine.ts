import { createHash } from 'node:crypto';
import type { ModelVersion } from '../../schemas/types.generated.js';
import { RECS_TOP_K } from '../models/recs-inputs.js';
import { compileCondition, conditionError, type Condition } from './expr.js';
import { RuleSetInvalid, canonicalRuleSet, checkRuleSetShape, durationMs, type Decision, type FallbackReason, type ModelFallbackReason, type Rule, type RuleSet } from './spec.js';

/**
 * A rule set compiled for one model: conditions parsed and type-checked once, lists as sets. Pure and
 * synchronous: the frequency caps, which need shared state, are returned as requests the caller
 * settles in Redis for a whole batch (serving/rules/caps.ts) and applies with `applyCap`.
 */

/** What a model's output is: a decision per event (fraud) or a ranked list of items (recs). */
export type OutputKind = 'decision' | 'ranking';

export function outputKindOf(task: string): OutputKind {
  return task === 'recs' ? 'ranking' : 'decision';
}

const KINDS: Record<OutputKind, ReadonlySet<Rule['kind']>> = {
  decision: new Set(['deny', 'allow', 'condition', 'threshold', 'frequency_cap']),
  ranking: new Set(['deny', 'allow', 'condition', 'frequency_cap', 'top_k', 'enrich']),
};

export interface CapSpec {
  readonly name: string;
  readonly windowMs: number;
  readonly max: number;
}

export interface DecisionCap extends CapSpec {
  readonly decision: Decision;
  readonly otherwise: Decision;
}

/** What decides one event: the model's output and what the rules may look at. */
export interface DecisionInput {
  readonly event: Readonly<Record<string, unknown>>;
  readonly entity: string;
  readonly features: Readonly<Record<string, unknown>>;
  /** Null when the model gave no score; `reason` says why. */
  readonly score: number | null;
  readonly reason?: ModelFallbackReason;
}

export interface DecisionOutcome {
  readonly decision: Decision;
  readonly reasons: string[];
  /** Names of the rules that decided or changed the decision, in order. */
  readonly fired: string[];
  readonly fallback: boolean;
  /** A rule that failed at run time (its fallback decision applied). */
  readonly error?: { readonly rule: string; readonly message: string };
  /** The cap on this decision, to settle before the decision is final. */
  readonly cap?: DecisionCap;
}

export interface RankedCandidate {
  readonly id: string;
  readonly score: number;
  /** Metadata attributes of the item (empty when none are known). */
  readonly attributes: Readonly<Record<string, unknown>>;
}

export interface RankingInput {
  readonly event: Readonly<Record<string, unknown>>;
  /** The user. */
  readonly entity: string;
  readonly features: Readonly<Record<string, unknown>>;
}

export interface FilterOutcome {
  /** Candidates the filters kept, in rank order. */
  readonly kept: RankedCandidate[];
  /** Rules that excluded at least one candidate, with how many. */
  readonly excluded: Map<string, number>;
  readonly errors: { rule: string; message: string }[];
}

export interface CompiledRules {
  readonly model: string;
  /** 0: no rule set was set for the model; the defaults derived from the model version apply. */
  readonly version: number;
  readonly sha256: string;
  readonly spec: RuleSet;
  readonly output: OutputKind;
  /** Decision models: the decision for one event. */
  decide(input: DecisionInput, entry: Pick<ModelVersion, 'thresholds'>): DecisionOutcome;
  /** Ranking models: the candidates the list and condition rules keep. */
  filter(input: RankingInput, ranked: readonly RankedCandidate[]): FilterOutcome;
  /** Ranking models: how many items are shown, and the diversity constraint. */
  topK(entry: Pick<ModelVersion, 'params'>): { readonly k: number; readonly rule: string | null; readonly diversity?: { readonly attribute: string; readonly maxPerValue: number } };
  /** Ranking models: per (user, item) caps, in order. */
  readonly itemCaps: readonly CapSpec[];
  /** Metadata attributes the rules read (filters, diversity, enrichment), by metadata kind. */
  readonly metadataNeeded: ReadonlyMap<string, readonly string[]>;
  /** Ranking models: attributes copied onto each item shown, by metadata kind. */
  readonly enrich: readonly { readonly rule: string; readonly from: string; readonly attributes: readonly string[] }[];
  /** The decision when the model gave no score for `reason`. */
  fallbackDecision(reason: FallbackReason): Decision;
}

/** CEL reads plain objects only: an Avro record instance (a decoded event) becomes one. */
function plain(o: Readonly<Record<string, unknown>>): Readonly<Record<string, unknown>> {
  const proto: unknown = Object.getPrototypeOf(o);
  return proto === Object.prototype || proto === null ? o : { ...o };
}

function fmt(x: number): string {
  return x.toFixed(4);
}

/** Reads `entity`, `event.x`, `features.x`, `item.id` or `item.<attribute>` from a context. */
/** A list rule's field, split once at compile time. */
interface FieldRef {
  readonly scope: 'entity' | 'event' | 'features' | 'item';
  readonly key: string;
}

function fieldRef(field: string): FieldRef {
  if (field === 'entity') return { scope: 'entity', key: '' };
  const dot = field.indexOf('.');
  return { scope: field.slice(0, dot) as FieldRef['scope'], key: field.slice(dot + 1) };
}

function lookup(at: FieldRef, input: { readonly entity: string; readonly event: Readonly<Record<string, unknown>>; readonly features: Readonly<Record<string, unknown>> }, item?: RankedCandidate): unknown {
  switch (at.scope) {
    case 'entity':
      return input.entity;
    case 'event':
      return input.event[at.key];
    case 'features':
      return input.features[at.key];
    case 'item':
      return item ? (at.key === 'id' ? item.id : item.attributes[at.key]) : undefined;
  }
}

type Compiled =
  | { readonly rule: Rule & { kind: 'deny' | 'allow' }; readonly values: ReadonlySet<string>; readonly at: FieldRef }
  | { readonly rule: Rule & { kind: 'condition' }; readonly when: Condition; readonly usesScore: boolean }
  | { readonly rule: Rule & { kind: 'threshold' } };

/**
 * Compiles and checks a rule set for a model whose output is `output`. Throws RuleSetInvalid with the
 * path of every problem: kinds the output does not allow, expressions that do not parse or type-check,
 * duplicate names, rules after the threshold (never reached), more than one cap per decision.
 */
export function compileRules(spec: RuleSet, output: OutputKind, version: number): CompiledRules {
  checkRuleSetShape(spec);
  const problems: { path: string; message: string }[] = [];
  const names = new Set<string>();
  const ordered: Compiled[] = [];
  const decisionCaps = new Map<Decision, DecisionCap>();
  const itemCaps: CapSpec[] = [];
  const enrich: { rule: string; from: string; attributes: readonly string[] }[] = [];
  const metadataNeeded = new Map<string, Set<string>>();
  const need = (kind: string, attribute: string): void => {
    let set = metadataNeeded.get(kind);
    if (!set) metadataNeeded.set(kind, (set = new Set()));
    set.add(attribute);
  };
  let topK: { rule: string; k: number; diversity?: { attribute: string; maxPerValue: number } } | null = null;
  let threshold = -1;
  spec.rules.forEach((rule, i) => {
    const path = `/rules/${i}`;
    if (names.has(rule.name)) problems.push({ path: `${path}/name`, message: `duplicate rule name ${JSON.stringify(rule.name)}` });
    names.add(rule.name);
    if (!KINDS[output].has(rule.kind)) {
      problems.push({ path: `${path}/kind`, message: `a ${rule.kind} rule does not apply to a ${output === 'decision' ? 'decision model (one of deny, allow, condition, threshold, frequency_cap)' : 'ranking model (one of deny, allow, condition, frequency_cap, top_k, enrich)'}` });
      return;
    }
    if (threshold >= 0 && output === 'decision' && rule.kind !== 'frequency_cap') {
      problems.push({ path, message: `rule ${rule.name} comes after the threshold rule ${spec.rules[threshold]!.name}, which always decides: it would never run (put it before)` });
    }
    switch (rule.kind) {
      case 'deny':
      case 'allow':
        if (output === 'ranking' && rule.decision !== undefined) problems.push({ path: `${path}/decision`, message: 'a ranking model\'s list rule filters items; it takes no decision' });
        if (output === 'decision' && rule.match.field.startsWith('item.')) problems.push({ path: `${path}/match/field`, message: 'item.* fields exist for ranking models only' });
        if (rule.match.field.startsWith('item.') && rule.match.field !== 'item.id') need('item', rule.match.field.slice(5));
        ordered.push({ rule, values: new Set(rule.match.values), at: fieldRef(rule.match.field) });
        break;
      case 'condition': {
        if (output === 'decision' && rule.decision === undefined) problems.push({ path, message: 'a condition of a decision model needs the decision it gives' });
        if (output === 'ranking' && rule.decision !== undefined) problems.push({ path: `${path}/decision`, message: 'a ranking model\'s condition excludes items (action: exclude); it takes no decision' });
        try {
          const c = compileCondition(rule.when);
          ordered.push({ rule, when: c.evaluate, usesScore: c.usesScore });
          if (output === 'ranking') for (const m of rule.when.matchAll(/\bitem\.([A-Za-z_][A-Za-z0-9_]*)/g)) if (!['id', 'score', 'rank'].includes(m[1]!)) need('item', m[1]!);
        } catch (err) {
          problems.push({ path: `${path}/when`, message: `${JSON.stringify(rule.when)}: ${(err as Error).message}` });
        }
        break;
      }
      case 'threshold':
        if (threshold >= 0) problems.push({ path, message: 'a decision model has one threshold rule' });
        threshold = i;
        if (Array.isArray(rule.thresholds)) {
          const decisions = new Set((rule.thresholds as readonly { decision: Decision }[]).map((t) => t.decision));
          if (decisions.size !== rule.thresholds.length) problems.push({ path: `${path}/thresholds`, message: 'one threshold per decision' });
        }
        ordered.push({ rule });
        break;
      case 'frequency_cap': {
        const windowMs = durationMs(rule.window);
        if (output === 'decision') {
          if (rule.decision === undefined || rule.otherwise === undefined) problems.push({ path, message: 'a decision model\'s frequency cap names the decision it caps and the decision beyond the cap (decision, otherwise)' });
          else if (rule.decision === rule.otherwise) problems.push({ path: `${path}/otherwise`, message: 'the decision beyond the cap must differ from the capped one' });
          else if (decisionCaps.has(rule.decision)) problems.push({ path: `${path}/decision`, message: `decision ${rule.decision} is capped twice` });
          else decisionCaps.set(rule.decision, { name: rule.name, windowMs, max: rule.max, decision: rule.decision, otherwise: rule.otherwise });
        } else {
          if (rule.decision !== undefined || rule.otherwise !== undefined) problems.push({ path, message: 'a ranking model\'s frequency cap limits how often an item is shown to a user; it takes no decision' });
          itemCaps.push({ name: rule.name, windowMs, max: rule.max });
        }
        break;
      }
      case 'top_k':
        if (topK) problems.push({ path, message: 'one top_k rule per rule set' });
        topK = { rule: rule.name, k: rule.k, ...(rule.diversity ? { diversity: { attribute: rule.diversity.attribute, maxPerValue: rule.diversity.max_per_value } } : {}) };
        if (rule.diversity) need('item', rule.diversity.attribute);
        break;
      case 'enrich':
        enrich.push({ rule: rule.name, from: rule.from ?? 'item', attributes: rule.attributes });
        for (const a of rule.attributes) need(rule.from ?? 'item', a);
        break;
    }
  });
  for (const cap of decisionCaps.values()) if (decisionCaps.has(cap.otherwise)) problems.push({ path: '/rules', message: `cap ${cap.name} turns ${cap.decision} into ${cap.otherwise}, which is capped too: caps do not chain` });
  if (output === 'decision' && threshold < 0) problems.push({ path: '/rules', message: 'a decision model needs a threshold rule (thresholds: model uses the model version\'s own)' });
  if (problems.length > 0) throw new RuleSetInvalid(problems);

  const fallbackDecision = (reason: FallbackReason): Decision => spec.fallback?.reasons?.[reason] ?? spec.fallback?.decision ?? 'review';
  const sha256 = createHash('sha256').update(canonicalRuleSet(spec)).digest('hex');

  function decide(input: DecisionInput, entry: Pick<ModelVersion, 'thresholds'>): DecisionOutcome {
    const withCap = (o: Omit<DecisionOutcome, 'cap'>): DecisionOutcome => {
      const cap = decisionCaps.get(o.decision);
      return cap ? { ...o, cap } : o;
    };
    // What conditions see, built once per decision (and only when a condition runs).
    let scope: Record<string, unknown> | undefined;
    for (const c of ordered) {
      const rule = c.rule;
      if (rule.kind === 'deny' || rule.kind === 'allow') {
        const list = c as { values: ReadonlySet<string>; at: FieldRef };
        const value = lookup(list.at, input);
        const listed = value !== undefined && value !== null && list.values.has(String(value));
        if (!listed) continue;
        const decision = rule.decision ?? (rule.kind === 'deny' ? 'block' : 'allow');
        return withCap({ decision, reasons: [`${rule.name}: ${rule.match.field} ${String(value)} is on the ${rule.kind} list`], fired: [rule.name], fallback: false });
      }
      if (rule.kind === 'condition') {
        const cond = c as { when: Condition; usesScore: boolean };
        if (input.score === null && cond.usesScore) continue;
        let holds: boolean;
        try {
          scope ??= { event: plain(input.event), features: plain(input.features), score: input.score, entity: input.entity, model: {} };
          holds = cond.when(scope);
        } catch (err) {
          const message = conditionError(err);
          return withCap({ decision: fallbackDecision('rule_error'), reasons: [`fallback:rule_error`, `${rule.name}: ${message}`], fired: [rule.name], fallback: true, error: { rule: rule.name, message } });
        }
        if (holds) return withCap({ decision: rule.decision!, reasons: [`${rule.name}: ${rule.when}`], fired: [rule.name], fallback: false });
        continue;
      }
      // The threshold rule: the score decides, or the fallback when there is none.
      const t = rule as Rule & { kind: 'threshold' };
      if (input.reason || input.score === null) {
        const reason = input.reason ?? 'model_error';
        return withCap({ decision: fallbackDecision(reason), reasons: [`fallback:${reason}`], fired: [rule.name], fallback: true });
      }
      if (!Number.isFinite(input.score)) return withCap({ decision: fallbackDecision('model_error'), reasons: ['fallback:model_error', 'score is not finite'], fired: [rule.name], fallback: true });
      const thresholds = thresholdsOf(t, entry);
      for (const t of thresholds) {
        if (input.score >= t.min) return withCap({ decision: t.decision, reasons: [`score ${fmt(input.score)} >= ${t.decision} ${t.min}`], fired: [rule.name], fallback: false });
      }
      const lowest = thresholds[thresholds.length - 1];
      return withCap({ decision: t.otherwise, reasons: [lowest ? `score ${fmt(input.score)} < ${lowest.decision} ${lowest.min}` : `score ${fmt(input.score)}`], fired: [rule.name], fallback: false });
    }
    // Unreachable for a compiled decision rule set (it has a threshold rule, which always decides).
    return { decision: fallbackDecision('rule_error'), reasons: ['fallback:rule_error', 'no rule decided'], fired: [], fallback: true };
  }

  function filter(input: RankingInput, ranked: readonly RankedCandidate[]): FilterOutcome {
    const excluded = new Map<string, number>();
    const errors: { rule: string; message: string }[] = [];
    const event = plain(input.event);
    const features = plain(input.features);
    const kept: RankedCandidate[] = [];
    ranked.forEach((item, index) => {
      let scope: Record<string, unknown> | undefined;
      for (const c of ordered) {
        const rule = c.rule;
        let out: boolean;
        if (rule.kind === 'deny' || rule.kind === 'allow') {
          const list = c as { values: ReadonlySet<string>; at: FieldRef };
          const value = lookup(list.at, input, item);
          const listed = value !== undefined && value !== null && list.values.has(String(value));
          out = rule.kind === 'deny' ? listed : !listed;
        } else if (rule.kind === 'condition') {
          try {
            scope ??= { event, features, entity: input.entity, user: input.entity, item: { ...item.attributes, id: item.id, score: item.score, rank: index + 1 }, score: item.score, model: {} };
            out = (c as { when: Condition }).when(scope);
          } catch (err) {
            // A condition that cannot be evaluated excludes the item: never show what a rule could not clear.
            if (errors.length < 10) errors.push({ rule: rule.name, message: conditionError(err) });
            out = true;
          }
        } else continue;
        if (out) {
          excluded.set(rule.name, (excluded.get(rule.name) ?? 0) + 1);
          return;
        }
      }
      kept.push(item);
    });
    return { kept, excluded, errors };
  }

  return {
    model: spec.model,
    version,
    sha256,
    spec,
    output,
    decide,
    filter,
    topK: (entry) => (topK ? { k: topK.k, rule: topK.rule, ...(topK.diversity ? { diversity: topK.diversity } : {}) } : { k: Number(entry.params.top_k ?? RECS_TOP_K), rule: null }),
    itemCaps,
    metadataNeeded: new Map([...metadataNeeded].map(([k, v]) => [k, [...v].sort()])),
    enrich,
    fallbackDecision,
  };
}

/** Thresholds highest first; `model`: the model version's registered ones (review never above block). */
function thresholdsOf(rule: Rule & { kind: 'threshold' }, entry: Pick<ModelVersion, 'thresholds'>): { decision: Decision; min: number }[] {
  if (rule.thresholds !== 'model') return [...rule.thresholds].sort((a, b) => b.min - a.min);
  const block = entry.thresholds.block ?? 1;
  const review = Math.min(entry.thresholds.review ?? block, block);
  return [
    { decision: 'block', min: block },
    { decision: 'review', min: review },
  ];
}

/** The rules a model has before any rule set is set for it (version 0): its own thresholds, review as fallback; top-k for rankings. */
export function defaultRules(model: string, output: OutputKind): CompiledRules {
  const spec: RuleSet =
    output === 'decision'
      ? { model, description: 'Defaults: the model version\'s thresholds.', rules: [{ name: 'thresholds', kind: 'threshold', thresholds: 'model', otherwise: 'allow' }], fallback: { decision: 'review' } }
      : { model, description: 'Defaults: the top items by score (top_k of the model version).', rules: [] };
  return compileRules(spec, output, 0);
}

/** Applies a settled cap: the decision stands when admitted, else becomes the cap's `otherwise`. */
export function applyCap(outcome: DecisionOutcome, admitted: boolean): DecisionOutcome {
  const cap = outcome.cap;
  if (!cap || admitted) return outcome;
  return {
    ...outcome,
    decision: cap.otherwise,
    reasons: [...outcome.reasons, `${cap.name}: more than ${cap.max} ${cap.decision} decision${cap.max === 1 ? '' : 's'} for this entity within ${humanMs(cap.windowMs)}, so ${cap.otherwise}`],
    fired: [...outcome.fired, cap.name],
  };
}

function humanMs(ms: number): string {
  for (const [unit, size] of [['d', 86_400_000], ['h', 3_600_000], ['m', 60_000], ['s', 1000]] as const) if (ms % size === 0) return `${ms / size}${unit}`;
  return `${ms}ms`;
}

/**
 * The top-k selection without shared state (no caps, or a dry run simulating them): candidates in rank
 * order, each taken unless `capped(i)` or its diversity value already has its quota. The Redis script
 * in caps.ts runs the same walk atomically with the caps.
 */
export function selectTopK(ranked: readonly RankedCandidate[], k: number, diversity: { attribute: string; maxPerValue: number } | undefined, capped: (index: number) => boolean = () => false): number[] {
  const chosen: number[] = [];
  const perValue = new Map<string, number>();
  for (let i = 0; i < ranked.length && chosen.length < k; i++) {
    // An item without the attribute (no metadata yet) is not held to a quota.
    const value = diversity ? String(ranked[i]!.attributes[diversity.attribute] ?? '') : '';
    if (value !== '' && (perValue.get(value) ?? 0) >= diversity!.maxPerValue) continue;
    if (capped(i)) continue;
    chosen.push(i);
    perValue.set(value, (perValue.get(value) ?? 0) + 1);
  }
  return chosen;
}

const defaultsCache = new Map<string, CompiledRules>();

/** A rule source serving only the defaults (version 0) of every model: for tools and tests without _fabric.rules. */
export const MODEL_DEFAULT_RULES = {
  current(model: string, output: OutputKind): CompiledRules {
    const key = `${model}:${output}`;
    let rules = defaultsCache.get(key);
    if (!rules) defaultsCache.set(key, (rules = defaultRules(model, output)));
    return rules;
  },
};
