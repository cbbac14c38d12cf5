import type { ModelVersion } from '../../schemas/types.generated.js';

/**
 * Serving rules for a scoring model: score thresholds give the decision; when no score can be had
 * the declared fallback decision applies, with the reason. On the stream path only deterministic
 * reasons occur (`features_late`, `features_missing` under a fallback policy, `model_error`);
 * `model_timeout` is for the synchronous predict API, which cannot retry a batch.
 */

export interface ThresholdRules {
  readonly block: number;
  readonly review: number;
  /** Decision when the model cannot score; `review` is the safe default for fraud. */
  readonly fallbackDecision: 'block' | 'review' | 'allow';
}

export type FallbackReason =
  /** The event arrived beyond the features processor's allowed lateness (routed to late.<stream>). */
  | 'features_late'
  /** No features for the entity (synchronous predict: nothing in the online store). */
  | 'features_missing'
  /** The model did not answer in time (synchronous predict only; the stream path retries). */
  | 'model_timeout'
  /** The model could not score the input, or returned a non-finite score. */
  | 'model_error';

export interface Decision {
  readonly decision: 'block' | 'review' | 'allow';
  readonly reasons: string[];
  readonly fallback: boolean;
}

/** The rules a registry entry carries (its thresholds; review is the fallback decision for fraud). */
export function rulesFor(entry: Pick<ModelVersion, 'name' | 'version' | 'thresholds'>): ThresholdRules {
  const block = entry.thresholds.block ?? 1;
  const review = entry.thresholds.review ?? block;
  return { block, review: Math.min(review, block), fallbackDecision: 'review' };
}

export function decide(rules: ThresholdRules, score: number | null, fallbackReason?: FallbackReason): Decision {
  if (score === null || fallbackReason) {
    return { decision: rules.fallbackDecision, reasons: [`fallback:${fallbackReason ?? 'model_error'}`], fallback: true };
  }
  if (!Number.isFinite(score)) return { decision: rules.fallbackDecision, reasons: ['fallback:model_error', 'score is not finite'], fallback: true };
  if (score >= rules.block) return { decision: 'block', reasons: [`score ${fmt(score)} >= block ${rules.block}`], fallback: false };
  if (score >= rules.review) return { decision: 'review', reasons: [`score ${fmt(score)} >= review ${rules.review}`], fallback: false };
  return { decision: 'allow', reasons: [`score ${fmt(score)} < review ${rules.review}`], fallback: false };
}

function fmt(x: number): string {
  return x.toFixed(4);
}
