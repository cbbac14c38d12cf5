import type { SchemaName } from '../schemas/catalog.js';
import type { ProcessorLogic } from './runtime/processor.js';

/**
 * The declarative graph: streams, topics, processors and their consumer groups. Built by pure
 * functions; wiring errors (unknown topics, duplicate names) are raised while building, before
 * anything runs. Names here are logical; FABRIC_TOPIC_PREFIX is applied when binding to Kafka.
 */
export interface TopicDef {
  readonly name: string;
  readonly partitions: number;
  /** null: keep forever (compacted control topics). */
  readonly retentionMs: number | null;
  readonly compacted: boolean;
  /** Value schema; the registry subject is `<physical topic>-value`. */
  readonly schema: SchemaName | null;
  readonly doc: string;
}

export interface StreamDef {
  readonly name: string;
  readonly topic: string;
  readonly schema: SchemaName;
  /** The field whose value is the Kafka key (entity id). */
  readonly keyField: string;
  /** The event-time field (epoch milliseconds). */
  readonly timeField: string;
  readonly outcomesTopic: string | null;
  /** Events that arrived beyond the allowed lateness are routed here, never silently applied or dropped. */
  readonly lateTopic: string;
}

export interface ProcessorDef<R = unknown> {
  readonly name: string;
  /** Consumer group (prefixed when bound). A chained processor runs in its head's group. */
  readonly group: string;
  readonly inputs: readonly string[];
  readonly outputs: readonly string[];
  /** External stores the processor owns (documentation and describe output). */
  readonly sinks: readonly string[];
  readonly doc: string;
  /**
   * Runs chained after this processor, in the same task (same consumer group, partitions and Kafka
   * transaction), receiving its outputs per source record (see runtime/chain.ts).
   */
  readonly after?: string;
  /** Builds the processor's logic from the resources the composition root provides: the binding lives with the node. */
  create?(resources: R): ProcessorLogic | Promise<ProcessorLogic>;
}

export type ProcessorSpec<R> = Omit<ProcessorDef<R>, 'group' | 'inputs'> & { readonly group?: string; readonly inputs?: readonly string[] };

export interface Topology<R = unknown> {
  readonly streams: readonly StreamDef[];
  readonly topics: readonly TopicDef[];
  readonly processors: readonly ProcessorDef<R>[];
  topic(name: string): TopicDef;
  stream(name: string): StreamDef | undefined;
  processor(name: string): ProcessorDef<R>;
  /** The processors that run in `head`'s task, head first, in chain order. */
  chain(head: string): readonly ProcessorDef<R>[];
  /** Human-readable graph. */
  describe(): string;
}

export const DAY_MS = 86_400_000;

export function dlqTopicName(source: string): string {
  return `dlq.${source}`;
}

export function topic(name: string, options: Partial<Omit<TopicDef, 'name'>> = {}): TopicDef {
  return Object.freeze({ name, partitions: 3, retentionMs: 7 * DAY_MS, compacted: false, schema: null, doc: '', ...options });
}

export function stream(name: string, schema: SchemaName, keyField: string, options: { outcomes?: boolean } = {}): StreamDef {
  return Object.freeze({ name, topic: `events.${name}`, schema, keyField, timeField: 'ts', outcomesTopic: options.outcomes ? `outcomes.${name}` : null, lateTopic: `late.${name}` });
}

/** A processor node; a chained one (`after`) may omit group and inputs: it shares its head's. */
export function processor<R>(def: ProcessorSpec<R>): ProcessorSpec<R> {
  return Object.freeze({ ...def, ...(def.inputs ? { inputs: Object.freeze([...def.inputs]) } : {}), outputs: Object.freeze([...def.outputs]), sinks: Object.freeze([...def.sinks]) });
}

export class TopologyError extends Error {
  override readonly name = 'TopologyError';
}

export function buildTopology<R = unknown>(parts: { streams: StreamDef[]; topics: TopicDef[]; processors: ProcessorSpec<R>[] }): Topology<R> {
  const topics = new Map<string, TopicDef>();
  const add = (t: TopicDef): void => {
    if (topics.has(t.name)) throw new TopologyError(`topic ${t.name} is declared twice`);
    if (!/^[A-Za-z0-9._-]{1,200}$/.test(t.name)) throw new TopologyError(`topic name ${JSON.stringify(t.name)} is not a legal Kafka topic name`);
    if (!Number.isInteger(t.partitions) || t.partitions < 1) throw new TopologyError(`topic ${t.name}: partitions must be a positive integer`);
    topics.set(t.name, t);
  };
  for (const t of parts.topics) add(t);
  const streams = new Map<string, StreamDef>();
  for (const s of parts.streams) {
    if (streams.has(s.name)) throw new TopologyError(`stream ${s.name} is declared twice`);
    if (!/^[a-z][a-z0-9_]*$/.test(s.name)) throw new TopologyError(`stream name ${JSON.stringify(s.name)} must be lower snake case`);
    streams.set(s.name, s);
    if (!topics.has(s.topic)) add(topic(s.topic, { schema: s.schema, doc: `Events of stream ${s.name}, key ${s.keyField}.` }));
    if (s.outcomesTopic && !topics.has(s.outcomesTopic)) add(topic(s.outcomesTopic, { schema: 'outcome', doc: `Labels observed for ${s.name}.` }));
    if (!topics.has(s.lateTopic)) add(topic(s.lateTopic, { schema: s.schema, retentionMs: 30 * DAY_MS, doc: `Events of ${s.name} that arrived beyond the allowed lateness (not applied to features).` }));
  }
  const processors = new Map<string, ProcessorDef<R>>();
  const groups = new Set<string>();
  for (const spec of parts.processors) {
    if (processors.has(spec.name)) throw new TopologyError(`processor ${spec.name} is declared twice`);
    let p: ProcessorDef<R>;
    if (spec.after !== undefined) {
      const head = processors.get(spec.after);
      if (!head) throw new TopologyError(`processor ${spec.name} is chained after ${spec.after}, which is not declared before it`);
      if (spec.group !== undefined && spec.group !== head.group) throw new TopologyError(`processor ${spec.name} is chained after ${spec.after}: it runs in group ${head.group}, not ${spec.group}`);
      if (spec.inputs !== undefined && spec.inputs.join(',') !== head.inputs.join(',')) throw new TopologyError(`processor ${spec.name} is chained after ${spec.after}: its inputs are ${head.inputs.join(', ')}`);
      p = Object.freeze({ ...spec, group: head.group, inputs: head.inputs });
    } else {
      if (spec.group === undefined) throw new TopologyError(`processor ${spec.name} has no consumer group`);
      if (groups.has(spec.group)) throw new TopologyError(`consumer group ${spec.group} is used by two processors`);
      if (!spec.inputs || spec.inputs.length === 0) throw new TopologyError(`processor ${spec.name} has no input`);
      p = Object.freeze({ ...spec, group: spec.group, inputs: spec.inputs });
      groups.add(p.group);
    }
    for (const t of [...p.inputs, ...p.outputs]) if (!topics.has(t)) throw new TopologyError(`processor ${p.name} refers to undeclared topic ${t}`);
    processors.set(p.name, p);
  }
  const headOf = (p: ProcessorDef<R>): ProcessorDef<R> => (p.after === undefined ? p : headOf(processors.get(p.after)!));
  // Every processor input gets a dead-letter topic holding the original bytes.
  for (const p of processors.values()) {
    if (p.after !== undefined) continue;
    for (const input of p.inputs) {
      const name = dlqTopicName(input);
      if (!topics.has(name)) add(topic(name, { partitions: 1, retentionMs: 30 * DAY_MS, doc: `Records of ${input} a processor could not handle, original bytes plus fabric.error.* headers.` }));
    }
  }
  const topicList = Object.freeze([...topics.values()]);
  const processorList = Object.freeze([...processors.values()]);
  const streamList = Object.freeze([...streams.values()]);
  return Object.freeze({
    streams: streamList,
    topics: topicList,
    processors: processorList,
    topic(name: string): TopicDef {
      const t = topics.get(name);
      if (!t) throw new TopologyError(`unknown topic ${name}`);
      return t;
    },
    stream: (name: string) => streams.get(name),
    processor(name: string): ProcessorDef<R> {
      const p = processors.get(name);
      if (!p) throw new TopologyError(`unknown processor ${name}; known: ${[...processors.keys()].join(', ')}`);
      return p;
    },
    chain(head: string): readonly ProcessorDef<R>[] {
      const h = processors.get(head);
      if (!h || h.after !== undefined) throw new TopologyError(`${head} is not a processor heading a task`);
      return processorList.filter((p) => headOf(p) === h);
    },
    describe(): string {
      const lines: string[] = ['Streams:'];
      for (const s of streamList) lines.push(`  ${s.name}: POST /v1/events/${s.name} -> ${s.topic} (schema ${s.schema}, key ${s.keyField})${s.outcomesTopic ? `, outcomes ${s.outcomesTopic}` : ''}`);
      lines.push('Processors:');
      for (const p of processorList) lines.push(`  ${p.name} [group ${p.group}${p.after ? `, chained after ${p.after} in its task` : ''}]: ${p.inputs.join(', ')} -> ${[...p.outputs, ...p.sinks.map((s) => `(${s})`)].join(', ') || '(none)'}`, `      ${p.doc}`);
      lines.push('Topics:');
      for (const t of topicList) lines.push(`  ${t.name}: ${t.partitions} partition(s), ${t.compacted ? 'compacted' : t.retentionMs === null ? 'kept forever' : `retention ${Math.round(t.retentionMs / 3_600_000)}h`}${t.schema ? `, schema ${t.schema}` : ''}`);
      return lines.join('\n');
    },
  });
}
