import { randomUUID } from 'node:crypto';
import type { Kafka } from 'kafkajs';
import type { Alert, Experiment, ModelVersion } from '../../schemas/types.generated.js';
import { loadAvroSchema } from '../../schemas/catalog.js';
import type { AvroSerde } from '../../schemas/serde.js';
import { prefixed, type FabricConfig } from '../../topology/config.js';
import { FabricError, isFabricError, messageOf } from '../../topology/errors.js';
import { AvroControlFollower, writeControlTopicsExclusively } from '../../topology/runtime/control-topic.js';
import type { Logger } from '../../topology/runtime/log.js';
import type { RegistryAdmin } from '../registry/admin.js';
import { productionOf } from '../registry/registry.js';
import { EXPERIMENTS_TOPIC, ended, newExperiment, runningOf, supersedes, type StartRequest } from './spec.js';

export const ALERTS_TOPIC = 'alerts';

/**
 * Every instance's view of `_fabric.experiments` (compacted, one record per experiment id, rewritten
 * whole with a greater revision at every change). Scoring paths ask `running(model)` once per batch or
 * request, so an experiment starts, stops or concludes everywhere within a fetch, without restart.
 */
export class ExperimentRegistry extends AvroControlFollower<Experiment> {
  private readonly byModel = new Map<string, Experiment | null>();

  constructor(kafka: Kafka, serde: AvroSerde, config: Pick<FabricConfig, 'topicPrefix'>, log: Logger) {
    super(kafka, serde, log, { topic: prefixed(config, EXPERIMENTS_TOPIC), groupPrefix: prefixed(config, 'fabric.experiments-reader'), what: 'experiment', keyOf: (e) => e.id, supersedes });
    this.topic.onChange((key, value, previous) => {
      this.byModel.clear();
      if (value && value.state !== previous?.state) log.info({ experiment: key, model: value.model, state: value.state, outcome: value.decision?.outcome }, 'experiment changed');
    });
  }

  onChange(listener: (experiment: Experiment | undefined, previous: Experiment | undefined) => void): () => void {
    return this.topic.onChange((_key, value, previous) => listener(value, previous));
  }

  /** The experiment running on a model (cached until the topic changes: this runs per request). */
  running(model: string): Experiment | undefined {
    let e = this.byModel.get(model);
    if (e === undefined) this.byModel.set(model, (e = runningOf(this.topic.values(), model) ?? null));
    return e ?? undefined;
  }

  get(id: string): Experiment | undefined {
    return this.topic.get(id);
  }

  /** Every experiment, the latest started first. */
  list(): Experiment[] {
    return this.topic.values().sort((a, b) => b.started_at - a.started_at || (a.id < b.id ? -1 : 1));
  }
}

export interface ExperimentsAdminDeps {
  readonly kafka: Kafka;
  readonly serde: AvroSerde;
  readonly config: Pick<FabricConfig, 'topicPrefix'>;
  readonly log: Logger;
  readonly registry: RegistryAdmin;
  /** Loads a version in a throwaway ONNX session (the serving engine's load): a version that cannot load is refused. */
  verify?(entry: ModelVersion): Promise<void>;
}

/** A change to write: the experiment's next record, the registry records it implies, its alert. */
export interface ExperimentChange {
  readonly experiment: Experiment;
  readonly models?: readonly ModelVersion[];
  readonly alert?: Alert;
}

/**
 * The write side of experiments (`fabric experiments start|stop`, and the judge's decisions). A change
 * is one Kafka transaction over `_fabric.experiments`, `_fabric.models` (a promotion) and `alerts`:
 * readers see the experiment end, the treatment promoted and the alert together, or none of them. Every
 * change of a model's experiments is checked and written under that model's lock (a fencing
 * transactional id), against the state read inside it.
 */
export class ExperimentsAdmin {
  constructor(private readonly deps: ExperimentsAdminDeps) {}

  /** The experiments as on the topic now (read once). */
  async read(): Promise<ExperimentRegistry> {
    const registry = new ExperimentRegistry(this.deps.kafka, this.deps.serde, this.deps.config, this.deps.log);
    await registry.readOnce();
    return registry;
  }

  /**
   * Starts an experiment: checked against the registry and the experiments on the topic, then the
   * treatment and shadow are loaded in a throwaway session (a version that cannot load is refused
   * before any traffic goes to it), then written.
   */
  async start(request: StartRequest, by: string): Promise<Experiment> {
    // Checked and written under one lock per model (a fencing transactional id): two starts on one model
    // at once cannot both pass the "no other experiment running" check.
    return writeControlTopicsExclusively(this.deps.kafka, this.lockOf(request.model), async () => {
      const [entries, experiments] = await Promise.all([this.deps.registry.entries(), this.read()]);
      const all = experiments.list();
      const experiment = newExperiment(request, {
        entries,
        production: productionOf(entries, request.model),
        running: all.filter((e) => e.state === 'running'),
        existingIds: new Set(all.map((e) => e.id)),
        by,
        now: Date.now(),
      });
      for (const [arm, version] of [['treatment', experiment.treatment], ['shadow', experiment.shadow]] as const) {
        if (version === null) continue;
        const entry = entries.find((e) => e.name === experiment.model && e.version === version)!;
        try {
          await this.deps.verify?.(entry);
        } catch (err) {
          if (isFabricError(err) && err.retriable) throw err;
          throw new FabricError('FABRIC_EXPERIMENT_INVALID', `experiment on ${experiment.model} refused: the ${arm} ${experiment.model}@${version} does not load: ${messageOf(err)}`, { cause: err });
        }
      }
      const alert = alertFor(experiment, 'info', `experiment ${experiment.id} started on ${experiment.model}: ${experiment.treatment} against ${experiment.control} for ${experiment.split}% of entities`);
      return { batches: await this.batches({ experiment, alert }), result: experiment };
    });
  }

  /** Stops a running experiment by hand: all traffic back on the control, nothing promoted. */
  async stop(id: string, by: string, reason: string): Promise<Experiment> {
    const known = (await this.read()).get(id);
    if (!known) throw new FabricError('FABRIC_EXPERIMENT_UNKNOWN', `no experiment ${id}`);
    return this.change(known.model, id, undefined, (current) => {
      if (current.state !== 'running') return null;
      const next = ended(current, 'stopped', { outcome: 'stopped', action: 'none', reason: reason || 'stopped by hand', by, at: Date.now(), stats_json: current.decision?.stats_json ?? '' });
      return { experiment: next, alert: alertFor(next, 'info', `experiment ${id} stopped by ${by}${reason ? `: ${reason}` : ''}; all traffic on ${next.control}`) };
    });
  }

  /**
   * Changes one experiment under its model's lock (the one start takes): `build` gets the record as on
   * the topic now and returns the change (or null: nothing to write). With `revision`, the change is
   * refused (FABRIC_CONTROL_CONFLICT) when the record moved on since it was read: a judge's decision and an
   * operator's stop never both land.
   */
  async change(model: string, id: string, revision: number | undefined, build: (current: Experiment) => ExperimentChange | null | Promise<ExperimentChange | null>): Promise<Experiment> {
    return writeControlTopicsExclusively(this.deps.kafka, this.lockOf(model), async () => {
      const current = (await this.read()).get(id);
      if (!current) throw new FabricError('FABRIC_EXPERIMENT_UNKNOWN', `no experiment ${id}`);
      if (revision !== undefined && current.revision !== revision) throw new FabricError('FABRIC_CONTROL_CONFLICT', `experiment ${id} changed since it was read (revision ${current.revision}, not ${revision}); nothing was written`);
      const change = await build(current);
      if (!change) return { batches: [], result: current };
      const batches = await this.batches(change);
      if (change.models) this.deps.registry.remember(change.models);
      return { batches, result: change.experiment };
    });
  }

  private lockOf(model: string): string {
    return prefixed(this.deps.config, `fabric.experiments.${model}`);
  }

  /** The records of a change, per topic. */
  private async batches(change: ExperimentChange): Promise<{ topic: string; messages: { key: string; value: Buffer }[] }[]> {
    const { serde, config } = this.deps;
    const experimentsTopic = prefixed(config, EXPERIMENTS_TOPIC);
    const alertsTopic = prefixed(config, ALERTS_TOPIC);
    const writer = await serde.writer<Experiment>(`${experimentsTopic}-value`, loadAvroSchema('experiment'));
    const batches: { topic: string; messages: { key: string; value: Buffer }[] }[] = [{ topic: experimentsTopic, messages: [{ key: change.experiment.id, value: writer.encode(change.experiment) }] }];
    if (change.models && change.models.length > 0) batches.push(await this.deps.registry.recordsOf(change.models));
    if (change.alert) {
      const alerts = await serde.writer<Alert>(`${alertsTopic}-value`, loadAvroSchema('alert'));
      batches.push({ topic: alertsTopic, messages: [{ key: change.alert.subject, value: alerts.encode(change.alert) }] });
    }
    return batches;
  }
}

/** The alert of an experiment's change. */
export function alertFor(experiment: Experiment, severity: 'info' | 'warning' | 'critical', message: string, details: Record<string, string> = {}): Alert {
  return {
    alert_id: randomUUID(),
    ts: experiment.decision?.at ?? experiment.started_at,
    kind: 'experiment',
    severity,
    model: experiment.model,
    version: experiment.treatment,
    subject: experiment.id,
    message,
    details: { state: experiment.state, ...(experiment.decision ? { outcome: experiment.decision.outcome, action: experiment.decision.action } : {}), ...details },
  };
}
