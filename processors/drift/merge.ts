import type { BatchContext, Output, ProcessorLogic, SourceRecord } from '../../topology/runtime/processor.js';
import { emit, reject, wholeBatch } from '../../topology/runtime/processor.js';
import { FabricError } from '../../topology/errors.js';
import type { DriftMetric, DriftPartial } from '../../schemas/types.generated.js';
import { driftStatus, psi } from './psi.js';
import { emptyWindow, mergeWindow, misfit, variablesOf, type References, type WindowAggregate } from './window.js';

export interface DriftMergeOptions {
  readonly model: string;
  /** Reported on every metric (the version the reference profile belongs to). */
  readonly version: string;
  /** Reference profiles by variable, the same as the per-partition processor's. */
  readonly reference: References;
  /** When set, partials whose windows are not `windowMs` long tumbling windows are rejected. The windows' bounds come from the partials. */
  readonly windowMs?: number;
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
  readonly v: 1;
  /** Largest `partitions` carried by a partial (0 before the first). */
  partitions: number;
  /** Latest (largest) watermark per source partition. */
  readonly watermarks: Record<string, number>;
  /** Every window ending at or before this has been emitted; null before the first close. */
  closed: number | null;
  /** Open windows: by window_start, the partial of each source partition (the first one received). */
  readonly windows: Record<string, Record<string, WindowAggregate>>;
}

const STATE_VERSION = 1;

function parseState(saved: string | null): MergeState {
  if (saved === null) return { v: STATE_VERSION, partitions: 0, watermarks: {}, closed: null, windows: {} };
  const parsed = JSON.parse(saved) as MergeState;
  if (parsed.v !== STATE_VERSION) throw new Error(`drift merge state has version ${String(parsed.v)}, this code reads ${STATE_VERSION}`);
  return parsed;
}

/**
 * Drift, second stage: merges the per-partition partials of drift.partials (one partition, so one task
 * holds the whole merge) into one DriftMetric per window and variable on drift.metrics (key
 * `${model}/${variable}`), in window_start then variable order.
 *
 * A window closes when the watermark of every source partition has passed its end. A partition's
 * partial for a window travels in the same record as (or before) the first watermark of that
 * partition beyond the window's end, so when the window closes every partition's share is here, and
 * the metrics are the same whatever the interleaving of partitions, their batch boundaries or the
 * number of instances that produced them. Partitions' aggregates are added in partition order, so
 * even the floating sums come out byte-identical.
 *
 * Idempotent: at most one partial per (source partition, window) is kept, the first; a partial for a
 * window already emitted is ignored. With transactions a partial is never delivered twice, but if it
 * were (a producer without transactions, a replayed topic) the copies are identical: a partition's
 * window is emitted once, when its watermark first passes the end, and from then on the window takes
 * no more records (later ones are late), so its aggregate is fixed; a re-run of that batch after an
 * abort starts from the same versioned state and folds the same records, whatever the new batch
 * boundaries. Watermarks only move forward (max).
 *
 * Known limit, on purpose: a source partition that receives no predictions never advances its
 * watermark and holds every later window open (they are emitted, complete, once it moves; meanwhile
 * the merge state grows by one small aggregate per window and partition). There is no wall-clock idle
 * timeout: closing without a partition would make the metrics depend on how fast that partition's
 * consumer ran (its partial could arrive before or after the forced close). Nor an event-time one
 * (close when the other partitions are far enough ahead), for the same reason: the order in which
 * partials of different partitions reach drift.partials is timing. A deterministic escape has to be in
 * the idle partition's own input (a watermark or heartbeat record written into it upstream); none is
 * needed with the fabric's traffic, since predictions are keyed by entity and reach every partition.
 */
export function driftMergeProcessor(options: DriftMergeOptions): ProcessorLogic {
  const name = options.name ?? 'drift-merge';
  const outputTopic = options.outputTopic ?? 'drift.metrics';
  const minCount = options.minCount ?? 50;
  const { windowMs, reference } = options;
  const variables = variablesOf(reference);
  if (windowMs !== undefined && !(Number.isSafeInteger(windowMs) && windowMs > 0)) throw new FabricError('FABRIC_CONFIG_INVALID', `drift windowMs must be a positive integer, got ${windowMs}`);

  function invalid(p: DriftPartial | null, state: MergeState): string | null {
    if (!p || typeof p !== 'object' || !Array.isArray(p.windows)) return 'not a drift partial';
    if (!Number.isSafeInteger(p.source_partition) || p.source_partition < 0) return `invalid source_partition ${String(p.source_partition)}`;
    if (!Number.isSafeInteger(p.partitions) || p.partitions <= p.source_partition) return `invalid partitions ${String(p.partitions)} for source partition ${p.source_partition}`;
    if (!Number.isSafeInteger(p.watermark)) return `invalid watermark ${String(p.watermark)}`;
    for (const w of p.windows) {
      const why = misfit(w, windowMs, reference);
      if (why) return why;
      if (w.window_end > p.watermark) return `window ${w.window_start} is reported closed but ends after the watermark ${p.watermark}`;
      const known = Object.values(state.windows[w.window_start] ?? {})[0];
      if (known && known.window_end !== w.window_end) return `window ${w.window_start} ends at ${w.window_end}, other partitions' at ${known.window_end} (window length changed?)`;
    }
    return null;
  }

  /** Emits every window ending at or before the slowest partition's watermark. */
  function close(state: MergeState, outputs: Output[], ctx: BatchContext): void {
    const partitions = Math.max(options.partitions ?? 0, state.partitions);
    if (partitions === 0) return;
    let slowest = Infinity;
    for (let i = 0; i < partitions; i++) slowest = Math.min(slowest, state.watermarks[i] ?? -Infinity);
    if (slowest === -Infinity || (state.closed !== null && slowest <= state.closed)) return;
    const endOf = (start: number): number => Object.values(state.windows[start]!)[0]!.window_end;
    const ready = Object.keys(state.windows)
      .map(Number)
      .filter((start) => endOf(start) <= slowest)
      .sort((a, b) => a - b);
    for (const start of ready) {
      const parts = state.windows[start]!;
      const total = emptyWindow(start, endOf(start), reference);
      for (const source of Object.keys(parts).map(Number).sort((a, b) => a - b)) mergeWindow(total, parts[source]!);
      delete state.windows[start];
      if (total.late > 0) ctx.log.info({ model: options.model, window_start: start, late: total.late }, 'drift window closed with late predictions (not counted)');
      // A window holding only late events (of earlier windows) has nothing to measure.
      if (total.count === 0) continue;
      for (const v of variables) {
        const agg = total.variables[v]!;
        const value = psi(reference[v]!, agg.bins);
        const metric: DriftMetric = {
          model: options.model,
          version: options.version,
          variable: v,
          window_start: total.window_start,
          window_end: total.window_end,
          count: agg.n,
          psi: value,
          mean: agg.n ? Math.round((agg.sum / agg.n) * 1e6) / 1e6 : null,
          status: driftStatus(value, agg.n, minCount),
        };
        outputs.push(emit(outputTopic, `${options.model}/${v}`, metric));
      }
    }
    state.closed = slowest;
  }

  async function handle(records: SourceRecord[], ctx: BatchContext): Promise<Output[]> {
    const state = parseState(await ctx.state.load());
    const outputs: Output[] = [];
    for (const record of records) {
      const p = record.value as DriftPartial | null;
      if (p && typeof p === 'object' && p.model !== options.model) continue;
      const why = invalid(p, state);
      if (why) {
        outputs.push(reject(record, new FabricError('FABRIC_RECORD_REJECTED', `drift partial: ${why}`)));
        continue;
      }
      const partial = p!;
      const source = String(partial.source_partition);
      state.partitions = Math.max(state.partitions, partial.partitions);
      state.watermarks[source] = Math.max(state.watermarks[source] ?? -Infinity, partial.watermark);
      for (const w of partial.windows) {
        if (state.closed !== null && w.window_end <= state.closed) continue; // already emitted
        const parts = (state.windows[w.window_start] ??= {});
        parts[source] ??= w; // first wins (identical copies, see above)
      }
      // Per record, not per batch: what closes when never depends on the merge's own batch boundaries.
      close(state, outputs, ctx);
    }
    await ctx.state.save(JSON.stringify(state));
    return outputs;
  }

  return {
    name,
    process: wholeBatch(handle),
  };
}
