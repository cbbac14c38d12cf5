import { createHash } from 'node:crypto';
import avro from 'avsc';
import type { Redis } from 'ioredis';
import type { Interaction, ModelVersion, Prediction, Recommendation, RecommendedItem, Transaction } from '../schemas/types.generated.js';
import { loadAvroSchema } from '../schemas/catalog.js';
import { FabricError, isFabricError } from '../topology/errors.js';
import { accountGroup, userGroup } from '../topology/features/groups.js';
import type { Metrics } from '../topology/runtime/metrics.js';
import { readFeaturesAtEvents } from './features/online.js';
import { fraudInputValues } from './models/fraud-inputs.js';
import type { LiveModels, ServedModel } from './models/live.js';
import { vectorize } from './models/vector.js';
import { readUserHistories, recommend, type MetadataLookup, type RecsAnswer } from './models/recommend.js';
import { predictionRecord, recommendationRecord } from './models/records.js';
import { parseModelRef } from './registry/entry.js';
import type { ModelFallbackReason as FallbackReason } from './rules/spec.js';
import type { CompiledRules, OutputKind } from './rules/engine.js';
import { settleCaps, type FrequencyCaps } from './rules/caps.js';
import { armOf, type Arm, type ServingExperiments } from './experiments/spec.js';

export interface PredictResult {
  readonly model: string;
  readonly version: string;
  readonly event_id: string;
  readonly score: number | null;
  readonly decision: string;
  readonly reasons: readonly string[];
  readonly fallback: boolean;
  readonly provider: string;
  /** The rule set that decided, and the rules that fired. */
  readonly rulesVersion: number;
  readonly rulesFired: readonly string[];
  /** The input vector as served (after the missing-value policies), by input name. */
  readonly features: Record<string, number | null>;
  /** False when the online store no longer holds the whole window (features may undercount). */
  readonly featuresExact: boolean;
  readonly latencyMs: number;
  readonly cached: boolean;
  /** Recommendation models: the top items, best first (score and decision then describe the first). */
  readonly items?: RecommendedItem[];
  readonly candidates?: number;
  /** The experiment running on the model and this entity's arm in it (absent outside one). */
  readonly experiment?: string;
  readonly arm?: Arm;
}

export interface PredictorDeps {
  readonly models: LiveModels;
  /** The rule set in force per model (hot-reloaded from _fabric.rules). */
  readonly rules: { current(model: string, output: OutputKind): CompiledRules };
  /** The experiments in force: an entity's answer comes from its arm's version. */
  readonly experiments?: ServingExperiments;
  /** Needed when rules cap decisions or items. */
  readonly caps?: FrequencyCaps;
  /** Needed when rules read item metadata. */
  readonly metadata?: MetadataLookup;
  readonly redis: Redis;
  readonly keyPrefix: string;
  /** The answer's budget: beyond it, the fallback decision with reason model_timeout (HTTP 504). */
  readonly timeoutMs: number;
  /** Prediction cache TTL (0: off). */
  readonly cacheTtlSec: number;
  readonly metrics?: Metrics;
  /** Writes the prediction to predictions.<model> (marked online); failures are the caller's to count. */
  emit?(topic: string, key: string, prediction: Prediction | Recommendation): void;
  now?(): number;
}

/** The model timed out: the answer carries the fallback decision and goes out as 504. */
export class PredictTimeout extends FabricError {
  constructor(readonly result: PredictResult, budgetMs: number) {
    super('FABRIC_MODEL_TIMEOUT', `model ${result.model}@${result.version} did not answer within the ${budgetMs} ms budget; fallback decision ${result.decision}`);
  }
}

const transactionType = avro.Type.forSchema(loadAvroSchema('transaction') as avro.Schema) as avro.types.RecordType;
const interactionType = avro.Type.forSchema(loadAvroSchema('interaction') as avro.Schema) as avro.types.RecordType;

/** The first field of `event` that does not fit the Avro schema, as `field: problem`. */
function explainInvalid(type: avro.types.RecordType, event: unknown): string | null {
  if (event === null || typeof event !== 'object' || Array.isArray(event)) return 'the event must be a JSON object';
  const problems: string[] = [];
  type.isValid(event, {
    errorHook(path, value) {
      problems.push(`${path.join('.') || '(event)'}: ${value === undefined ? 'missing' : `invalid value ${JSON.stringify(value)?.slice(0, 60)}`}`);
    },
  });
  return problems.length ? problems.join('; ') : null;
}

/**
 * Synchronous online scoring (`POST /v1/predict/{model}[@version]`), on the same engine, features and
 * rules as the stream: the event is validated against its stream's schema, its entity's features are
 * computed as of the event as if it arrived now (the stream's row for it, given the same history), the
 * model's signature builds the vector with its missing-value policies, the prediction cache answers a
 * vector it has seen (keyed by model version and the vector's hash, so a promotion never serves a
 * stale version's answer), else the engine scores it within the budget; the rules decide.
 */
export class OnlinePredictor {
  private readonly now: () => number;

  constructor(private readonly deps: PredictorDeps) {
    this.now = deps.now ?? Date.now;
  }

  async predict(modelRef: string, event: unknown): Promise<PredictResult> {
    const started = performance.now();
    const { name, version } = parseModelRef(modelRef);
    const { served, assignment } = await this.assign(name, await this.resolve(name, version), version !== null, event);
    if (served.entry.task === 'recs') return this.recommend(served, event, started, assignment);
    const problem = explainInvalid(transactionType, event);
    if (problem) throw new FabricError('FABRIC_EVENT_INVALID', `event does not match the transaction schema: ${problem}`);
    const txn = event as Transaction;
    const [at] = await readFeaturesAtEvents(this.deps.redis, this.deps.keyPrefix, accountGroup, [{ entity: txn.account_id, eventId: txn.event_id, ts: txn.ts, raw: txn as unknown as Record<string, unknown> }]);
    const v = vectorize(served.entry, fraudInputValues(txn, at!.values));
    const rules = this.deps.rules.current(name, 'decision');
    const base = { model: served.entry.name, version: served.entry.version, event_id: txn.event_id, features: v.features, featuresExact: at!.exact, rulesVersion: rules.version, ...assignment };
    const finish = async (score: number | null, provider: string, cached: boolean, reason?: FallbackReason): Promise<PredictResult> => {
      const decided = rules.decide({ event: txn as unknown as Record<string, unknown>, entity: txn.account_id, features: v.features, score, ...(reason ? { reason } : {}) }, served.entry);
      if (decided.error) this.deps.metrics?.ruleErrors.inc({ model: name, rule: decided.error.rule });
      const [d] = await settleCaps(rules, this.deps.caps, [txn], [decided]);
      const result: PredictResult = { ...base, score, decision: d!.decision, reasons: d!.reasons, fallback: d!.fallback, rulesFired: d!.fired, provider, latencyMs: Number((performance.now() - started).toFixed(3)), cached };
      this.deps.metrics?.predictLatency.observe({ model: name }, result.latencyMs / 1000);
      if (d!.fallback) this.deps.metrics?.scoringFallbacks.inc({ model: name, reason: d!.error ? 'rule_error' : (reason ?? 'model_error') });
      for (const rule of d!.fired) this.deps.metrics?.rulesFired.inc({ model: name, version: String(rules.version), rule });
      this.deps.emit?.(`predictions.${name}`, txn.account_id, predictionRecord(served.entry, txn, score, d!, rules.version, provider, v.features, { kind: 'online', at: this.now() }, { ...assignment, latencyMs: result.latencyMs }));
      return result;
    };
    if (v.missing.length > 0) return finish(null, 'none', false, 'features_missing');
    const cacheKey = this.deps.cacheTtlSec > 0 ? this.cacheKey(served.entry, v.row) : null;
    if (cacheKey) {
      const hit = await this.deps.redis.get(cacheKey).catch(() => null);
      this.deps.metrics?.predictCache.inc({ model: name, result: hit === null ? 'miss' : 'hit' });
      if (hit !== null) {
        const [score, provider] = hit.split('|');
        return finish(Number(score), provider ?? 'cpu', true);
      }
    }
    const left = this.deps.timeoutMs - (performance.now() - started);
    let timer: NodeJS.Timeout | undefined;
    try {
      const { scores, provider } = await Promise.race([
        served.handle.score([v.row]),
        new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(new PredictBudget()), Math.max(0, left));
        }),
      ]);
      const score = Number(scores[0]!.toFixed(6));
      if (cacheKey && Number.isFinite(score)) void this.deps.redis.set(cacheKey, `${score}|${provider}`, 'EX', this.deps.cacheTtlSec).catch(() => undefined);
      return await finish(score, provider, false);
    } catch (err) {
      if (err instanceof PredictBudget) throw new PredictTimeout(await finish(null, 'none', false, 'model_timeout'), this.deps.timeoutMs);
      if (isFabricError(err) && !err.retriable) return await finish(null, 'none', false, 'model_error');
      throw err;
    } finally {
      clearTimeout(timer);
    }
  }

  /**
   * A recommendation for the user of an interaction, as the stream would make it at that event if it
   * arrived now: user features as of the event, candidates and cross features from the user's window
   * plus the event, item features as of its time; within the budget.
   */
  private async recommend(served: ServedModel, event: unknown, started: number, assignment: Assignment): Promise<PredictResult> {
    const problem = explainInvalid(interactionType, event);
    if (problem) throw new FabricError('FABRIC_EVENT_INVALID', `event does not match the interaction schema: ${problem}`);
    const ix = event as Interaction;
    const [[at], histories] = await Promise.all([
      readFeaturesAtEvents(this.deps.redis, this.deps.keyPrefix, userGroup, [{ entity: ix.user_id, eventId: ix.event_id, ts: ix.ts, raw: ix as unknown as Record<string, unknown> }]),
      readUserHistories(this.deps.redis, this.deps.keyPrefix, new Map([[ix.user_id, ix.ts]])),
    ]);
    const history = [...(histories.get(ix.user_id) ?? [])];
    const stored = history.find((e) => e.eventId === ix.event_id);
    const offset = stored?.offset ?? Number.MAX_SAFE_INTEGER;
    if (!stored) history.push({ eventId: ix.event_id, itemId: ix.item_id, action: ix.action, ts: ix.ts, offset });
    history.sort((a, b) => a.ts - b.ts || a.offset - b.offset);
    let timer: NodeJS.Timeout | undefined;
    const budget = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new PredictBudget()), Math.max(0, this.deps.timeoutMs - (performance.now() - started)));
    });
    const rules = this.deps.rules.current(served.entry.name, 'ranking');
    const base = { model: served.entry.name, version: served.entry.version, event_id: ix.event_id, features: {}, featuresExact: at!.exact, cached: false, ...assignment };
    const finish = (r: RecsAnswer): PredictResult => {
      const result: PredictResult = { ...base, score: r.items[0]?.score ?? null, decision: r.items[0]?.item_id ?? 'none', reasons: r.reasons, fallback: r.fallback, provider: r.provider, items: r.items, candidates: r.candidates, rulesVersion: r.rulesVersion, rulesFired: r.fired, latencyMs: Number((performance.now() - started).toFixed(3)) };
      this.deps.metrics?.predictLatency.observe({ model: served.entry.name }, result.latencyMs / 1000);
      this.deps.emit?.(`predictions.${served.entry.name}`, ix.user_id, recommendationRecord(served.entry, ix, r, { kind: 'online', at: this.now() }, { ...assignment, latencyMs: result.latencyMs }));
      return result;
    };
    try {
      const deps = {
        redis: this.deps.redis,
        keyPrefix: this.deps.keyPrefix,
        rules,
        ...(this.deps.metadata ? { metadata: this.deps.metadata } : {}),
        ...(this.deps.caps ? { caps: this.deps.caps } : {}),
        onRuleError: (rule: string) => this.deps.metrics?.ruleErrors.inc({ model: served.entry.name, rule }),
      };
      const query = { userId: ix.user_id, event: ix as unknown as Record<string, unknown> & { event_id: string }, ts: ix.ts, offset, user: at!.values };
      const [answer] = await Promise.race([recommend(deps, served, [query], new Map([[ix.user_id, history]])), budget]);
      return finish(answer!);
    } catch (err) {
      if (err instanceof PredictBudget) throw new PredictTimeout(finish({ items: [], candidates: 0, reasons: ['fallback:model_timeout'], fallback: true, provider: 'none', rulesVersion: rules.version, fired: [] }), this.deps.timeoutMs);
      throw err;
    } finally {
      clearTimeout(timer);
    }
  }

  /**
   * The version that answers for the event's entity: under a running experiment (whose control is the
   * serving version) the entity's sticky arm, as the stream assigns it; a request for an explicit
   * `@version` is outside any experiment.
   */
  private async assign(name: string, served: ServedModel, explicit: boolean, event: unknown): Promise<{ served: ServedModel; assignment: Assignment }> {
    const experiment = explicit ? undefined : this.deps.experiments?.running(name);
    if (!experiment || experiment.control !== served.entry.version) return { served, assignment: {} };
    const fields = (event ?? {}) as Record<string, unknown>;
    const entity = served.entry.task === 'recs' ? fields.user_id : fields.account_id;
    if (typeof entity !== 'string') return { served, assignment: {} }; // refused by the schema check next
    const arm = armOf(experiment, entity);
    return { served: arm === 'treatment' ? await this.deps.models.version(name, experiment.treatment) : served, assignment: { experiment: experiment.id, arm } };
  }

  private async resolve(name: string, version: string | null): Promise<ServedModel> {
    if (!this.deps.models.isRegistered(name)) throw new FabricError('FABRIC_MODEL_UNKNOWN', `model ${name} is not registered`);
    if (version !== null) return this.deps.models.version(name, version);
    const served = this.deps.models.served(name);
    if (served) return served;
    // First request for this model in this process: follow it (loads the production version).
    await this.deps.models.follow(name);
    return this.deps.models.require(name);
  }

  private cacheKey(entry: ModelVersion, row: readonly number[]): string {
    const hash = createHash('sha256').update(Buffer.from(Float64Array.from(row).buffer)).digest('base64url').slice(0, 32);
    return `${this.deps.keyPrefix}pcache:${entry.name}@${entry.version}:${entry.artifact.sha256.slice(0, 12)}:${hash}`;
  }

}

class PredictBudget extends Error {}

type Assignment = { experiment?: string; arm?: Arm };
