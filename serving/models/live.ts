import type { ModelVersion } from '../../schemas/types.generated.js';
import { FabricError, isFabricError, messageOf } from '../../topology/errors.js';
import type { FeatureGroup } from '../../topology/features/definition.js';
import type { Logger } from '../../topology/runtime/log.js';
import type { Metrics } from '../../topology/runtime/metrics.js';
import { backoffMs } from '../../topology/runtime/retry.js';
import type { BatchingOptions, ModelHandle, ServingEngine } from '../engine/engine.js';
import { entryKey, validateSignature, type TaskInputs } from '../registry/entry.js';
import type { ModelRegistry } from '../registry/registry.js';
import type { ModelStore } from '../registry/store.js';

interface ExtraSlot {
  readonly served: Promise<ServedModel>;
  used: number;
  resolved?: ServedModel;
  pinnedUntil?: number;
}

/** How long a version asked for by stream batches stays pinned after the last ask. */
const PIN_MS = 10 * 60_000;

/** A model version ready to score: its registry entry and its loaded handle in the engine. */
export interface ServedModel {
  readonly entry: ModelVersion;
  readonly handle: ModelHandle;
}

export type LoadState = 'loading' | 'loaded' | 'failed';

export interface LoadStatus {
  readonly model: string;
  readonly version: string;
  readonly state: LoadState;
  readonly error?: string;
  /** The failure's code (FABRIC_MODEL_INVALID: the content is refused, waiting will not help). */
  readonly code?: string;
  readonly provider?: string;
  readonly at: number;
}

export interface LiveModelsDeps {
  readonly registry: ModelRegistry;
  readonly store: ModelStore;
  readonly engine: ServingEngine;
  readonly tasks: readonly TaskInputs[];
  readonly groups: readonly FeatureGroup[];
  readonly log: Logger;
  readonly metrics?: Metrics;
  readonly batching?: BatchingOptions;
  /** Reports each load's outcome (the composition root records it where `models list` reads it). */
  onStatus?(status: LoadStatus): void;
  /** Versions per model kept loaded besides production (for `@version` requests); least recently used go. Default 3. */
  readonly maxExtraVersions?: number;
}

/**
 * Keeps the production version of every followed model loaded in the serving engine, following the
 * registry: a promotion loads the new version (artifact fetched and verified from the store, signature
 * checked against the feature groups, session created with the engine's load timeout) and only then
 * swaps it in; scoring paths read `current(name)` per batch or request, so a swap never splits one.
 * A version that fails to load never replaces the working one: it is reported `failed` (and retried
 * with backoff while the failure is retriable, e.g. the model store unavailable). The replaced
 * version stays loaded for a grace period, so batches that took it finish on it.
 */
export class LiveModels {
  private readonly followed = new Set<string>();
  private readonly current = new Map<string, ServedModel>();
  private readonly extra = new Map<string, ExtraSlot>();
  /** Versions whose load failed for their content (not retriable), with why. */
  private readonly unloadable = new Map<string, string>();
  private readonly loading = new Map<string, Promise<ServedModel>>();
  private readonly failed = new Map<string, string>();
  private readonly retries = new Set<NodeJS.Timeout>();
  private readonly unsubscribe: () => void;
  private closed = false;

  constructor(private readonly deps: LiveModelsDeps) {
    this.unsubscribe = deps.registry.onChange((entry) => {
      if (this.followed.has(entry.name) && entry.stage === 'production') void this.switchTo(entry.name);
    });
  }

  /**
   * Follows a model: loads its production version now (waits for it). Resolves without a model
   * when none is in production yet (scoring then waits, retriably); rejects when the production version
   * cannot be loaded and nothing serves.
   */
  async follow(name: string): Promise<ServedModel | undefined> {
    this.followed.add(name);
    return this.switchTo(name);
  }

  /**
   * Follows a model and waits (bounded) until a production version of it is loaded: for what needs the
   * model to be built at all (the drift processors take their reference profile from it), at a start
   * where another instance may still be registering and promoting it. Rejects as `require` does after
   * `timeoutMs`.
   */
  async serving(name: string, timeoutMs = 60_000): Promise<ServedModel> {
    await this.follow(name);
    const deadline = Date.now() + timeoutMs;
    while (!this.current.has(name) && !this.closed && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 200));
    return this.require(name);
  }

  /** The serving version of a followed model, or undefined while none is loaded. */
  served(name: string): ServedModel | undefined {
    return this.current.get(name);
  }

  /**
   * The serving version, or FABRIC_MODEL_UNAVAILABLE (retriable: a stream batch waits for a version
   * to be registered, promoted and loaded, it never skips events).
   */
  require(name: string): ServedModel {
    const served = this.current.get(name);
    if (served) return served;
    const production = this.deps.registry.production(name);
    const why = production ? this.failed.get(entryKey(name, production.version)) : undefined;
    const state = !this.isRegistered(name) ? 'is not registered' : production ? `version ${production.version} is not loaded${why ? ` (${why})` : ' yet'}` : 'has no version in production';
    throw new FabricError('FABRIC_MODEL_UNAVAILABLE', `model ${name} ${state}`);
  }

  /** The version in production as the followed registry has it (loaded here or not). */
  production(name: string): string | undefined {
    return this.deps.registry.production(name)?.version;
  }

  isRegistered(name: string): boolean {
    return this.deps.registry.list().some((e) => e.name === name);
  }

  /** A specific version (POST /v1/predict/{model}@{version}): loaded on demand, a few kept. */
  async version(name: string, version: string): Promise<ServedModel> {
    const cur = this.current.get(name);
    if (cur && cur.entry.version === version) return cur;
    const entry = this.deps.registry.get(name, version);
    if (!entry) throw new FabricError('FABRIC_MODEL_UNKNOWN', `model ${name}@${version} is not registered`);
    const key = entryKey(name, version);
    let slot = this.extra.get(key);
    if (!slot) {
      const created: ExtraSlot = { served: this.load(entry), used: Date.now() };
      slot = created;
      this.extra.set(key, created);
      created.served.then(
        (served) => (created.resolved = served),
        () => this.extra.delete(key),
      );
      this.evictExtra(name);
    }
    slot.used = Date.now();
    return slot.served;
  }

  /**
   * A specific version for a stream batch (an experiment's treatment or shadow): the serving version,
   * or one kept loaded beside it (pinned while batches ask for it, never evicted by predict's
   * `@version` requests). While it loads, FABRIC_MODEL_UNAVAILABLE (retriable: the batch waits for it,
   * it never scores with another version); `unloadable` says when waiting is pointless.
   */
  requireVersion(name: string, version: string): ServedModel {
    const cur = this.current.get(name);
    if (cur && cur.entry.version === version) return cur;
    const key = entryKey(name, version);
    const slot = this.extra.get(key);
    if (slot) {
      slot.used = Date.now();
      slot.pinnedUntil = slot.used + PIN_MS;
      if (slot.resolved) return slot.resolved;
    } else if (this.deps.registry.get(name, version)) {
      void this.version(name, version).catch(() => undefined);
      const created = this.extra.get(key);
      if (created) created.pinnedUntil = Date.now() + PIN_MS;
    } else throw new FabricError('FABRIC_MODEL_UNAVAILABLE', `model ${name}@${version} is not in the registry this instance follows (yet)`);
    const why = this.unloadable.get(key) ?? this.failed.get(key);
    throw new FabricError('FABRIC_MODEL_UNAVAILABLE', `model ${name}@${version} is ${why ? `not loaded (${why})` : 'loading'}`);
  }

  /** Why a version cannot be loaded here (its artifact or signature is refused), or undefined. */
  unloadableReason(name: string, version: string): string | undefined {
    return this.unloadable.get(entryKey(name, version));
  }

  private evictExtra(name: string): void {
    const now = Date.now();
    const mine = [...this.extra.entries()].filter(([k, slot]) => k.startsWith(`${name}@`) && !((slot.pinnedUntil ?? 0) > now)).sort((a, b) => a[1].used - b[1].used);
    const max = this.deps.maxExtraVersions ?? 3;
    for (const [k, slot] of mine.slice(0, Math.max(0, mine.length - max))) {
      this.extra.delete(k);
      void slot.served.then((s) => this.retire(s), () => undefined);
    }
  }

  /**
   * Loads the production version of `name` and swaps it in. A retriable failure (store or workers
   * unavailable) is retried in the background with backoff while that version is still the one in
   * production; meanwhile the current version keeps serving.
   */
  private async switchTo(name: string, attempt = 0): Promise<ServedModel | undefined> {
    for (;;) {
      if (this.closed) return this.current.get(name);
      const entry = this.deps.registry.production(name);
      if (!entry) return this.current.get(name);
      const cur = this.current.get(name);
      if (cur && cur.entry.version === entry.version && cur.entry.artifact.sha256 === entry.artifact.sha256) {
        if (cur.entry !== entry) this.current.set(name, { entry, handle: cur.handle }); // a newer record (stage history) of the same version
        return this.current.get(name);
      }
      let served: ServedModel;
      try {
        served = await this.load(entry);
      } catch (err) {
        if (isFabricError(err) && err.retriable && !this.closed) {
          const timer = setTimeout(() => {
            this.retries.delete(timer);
            if (this.deps.registry.production(name)?.version === entry.version) void this.switchTo(name, attempt + 1).catch(() => undefined);
          }, backoffMs(attempt, 1000, 30_000));
          this.retries.add(timer);
          return this.current.get(name);
        }
        if (this.current.get(name)) return this.current.get(name);
        throw err;
      }
      // Another promotion may have landed while this one loaded: only the production version goes live.
      if (this.deps.registry.production(name)?.version !== entry.version) {
        this.retire(served);
        continue;
      }
      const previous = this.current.get(name);
      this.current.set(name, served);
      this.deps.metrics?.modelServing.reset();
      for (const s of this.current.values()) this.deps.metrics?.modelServing.set({ model: s.entry.name, version: s.entry.version, provider: s.handle.provider }, 1);
      this.deps.log.info({ model: name, version: entry.version, previous: previous?.entry.version ?? null, provider: served.handle.provider }, 'model version serving');
      if (previous && previous.handle !== served.handle) this.retire(previous);
      return served;
    }
  }

  /** Fetches, verifies and loads one version (deduplicated while in progress). */
  private load(entry: ModelVersion): Promise<ServedModel> {
    const key = entryKey(entry.name, entry.version);
    const existing = this.deps.engine.loaded.get(key);
    if (existing) return Promise.resolve({ entry, handle: existing });
    let pending = this.loading.get(key);
    if (pending) return pending;
    pending = (async () => {
      this.report(entry, 'loading');
      try {
        validateSignature(entry, this.deps.tasks, this.deps.groups);
        const fetched = await this.deps.store.fetch(entry.artifact);
        const handle = await this.deps.engine.load(
          {
            name: entry.name,
            version: entry.version,
            ...(fetched.path !== undefined ? { path: fetched.path } : { bytes: fetched.bytes }),
            inputName: entry.signature.input_name,
            outputName: entry.signature.output_name,
            positiveClassIndex: entry.signature.positive_class_index,
            inputs: entry.signature.inputs.map((i) => i.name),
          },
          this.deps.batching,
        );
        this.failed.delete(key);
        this.unloadable.delete(key);
        this.deps.metrics?.modelLoads.inc({ model: entry.name, version: entry.version, outcome: 'loaded' });
        this.report(entry, 'loaded', undefined, handle.provider);
        return { entry, handle };
      } catch (err) {
        this.failed.set(key, messageOf(err));
        if (!(isFabricError(err) && err.retriable)) this.unloadable.set(key, messageOf(err));
        this.deps.metrics?.modelLoads.inc({ model: entry.name, version: entry.version, outcome: 'failed' });
        this.report(entry, 'failed', messageOf(err), undefined, isFabricError(err) ? err.code : undefined);
        this.deps.log.error({ model: entry.name, version: entry.version, err: messageOf(err) }, 'model version failed to load; the serving version stays');
        throw err;
      } finally {
        this.loading.delete(key);
      }
    })();
    this.loading.set(key, pending);
    return pending;
  }

  /** Unloads a replaced version once batches that took it had time to finish (a run is bounded by the timeout). */
  private retire(served: ServedModel): void {
    const inUse = [...this.current.values()].some((s) => s.handle === served.handle);
    if (inUse) return;
    const timer = setTimeout(() => {
      const stillUsed = [...this.current.values()].some((s) => s.handle === served.handle) || this.extra.has(served.handle.key);
      if (!stillUsed) this.deps.engine.unload(served.handle);
    }, 2 * this.deps.engine.options.timeoutMs + 1000);
    timer.unref();
  }

  private report(entry: ModelVersion, state: LoadState, error?: string, provider?: string, code?: string): void {
    try {
      this.deps.onStatus?.({ model: entry.name, version: entry.version, state, at: Date.now(), ...(error !== undefined ? { error } : {}), ...(code !== undefined ? { code } : {}), ...(provider !== undefined ? { provider } : {}) });
    } catch {
      // Reporting must not break loading.
    }
  }

  close(): void {
    this.closed = true;
    for (const timer of this.retries) clearTimeout(timer);
    this.retries.clear();
    this.unsubscribe();
  }
}
