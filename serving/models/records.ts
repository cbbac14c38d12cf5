import type { Interaction, ModelVersion, Prediction, Recommendation, Transaction } from '../../schemas/types.generated.js';
import type { Decision } from '../rules/spec.js';
import type { RecsAnswer } from './recommend.js';

/**
 * Where a prediction came from: the input record the stream scored, or an online request (no
 * record: partition -1, and the request's instant as its offset).
 */
export type Origin = { readonly kind: 'stream'; readonly topic: string; readonly partition: number; readonly offset: number } | { readonly kind: 'online'; readonly at: number };

function source(origin: Origin): Pick<Prediction, 'source_topic' | 'source_partition' | 'source_offset' | 'origin'> {
  return origin.kind === 'stream'
    ? { source_topic: origin.topic, source_partition: origin.partition, source_offset: origin.offset, origin: 'stream' }
    : { source_topic: 'online', source_partition: -1, source_offset: origin.at, origin: 'online' };
}

/** The rule set that decided an output, and the rules that fired. */
export interface RulesApplied {
  readonly version: number;
  readonly fired: readonly string[];
}

/** Under which experiment and arm an output was made, and the model time it took. */
export interface Served {
  readonly experiment?: string;
  /** control, treatment, shadow; none outside an experiment. */
  readonly arm?: string;
  /** Online answers only: the request's latency (stream records carry none, so they are reproducible). */
  readonly latencyMs?: number;
}

function served(s: Served): Pick<Prediction, 'experiment' | 'arm' | 'latency_ms'> {
  return { experiment: s.experiment ?? '', arm: s.arm ?? '', latency_ms: Number((s.latencyMs ?? 0).toFixed(3)) };
}

/** What the rules decided for one event. */
export interface DecisionTaken {
  readonly decision: Decision;
  readonly reasons: readonly string[];
  readonly fallback: boolean;
  readonly fired: readonly string[];
}

/** The prediction record (its lineage) of a scored transaction: one shape for the stream and predict. */
export function predictionRecord(entry: ModelVersion, txn: Transaction, score: number | null, decision: DecisionTaken, rulesVersion: number, provider: string, features: Record<string, number | null>, origin: Origin, how: Served): Prediction {
  return {
    event_id: txn.event_id,
    entity_id: txn.account_id,
    model: entry.name,
    version: entry.version,
    score,
    decision: decision.decision,
    reasons: [...decision.reasons],
    fallback: decision.fallback,
    provider,
    event_ts: txn.ts,
    features,
    ...source(origin),
    rules_version: rulesVersion,
    rules_fired: [...decision.fired],
    ...served(how),
  };
}

/** The recommendation record of an interaction: one shape for the stream and predict. */
export function recommendationRecord(entry: ModelVersion, ix: Pick<Interaction, 'event_id' | 'user_id' | 'ts'>, answer: RecsAnswer, origin: Origin, how: Served): Recommendation {
  return {
    event_id: ix.event_id,
    user_id: ix.user_id,
    model: entry.name,
    version: entry.version,
    provider: answer.provider,
    event_ts: ix.ts,
    candidates: answer.candidates,
    items: answer.items,
    reasons: answer.reasons,
    fallback: answer.fallback,
    ...source(origin),
    rules_version: answer.rulesVersion,
    rules_fired: [...answer.fired],
    ...served(how),
  };
}
