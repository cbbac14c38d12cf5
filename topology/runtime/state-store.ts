import type { Redis } from 'ioredis';
import { FabricError } from '../errors.js';
import type { TaskId, TaskState } from './processor.js';

/**
 * Durable per-task state, versioned by input position so that it stays consistent with the offsets
 * Kafka committed (Kafka Streams keeps this consistency with a changelog in the same transaction; we
 * keep two versions instead):
 * - a batch starting at offset F loads the version whose `next` is <= F: the current one normally,
 *   the previous one when the current one was saved by a batch whose transaction then aborted;
 * - a batch saves on top of the version it loaded (the previous version is kept until the next save);
 * - every instance claims the task when it gets the partition (a generation counter); a save carrying
 *   an older generation (a zombie that lost the partition) is refused.
 */
export interface PartitionStateStore {
  /** Takes the task over: later saves with an older claim are refused. Returns the claim. */
  claim(owner: string, task: TaskId): Promise<number>;
  load(owner: string, task: TaskId, firstOffset: string): Promise<string | null>;
  save(owner: string, task: TaskId, claim: number, firstOffset: string, nextOffset: string, state: string): Promise<void>;
  /** Deletes every state of `owner` (tests, purges). */
  clear?(owner: string): Promise<void>;
}

interface Versions {
  gen: number;
  curNext: bigint | null;
  cur: string | null;
  prevNext: bigint | null;
  prev: string | null;
}

/**
 * The version a batch starting at `firstOffset` builds on. No version at all is a fresh task; versions
 * that all lie ahead of the batch mean the input position went backwards (an offset reset, expired
 * offsets) or the store lost writes: computing from nothing would be silently wrong, so it is an error.
 */
function pick(v: Versions, firstOffset: string, owner: string, task: TaskId): string | null {
  const first = BigInt(firstOffset);
  if (v.curNext !== null && v.curNext <= first) return v.cur;
  if (v.prevNext !== null && v.prevNext <= first) return v.prev;
  if (v.curNext === null) return null;
  throw new FabricError('FABRIC_STATE_MISMATCH', `state of ${owner} ${task.topic}[${task.partition}] covers offsets up to ${v.curNext}${v.prevNext === null ? '' : ` (previous version ${v.prevNext})`}, but the batch starts at ${firstOffset}`);
}

function refused(owner: string, task: TaskId, why: string): FabricError {
  return new FabricError('FABRIC_STATE_FENCED', `state of ${owner} ${task.topic}[${task.partition}] not saved: ${why}`);
}

/** In memory, for the TestDriver and unit tests. Same rules as the Redis store. */
export class MemoryStateStore implements PartitionStateStore {
  readonly entries = new Map<string, Versions>();

  private entry(owner: string, task: TaskId): Versions {
    const key = `${owner}/${task.group}/${task.topic}/${task.partition}`;
    let v = this.entries.get(key);
    if (!v) {
      v = { gen: 0, curNext: null, cur: null, prevNext: null, prev: null };
      this.entries.set(key, v);
    }
    return v;
  }

  async claim(owner: string, task: TaskId): Promise<number> {
    return ++this.entry(owner, task).gen;
  }

  async load(owner: string, task: TaskId, firstOffset: string): Promise<string | null> {
    return pick(this.entry(owner, task), firstOffset, owner, task);
  }

  async save(owner: string, task: TaskId, claim: number, firstOffset: string, nextOffset: string, state: string): Promise<void> {
    const v = this.entry(owner, task);
    if (v.gen !== claim) throw refused(owner, task, `claim ${claim} was superseded by ${v.gen} (another instance owns the partition)`);
    const first = BigInt(firstOffset);
    if (v.curNext === null) {
      // The first save: the state before this batch was empty (a redo of it must start from nothing).
      v.prevNext = first;
      v.prev = null;
    } else if (v.curNext <= first) {
      v.prevNext = v.curNext;
      v.prev = v.cur;
    } else if (!(v.prevNext === null || v.prevNext <= first)) {
      throw refused(owner, task, `no version at or before offset ${firstOffset}`);
    }
    v.curNext = BigInt(nextOffset);
    v.cur = state;
  }

  async clear(owner: string): Promise<void> {
    for (const key of [...this.entries.keys()]) if (key.startsWith(`${owner}/`)) this.entries.delete(key);
  }
}

// KEYS[1] the task's hash; ARGV: claim, firstOffset, nextOffset, state (never empty: states are JSON).
// Offsets stay below 2^53.
const SAVE = `
local gen = tonumber(redis.call('HGET', KEYS[1], 'gen') or '0')
if gen ~= tonumber(ARGV[1]) then return -1 end
local first = tonumber(ARGV[2])
local curNext = redis.call('HGET', KEYS[1], 'cur_next')
if not curNext then
  -- The first save: the state before this batch was empty ('' stands for none).
  redis.call('HSET', KEYS[1], 'prev_next', ARGV[2], 'prev', '', 'cur_next', ARGV[3], 'cur', ARGV[4])
  return 1
end
if tonumber(curNext) <= first then
  redis.call('HSET', KEYS[1], 'prev_next', curNext, 'prev', redis.call('HGET', KEYS[1], 'cur'), 'cur_next', ARGV[3], 'cur', ARGV[4])
  return 1
end
local prevNext = redis.call('HGET', KEYS[1], 'prev_next')
if (not prevNext) or tonumber(prevNext) <= first then
  redis.call('HSET', KEYS[1], 'cur_next', ARGV[3], 'cur', ARGV[4])
  return 2
end
return -2
`;

/** One Redis hash per task: `<prefix>state:<owner>:<group>:<topic>:<partition>`. */
export class RedisStateStore implements PartitionStateStore {
  constructor(private readonly redis: Redis, private readonly prefix: string) {}

  private key(owner: string, task: TaskId): string {
    return `${this.prefix}state:${owner}:${task.group}:${task.topic}:${task.partition}`;
  }

  async claim(owner: string, task: TaskId): Promise<number> {
    return this.redis.hincrby(this.key(owner, task), 'gen', 1);
  }

  async load(owner: string, task: TaskId, firstOffset: string): Promise<string | null> {
    const [gen, curNext, cur, prevNext, prev] = (await this.redis.hmget(this.key(owner, task), 'gen', 'cur_next', 'cur', 'prev_next', 'prev')).map((v) => v ?? null);
    return pick({ gen: Number(gen ?? 0), curNext: curNext ? BigInt(curNext) : null, cur: cur ?? null, prevNext: prevNext ? BigInt(prevNext) : null, prev: prev ? prev : null }, firstOffset, owner, task);
  }

  async save(owner: string, task: TaskId, claim: number, firstOffset: string, nextOffset: string, state: string): Promise<void> {
    const result = (await this.redis.eval(SAVE, 1, this.key(owner, task), claim, firstOffset, nextOffset, state)) as number;
    if (result === -1) throw refused(owner, task, `claim ${claim} was superseded (another instance owns the partition)`);
    if (result === -2) throw refused(owner, task, `no version at or before offset ${firstOffset}`);
  }

  async clear(owner: string): Promise<void> {
    let cursor = '0';
    do {
      const [next, keys] = await this.redis.scan(cursor, 'MATCH', `${this.prefix}state:${owner}:*`, 'COUNT', 500);
      cursor = next;
      if (keys.length) await this.redis.del(...keys);
    } while (cursor !== '0');
  }
}

/** Binds a store to one batch of one task (what BatchContext.state is). */
export function taskState(store: PartitionStateStore, owner: string, task: TaskId, claim: number, firstOffset: string, nextOffset: string): TaskState {
  return {
    load: () => store.load(owner, task, firstOffset),
    save: (state) => store.save(owner, task, claim, firstOffset, nextOffset, state),
  };
}
