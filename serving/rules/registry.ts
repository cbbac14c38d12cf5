import { createHash } from 'node:crypto';
import type { Kafka } from 'kafkajs';
import type { RuleSetVersion } from '../../schemas/types.generated.js';
import { loadAvroSchema } from '../../schemas/catalog.js';
import type { AvroSerde } from '../../schemas/serde.js';
import { prefixed, type FabricConfig } from '../../topology/config.js';
import { FabricError, messageOf } from '../../topology/errors.js';
import { AvroControlFollower, writeControlRecords } from '../../topology/runtime/control-topic.js';
import type { Logger } from '../../topology/runtime/log.js';
import { MODEL_DEFAULT_RULES, compileRules, type CompiledRules, type OutputKind } from './engine.js';
import { RuleSetInvalid, canonicalRuleSet, checkRuleSetShape, type RuleSet } from './spec.js';

export const RULES_TOPIC = '_fabric.rules';

export function ruleKey(model: string, version: number): string {
  return `${model}@${version}`;
}

/**
 * Every instance's view of `_fabric.rules` (compacted; one record per `<model>@<version>`): the rule
 * set in force for a model is its highest version. Scoring paths call `current` per batch or request,
 * so a new version applies from the next batch on, without restart, and each output records the
 * version that decided it. A stored version that no longer compiles (written by a newer fabric, say)
 * never replaces the working one: the previous valid version stays in force, with an error logged.
 */
export class RuleRegistry extends AvroControlFollower<RuleSetVersion> {
  /** Compiled rule sets by model, output kind and version. */
  private readonly compiled = new Map<string, CompiledRules | Error>();
  /** The rule set in force per model and output kind; cleared when the topic changes (current() runs per request). */
  private readonly inForce = new Map<string, CompiledRules>();

  constructor(kafka: Kafka, serde: AvroSerde, config: Pick<FabricConfig, 'topicPrefix'>, private readonly log: Logger) {
    super(kafka, serde, log, { topic: prefixed(config, RULES_TOPIC), groupPrefix: prefixed(config, 'fabric.rules-reader'), what: 'rule set version', keyOf: (v) => ruleKey(v.model, v.version) });
    this.topic.onChange((key, value) => {
      this.inForce.clear();
      if (value) log.info({ rules: key, sha256: value.sha256.slice(0, 12), by: value.created_by }, 'rule set version received');
    });
  }

  /** Every stored version of a model, oldest first. */
  versions(model: string): RuleSetVersion[] {
    return this.topic
      .values()
      .filter((v) => v.model === model)
      .sort((a, b) => a.version - b.version);
  }

  /** Every model with rule sets. */
  models(): string[] {
    return [...new Set(this.topic.values().map((v) => v.model))].sort();
  }

  /** The rule set in force for a model whose output is `output`: its latest version that compiles, else the defaults. */
  current(model: string, output: OutputKind): CompiledRules {
    const cacheKey = `${model}:${output}`;
    let rules = this.inForce.get(cacheKey);
    if (!rules) this.inForce.set(cacheKey, (rules = this.resolve(model, output)));
    return rules;
  }

  private resolve(model: string, output: OutputKind): CompiledRules {
    const versions = this.versions(model);
    for (let i = versions.length - 1; i >= 0; i--) {
      const v = versions[i]!;
      const key = `${v.model}@${v.version}:${output}:${v.sha256}`;
      let c = this.compiled.get(key);
      if (!c) {
        try {
          c = compileRules(JSON.parse(v.spec) as RuleSet, output, v.version);
        } catch (err) {
          c = err instanceof Error ? err : new Error(String(err));
          this.log.error({ rules: ruleKey(v.model, v.version), err: messageOf(err) }, 'a stored rule set version does not compile; the previous version stays in force');
        }
        this.compiled.set(key, c);
      }
      if (!(c instanceof Error)) return c;
    }
    return MODEL_DEFAULT_RULES.current(model, output);
  }
}

export interface SetRulesResult {
  readonly version: RuleSetVersion;
  /** False when the document equals the version in force (nothing written). */
  readonly created: boolean;
  readonly previous: RuleSetVersion | undefined;
}

/**
 * The write side (`fabric rules set`, and `npm start` for the demo rules): validates a document for
 * its model's output, then writes it as the model's next version in one transaction. A document that
 * fails validation is refused with the path of every problem and never replaces the working set.
 */
export class RulesAdmin {
  constructor(private readonly deps: { kafka: Kafka; serde: AvroSerde; config: Pick<FabricConfig, 'topicPrefix'>; log: Logger }) {}

  /** The registry as on the topic now (read once). */
  async read(): Promise<RuleRegistry> {
    const registry = new RuleRegistry(this.deps.kafka, this.deps.serde, this.deps.config, this.deps.log);
    await registry.readOnce();
    return registry;
  }

  /** Validates `spec` for a model with output `output`; throws RuleSetInvalid. */
  static validate(spec: unknown, model: string, output: OutputKind, source?: string): { spec: RuleSet; rules: CompiledRules } {
    const doc = checkRuleSetShape(spec, source);
    if (doc.model !== model) throw new RuleSetInvalid([{ path: '/model', message: `the document is for model ${JSON.stringify(doc.model)}, not ${JSON.stringify(model)}` }], source);
    try {
      return { spec: doc, rules: compileRules(doc, output, -1) };
    } catch (err) {
      if (err instanceof RuleSetInvalid && source) throw new RuleSetInvalid(err.problems, source);
      throw err;
    }
  }

  async set(spec: RuleSet, options: { by: string; comment?: string; registry?: RuleRegistry }): Promise<SetRulesResult> {
    const registry = options.registry ?? (await this.read());
    const versions = registry.versions(spec.model);
    const previous = versions.at(-1);
    const text = canonicalRuleSet(spec);
    const sha256 = createHash('sha256').update(text).digest('hex');
    if (previous && previous.sha256 === sha256) return { version: previous, created: false, previous };
    const version: RuleSetVersion = { model: spec.model, version: (previous?.version ?? 0) + 1, spec: text, sha256, created_at: Date.now(), created_by: options.by, comment: options.comment ?? '' };
    const writer = await this.deps.serde.writer<RuleSetVersion>(`${prefixed(this.deps.config, RULES_TOPIC)}-value`, loadAvroSchema('rule_set'));
    try {
      await writeControlRecords(this.deps.kafka, prefixed(this.deps.config, RULES_TOPIC), prefixed(this.deps.config, 'fabric.rules-admin'), [{ key: ruleKey(version.model, version.version), value: writer.encode(version) }]);
    } catch (err) {
      throw err instanceof FabricError ? err : new FabricError('FABRIC_KAFKA_UNAVAILABLE', `writing ${RULES_TOPIC}: ${messageOf(err)}`, { cause: err });
    }
    registry.apply(ruleKey(version.model, version.version), writer.encode(version));
    return { version, created: true, previous };
  }
}
