import type { Logger } from 'pino';
import type { DriftPartial } from '../schemas/types.generated.js';
import { loadAvroSchema } from '../schemas/catalog.js';
import type { AvroSerde } from '../schemas/serde.js';
import { prefixed, type FabricConfig } from '../topology/config.js';
import { messageOf } from '../topology/errors.js';
import type { BatchingProducer } from '../topology/runtime/producer.js';
import type { ModelRegistry } from '../serving/registry/registry.js';
import { referenceOf, type References } from '../serving/registry/reference.js';
import type { ReferenceLookup } from '../processors/drift/window.js';

/** How the drift processors find a version's reference profiles: the registry entries, read once per version. */
export interface ReferenceSource {
  readonly references: ReferenceLookup;
  /** Makes sure `versions` are looked up: a version this instance's registry follower has not seen yet is read from the registry topic first. */
  prepare(versions: readonly string[]): Promise<void>;
  /** The version in production now ('' when none). */
  production(): string;
}

/**
 * The reference profiles of `model`'s versions, from the registry. An entry never changes its
 * profile once registered, so each version is resolved once and kept: the per-partition processor
 * and the merge (possibly in other instances) bin a version's values the same way. A version no entry
 * names even after the registry topic was read to its end has no profile (its variables are reported
 * `no_reference`); so has one whose stored profile does not parse (logged).
 */
export function registryReferences(registry: ModelRegistry, model: string, log: Logger): ReferenceSource {
  const known = new Map<string, References | null>();
  const resolve = (version: string): References | null | undefined => {
    const entry = registry.get(model, version);
    if (!entry) return undefined;
    try {
      return referenceOf(entry);
    } catch (err) {
      log.warn({ model, version, err: messageOf(err) }, 'reference profile does not parse: its variables are reported without one');
      return null;
    }
  };
  return {
    production: () => registry.production(model)?.version ?? '',
    references(version) {
      if (!known.has(version)) {
        const r = resolve(version);
        if (r === undefined) return null;
        known.set(version, r);
      }
      return known.get(version)!;
    },
    async prepare(versions) {
      const missing = versions.filter((v) => !known.has(v) && resolve(v) === undefined);
      if (missing.length > 0) await registry.readOnce();
      for (const v of versions) {
        if (known.has(v)) continue;
        const r = resolve(v);
        if (r === undefined) log.warn({ model, version: v }, 'predictions of a version the registry does not know: measured without a reference profile');
        known.set(v, r ?? null);
      }
    },
  };
}

/**
 * Writes a tick record to drift.partials every `intervalMs`, so the drift merge sees time pass when no
 * predictions do: with its idle timeout it closes the windows of stopped traffic. Ticks carry nothing
 * but their record timestamp; several instances ticking is harmless. Returns the stop function.
 */
export async function startDriftClock(deps: { producer: BatchingProducer; serde: AvroSerde; config: FabricConfig; log: Logger; intervalMs: number }): Promise<() => Promise<void>> {
  const topic = prefixed(deps.config, 'drift.partials');
  const writer = await deps.serde.writer<DriftPartial>(`${topic}-value`, loadAvroSchema('drift_partial'));
  const tick: DriftPartial = { model: '', version: '', source_topic: '', source_partition: 0, partitions: 0, watermark: 0, kind: 'tick', windows: [] };
  const encoded = writer.encode(tick);
  let inFlight: Promise<void> = Promise.resolve();
  const timer = setInterval(() => {
    inFlight = deps.producer.send([{ topic, key: 'tick', value: encoded }]).catch((err: unknown) => deps.log.warn({ err: messageOf(err) }, 'drift clock tick not written (windows of stopped traffic close on a later one)'));
  }, deps.intervalMs);
  timer.unref();
  return async () => {
    clearInterval(timer);
    await inFlight;
  };
}
