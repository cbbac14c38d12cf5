import { Environment } from '@marcbachmann/cel-js';

/**
 * Rule conditions are CEL (Common Expression Language, the language of Kubernetes validation rules
 * and Google IAM conditions): non-Turing-complete, side-effect free, evaluated by an interpreter (no
 * `eval`, no code generation), with a parse-time size limit. Variables:
 * - scoring models: `event` (the event's fields), `features` (the model inputs as served, by name),
 *   `score` (double, or null when the model gave none), `entity` (the entity id), `model`
 *   (`name`, `version`);
 * - recommendation models, per candidate: also `item` (`id`, `score`, `rank` before rules, and the
 *   item's metadata attributes) and `user` (the user id).
 * Numbers from events and features are doubles: compare them with any number, but write double
 * literals in arithmetic (`event.amount * 2.0`). A null operand is a runtime error, counted and
 * answered with the rule set's fallback: guard with `features.x != null && features.x > 3.0`.
 */
export type Condition = (context: Record<string, unknown>) => boolean;

const env = new Environment({ limits: { maxAstNodes: 2000, maxDepth: 50, maxListElements: 10000, maxMapEntries: 1000, maxCallArguments: 16 } })
  .registerVariable('event', 'map')
  .registerVariable('features', 'map')
  .registerVariable('score', 'dyn')
  .registerVariable('entity', 'string')
  .registerVariable('model', 'map')
  .registerVariable('item', 'map')
  .registerVariable('user', 'string');

/** Compiles a condition; throws with the position of a syntax or type error. */
export function compileCondition(source: string): { evaluate: Condition; usesScore: boolean } {
  const checked = env.check(source);
  if (!checked.valid) throw new Error(firstLine(checked.error?.message ?? 'does not type-check'));
  if (checked.type !== 'bool' && checked.type !== 'dyn') throw new Error(`must be a boolean expression, it is ${checked.type}`);
  const parsed = env.parse(source);
  const evaluate: Condition = (context) => {
    const value: unknown = parsed(context);
    if (typeof value !== 'boolean') throw new Error(`evaluated to ${typeof value === 'bigint' ? 'an int' : JSON.stringify(value)}, not a boolean`);
    return value;
  };
  return { evaluate, usesScore: /\bscore\b/.test(source.replace(/"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'/g, '')) };
}

function firstLine(message: string): string {
  return message.split('\n')[0]!.trim();
}

/** A runtime error's one-line message (CEL errors carry a caret diagram after the first line). */
export function conditionError(err: unknown): string {
  return firstLine(err instanceof Error ? err.message : String(err));
}
