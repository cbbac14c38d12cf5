import { randomBytes } from 'node:crypto';
import { afterAll } from 'vitest';
import { Redis } from 'ioredis';
import { loadConfig } from '../../topology/config.js';
import { RedisStateStore } from '../../topology/runtime/state-store.js';
import { stateStoreContract } from '../shared/state-store-contract.js';

const redis = new Redis(loadConfig().redisUrl);
const prefixes: string[] = [];
afterAll(async () => {
  for (const p of prefixes) {
    const keys = await redis.keys(`${p}*`);
    if (keys.length) await redis.del(...keys);
  }
  redis.disconnect();
});

stateStoreContract('RedisStateStore', async () => {
  const prefix = `it-${randomBytes(4).toString('hex')}:`;
  prefixes.push(prefix);
  return new RedisStateStore(redis, prefix);
});
