import { describe, expect, it } from 'vitest';
import { decide } from '../../serving/rules/threshold-rules.js';

const rules = { block: 0.9, review: 0.5, fallbackDecision: 'review' as const };

describe('threshold rules', () => {
  it('maps scores to block, review and allow at the thresholds', () => {
    expect(decide(rules, 0.95).decision).toBe('block');
    expect(decide(rules, 0.9).decision).toBe('block');
    expect(decide(rules, 0.5).decision).toBe('review');
    expect(decide(rules, 0.49).decision).toBe('allow');
    expect(decide(rules, 0.2).fallback).toBe(false);
  });

  it('falls back with the reason when features are missing or the model timed out', () => {
    expect(decide(rules, null, 'features_missing')).toEqual({ decision: 'review', reasons: ['fallback:features_missing'], fallback: true });
    expect(decide(rules, null, 'model_timeout').reasons).toEqual(['fallback:model_timeout']);
    expect(decide(rules, Number.NaN).fallback).toBe(true);
  });

  it('falls back with features_late for events the features processor routed to late.<stream>, whatever the score', () => {
    expect(decide(rules, null, 'features_late')).toEqual({ decision: 'review', reasons: ['fallback:features_late'], fallback: true });
    expect(decide({ ...rules, fallbackDecision: 'block' }, 0.1, 'features_late')).toEqual({ decision: 'block', reasons: ['fallback:features_late'], fallback: true });
    expect(decide(rules, Number.POSITIVE_INFINITY)).toEqual({ decision: 'review', reasons: ['fallback:model_error', 'score is not finite'], fallback: true });
  });
});
