import { describe, expect, it } from 'vitest';
import { buildTopology, processor, stream, topic } from '../../topology/graph.js';
import { fabricTopology } from '../../app/fabric-topology.js';

describe('topology', () => {
  it('derives event, outcome and dead-letter topics and describes itself', () => {
    const t = fabricTopology();
    const names = t.topics.map((x) => x.name);
    for (const n of ['events.transactions', 'outcomes.transactions', 'features.account', 'predictions.fraud', 'drift.metrics', 'dlq.events.transactions', 'dlq.predictions.fraud', '_fabric.models']) expect(names).toContain(n);
    expect(t.topic('_fabric.models').compacted).toBe(true);
    expect(t.describe()).toContain('scoring [group fabric.features, chained after features in its task]: events.transactions -> predictions.fraud');
    expect(t.chain('features').map((p) => p.name)).toEqual(['features', 'scoring']);
    expect(names).toContain('late.transactions');
    // A chained processor has no dead-letter topic of its own: its head's inputs have one.
    expect(t.processor('scoring').group).toBe('fabric.features');
  });

  it('raises wiring errors while building, before anything runs', () => {
    const base = { streams: [stream('s', 'transaction', 'account_id')], topics: [topic('out')] };
    expect(() => buildTopology({ ...base, processors: [processor({ name: 'p', group: 'g', inputs: ['missing'], outputs: [], sinks: [], doc: '' })] })).toThrow(/undeclared topic missing/);
    expect(() => buildTopology({ ...base, processors: [processor({ name: 'p', group: 'g', inputs: ['events.s'], outputs: [], sinks: [], doc: '' }), processor({ name: 'q', group: 'g', inputs: ['events.s'], outputs: [], sinks: [], doc: '' })] })).toThrow(/group g is used by two/);
    expect(() => buildTopology({ streams: [], topics: [topic('a b')], processors: [] })).toThrow(/legal Kafka topic/);
    expect(() => buildTopology({ ...base, processors: [processor({ name: 'q', after: 'p', outputs: [], sinks: [], doc: '' })] })).toThrow(/chained after p, which is not declared before it/);
    expect(() => buildTopology({ ...base, processors: [processor({ name: 'p', group: 'g', inputs: ['events.s'], outputs: [], sinks: [], doc: '' }), processor({ name: 'q', after: 'p', inputs: ['out'], outputs: [], sinks: [], doc: '' })] })).toThrow(/its inputs are events.s/);
    expect(() => buildTopology({ ...base, processors: [processor({ name: 'p', group: 'g', inputs: ['events.s'], outputs: [], sinks: [], doc: '' })] }).chain('q')).toThrow(/not a processor heading a task/);
    expect(() => buildTopology({ streams: [stream('Bad-Name', 'transaction', 'x')], topics: [], processors: [] })).toThrow(/lower snake case/);
  });
});
