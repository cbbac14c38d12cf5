import type { BatchContext, Output, ProcessorLogic, SourceRecord } from '../../topology/runtime/processor.js';
import { emit, reject, wholeBatch } from '../../topology/runtime/processor.js';
import { FabricError } from '../../topology/errors.js';
import type { DriftPartial, Prediction } from '../../schemas/types.generated.js';
import { emptyWindow, foldPrediction, windowStartOf, type References, type WindowAggregate } from './window.js';

export { driftMergeProcessor, type DriftMergeOptions } from './merge.js';

export interface DriftProcessorOptions {
  readonly model: string;
  readonly version: string;
  /** Reference profiles by variable: `score` and model inputs such as `amount`. */
  readonly reference: References;
  readonly windowMs: number;
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
}

/** The durable state of one input partition (one task): only what is still open. */
interface PartitionState {
  readonly v: 1;
  /** Newest accepted event_ts of the partition; null before the first. */
  maxTs: number | null;
  /** Open windows (window_end > watermark) by window_start. */
  readonly windows: Record<string, WindowAggregate>;
}

const STATE_VERSION = 1;

function parseState(saved: string | null): PartitionState {
  if (saved === null) return { v: STATE_VERSION, maxTs: null, windows: {} };
  const parsed = JSON.parse(saved) as PartitionState;
  if (parsed.v !== STATE_VERSION) throw new Error(`drift state has version ${String(parsed.v)}, this code reads ${STATE_VERSION}`);
  return parsed;
}

/** Number of window ends (multiples of windowMs) at or below the watermark, as an index; -Infinity before any event. */
function endsPassed(watermark: number, windowMs: number): number {
  return watermark === -Infinity ? -Infinity : Math.floor(watermark / windowMs);
}

/**
 * Drift, first stage, one task per input partition of predictions.<model>: folds each prediction (its
 * score and model inputs) into the tumbling event-time windows of this partition, and hands closed
 * windows to the merge (`driftMergeProcessor`) through drift.partials.
 *
 * Everything is decided per record by the partition's own sequence, so neither batch boundaries nor
 * other partitions change anything:
 * - the partition watermark is the newest accepted event_ts minus `latenessMs`;
 * - a prediction whose window has closed (window_end <= watermark) is late: not folded, counted in
 *   `late` of the partition's oldest open window (the one holding the watermark), reported with it;
 * - a prediction with event_ts beyond its record timestamp + `maxClockSkewMs` (microseconds sent as
 *   milliseconds, a broken clock) is dead-lettered with FABRIC_EVENT_TIME_SKEW and never moves the
 *   watermark, so it cannot make later windows late;
 * - a batch in which the watermark passed at least one window end emits one DriftPartial (key: model)
 *   with the windows it closed (possibly none: the merge still needs the watermark).
 *
 * State (open windows and the newest event time) lives in `ctx.state`, scoped to (group, topic,
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
  const { windowMs, latenessMs, reference } = options;
  if (!(Number.isSafeInteger(windowMs) && windowMs > 0)) throw new FabricError('FABRIC_CONFIG_INVALID', `drift windowMs must be a positive integer, got ${windowMs}`);
  if (!(Number.isSafeInteger(latenessMs) && latenessMs >= 0)) throw new FabricError('FABRIC_CONFIG_INVALID', `drift latenessMs must be a non-negative integer, got ${latenessMs}`);
  if (!(Number.isSafeInteger(options.partitions) && options.partitions > 0)) throw new FabricError('FABRIC_CONFIG_INVALID', `drift partitions must be a positive integer, got ${options.partitions}`);

  const watermarkOf = (state: PartitionState): number => (state.maxTs === null ? -Infinity : state.maxTs - latenessMs);

  function windowAt(state: PartitionState, start: number): WindowAggregate {
    let w = state.windows[start];
    if (!w) {
      w = emptyWindow(start, start + windowMs, reference);
      state.windows[start] = w;
    }
    return w;
  }

  async function handle(records: SourceRecord[], ctx: BatchContext): Promise<Output[]> {
    const state = parseState(await ctx.state.load());
    const before = watermarkOf(state);
    const outputs: Output[] = [];
    for (const record of records) {
      const p = record.value as Prediction | null;
      if (!p || typeof p !== 'object' || typeof p.event_ts !== 'number' || !Number.isFinite(p.event_ts)) {
        outputs.push(reject(record, new FabricError('FABRIC_RECORD_REJECTED', 'prediction without a valid event_ts')));
        continue;
      }
      if (p.model !== options.model) continue;
      if (p.event_ts > record.timestamp + maxClockSkewMs) {
        outputs.push(reject(record, new FabricError('FABRIC_EVENT_TIME_SKEW', `prediction ${p.event_id}: event_ts ${p.event_ts} is more than ${maxClockSkewMs} ms after its record timestamp ${record.timestamp}`)));
        continue;
      }
      const watermark = watermarkOf(state);
      const start = windowStartOf(p.event_ts, windowMs);
      if (start + windowMs <= watermark) {
        windowAt(state, windowStartOf(watermark, windowMs)).late++;
        continue;
      }
      foldPrediction(windowAt(state, start), p, reference);
      if (state.maxTs === null || p.event_ts > state.maxTs) state.maxTs = p.event_ts;
    }

    const watermark = watermarkOf(state);
    if (endsPassed(watermark, windowMs) > endsPassed(before, windowMs)) {
      // Invariant at every batch end: every open window ends after the watermark. So the windows
      // closing now are exactly those whose end this batch's watermark passed.
      const closed = Object.values(state.windows)
        .filter((w) => w.window_end <= watermark)
        .sort((a, b) => a.window_start - b.window_start);
      for (const w of closed) delete state.windows[w.window_start];
      if (ctx.task.partition >= options.partitions) ctx.log.warn({ partition: ctx.task.partition, partitions: options.partitions }, 'input partition beyond the configured partition count: the topic grew; reporting the larger count');
      const partial: DriftPartial = {
        model: options.model,
        version: options.version,
        source_topic: ctx.task.topic,
        source_partition: ctx.task.partition,
        partitions: Math.max(options.partitions, ctx.task.partition + 1),
        watermark,
        windows: closed,
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
