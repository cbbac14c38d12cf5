import type { ModelVersion } from '../../schemas/types.generated.js';
import { applyCap, type CompiledRules } from './engine.js';
import { FALLBACK_REASONS, type Decision, type ModelFallbackReason } from './spec.js';

/** One past prediction as the ledger holds it, with its event's fields. */
export interface PastPrediction {
  readonly event_id: string;
  readonly entity_id: string;
  readonly version: string;
  readonly score: number | null;
  readonly decision: string;
  readonly reasons: readonly string[];
  readonly event_ts: number;
  readonly features: Readonly<Record<string, number | null>>;
  /** The event's fields (empty when the event is no longer in the ledger). */
  readonly event: Readonly<Record<string, unknown>>;
}

export interface DryRunChange {
  readonly event_id: string;
  readonly entity_id: string;
  readonly score: number | null;
  readonly from: string;
  readonly to: Decision;
  readonly reasons: readonly string[];
}

export interface DryRunReport {
  readonly model: string;
  readonly predictions: number;
  readonly changed: number;
  /** Counts by `from -> to`. */
  readonly transitions: Record<string, number>;
  /** Decisions before and after. */
  readonly before: Record<string, number>;
  readonly after: Record<string, number>;
  /** How often each rule of the new set fired. */
  readonly fired: Record<string, number>;
  readonly ruleErrors: number;
  /** The first changes (time order). */
  readonly examples: DryRunChange[];
}

/** The model's own fallback reason recorded on a prediction (`fallback:<reason>` first), if any. */
function recordedReason(p: PastPrediction): ModelFallbackReason | undefined {
  const first = p.reasons[0] ?? '';
  const reason = first.startsWith('fallback:') ? first.slice('fallback:'.length) : '';
  return (FALLBACK_REASONS as readonly string[]).includes(reason) && reason !== 'rule_error' ? (reason as ModelFallbackReason) : undefined;
}

/**
 * Replays past predictions (oldest first) through a rule set: the same scores, features and events,
 * the new rules. Frequency caps are simulated here, in memory and in time order, over the replayed
 * predictions only (never Redis: a dry run changes nothing).
 */
export function dryRunDecisions(rules: CompiledRules, entries: ReadonlyMap<string, Pick<ModelVersion, 'thresholds'>>, past: readonly PastPrediction[], examples = 10): DryRunReport {
  const transitions: Record<string, number> = {};
  const before: Record<string, number> = {};
  const after: Record<string, number> = {};
  const fired: Record<string, number> = {};
  const changes: DryRunChange[] = [];
  const counted = new Map<string, number[]>();
  let changed = 0;
  let ruleErrors = 0;
  const ordered = [...past].sort((a, b) => a.event_ts - b.event_ts || (a.event_id < b.event_id ? -1 : 1));
  for (const p of ordered) {
    const entry = entries.get(p.version) ?? { thresholds: {} };
    const reason = recordedReason(p);
    let outcome = rules.decide({ event: p.event, entity: p.entity_id, features: p.features, score: p.score, ...(reason ? { reason } : {}) }, entry);
    if (outcome.error) ruleErrors++;
    const cap = outcome.cap;
    if (cap) {
      const key = `${cap.name}\u0000${p.entity_id}`;
      const times = counted.get(key) ?? [];
      const others = times.filter((t) => t > p.event_ts - cap.windowMs && t < p.event_ts + cap.windowMs).length;
      const admitted = others < cap.max;
      if (admitted) counted.set(key, [...times, p.event_ts]);
      outcome = applyCap(outcome, admitted);
    }
    before[p.decision] = (before[p.decision] ?? 0) + 1;
    after[outcome.decision] = (after[outcome.decision] ?? 0) + 1;
    for (const rule of outcome.fired) fired[rule] = (fired[rule] ?? 0) + 1;
    const t = `${p.decision} -> ${outcome.decision}`;
    transitions[t] = (transitions[t] ?? 0) + 1;
    if (outcome.decision !== p.decision) {
      changed++;
      if (changes.length < examples) changes.push({ event_id: p.event_id, entity_id: p.entity_id, score: p.score, from: p.decision, to: outcome.decision, reasons: outcome.reasons });
    }
  }
  return { model: rules.model, predictions: ordered.length, changed, transitions, before, after, fired, ruleErrors, examples: changes };
}
