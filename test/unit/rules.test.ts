import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { applyCap, compileRules, defaultRules, selectTopK, type CompiledRules, type RankedCandidate } from '../../serving/rules/engine.js';
import { parseRuleSet, RuleSetInvalid, durationMs, type RuleSet } from '../../serving/rules/spec.js';
import { RulesAdmin } from '../../serving/rules/registry.js';
import { dryRunDecisions, type PastPrediction } from '../../serving/rules/dry-run.js';
import { packagePath } from '../../topology/paths.js';

const entry = { thresholds: { block: 0.9, review: 0.5 } };
const txn = { event_id: 'e1', account_id: 'C1', counterparty_id: 'M5', type: 'TRANSFER', amount: 150_000, old_balance: 150_000, new_balance: 0, channel: 'web', ts: 1_700_000_000_000 };

function problems(text: string, output: 'decision' | 'ranking' = 'decision'): string[] {
  try {
    compileRules(parseRuleSet(text), output, 1);
  } catch (err) {
    if (err instanceof RuleSetInvalid) return err.problems.map((p) => `${p.path}: ${p.message}`);
    throw err;
  }
  return [];
}

const fraudYaml = readFileSync(packagePath('models/fraud/rules.yaml'), 'utf8');
const recsYaml = readFileSync(packagePath('models/recs/rules.yaml'), 'utf8');

describe('rule-set validation', () => {
  it('accepts the demo rule sets for their models', () => {
    expect(problems(fraudYaml)).toEqual([]);
    expect(problems(recsYaml, 'ranking')).toEqual([]);
    expect(() => RulesAdmin.validate(parseRuleSet(fraudYaml), 'recs', 'decision')).toThrow(/\/model: the document is for model "fraud", not "recs"/);
  });

  it('refuses an invalid document with the path of each problem', () => {
    expect(problems('model: fraud\nrules:\n  - {name: a, kind: threshold, thresholds: model, otherwise: allow}\n  - {name: b, kind: magic}\n')).toEqual(['/rules/1/kind: unknown rule kind "magic": one of deny, allow, condition, threshold, frequency_cap, top_k, enrich']);
    expect(problems('model: fraud\nrules:\n  - {name: a, kind: threshold, thresholds: model, otherwise: maybe}\n')).toEqual(['/rules/0/otherwise: must be one of "block", "review", "allow"']);
    expect(problems('model: fraud\nrules:\n  - {name: a, kind: threshold, thresholds: model, otherwise: allow, colour: red}\n')).toEqual(['/rules/0: unknown property "colour"']);
    expect(problems('model: fraud\nrules:\n  - {name: cap, kind: frequency_cap, window: 1 hour, max: 3, decision: review, otherwise: block}\n  - {name: a, kind: threshold, thresholds: model, otherwise: allow}\n')).toEqual(['/rules/0/window: must match pattern "^[1-9][0-9]*(ms|s|m|h|d)$"']);
    expect(problems('model: fraud\nrules: [{name: c, kind: condition, when: "event.amount >", decision: review}]\n')[0]).toMatch(/^\/rules\/0\/when: "event.amount >": Unexpected token/);
    expect(problems('model: fraud\nrules: [{name: c, kind: condition, when: "evnt.amount > 3", decision: review}, {name: t, kind: threshold, thresholds: model, otherwise: allow}]\n')).toEqual(['/rules/0/when: "evnt.amount > 3": Unknown variable: evnt']);
    expect(problems('model: fraud\nrules: [{name: c, kind: condition, when: "event.amount + 1.0", decision: review}, {name: t, kind: threshold, thresholds: model, otherwise: allow}]\n')).toEqual(['/rules/0/when: "event.amount + 1.0": must be a boolean expression, it is double']);
    expect(problems('model: fraud\nrules: [{name: t, kind: threshold, thresholds: model, otherwise: allow}, {name: late, kind: condition, when: "true", decision: block}]\n')).toEqual(['/rules/1: rule late comes after the threshold rule t, which always decides: it would never run (put it before)']);
    expect(problems('model: fraud\nrules: [{name: d, kind: deny, match: {field: entity, values: [x]}}]\n')).toEqual(['/rules: a decision model needs a threshold rule (thresholds: model uses the model version\'s own)']);
    expect(problems('model: recs\nrules: [{name: t, kind: threshold, thresholds: model, otherwise: allow}, {name: t, kind: top_k, k: 5}]\n', 'ranking')).toEqual([
      '/rules/0/kind: a threshold rule does not apply to a ranking model (one of deny, allow, condition, frequency_cap, top_k, enrich)',
      '/rules/1/name: duplicate rule name "t"',
    ]);
    expect(problems('model: fraud\nrules: [{name: t, kind: threshold, thresholds: model, otherwise: allow}, {name: c1, kind: frequency_cap, window: 1h, max: 1, decision: review, otherwise: block}, {name: c2, kind: frequency_cap, window: 1h, max: 1, decision: block, otherwise: allow}]\n')).toEqual(['/rules: cap c1 turns review into block, which is capped too: caps do not chain']);
    expect(problems('{ not: yaml: at all')[0]).toMatch(/^\/: not YAML or JSON/);
    expect(problems('[]')).toEqual(['/: must be object']);
  });

  it('reads durations', () => {
    expect([durationMs('500ms'), durationMs('30s'), durationMs('15m'), durationMs('24h'), durationMs('7d')]).toEqual([500, 30_000, 900_000, 86_400_000, 604_800_000]);
  });
});

describe('decision rules', () => {
  const fraud = compileRules(parseRuleSet(fraudYaml), 'decision', 3);
  const decide = (over: Partial<typeof txn>, score: number | null, reason?: 'features_missing' | 'model_timeout', features: Record<string, number | null> = {}) =>
    fraud.decide({ event: { ...txn, ...over }, entity: over.account_id ?? txn.account_id, features, score, ...(reason ? { reason } : {}) }, entry);

  it('walks the rules in order: lists, then conditions, then the thresholds', () => {
    expect(decide({ account_id: 'C9999999' }, 0.01)).toEqual({ decision: 'block', reasons: ['blocked-accounts: entity C9999999 is on the deny list'], fired: ['blocked-accounts'], fallback: false });
    expect(decide({ counterparty_id: 'M0000000' }, 0.99)).toMatchObject({ decision: 'allow', fired: ['trusted-counterparties'] });
    // Emptying transfer: reviewed although the score says allow (cap attached: review is capped).
    const emptying = decide({}, 0.1);
    expect(emptying).toMatchObject({ decision: 'review', fired: ['emptying-transfer'], fallback: false });
    expect(emptying.cap).toEqual({ name: 'review-cap', windowMs: 3_600_000, max: 3, decision: 'review', otherwise: 'block' });
    // Not emptying: the model's thresholds (from the model version: block 0.9, review 0.5).
    expect(decide({ new_balance: 10 }, 0.95)).toEqual({ decision: 'block', reasons: ['score 0.9500 >= block 0.9'], fired: ['score'], fallback: false });
    expect(decide({ new_balance: 10 }, 0.5)).toMatchObject({ decision: 'review', reasons: ['score 0.5000 >= review 0.5'] });
    expect(decide({ new_balance: 10 }, 0.4999)).toMatchObject({ decision: 'allow', reasons: ['score 0.4999 < review 0.5'] });
  });

  it('gives the fallback decision per reason when the model gave no score, but lists still apply', () => {
    expect(decide({ new_balance: 10 }, null, 'model_timeout')).toMatchObject({ decision: 'review', reasons: ['fallback:model_timeout'], fallback: true, fired: ['score'] });
    expect(decide({ account_id: 'C9999999' }, null, 'features_missing')).toMatchObject({ decision: 'block', fallback: false });
    const custom = compileRules({ model: 'fraud', rules: [{ name: 's', kind: 'threshold', thresholds: [{ decision: 'block', min: 0.8 }], otherwise: 'allow' }], fallback: { decision: 'review', reasons: { model_timeout: 'allow', features_missing: 'block' } } }, 'decision', 1);
    const at = (score: number | null, reason?: 'model_timeout' | 'features_missing' | 'model_error') => custom.decide({ event: txn, entity: 'C1', features: {}, score, ...(reason ? { reason } : {}) }, entry).decision;
    expect([at(null, 'model_timeout'), at(null, 'features_missing'), at(null, 'model_error'), at(0.85), at(0.79)]).toEqual(['allow', 'block', 'review', 'block', 'allow']);
    expect(custom.decide({ event: txn, entity: 'C1', features: {}, score: Number.NaN }, entry)).toMatchObject({ decision: 'review', reasons: ['fallback:model_error', 'score is not finite'], fallback: true });
  });

  it('a condition that fails at run time gives the declared rule_error fallback and says which rule', () => {
    const rules = compileRules(parseRuleSet('model: fraud\nrules:\n  - {name: busy, kind: condition, when: "features.txn_count_1h > 5", decision: block}\n  - {name: t, kind: threshold, thresholds: model, otherwise: allow}\nfallback: {decision: review, reasons: {rule_error: allow}}\n'), 'decision', 1);
    const out = rules.decide({ event: txn, entity: 'C1', features: { txn_count_1h: null }, score: 0.95 }, entry);
    expect(out).toMatchObject({ decision: 'allow', fallback: true, fired: ['busy'], error: { rule: 'busy' } });
    expect(out.reasons[0]).toBe('fallback:rule_error');
    expect(out.error!.message).toMatch(/no such overload/);
    expect(rules.decide({ event: txn, entity: 'C1', features: { txn_count_1h: 6 }, score: 0.1 }, entry)).toMatchObject({ decision: 'block', fired: ['busy'] });
    // A condition on the score is skipped (not an error) when there is no score.
    const onScore = compileRules(parseRuleSet('model: fraud\nrules:\n  - {name: big, kind: condition, when: "score > 0.3 && event.amount > 1000", decision: block}\n  - {name: t, kind: threshold, thresholds: model, otherwise: allow}\n'), 'decision', 1);
    expect(onScore.decide({ event: txn, entity: 'C1', features: {}, score: null, reason: 'model_timeout' }, entry)).toMatchObject({ decision: 'review', reasons: ['fallback:model_timeout'] });
  });

  it('reads decoded Avro records (class instances) as plain events', () => {
    class Transaction {
      constructor(readonly type: string, readonly amount: number, readonly new_balance: number, readonly old_balance: number, readonly account_id: string, readonly counterparty_id: string) {}
    }
    const record = new Transaction('CASH_OUT', 200_000, 0, 200_000, 'C5', 'M5');
    expect(fraud.decide({ event: record as unknown as Record<string, unknown>, entity: 'C5', features: {}, score: 0.01 }, entry)).toMatchObject({ decision: 'review', fired: ['emptying-transfer'], fallback: false });
  });

  it('a settled cap keeps the decision or turns it into the cap\'s otherwise, with the reason', () => {
    const o = decide({}, 0.1);
    expect(applyCap(o, true)).toBe(o);
    expect(applyCap(o, false)).toMatchObject({ decision: 'block', fired: ['emptying-transfer', 'review-cap'], reasons: ['emptying-transfer: ' + (parseRuleSet(fraudYaml).rules[2] as { when: string }).when, 'review-cap: more than 3 review decisions for this entity within 1h, so block'] });
  });

  it('the defaults (version 0) are the model version\'s thresholds with review as fallback', () => {
    const d = defaultRules('fraud', 'decision');
    expect(d.version).toBe(0);
    expect(d.decide({ event: txn, entity: 'C1', features: {}, score: 0.91 }, entry)).toMatchObject({ decision: 'block', fired: ['thresholds'] });
    expect(d.decide({ event: txn, entity: 'C1', features: {}, score: 0.6 }, { thresholds: { block: 0.5, review: 0.7 } })).toMatchObject({ decision: 'block' });
    expect(d.decide({ event: txn, entity: 'C1', features: {}, score: null, reason: 'features_missing' }, entry)).toMatchObject({ decision: 'review', fallback: true });
  });

  it('a dry run replays past predictions through new rules, caps simulated in time order', () => {
    const past: PastPrediction[] = [0.1, 0.6, 0.7, 0.8, 0.95].map((score, i) => ({ event_id: `e${i}`, entity_id: 'C7', version: '1.0.0', score, decision: score >= 0.9 ? 'block' : score >= 0.5 ? 'review' : 'allow', reasons: [], event_ts: 1000 + i * 60_000, features: {}, event: { ...txn, new_balance: 5 } }));
    past.push({ event_id: 'x', entity_id: 'C8', version: '1.0.0', score: null, decision: 'review', reasons: ['fallback:features_missing'], event_ts: 5000, features: {}, event: txn });
    const stricter = compileRules(parseRuleSet('model: fraud\nrules:\n  - {name: t, kind: threshold, thresholds: [{decision: block, min: 0.75}, {decision: review, min: 0.5}], otherwise: allow}\n  - {name: cap, kind: frequency_cap, decision: review, window: 1h, max: 1, otherwise: allow}\nfallback: {decision: allow}\n'), 'decision', 2);
    const report = dryRunDecisions(stricter, new Map([['1.0.0', entry]]), past);
    // e1 review (first review in the hour, admitted), e2 review -> capped to allow, e3 0.8 -> block, e4 block; x fallback -> allow.
    expect(report).toMatchObject({ predictions: 6, changed: 3, before: { allow: 1, review: 4, block: 1 }, after: { allow: 3, review: 1, block: 2 }, fired: { t: 6, cap: 1 } });
    expect(report.transitions).toEqual({ 'allow -> allow': 1, 'review -> review': 1, 'review -> allow': 2, 'review -> block': 1, 'block -> block': 1 });
    expect(report.examples.map((e) => `${e.event_id}:${e.from}->${e.to}`)).toEqual(['x:review->allow', 'e2:review->allow', 'e3:review->block']);
  });
});

describe('ranking rules', () => {
  const recs = compileRules(parseRuleSet(recsYaml), 'ranking', 1);
  const item = (id: string, score: number, category: string): RankedCandidate => ({ id, score, attributes: { category, title: `T ${id}`, price: 10 } });

  it('reports what they read from metadata, and their top-k, caps and enrichment', () => {
    expect(recs.metadataNeeded).toEqual(new Map([['item', ['category', 'price', 'title']]]));
    expect(recs.topK({ params: {} })).toEqual({ k: 10, rule: 'top', diversity: { attribute: 'category', maxPerValue: 2 } });
    expect(recs.itemCaps).toEqual([{ name: 'no-repeat-24h', windowMs: 86_400_000, max: 1 }]);
    expect(recs.enrich).toEqual([{ rule: 'catalogue', from: 'item', attributes: ['title', 'category', 'price'] }]);
    expect(defaultRules('recs', 'ranking').topK({ params: { top_k: '7' } })).toEqual({ k: 7, rule: null });
  });

  it('filters candidates by lists and conditions, and a failing condition excludes the item', () => {
    const rules: CompiledRules = compileRules(parseRuleSet('model: recs\nrules:\n  - {name: hidden, kind: deny, match: {field: item.id, values: [I2]}}\n  - {name: only-cats, kind: allow, match: {field: item.category, values: [a, b]}}\n  - {name: pricey, kind: condition, when: "item.price > 50.0 && features.user_events_24h < 3.0"}\n'), 'ranking', 1);
    const ranked = [item('I1', 0.9, 'a'), item('I2', 0.8, 'a'), item('I3', 0.7, 'c'), { id: 'I4', score: 0.6, attributes: { category: 'b', price: 80 } }, { id: 'I5', score: 0.5, attributes: { category: 'b', price: 'n/a' } }];
    const out = rules.filter({ event: {}, entity: 'U1', features: { user_events_24h: 1 } }, ranked);
    expect(out.kept.map((c) => c.id)).toEqual(['I1']);
    expect(out.excluded).toEqual(new Map([['hidden', 1], ['only-cats', 1], ['pricey', 2]]));
    expect(out.errors).toEqual([{ rule: 'pricey', message: expect.stringMatching(/no such overload/) }]);
  });

  it('selects the top k in rank order with at most max_per_value per category (items without one are free)', () => {
    const ranked = [item('a1', 0.9, 'a'), item('a2', 0.8, 'a'), item('a3', 0.7, 'a'), item('b1', 0.6, 'b'), { id: 'n1', score: 0.5, attributes: {} }, item('b2', 0.4, 'b'), item('b3', 0.3, 'b'), { id: 'n2', score: 0.2, attributes: {} }];
    expect(selectTopK(ranked, 5, { attribute: 'category', maxPerValue: 2 })).toEqual([0, 1, 3, 4, 5]);
    expect(selectTopK(ranked, 10, { attribute: 'category', maxPerValue: 1 })).toEqual([0, 3, 4, 7]);
    expect(selectTopK(ranked, 3, undefined, (i) => i === 0)).toEqual([1, 2, 3]);
    // An independent check: every selection respects k and the quota, and is greedy in rank order.
    const quota = (sel: number[]) => Math.max(...['a', 'b'].map((c) => sel.filter((i) => ranked[i]!.attributes.category === c).length));
    for (let k = 1; k <= 8; k++) {
      const sel = selectTopK(ranked, k, { attribute: 'category', maxPerValue: 2 });
      expect(sel.length).toBeLessThanOrEqual(k);
      expect(quota(sel)).toBeLessThanOrEqual(2);
      expect([...sel].sort((x, y) => x - y)).toEqual(sel);
    }
  });
});

describe('rule set documents', () => {
  it('the README example is a valid rule set for the fraud model, deciding as it says', () => {
    const readme = readFileSync(packagePath('README.md'), 'utf8');
    const section = readme.slice(readme.indexOf('## Serving rules'));
    const example = /```yaml\n([\s\S]*?)```/.exec(section)![1]!;
    const rules = compileRules(parseRuleSet(example), 'decision', 1);
    expect(rules.decide({ event: { ...txn, account_id: 'C9999999' }, entity: 'C9999999', features: {}, score: 0.1 }, entry)).toMatchObject({ decision: 'block', fired: ['blocked-accounts'] });
    expect(rules.decide({ event: { ...txn, new_balance: 5 }, entity: 'C1', features: {}, score: null, reason: 'model_timeout' }, entry)).toMatchObject({ decision: 'allow', fallback: true });
    expect(rules.decide({ event: { ...txn, new_balance: 5 }, entity: 'C1', features: {}, score: 0.6 }, entry).cap).toMatchObject({ name: 'review-cap', max: 3, otherwise: 'block' });
  });


  it('parse from JSON as well as YAML, to the same rule set', () => {
    const fromYaml: RuleSet = parseRuleSet(fraudYaml);
    expect(parseRuleSet(JSON.stringify(fromYaml))).toEqual(fromYaml);
  });
});
