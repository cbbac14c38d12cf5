import { createHash } from 'node:crypto';
import type { Redis } from 'ioredis';
import { FabricError, messageOf } from '../../topology/errors.js';
import { applyCap, type CapSpec, type CompiledRules, type DecisionOutcome } from './engine.js';

/**
 * Frequency caps in Redis, exact under concurrency and idempotent under retries.
 *
 * A cap is "at most `max` times per key within `window` of event time": per key (a user and an item
 * for recommendations; an entity and a decision for decision models) a sorted set holds who was
 * counted (a stream event or an online request) at which event time. A candidate is admitted when
 * fewer than `max` others are counted in the open interval (ts - window, ts + window): whatever the
 * order events arrive in, no window of that length ever holds more than `max`. One Lua script per
 * request walks the candidates in rank order (top-k, diversity quota, every cap), records what it
 * admits and returns it, atomically: two instances (or the stream and POST /v1/predict) racing for
 * one user are serialised by Redis, so "never the same item to the same user twice in 24 h" holds
 * across instances. All keys of one request share a hash tag (model and entity), so the script runs
 * on Redis Cluster too.
 *
 * Idempotence: who is counted is the event (its id), whichever path decides it: the answer (the
 * admitted candidate ids) is memoised per (event, caps) for `memoTtlMs`, so a retried batch (a failure
 * before its commit, a rebalance), or the stream deciding an event POST /v1/predict already answered,
 * gets the same answer rather than being refused by its own earlier record; past the memo, an event's
 * own earlier records are not counted against it, which keeps a replay of a once-per-window cap
 * (max 1) exact.
 */
const SELECT = `
local memo = redis.call('GET', KEYS[1])
if memo then return memo end
local ts = tonumber(ARGV[1])
local n = tonumber(ARGV[2])
local c = tonumber(ARGV[3])
local k = tonumber(ARGV[4])
local maxPerGroup = tonumber(ARGV[5])
local memoTtl = tonumber(ARGV[6])
local member = ARGV[7]
local grace = tonumber(ARGV[8])
local windows = {}
local maxes = {}
for j = 1, c do
  windows[j] = tonumber(ARGV[8 + 2 * j - 1])
  maxes[j] = tonumber(ARGV[8 + 2 * j])
end
local gbase = 8 + 2 * c
local admitted = {}
local perGroup = {}
local count = 0
local cbase = gbase + n
for i = 1, n do
  if count >= k then break end
  local g = ARGV[gbase + i]
  if g == '' or maxPerGroup == 0 or (perGroup[g] or 0) < maxPerGroup then
    local ok = true
    for j = 1, c do
      local key = KEYS[1 + (j - 1) * n + i]
      local w = windows[j]
      local others = redis.call('ZCOUNT', key, '(' .. (ts - w), '(' .. (ts + w))
      if redis.call('ZSCORE', key, member) then others = others - 1 end
      if others >= maxes[j] then
        ok = false
        break
      end
    end
    if ok then
      count = count + 1
      admitted[count] = ARGV[cbase + i]
      if g ~= '' then perGroup[g] = (perGroup[g] or 0) + 1 end
      for j = 1, c do
        local key = KEYS[1 + (j - 1) * n + i]
        local w = windows[j]
        redis.call('ZADD', key, ts, member)
        redis.call('ZREMRANGEBYSCORE', key, '-inf', '(' .. (ts - w - grace))
        redis.call('PEXPIRE', key, 2 * w + grace)
      end
    end
  end
end
local out = table.concat(admitted, '\\n')
redis.call('SET', KEYS[1], out, 'PX', memoTtl)
return out
`;

export interface CapRequest {
  readonly model: string;
  /** The user (recommendations) or the entity (decisions) the caps count for. */
  readonly entity: string;
  /** Who is counted: the event id. */
  readonly member: string;
  /** Event time, epoch ms. */
  readonly ts: number;
  readonly caps: readonly CapSpec[];
  /** Candidates in rank order (a decision cap: the decision). */
  readonly candidates: readonly string[];
  /** The diversity value of each candidate ('' for none). */
  readonly groups?: readonly string[];
  /** Most candidates admitted. */
  readonly k: number;
  /** Most admitted candidates per diversity value; 0: no quota. */
  readonly maxPerGroup: number;
}

export interface FrequencyCapsOptions {
  /** How long an answer is memoised for retries (default 1 h). */
  readonly memoTtlMs?: number;
  /** How far behind the newest counted time an event may still arrive (kept before trimming); default 1 h. */
  readonly graceMs?: number;
}

export class FrequencyCaps {
  private readonly memoTtlMs: number;
  private readonly graceMs: number;

  constructor(private readonly redis: Redis, private readonly keyPrefix: string, options: FrequencyCapsOptions = {}) {
    this.memoTtlMs = options.memoTtlMs ?? 3_600_000;
    this.graceMs = options.graceMs ?? 3_600_000;
    // numberOfKeys omitted: each call passes its own key count first (requests differ in candidates).
    if (!('fabricCapSelect' in redis)) redis.defineCommand('fabricCapSelect', { lua: SELECT });
  }

  /** The keys of one request: its memo, then one per cap and candidate (cap-major). */
  keys(r: CapRequest): string[] {
    const tag = `${this.keyPrefix}rules:{${r.model}:${r.entity}}`;
    const signature = createHash('sha1').update(JSON.stringify([r.caps, r.k, r.maxPerGroup])).digest('hex').slice(0, 10);
    const keys = [`${tag}:memo:${signature}:${r.member}`];
    for (const cap of r.caps) for (const c of r.candidates) keys.push(`${tag}:cap:${cap.name}:${c}`);
    return keys;
  }

  /**
   * Settles requests in one pipeline, in order (requests of one entity are applied in the order
   * given). Returns, per request, the indexes of the admitted candidates in rank order (a memoised
   * answer from another path is mapped onto this request's candidates; ids it lacks are dropped).
   */
  async settle(requests: readonly CapRequest[]): Promise<number[][]> {
    if (requests.length === 0) return [];
    const pipeline = this.redis.pipeline() as unknown as { fabricCapSelect(...args: (string | number)[]): void; exec(): Promise<[Error | null, unknown][] | null> };
    for (const r of requests) {
      const keys = this.keys(r);
      const args: (string | number)[] = [keys.length, ...keys, r.ts, r.candidates.length, r.caps.length, r.k, r.maxPerGroup, this.memoTtlMs, r.member, this.graceMs];
      for (const cap of r.caps) args.push(cap.windowMs, cap.max);
      for (let i = 0; i < r.candidates.length; i++) args.push(r.groups?.[i] ?? '');
      for (const c of r.candidates) args.push(c);
      pipeline.fabricCapSelect(...args);
    }
    let results: [Error | null, unknown][] | null;
    try {
      results = await pipeline.exec();
    } catch (err) {
      throw new FabricError('FABRIC_SINK_FAILED', `frequency caps: Redis failed: ${messageOf(err)}`, { cause: err });
    }
    return requests.map((_, i) => {
      const [err, value] = results?.[i] ?? [new Error('no reply'), null];
      if (err) throw new FabricError('FABRIC_SINK_FAILED', `frequency caps: ${messageOf(err)}`, { cause: err });
      const text = String(value ?? '');
      if (text === '') return [];
      const index = new Map(requests[i]!.candidates.map((c, j) => [c, j]));
      return text
        .split('\n')
        .flatMap((id) => (index.has(id) ? [index.get(id)!] : []))
        .sort((a, b) => a - b);
    });
  }

  /** One request (POST /v1/predict). */
  async settleOne(request: CapRequest): Promise<number[]> {
    return (await this.settle([request]))[0]!;
  }

  /** For tests and tooling: whom a key counts. */
  async counted(request: CapRequest, cap: string, candidate: string): Promise<{ member: string; ts: number }[]> {
    const tag = `${this.keyPrefix}rules:{${request.model}:${request.entity}}`;
    const flat = await this.redis.zrange(`${tag}:cap:${cap}:${candidate}`, 0, -1, 'WITHSCORES');
    const out: { member: string; ts: number }[] = [];
    for (let i = 0; i < flat.length; i += 2) out.push({ member: flat[i]!, ts: Number(flat[i + 1]) });
    return out;
  }
}

/**
 * Settles the frequency caps of a batch's decisions in one Redis pipeline, in the batch's order (so an
 * entity's events are counted in partition order), and applies them. Each event is counted under its
 * own id, so a retried batch gets the same answers.
 */
export async function settleCaps(rules: CompiledRules, caps: FrequencyCaps | undefined, events: readonly { event_id: string; account_id: string; ts: number }[], outcomes: readonly DecisionOutcome[]): Promise<DecisionOutcome[]> {
  const capped = outcomes.map((o, i) => ({ o, i })).filter(({ o }) => o.cap !== undefined);
  if (capped.length === 0) return [...outcomes];
  if (!caps) throw new FabricError('FABRIC_CONFIG_INVALID', `rules of ${rules.model} cap decisions, but no cap store is configured`);
  const admitted = await caps.settle(
    capped.map(({ o, i }) => ({ model: rules.model, entity: events[i]!.account_id, member: events[i]!.event_id, ts: events[i]!.ts, caps: [o.cap!], candidates: [o.cap!.decision], k: 1, maxPerGroup: 0 })),
  );
  const out = [...outcomes];
  capped.forEach(({ o, i }, n) => (out[i] = applyCap(o, admitted[n]!.length > 0)));
  return out;
}
