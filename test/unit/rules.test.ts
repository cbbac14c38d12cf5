import { describe, expect, it } from 'vitest';
import { decide } from '../../processors/rules/threshold-rules.js';

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
});
