import { createHash } from 'node:crypto';
import type { Experiment, Guardrail, ModelVersion } from '../../schemas/types.generated.js';
import { FabricError } from '../../topology/errors.js';
import { durationMs } from '../rules/spec.js';
import { outputKindOf, type OutputKind } from '../rules/engine.js';

export const EXPERIMENTS_TOPIC = '_fabric.experiments';

export type Arm = 'control' | 'treatment';
export type Metric = 'precision_at_block' | 'auc' | 'ctr' | 'conversion';
export type AutoAction = 'promote' | 'rollback' | 'none';
export type ExperimentState = 'running' | 'concluded' | 'stopped';

/** Which metrics judge which kind of model output (all: higher is better). */
export const METRICS: Record<OutputKind, readonly Metric[]> = { decision: ['auc', 'precision_at_block'], ranking: ['ctr', 'conversion'] };

/**
 * The mixture's standard deviation per metric, in the metric's units: the size of effect the test is
 * tuned to find fastest (Johari et al. choose it from past experiments; these are the effects worth
 * acting on for each metric). Smaller or larger effects are still detected, later.
 */
export const DEFAULT_MIXTURE_SD: Record<Metric, number> = { auc: 0.05, precision_at_block: 0.1, ctr: 0.02, conversion: 0.01 };

export const GUARDRAIL_METRICS = ['p50_latency_ms', 'p99_latency_ms', 'mean_latency_ms', 'fallback_rate', 'block_rate'] as const;
export type GuardrailMetric = (typeof GUARDRAIL_METRICS)[number];
const OPS = ['<=', '>=', '<', '>'] as const;

/** Where scoring paths find the experiment running on a model, per batch or request (ExperimentRegistry in the fabric). */
export interface ServingExperiments {
  running(model: string): Experiment | undefined;
}

/** What `fabric experiments start` asks for. */
export interface StartRequest {
  readonly id?: string;
  readonly model: string;
  readonly control: string;
  readonly treatment: string;
  readonly split: number;
  readonly shadow?: string;
  readonly metric?: string;
  readonly minSamples?: number;
  readonly maxDuration?: string;
  readonly guardrails?: readonly string[];
  readonly auto?: string;
  readonly alpha?: number;
  readonly mixtureSd?: number;
  readonly outcomeHorizon?: string;
}

const ID = /^[a-z][a-z0-9_]{0,62}$/;

function usage(message: string): FabricError {
  return new FabricError('FABRIC_EXPERIMENT_INVALID', message);
}

/** `p99_latency_ms<20` -> { metric, op, threshold }. */
export function parseGuardrail(text: string): Guardrail {
  const m = /^\s*([a-z0-9_]+)\s*(<=|>=|<|>)\s*(-?[0-9]+(?:\.[0-9]+)?)\s*$/.exec(text);
  if (!m) throw usage(`guardrail ${JSON.stringify(text)} is not <metric><op><number>, e.g. "p99_latency_ms<20" (ops: ${OPS.join(' ')})`);
  if (!(GUARDRAIL_METRICS as readonly string[]).includes(m[1]!)) throw usage(`guardrail ${JSON.stringify(text)}: unknown metric ${m[1]} (one of ${GUARDRAIL_METRICS.join(', ')})`);
  return { metric: m[1]!, op: m[2]!, threshold: Number(m[3]) };
}

export function guardrailText(g: Guardrail): string {
  return `${g.metric}${g.op}${g.threshold}`;
}

/** Whether a value keeps a guardrail's condition. */
export function keeps(g: Guardrail, value: number): boolean {
  switch (g.op) {
    case '<': return value < g.threshold;
    case '<=': return value <= g.threshold;
    case '>': return value > g.threshold;
    default: return value >= g.threshold;
  }
}

/**
 * Checks a start request against the registry as it stands and builds the experiment's first record.
 * Refused (FABRIC_EXPERIMENT_INVALID, every problem named): an unknown model or version, a control that
 * is not the version in production, a treatment or shadow equal to the control, a split outside 0-100,
 * a metric the model's output cannot be judged on, a guardrail that does not parse, a non-positive
 * sample count or duration, another experiment running on the model.
 */
export function newExperiment(request: StartRequest, context: { entries: readonly ModelVersion[]; production: ModelVersion | undefined; running: readonly Experiment[]; existingIds: ReadonlySet<string>; by: string; now: number }): Experiment {
  const problems: string[] = [];
  const { model } = request;
  const versions = context.entries.filter((e) => e.name === model);
  if (versions.length === 0) throw new FabricError('FABRIC_MODEL_UNKNOWN', `model ${model} is not registered${context.entries.length ? ` (models: ${[...new Set(context.entries.map((e) => e.name))].join(', ')})` : ''}`);
  const known = versions.map((e) => e.version);
  const check = (what: string, version: string | undefined): void => {
    if (version !== undefined && !known.includes(version)) problems.push(`${what} version ${version} of ${model} is not registered (versions: ${known.join(', ')})`);
  };
  check('control', request.control);
  check('treatment', request.treatment);
  check('shadow', request.shadow);
  if (!context.production) problems.push(`model ${model} has no version in production; the control must be the version serving today`);
  else if (request.control !== context.production.version) problems.push(`the control must be the version in production (${context.production.version}), not ${request.control}`);
  if (request.treatment === request.control) problems.push('the treatment is the control version');
  if (request.shadow !== undefined && (request.shadow === request.control || request.shadow === request.treatment)) problems.push(`the shadow ${request.shadow} is already an arm of the experiment`);
  if (!Number.isFinite(request.split) || request.split <= 0 || request.split >= 100) problems.push(`split ${request.split} is outside 0-100 (the treatment's percent of entities, exclusive: 0 or 100 is no experiment)`);
  const task = versions.find((e) => e.version === request.treatment)?.task ?? versions[0]!.task;
  for (const [what, version] of [['treatment', request.treatment], ['shadow', request.shadow]] as const) {
    const other = versions.find((e) => e.version === version);
    if (other && context.production && other.task !== context.production.task) problems.push(`the ${what} ${version} is a ${other.task} model, the control a ${context.production.task} model`);
  }
  const output = outputKindOf(task);
  const metric = (request.metric ?? METRICS[output][0]) as Metric;
  if (!METRICS[output].includes(metric)) problems.push(`metric ${request.metric} does not judge a ${output} model (one of ${METRICS[output].join(', ')})`);
  const minSamples = request.minSamples ?? 200;
  if (!Number.isInteger(minSamples) || minSamples < 1) problems.push(`min-samples ${request.minSamples} is not a positive integer`);
  let maxDurationMs = 24 * 3_600_000;
  let horizonMs = 3_600_000;
  try {
    if (request.maxDuration !== undefined) maxDurationMs = durationMs(request.maxDuration);
  } catch (err) {
    problems.push(`max-duration: ${(err as Error).message}`);
  }
  try {
    if (request.outcomeHorizon !== undefined) horizonMs = durationMs(request.outcomeHorizon);
  } catch (err) {
    problems.push(`outcome-horizon: ${(err as Error).message}`);
  }
  const guardrails: Guardrail[] = [];
  for (const text of request.guardrails ?? []) {
    try {
      const g = parseGuardrail(text);
      if (g.metric === 'block_rate' && output !== 'decision') problems.push(`guardrail ${text}: block_rate applies to decision models only`);
      guardrails.push(g);
    } catch (err) {
      problems.push((err as Error).message);
    }
  }
  const auto = request.auto ?? 'promote';
  if (!['promote', 'rollback', 'none'].includes(auto)) problems.push(`auto ${JSON.stringify(auto)} is not promote, rollback or none`);
  const alpha = request.alpha ?? 0.05;
  if (!(alpha > 0 && alpha < 0.5)) problems.push(`alpha ${alpha} is outside (0, 0.5)`);
  const mixtureSd = request.mixtureSd ?? DEFAULT_MIXTURE_SD[metric] ?? 0.05;
  if (!(mixtureSd > 0)) problems.push(`mixture-sd ${mixtureSd} is not positive`);
  const running = context.running.find((e) => e.model === model);
  if (running) problems.push(`experiment ${running.id} is already running on ${model} (stop it first: fabric experiments stop ${running.id})`);
  const id = request.id ?? defaultId(model, context.now);
  if (!ID.test(id)) problems.push(`id ${JSON.stringify(id)} is not lower-case letters, digits and _ (starting with a letter, at most 63)`);
  else if (context.existingIds.has(id)) problems.push(`experiment ${id} already exists; choose another --id`);
  if (problems.length > 0) throw usage(`experiment on ${model} refused: ${problems.join('; ')}`);
  return {
    id, model, control: request.control, treatment: request.treatment, split: request.split, shadow: request.shadow ?? null, metric, min_samples: minSamples, max_duration_ms: maxDurationMs,
    guardrails, auto, alpha, mixture_sd: mixtureSd, outcome_horizon_ms: horizonMs, state: 'running', revision: 1, started_at: context.now, started_by: context.by, ended_at: null, decision: null,
  };
}

function defaultId(model: string, now: number): string {
  const d = new Date(now).toISOString();
  return `${model.replace(/-/g, '_')}_${d.slice(0, 10).replace(/-/g, '')}_${d.slice(11, 19).replace(/:/g, '')}`;
}

/**
 * The arm of an entity: sha256 of `<experiment id>:<entity>`, its first 32 bits as a fraction of 2^32,
 * in the treatment when below split/100. Depends on nothing else, so an entity keeps its arm across
 * instances, restarts and replays, and two experiments split independently.
 */
export function armOf(experiment: Pick<Experiment, 'id' | 'split'>, entity: string): Arm {
  return fractionOf(experiment.id, entity) < experiment.split / 100 ? 'treatment' : 'control';
}

/** sha256(`<id>:<entity>`), its first 32 bits as a fraction of 2^32: where the entity falls in [0, 1). */
function fractionOf(id: string, entity: string): number {
  return createHash('sha256').update(`${id}:${entity}`).digest().readUInt32BE(0) / 4294967296;
}

/** The version serving an arm. */
export function versionOf(experiment: Pick<Experiment, 'control' | 'treatment'>, arm: Arm): string {
  return arm === 'treatment' ? experiment.treatment : experiment.control;
}

/** Whether `next` may replace `current` for one id: revisions only grow. */
export function supersedes(next: Experiment, current: Experiment): boolean {
  return next.revision > current.revision || (next.revision === current.revision && next.state === current.state);
}

/** The running experiment of a model; if a race started two, the earlier one (then the smaller id) runs. */
export function runningOf(experiments: readonly Experiment[], model: string): Experiment | undefined {
  let best: Experiment | undefined;
  for (const e of experiments) {
    if (e.model !== model || e.state !== 'running') continue;
    if (!best || e.started_at < best.started_at || (e.started_at === best.started_at && e.id < best.id)) best = e;
  }
  return best;
}

/** The view of an experiment in the ClickHouse ledger. */
export function experimentView(id: string): string {
  if (!ID.test(id)) throw usage(`experiment id ${JSON.stringify(id)} is not lower-case letters, digits and _`);
  return `v_experiment_${id}`;
}

/** The record after a change: a new revision with the given state and decision. */
export function ended(experiment: Experiment, state: ExperimentState, decision: NonNullable<Experiment['decision']>): Experiment {
  return { ...experiment, state, revision: experiment.revision + 1, ended_at: decision.at, decision };
}
