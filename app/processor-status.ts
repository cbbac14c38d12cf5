import { hostname } from 'node:os';
import type { Redis } from 'ioredis';
import type { ProcessorStatus } from '../topology/runtime/stream.js';

/**
 * Where each `fabric run` instance publishes its processors' state, so `fabric status` (and the chaos
 * harness) run anywhere see every instance: one key per processor and instance with a short expiry,
 * refreshed every third of it, so a killed instance disappears within seconds.
 */
const STATUS_TTL_MS = 6000;

export interface PublishedStatus extends ProcessorStatus {
  readonly instance: string;
  /** When the instance last refreshed it, epoch ms. */
  readonly at: number;
}

const keyPattern = (prefix: string): string => `${prefix}status:*`;

/** Publishes `current()` now and every STATUS_TTL_MS / 3; the returned stop removes this instance's keys. */
export function publishStatus(redis: Redis, prefix: string, current: () => readonly ProcessorStatus[]): () => Promise<void> {
  const instance = `${hostname()}:${process.pid}`;
  const key = (processor: string): string => `${prefix}status:${processor}:${instance}`;
  const publish = (): void => {
    const pipeline = redis.pipeline();
    for (const p of current()) pipeline.set(key(p.processor), JSON.stringify({ ...p, instance, at: Date.now() } satisfies PublishedStatus), 'PX', STATUS_TTL_MS);
    pipeline.exec().catch(() => undefined);
  };
  publish();
  const timer = setInterval(publish, STATUS_TTL_MS / 3);
  timer.unref();
  return async () => {
    clearInterval(timer);
    const keys = current().map((p) => key(p.processor));
    if (keys.length) await redis.del(...keys).catch(() => undefined);
  };
}

/** Every instance's published processor states, by processor then instance. */
export async function readStatuses(redis: Redis, prefix: string): Promise<PublishedStatus[]> {
  const keys: string[] = [];
  let cursor = '0';
  do {
    const [next, found] = await redis.scan(cursor, 'MATCH', keyPattern(prefix), 'COUNT', 500);
    cursor = next;
    keys.push(...found);
  } while (cursor !== '0');
  const values = keys.length ? await redis.mget(keys) : [];
  return values.flatMap((v) => (v ? [JSON.parse(v) as PublishedStatus] : [])).sort((a, b) => a.processor.localeCompare(b.processor) || a.instance.localeCompare(b.instance));
}
