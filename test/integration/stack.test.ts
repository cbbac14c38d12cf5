import { describe, expect, it } from 'vitest';
import { Redis } from 'ioredis';
import { stackStatus, stackUp, type ComponentName, type ComponentStatus } from '../../deploy/stack.js';
import { loadConfig } from '../../topology/config.js';

const config = loadConfig();

function byName(statuses: readonly ComponentStatus[], name: ComponentName): ComponentStatus {
  const status = statuses.find((s) => s.name === name);
  if (status === undefined) throw new Error(`no status for ${name}`);
  return status;
}

describe('local stack', () => {
  it('reports all four components up at their configured addresses', async () => {
    const statuses = await stackStatus(config);
    expect(statuses.map((s) => s.name)).toEqual(['kafka', 'registry', 'redis', 'clickhouse']);
    for (const status of statuses) expect(status.up, `${status.name}: ${status.detail}`).toBe(true);
    expect(Object.fromEntries(statuses.map((s) => [s.name, s.address]))).toEqual({
      kafka: `127.0.0.1:${config.kafkaPort}`,
      registry: `http://127.0.0.1:${config.registryPort}/apis/ccompat/v7`,
      redis: `redis://127.0.0.1:${config.redisPort}`,
      clickhouse: `http://127.0.0.1:${config.clickhousePort}`,
    });
  });

  it('a second stackUp on a running stack restarts nothing', async () => {
    const before = await stackStatus(config);
    const lines: string[] = [];
    const after = await stackUp(config, (line) => lines.push(line));
    expect(after.every((s) => s.up)).toBe(true);
    // Same processes as before: nothing was started again.
    expect(after.map((s) => [s.name, s.pid])).toEqual(before.map((s) => [s.name, s.pid]));
    expect(lines.filter((line) => /: started \(pid/.test(line))).toEqual([]);
  }, 30_000);

  it('ClickHouse answers SELECT version()', async () => {
    const { address } = byName(await stackStatus(config), 'clickhouse');
    const response = await fetch(`${address}/?query=${encodeURIComponent('SELECT version()')}`);
    expect(response.status).toBe(200);
    expect((await response.text()).trim()).toMatch(/^\d+\.\d+\.\d+/);
  });

  it('Redis answers PING', async () => {
    const { address } = byName(await stackStatus(config), 'redis');
    const client = new Redis(address, { lazyConnect: true, maxRetriesPerRequest: 1 });
    try {
      await client.connect();
      expect(await client.ping()).toBe('PONG');
    } finally {
      client.disconnect();
    }
  });
});
