import type { Experiment } from '../../schemas/types.generated.js';
import type { ServedModel } from '../models/live.js';
import type { ModelFallbackReason as FallbackReason } from '../rules/spec.js';
import { armOf, type Arm, type ServingExperiments } from './spec.js';

/** Where scoring gets the serving version of its model, per batch (LiveModels in the fabric). */
export interface ServingModels {
  /** The serving version, or a retriable FABRIC_MODEL_UNAVAILABLE while none is loaded. */
  require(name: string): ServedModel;
  /** A specific version kept loaded for experiments; retriable FABRIC_MODEL_UNAVAILABLE while it loads. */
  requireVersion(name: string, version: string): ServedModel;
  /** Why a version cannot be loaded at all here (its content is refused), or undefined. */
  unloadableReason(name: string, version: string): string | undefined;
}

/** One engine call of a batch: the rows of one arm (or of the serving version, or the shadow). */
export interface Lane {
  readonly served: ServedModel;
  /** control or treatment under an experiment; undefined outside one (and for the shadow lane). */
  readonly arm?: Arm;
  readonly rows: number[][];
  scores?: Float32Array;
  provider: string;
  failure?: FallbackReason;
  /** Wall time of the lane's engine call. */
  ms: number;
}

/** The versions a batch scores with: the lanes by entity, and the shadow. */
export interface ExperimentPlan {
  readonly experiment?: Experiment;
  readonly lanes: readonly Lane[];
  readonly shadow?: Lane;
  laneOf(entity: string): Lane;
}

function lane(served: ServedModel, arm?: Arm): Lane {
  return { served, rows: [], provider: 'none', ms: 0, ...(arm ? { arm } : {}) };
}

/**
 * The lanes of one batch (shared with the recs processor). Without an experiment, one lane: the
 * serving version. With one, the control and treatment lanes, and each entity goes to its sticky arm
 * (armOf); the treatment must be loaded (the batch waits for it, retriably). The experiment is in force
 * only while its control is the serving version: after a promotion by hand, every event goes to the
 * new serving version at once (the judge records the experiment as interrupted). A treatment that cannot
 * load at all here (its artifact is refused) leaves events outside the experiment (no arm) until the
 * judge ends it; a shadow that cannot load is skipped: neither holds the stream up.
 */
export function experimentPlan(models: ServingModels, experiments: ServingExperiments | undefined, model: string, log?: { warn(o: object, msg: string): void }): ExperimentPlan {
  const serving = models.require(model);
  const experiment = experiments?.running(model);
  const treatmentRefused = experiment ? models.unloadableReason(model, experiment.treatment) : undefined;
  if (treatmentRefused) warnOnce(log, `${model}@${experiment!.treatment}`, { model, version: experiment!.treatment, err: treatmentRefused }, 'the treatment cannot load here; events are scored outside the experiment until the judge ends it');
  if (!experiment || experiment.control !== serving.entry.version || treatmentRefused) {
    const only = lane(serving);
    return { lanes: [only], laneOf: () => only };
  }
  const control = lane(serving, 'control');
  const treatment = lane(models.requireVersion(model, experiment.treatment), 'treatment');
  let shadow: Lane | undefined;
  if (experiment.shadow !== null) {
    const why = models.unloadableReason(model, experiment.shadow);
    if (why) warnOnce(log, `${model}@${experiment.shadow}`, { model, version: experiment.shadow, err: why }, 'the shadow version cannot load here; no shadow predictions');
    else shadow = lane(models.requireVersion(model, experiment.shadow));
  }
  return { experiment, lanes: shadow ? [control, treatment, shadow] : [control, treatment], ...(shadow ? { shadow } : {}), laneOf: (entity) => (armOf(experiment, entity) === 'treatment' ? treatment : control) };
}

const warned = new Set<string>();

/** One warning per version and process: a batch every few milliseconds must not repeat it. */
function warnOnce(log: { warn(o: object, msg: string): void } | undefined, key: string, fields: object, message: string): void {
  if (!log || warned.has(key)) return;
  warned.add(key);
  log.warn(fields, message);
}
