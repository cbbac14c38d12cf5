import type { SchemaName } from '../schemas/catalog.js';

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
  readonly outcomesTopic: string | null;
}

export interface ProcessorDef {
  readonly name: string;
  /** Consumer group (prefixed when bound). */
  readonly group: string;
  readonly inputs: readonly string[];
  readonly outputs: readonly string[];
  /** External stores the processor owns (documentation and describe output). */
  readonly sinks: readonly string[];
  readonly doc: string;
  /** Handle one batch at a time across all partitions (state that spans partitions); default false. */
  readonly sequential?: boolean;
}

export interface Topology {
  readonly streams: readonly StreamDef[];
  readonly topics: readonly TopicDef[];
  readonly processors: readonly ProcessorDef[];
  topic(name: string): TopicDef;
  stream(name: string): StreamDef | undefined;
  processor(name: string): ProcessorDef;
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
  return Object.freeze({ name, topic: `events.${name}`, schema, keyField, outcomesTopic: options.outcomes ? `outcomes.${name}` : null });
}

export function processor(def: ProcessorDef): ProcessorDef {
  return Object.freeze({ ...def, inputs: Object.freeze([...def.inputs]), outputs: Object.freeze([...def.outputs]), sinks: Object.freeze([...def.sinks]) });
}

export class TopologyError extends Error {
  override readonly name = 'TopologyError';
}

export function buildTopology(parts: { streams: StreamDef[]; topics: TopicDef[]; processors: ProcessorDef[] }): Topology {
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
  }
  const processors = new Map<string, ProcessorDef>();
  const groups = new Set<string>();
  for (const p of parts.processors) {
    if (processors.has(p.name)) throw new TopologyError(`processor ${p.name} is declared twice`);
    if (groups.has(p.group)) throw new TopologyError(`consumer group ${p.group} is used by two processors`);
    for (const t of [...p.inputs, ...p.outputs]) if (!topics.has(t)) throw new TopologyError(`processor ${p.name} refers to undeclared topic ${t}`);
    if (p.inputs.length === 0) throw new TopologyError(`processor ${p.name} has no input`);
    processors.set(p.name, p);
    groups.add(p.group);
  }
  // Every processor input gets a dead-letter topic holding the original bytes.
  for (const p of processors.values()) {
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
    processor(name: string): ProcessorDef {
      const p = processors.get(name);
      if (!p) throw new TopologyError(`unknown processor ${name}; known: ${[...processors.keys()].join(', ')}`);
      return p;
    },
    describe(): string {
      const lines: string[] = ['Streams:'];
      for (const s of streamList) lines.push(`  ${s.name}: POST /v1/events/${s.name} -> ${s.topic} (schema ${s.schema}, key ${s.keyField})${s.outcomesTopic ? `, outcomes ${s.outcomesTopic}` : ''}`);
      lines.push('Processors:');
      for (const p of processorList) lines.push(`  ${p.name} [group ${p.group}]: ${p.inputs.join(', ')} -> ${[...p.outputs, ...p.sinks.map((s) => `(${s})`)].join(', ') || '(none)'}`, `      ${p.doc}`);
      lines.push('Topics:');
      for (const t of topicList) lines.push(`  ${t.name}: ${t.partitions} partition(s), ${t.compacted ? 'compacted' : t.retentionMs === null ? 'kept forever' : `retention ${Math.round(t.retentionMs / 3_600_000)}h`}${t.schema ? `, schema ${t.schema}` : ''}`);
      return lines.join('\n');
    },
  });
}
