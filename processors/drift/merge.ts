import type { BatchContext, Output, ProcessorLogic, SourceRecord } from '../../topology/runtime/processor.js';
import { emit, reject, wholeBatch } from '../../topology/runtime/processor.js';
import { FabricError } from '../../topology/errors.js';
import type { DriftMetric, DriftPartial } from '../../schemas/types.generated.js';
import { isCategorical, type ReferenceProfile } from '../../serving/registry/reference.js';
import { chiSquare, driftStatus, jsDistance, ksStatistic, psi, wasserstein } from './metrics.js';
import { addPane, emptyPane, misfit, type PaneAggregate, type ReferenceLookup, type VariableAggregate } from './window.js';

export interface DriftMergeOptions {
  readonly model: string;
  /** Reference profiles by version, the same as the per-partition processor's. */
  readonly references: ReferenceLookup;
  /** Called with the versions a batch's partials hold before they are merged (see the per-partition processor). */
  readonly prepare?: (versions: readonly string[]) => Promise<void>;
  /** Window length; a multiple of `hopMs`. */
  readonly windowMs: number;
  /** A window ends every hop (the panes' length). Default `windowMs` (tumbling windows). */
  readonly hopMs?: number;
  /**
   * A partition whose last partial is this old (by the record timestamps of drift.partials, ticks
   * included) no longer holds results back: the windows the others passed fire early (final=false);
   * when every partition is idle, every window whose panes have all ended does (traffic stopped).
   * Final results still wait for every watermark (or `holdMs`). Default 2 windows.
   */
  readonly idleMs?: number;
  /**
   * How far (event time) a partition that sends nothing may hold final results back behind the
   * partitions that advance: windows ending before the active partitions' watermark minus this are
   * final whatever the idle partition did (its later snapshots of them count as late). It bounds the
   * merge's state when a partition never receives traffic. Default 10 windows.
   */
  readonly holdMs?: number;
  /** Below this many values a window's status is low_count. Default 50. */
  readonly minCount?: number;
  /**
   * Partitions of the source topic a window waits for. Default (and at least): the largest
   * `partitions` the partials carry.
   */
  readonly partitions?: number;
  /** Default drift.metrics. */
  readonly outputTopic?: string;
  /** Processor name (state owner). Default drift-merge. */
  readonly name?: string;
}

/** The merge task's durable state. */
interface MergeState {
  readonly v: 2;
  /** Largest `partitions` carried by a partial (0 before the first). */
  partitions: number;
  /** Latest (largest) watermark per source partition. */
  readonly watermarks: Record<string, number>;
  /** Record timestamp of each source partition's latest partial. */
  readonly seen: Record<string, number>;
  /** Record timestamp of the first record this task read (partitions not seen yet count as seen then). */
  since: number | null;
  /** Every window ending at or before this has had its final result (or never will); null before the first. */
  closed: number | null;
  /**
   * Windows fired early (on the idle timeout) and not final yet: by window end, the fingerprint of
   * what the early result measured (values and late predictions counted), so a window is fired again
   * only when more arrived. Absent in states of earlier releases.
   */
  fired?: Record<string, number>;
  /** Panes still needed by a window not emitted yet: by pane start, each source partition's latest snapshot. */
  readonly panes: Record<string, Record<string, PaneAggregate>>;
}

const STATE_VERSION = 2;

function parseState(saved: string | null, log: BatchContext['log']): MergeState {
  const fresh = (): MergeState => ({ v: STATE_VERSION, partitions: 0, watermarks: {}, seen: {}, since: null, closed: null, panes: {}, fired: {} });
  if (saved === null) return fresh();
  const parsed = JSON.parse(saved) as { v: number; closed?: number | null };
  if (parsed.v === 1) {
    log.warn({ closed: parsed.closed }, 'drift merge: state of an earlier release; its open windows are dropped once');
    return { ...fresh(), closed: parsed.closed ?? null };
  }
  if (parsed.v !== STATE_VERSION) throw new Error(`drift merge state has version ${String(parsed.v)}, this code reads ${STATE_VERSION}`);
  return parsed as MergeState;
}

/** The DriftMetric of one variable of one version over one window (see metrics.ts for the formulas). */
export function variableMetric(base: { model: string; version: string; window_start: number; window_end: number; total: number; late: number; final?: boolean }, variable: string, agg: VariableAggregate, profile: ReferenceProfile | undefined, minCount: number): DriftMetric {
  const rate = (x: number, of: number): number => (of > 0 ? x / of : 0);
  const common = {
    model: base.model,
    version: base.version,
    variable,
    window_start: base.window_start,
    window_end: base.window_end,
    count: agg.n,
    total: base.total,
    missing_rate: rate(agg.missing, base.total),
    invalid: agg.invalid,
    late: base.late,
    final: base.final ?? true,
  };
  if (!profile) {
    return { ...common, kind: 'none', psi: 0, mean: agg.n ? Math.round((agg.sum / agg.n) * 1e6) / 1e6 : null, status: 'no_reference', js: null, ks: null, wasserstein: null, chi2_p: null, out_of_range_rate: 0, unseen_rate: 0 };
  }
  const value = psi(profile.proportions, agg.bins);
  if (isCategorical(profile)) {
    return { ...common, kind: 'categorical', psi: value, mean: null, status: driftStatus(value, agg.n, minCount), js: jsDistance(profile.proportions, agg.bins), ks: null, wasserstein: null, chi2_p: agg.n ? chiSquare(profile.proportions, agg.bins).pValue : null, out_of_range_rate: 0, unseen_rate: rate(agg.unseen, agg.n) };
  }
  return {
    ...common,
    kind: 'numeric',
    psi: value,
    mean: agg.n ? Math.round((agg.sum / agg.n) * 1e6) / 1e6 : null,
    status: driftStatus(value, agg.n, minCount),
    js: jsDistance(profile.proportions, agg.bins),
    ks: ksStatistic(profile.proportions, agg.bins),
    wasserstein: profile.centers ? wasserstein(profile.centers, profile.proportions, agg.bins) : null,
    chi2_p: null,
    out_of_range_rate: rate(agg.out_of_range, agg.n),
    unseen_rate: 0,
  };
}

/**
 * Drift, second stage: merges the per-partition pane snapshots of drift.partials (one partition, so
 * one task holds the whole merge) into windows, and emits per window, model version and variable one
 * DriftMetric on drift.metrics (key `${model}/${version}/${variable}`), in window end, version, then
 * variable order. Windows are `windowMs` long and end every `hopMs` (tumbling when equal): a window is
 * the sum of its panes.
 *
 * A window closes when the watermark of every source partition has passed its end. A partition's
 * final snapshot of a pane travels in the same record as (or before) the first watermark of that
 * partition beyond the pane's end, so when a window closes every partition's share is here, and the
 * metrics are the same whatever the interleaving of partitions, their batch boundaries or the number
 * of instances that produced them. Partitions' panes are added in partition order, then pane order,
 * so even the floating sums come out byte-identical.
 *
 * Idle partitions and stopped traffic (early results): a partition whose latest partial is older
 * than `idleMs` (measured on the record timestamps of drift.partials, where the monitor also writes a
 * tick record every few seconds) stops holding windows back, and when every partition is idle, every
 * window whose panes have all ended fires with what the partitions reported (their snapshots include
 * open panes), so the last windows of a stream that stops are reported too. Such a result is early
 * (`final: false`): the window's panes are kept, a snapshot that adds to them fires it again (on the
 * next record; its record replaces the earlier in ClickHouse), and once every partition's watermark
 * has passed it the final result follows (`final: true`). So the final results, and the latest result
 * of every window, are the same whatever the wall clock did (an outage, a stalled instance, a slow
 * consumer group); only how many early results came before them depends on it. A partition that
 * stays idle holds final results back by at most `holdMs` of event time behind the others (the
 * state's bound); what it sends later for windows already final is counted as late, not measured.
 *
 * Idempotent: the latest snapshot of a (pane, partition) replaces the earlier ones (snapshots are
 * cumulative), a snapshot of a pane no window still needs is ignored, and watermarks only move
 * forward (max).
 */
export function driftMergeProcessor(options: DriftMergeOptions): ProcessorLogic {
  const name = options.name ?? 'drift-merge';
  const outputTopic = options.outputTopic ?? 'drift.metrics';
  const minCount = options.minCount ?? 50;
  const { windowMs, references } = options;
  const hopMs = options.hopMs ?? windowMs;
  const idleMs = options.idleMs ?? 2 * windowMs;
  const holdMs = options.holdMs ?? 10 * windowMs;
  if (!(Number.isSafeInteger(windowMs) && windowMs > 0)) throw new FabricError('FABRIC_CONFIG_INVALID', `drift windowMs must be a positive integer, got ${windowMs}`);
  if (!(Number.isSafeInteger(hopMs) && hopMs > 0 && windowMs % hopMs === 0)) throw new FabricError('FABRIC_CONFIG_INVALID', `drift hopMs must be a positive integer dividing the window (${windowMs} ms), got ${hopMs}`);
  if (!(Number.isSafeInteger(idleMs) && idleMs > 0)) throw new FabricError('FABRIC_CONFIG_INVALID', `drift idleMs must be a positive integer, got ${idleMs}`);
  if (!(Number.isSafeInteger(holdMs) && holdMs >= windowMs)) throw new FabricError('FABRIC_CONFIG_INVALID', `drift holdMs must be an integer of at least one window (${windowMs} ms), got ${holdMs}`);

  function invalid(p: DriftPartial): string | null {
    if (!Number.isSafeInteger(p.source_partition) || p.source_partition < 0) return `invalid source_partition ${String(p.source_partition)}`;
    if (!Number.isSafeInteger(p.partitions) || p.partitions <= p.source_partition) return `invalid partitions ${String(p.partitions)} for source partition ${p.source_partition}`;
    if (!Number.isSafeInteger(p.watermark)) return `invalid watermark ${String(p.watermark)}`;
    for (const w of p.windows) {
      const why = misfit(w, hopMs, references);
      if (why) return why;
      if (w.closed && w.window_end > p.watermark) return `pane ${w.window_start} is reported closed but ends after the watermark ${p.watermark}`;
    }
    return null;
  }

  /** The window ending at `end`: its panes added up in partition, then pane order (null when it has none). */
  function windowAt(state: MergeState, end: number): PaneAggregate | null {
    const total = emptyPane(end - windowMs, end);
    let any = false;
    for (let start = end - windowMs; start < end; start += hopMs) {
      const parts = state.panes[start];
      if (!parts) continue;
      any = true;
      for (const source of Object.keys(parts).map(Number).sort((a, b) => a - b)) addPane(total, parts[source]!, references);
    }
    return any ? total : null;
  }

  /**
   * What a window's result measured. Snapshots are cumulative (counts only grow), so the sum of the
   * predictions and late ones of its panes grows whenever anything is added.
   */
  function fingerprint(state: MergeState, end: number): number {
    let n = 0;
    for (let start = end - windowMs; start < end; start += hopMs) for (const part of Object.values(state.panes[start] ?? {})) n += part.count + part.late;
    return n;
  }

  function emitWindow(total: PaneAggregate, final: boolean, outputs: Output[]): void {
    // A window holding only late predictions (of earlier windows) has nothing to measure.
    if (total.count === 0) return;
    for (const version of Object.keys(total.versions).sort()) {
      const agg = total.versions[version]!;
      const ref = references(version);
      const base = { model: options.model, version, window_start: total.window_start, window_end: total.window_end, total: agg.count, late: total.late, final };
      for (const v of Object.keys(agg.variables).sort()) outputs.push(emit(outputTopic, `${options.model}/${version}/${v}`, variableMetric(base, v, agg.variables[v]!, ref?.[v], minCount)));
    }
  }

  /** Ends of the windows holding one of `starts` whose end is in (after, through], ascending. */
  function endsBetween(starts: readonly number[], after: number | null, through: number): number[] {
    const ends = new Set<number>();
    for (const s of starts) for (let e = s + hopMs; e <= s + windowMs; e += hopMs) if (e <= through && (after === null || e > after)) ends.add(e);
    return [...ends].sort((a, b) => a - b);
  }

  /**
   * Emits the final result of every window all watermarks have passed, and an early result of every
   * window the idle timeout (at `now`) lets fire and that changed since it last fired.
   */
  function close(state: MergeState, now: number, outputs: Output[], ctx: BatchContext): void {
    const partitions = Math.max(options.partitions ?? 0, state.partitions);
    const starts = Object.keys(state.panes).map(Number);
    if (partitions === 0 || starts.length === 0) return;
    const fired = (state.fired ??= {});
    let all = Infinity;
    let active = Infinity;
    let actives = 0;
    for (let i = 0; i < partitions; i++) {
      const watermark = state.watermarks[i] ?? -Infinity;
      all = Math.min(all, watermark);
      if ((state.seen[i] ?? state.since ?? now) <= now - idleMs) continue; // idle: does not hold early results back
      actives++;
      active = Math.min(active, watermark);
    }
    // Every partition idle: traffic stopped; what has fully ended fires.
    const early = actives === 0 ? Math.max(...starts) + hopMs : active;
    const final = Math.max(all, early - holdMs);
    if (final !== -Infinity && (state.closed === null || final > state.closed)) {
      for (const end of endsBetween(starts, state.closed, final)) {
        const total = windowAt(state, end);
        if (total) emitWindow(total, true, outputs);
        delete fired[end];
      }
      state.closed = final;
      for (const s of starts) if (s + windowMs <= final) delete state.panes[s];
    }
    if (early === -Infinity || early <= (state.closed ?? -Infinity)) return;
    let firedNow = 0;
    for (const end of endsBetween(starts, state.closed, early)) {
      const fp = fingerprint(state, end);
      if (fired[end] === fp) continue;
      const total = windowAt(state, end);
      if (total) emitWindow(total, false, outputs);
      fired[end] = fp;
      firedNow++;
    }
    if (firedNow > 0) ctx.log.info({ model: options.model, through: early, windows: firedNow, idle: partitions - actives }, actives === 0 ? 'drift: every partition idle; early results of the windows that ended' : 'drift: idle partitions; early results of the windows the others closed');
  }

  async function handle(records: SourceRecord[], ctx: BatchContext): Promise<Output[]> {
    const state = parseState(await ctx.state.load(), ctx.log);
    const outputs: Output[] = [];
    const versions = new Set<string>();
    for (const r of records) {
      const p = r.value as DriftPartial | null;
      if (p?.model === options.model) for (const w of p.windows ?? []) for (const v of Object.keys(w.versions ?? {})) versions.add(v);
    }
    await options.prepare?.([...versions]);
    for (const record of records) {
      const p = record.value as DriftPartial | null;
      if (!p || typeof p !== 'object' || !Array.isArray(p.windows)) {
        outputs.push(reject(record, new FabricError('FABRIC_RECORD_REJECTED', 'drift partial: not a drift partial')));
        continue;
      }
      const now = record.timestamp;
      state.since ??= now;
      if (p.kind !== 'tick') {
        if (p.model !== options.model) continue;
        const why = invalid(p);
        if (why) {
          outputs.push(reject(record, new FabricError('FABRIC_RECORD_REJECTED', `drift partial: ${why}`)));
          continue;
        }
        const source = String(p.source_partition);
        state.partitions = Math.max(state.partitions, p.partitions);
        state.watermarks[source] = Math.max(state.watermarks[source] ?? -Infinity, p.watermark);
        state.seen[source] = Math.max(state.seen[source] ?? -Infinity, now);
        let late = 0;
        for (const w of p.windows) {
          // Every window holding this pane has been emitted: what it adds comes too late.
          if (state.closed !== null && w.window_start + windowMs <= state.closed) {
            late += w.count;
            continue;
          }
          (state.panes[w.window_start] ??= {})[source] = w; // the latest snapshot replaces the earlier
        }
        if (late > 0) ctx.log.info({ model: options.model, partition: p.source_partition, predictions: late }, 'drift: snapshot of panes whose windows are already final (the partition was held idle too long): not counted');
      }
      // Per record, not per batch: what closes when never depends on the merge's own batch boundaries.
      close(state, now, outputs, ctx);
    }
    await ctx.state.save(JSON.stringify(state));
    return outputs;
  }

  return {
    name,
    process: wholeBatch(handle),
  };
}
