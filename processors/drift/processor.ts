import type { BatchContext, Output, ProcessorLogic, SourceRecord } from '../../topology/runtime/processor.js';
import { emit, reject, wholeBatch } from '../../topology/runtime/processor.js';
import { FabricError } from '../../topology/errors.js';
import type { DriftPartial, Prediction, Recommendation } from '../../schemas/types.generated.js';
import { emptyPane, foldPrediction, paneStartOf, type DriftUnit, type PaneAggregate, type ReferenceLookup } from './window.js';

export { driftMergeProcessor, type DriftMergeOptions } from './merge.js';

export interface DriftProcessorOptions {
  readonly model: string;
  /** The serving version, reported on partials (informative: panes hold every version their predictions carry). */
  readonly version: () => string;
  /** Reference profiles by version (from the registry entries): `score` and model inputs such as `amount`. */
  readonly references: ReferenceLookup;
  /** Called with the versions of a batch before it is folded, so `references` can look up versions it has not seen. */
  readonly prepare?: (versions: readonly string[]) => Promise<void>;
  /** Pane length: the windows' hop (a tumbling window is one pane). */
  readonly paneMs: number;
  /** The partition watermark is the newest accepted event_ts minus this. */
  readonly latenessMs: number;
  /** Number of partitions of the input topic (predictions.<model>): the merge waits for that many. */
  readonly partitions: number;
  /** A prediction whose event_ts is further than this ahead of its record timestamp is dead-lettered. Default 5 min. */
  readonly maxClockSkewMs?: number;
  /** Default drift.partials. */
  readonly outputTopic?: string;
  /** Processor name (state owner). Default drift. */
  readonly name?: string;
  /**
   * What the input records are: predictions (default; one measured unit each) or recommendations
   * (each item shown is a unit: its score and the inputs it was served with).
   */
  readonly input?: 'predictions' | 'recommendations';
}

/** The units a recommendation adds to the windows: one per item shown (a prediction is one unit itself). */
function itemsOf(r: Recommendation): DriftUnit[] {
  return (Array.isArray(r.items) ? r.items : []).map((item) => ({ version: r.version, score: item.score, features: item.features ?? {} }));
}

/** The durable state of one input partition (one task): only what is still open. */
interface PartitionState {
  readonly v: 2;
  /** Newest accepted event_ts of the partition; null before the first. */
  maxTs: number | null;
  /** Open panes (window_end > watermark) by window_start. */
  readonly panes: Record<string, PaneAggregate>;
}

const STATE_VERSION = 2;

function parseState(saved: string | null, log: BatchContext['log']): PartitionState {
  if (saved === null) return { v: STATE_VERSION, maxTs: null, panes: {} };
  const parsed = JSON.parse(saved) as { v: number; maxTs: number | null; panes?: Record<string, PaneAggregate> };
  if (parsed.v === 1) {
    // Written before panes carried versions: its open windows cannot be carried over (their bins may
    // not be the profile's any more). Their predictions are not counted; the watermark is kept.
    log.warn({ maxTs: parsed.maxTs }, 'drift: state of an earlier release; its open windows are dropped once');
    return { v: STATE_VERSION, maxTs: parsed.maxTs, panes: {} };
  }
  if (parsed.v !== STATE_VERSION) throw new Error(`drift state has version ${String(parsed.v)}, this code reads ${STATE_VERSION}`);
  return parsed as PartitionState;
}

/**
 * Drift, first stage, one task per input partition of predictions.<model>: folds each prediction (its
 * version, score and model inputs) into the hop-long event-time panes of this partition, and hands
 * the merge (`driftMergeProcessor`) a snapshot of every pane a batch changed, through drift.partials.
 *
 * Everything is decided per record by the partition's own sequence, so neither batch boundaries nor
 * other partitions change anything:
 * - the partition watermark is the newest accepted event_ts minus `latenessMs`;
 * - a prediction whose pane has closed (pane end <= watermark) is late: not folded, counted in `late`
 *   of the partition's oldest open pane (the one holding the watermark);
 * - a prediction with event_ts beyond its record timestamp + `maxClockSkewMs` (microseconds sent as
 *   milliseconds, a broken clock) is dead-lettered with FABRIC_EVENT_TIME_SKEW and never moves the
 *   watermark, so it cannot make later panes late;
 * - a batch that changed a pane or moved the watermark past a pane end emits one DriftPartial (key:
 *   model) with the partition's whole aggregate of each such pane so far (`closed` once the watermark
 *   passed it, after which the pane leaves the state). A snapshot, not a delta: the merge keeps the
 *   latest per (pane, partition), so what it holds is exactly the partition's aggregate up to that
 *   offset, whatever the batch boundaries, and the open panes' data reach the merge even when traffic
 *   stops (the merge can then fire their early results on its idle timeout).
 *
 * State (open panes and the newest event time) lives in `ctx.state`, scoped to (group, topic,
 * partition) and versioned by input position: it is loaded at the batch start and saved before the
 * batch returns, and the partial goes out in the transaction that commits the batch's offsets. A
 * crashed or re-delivered batch therefore starts again from exactly the state its first offset had
 * (no dedupe by offset is needed), and whichever instance owns the partition after a rebalance
 * continues from it. The logic holds no state of its own: any number of instances may run it.
 */
export function driftProcessor(options: DriftProcessorOptions): ProcessorLogic {
  const name = options.name ?? 'drift';
  const outputTopic = options.outputTopic ?? 'drift.partials';
  const maxClockSkewMs = options.maxClockSkewMs ?? 5 * 60_000;
  const input = options.input ?? 'predictions';
  const { paneMs, latenessMs, references } = options;
  if (!(Number.isSafeInteger(paneMs) && paneMs > 0)) throw new FabricError('FABRIC_CONFIG_INVALID', `drift paneMs must be a positive integer, got ${paneMs}`);
  if (!(Number.isSafeInteger(latenessMs) && latenessMs >= 0)) throw new FabricError('FABRIC_CONFIG_INVALID', `drift latenessMs must be a non-negative integer, got ${latenessMs}`);
  if (!(Number.isSafeInteger(options.partitions) && options.partitions > 0)) throw new FabricError('FABRIC_CONFIG_INVALID', `drift partitions must be a positive integer, got ${options.partitions}`);

  const watermarkOf = (state: PartitionState): number => (state.maxTs === null ? -Infinity : state.maxTs - latenessMs);

  function paneAt(state: PartitionState, start: number, touched: Set<number>): PaneAggregate {
    touched.add(start);
    return (state.panes[start] ??= emptyPane(start, start + paneMs));
  }

  async function handle(records: SourceRecord[], ctx: BatchContext): Promise<Output[]> {
    const state = parseState(await ctx.state.load(), ctx.log);
    const outputs: Output[] = [];
    const touched = new Set<number>();
    await options.prepare?.([...new Set(records.map((r) => (r.value as Prediction | null)?.version).filter((v): v is string => typeof v === 'string'))]);
    for (const record of records) {
      const p = record.value as Prediction | null;
      if (!p || typeof p !== 'object' || typeof p.event_ts !== 'number' || !Number.isFinite(p.event_ts) || typeof p.version !== 'string' || (input === 'predictions' ? !p.features || typeof p.features !== 'object' : !Array.isArray((p as unknown as Recommendation).items))) {
        outputs.push(reject(record, new FabricError('FABRIC_RECORD_REJECTED', `${input === 'predictions' ? 'prediction' : 'recommendation'} without a valid event_ts, version or ${input === 'predictions' ? 'features' : 'items'}`)));
        continue;
      }
      if (p.model !== options.model) continue;
      if (p.event_ts > record.timestamp + maxClockSkewMs) {
        outputs.push(reject(record, new FabricError('FABRIC_EVENT_TIME_SKEW', `prediction ${p.event_id}: event_ts ${p.event_ts} is more than ${maxClockSkewMs} ms after its record timestamp ${record.timestamp}`)));
        continue;
      }
      const watermark = watermarkOf(state);
      const start = paneStartOf(p.event_ts, paneMs);
      if (start + paneMs <= watermark) {
        paneAt(state, paneStartOf(watermark, paneMs), touched).late++;
        continue;
      }
      const pane = paneAt(state, start, touched);
      const reference = references(p.version);
      if (input === 'predictions') foldPrediction(pane, p, reference);
      else for (const unit of itemsOf(p as unknown as Recommendation)) foldPrediction(pane, unit, reference);
      if (state.maxTs === null || p.event_ts > state.maxTs) state.maxTs = p.event_ts;
    }

    // Invariant at every batch end: every pane in the state ends after the watermark. The panes closing
    // now are those whose end this batch's watermark passed; they leave the state with their final snapshot.
    const watermark = watermarkOf(state);
    const closing = Object.values(state.panes).filter((w) => w.window_end <= watermark);
    if (touched.size > 0 || closing.length > 0) {
      for (const w of closing) {
        w.closed = true;
        touched.add(w.window_start);
        delete state.panes[w.window_start];
      }
      const snapshots = [...touched].sort((a, b) => a - b).map((start) => state.panes[start] ?? closing.find((w) => w.window_start === start)!);
      if (ctx.task.partition >= options.partitions) ctx.log.warn({ partition: ctx.task.partition, partitions: options.partitions }, 'input partition beyond the configured partition count: the topic grew; reporting the larger count');
      const partial: DriftPartial = {
        model: options.model,
        version: options.version(),
        source_topic: ctx.task.topic,
        source_partition: ctx.task.partition,
        partitions: Math.max(options.partitions, ctx.task.partition + 1),
        watermark,
        kind: 'partial',
        windows: snapshots,
      };
      outputs.push(emit(outputTopic, options.model, partial));
    }
    await ctx.state.save(JSON.stringify(state));
    return outputs;
  }

  return {
    name,
    process: wholeBatch(handle),
  };
}
