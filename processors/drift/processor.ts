import type { Output, ProcessorLogic, SourceRecord } from '../../topology/runtime/processor.js';
import { emit, reject, wholeBatch } from '../../topology/runtime/processor.js';
import { FabricError } from '../../topology/errors.js';
import type { DriftMetric, Prediction } from '../../schemas/types.generated.js';
import type { ReferenceProfile } from '../scoring/model-artifact.js';
import { binOf, driftStatus, psi } from './psi.js';

export interface DriftProcessorOptions {
  readonly model: string;
  readonly version: string;
  /** Reference profiles by variable: `score` and model inputs such as `amount`. */
  readonly reference: Readonly<Record<string, ReferenceProfile>>;
  readonly windowMs: number;
  readonly latenessMs: number;
  readonly minCount?: number;
  /** Where the window state is snapshotted so a restart resumes exactly where the commit left off. */
  readonly store: StateStore;
  readonly outputTopic?: string;
}

/** A durable slot for one processor's state (Redis in production, memory in tests). */
export interface StateStore {
  load(): Promise<string | null>;
  save(state: string): Promise<void>;
}

interface WindowState {
  count: number;
  readonly bins: Record<string, number[]>;
  readonly sums: Record<string, number>;
  readonly counts: Record<string, number>;
}

interface State {
  watermark: number;
  windows: Record<string, WindowState>;
  /** Last offset folded into the state, per "topic/partition". */
  offsets: Record<string, string>;
  late: number;
}

/**
 * Continuous drift: tumbling event-time windows over each prediction's score and model inputs;
 * when the watermark (newest event time seen minus the allowed lateness) passes a window's end, one
 * PSI per variable against the model's reference profile goes to drift.metrics. The state is
 * snapshotted to Redis with the offsets it covers before offsets are committed; records at or below
 * those offsets are skipped on replay, so a restart neither loses nor double-counts.
 * Runs with sequential batches (its state spans partitions).
 */
export function driftProcessor(options: DriftProcessorOptions): ProcessorLogic {
  const variables = Object.keys(options.reference).sort();
  const minCount = options.minCount ?? 50;
  const outputTopic = options.outputTopic ?? 'drift.metrics';
  let state: State = { watermark: -Infinity, windows: {}, offsets: {}, late: 0 };
  let dirty = false;

  function valueOf(p: Prediction, variable: string): number | null {
    if (variable === 'score') return p.score;
    const v = p.features[variable];
    return v === undefined ? null : v;
  }

  function fold(p: Prediction): boolean {
    const start = Math.floor(p.event_ts / options.windowMs) * options.windowMs;
    if (start + options.windowMs <= state.watermark) return false;
    let w = state.windows[start];
    if (!w) {
      w = { count: 0, bins: {}, sums: {}, counts: {} };
      for (const v of variables) {
        w.bins[v] = new Array<number>(options.reference[v]!.proportions.length).fill(0);
        w.sums[v] = 0;
        w.counts[v] = 0;
      }
      state.windows[start] = w;
    }
    w.count++;
    for (const v of variables) {
      const x = valueOf(p, v);
      if (x === null || !Number.isFinite(x)) continue;
      w.bins[v]![binOf(options.reference[v]!.edges, x)]!++;
      w.sums[v]! += x;
      w.counts[v]!++;
    }
    return true;
  }

  function closeReady(): Output[] {
    const outputs: Output[] = [];
    const starts = Object.keys(state.windows).map(Number).sort((a, b) => a - b);
    for (const start of starts) {
      const end = start + options.windowMs;
      if (end > state.watermark) break;
      const w = state.windows[start]!;
      for (const v of variables) {
        const n = w.counts[v]!;
        const value = psi(options.reference[v]!, w.bins[v]!);
        const metric: DriftMetric = { model: options.model, version: options.version, variable: v, window_start: start, window_end: end, count: n, psi: value, mean: n ? Math.round((w.sums[v]! / n) * 1e6) / 1e6 : null, status: driftStatus(value, n, minCount) };
        outputs.push(emit(outputTopic, `${options.model}/${v}`, metric));
      }
      delete state.windows[start];
    }
    return outputs;
  }

  function handle(records: SourceRecord[]): Output[] {
    const outputs: Output[] = [];
    for (const record of records) {
      const slot = `${record.topic}/${record.partition}`;
      const seen = state.offsets[slot];
      if (seen !== undefined && BigInt(record.offset) <= BigInt(seen)) continue;
      state.offsets[slot] = record.offset;
      dirty = true;
      const p = record.value as Prediction;
      if (!Number.isFinite(p.event_ts)) {
        outputs.push(reject(record, new FabricError('FABRIC_RECORD_REJECTED', 'prediction without a valid event_ts')));
        continue;
      }
      if (p.model !== options.model) continue;
      if (!fold(p)) state.late++;
      state.watermark = Math.max(state.watermark, p.event_ts - options.latenessMs);
    }
    outputs.push(...closeReady());
    return outputs;
  }

  return {
    name: 'drift',
    async open() {
      const saved = await options.store.load();
      if (saved) {
        const parsed = JSON.parse(saved) as State;
        state = { ...parsed, watermark: parsed.watermark ?? -Infinity };
      }
    },
    process: wholeBatch(handle),
    async flush() {
      if (!dirty) return;
      await options.store.save(JSON.stringify(state));
      dirty = false;
    },
  };
}
