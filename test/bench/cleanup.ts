/**
 * Removes what a bench run left on the shared stack: its consumer groups and topics (everything under
 * the run's topic prefix), its registry subjects, and its Redis keys. ClickHouse rows stay in the bench
 * database (a few thousand per run).
 */
import { Redis } from 'ioredis';
import type { FabricConfig } from '../../topology/config.js';
import { messageOf } from '../../topology/errors.js';
import { createKafka } from '../../topology/runtime/kafka.js';
import type { Logger } from '../../topology/runtime/log.js';

export interface CleanupReport {
  topics: number;
  groups: number;
  subjects: number;
  redisKeys: number;
  errors: string[];
}

export async function cleanupRun(config: FabricConfig, log: Logger, topicPrefix: string, redisPrefix: string): Promise<CleanupReport> {
  const report: CleanupReport = { topics: 0, groups: 0, subjects: 0, redisKeys: 0, errors: [] };
  const kafka = createKafka(config, log, 'bench-cleanup');
  const admin = kafka.admin();
  try {
    await admin.connect();
    try {
      const groups = (await admin.listGroups()).groups.map((g) => g.groupId).filter((g) => g.startsWith(topicPrefix));
      if (groups.length > 0) {
        await admin.deleteGroups(groups);
        report.groups = groups.length;
      }
    } catch (err) {
      report.errors.push(`consumer groups: ${messageOf(err)}`);
    }
    try {
      const topics = (await admin.listTopics()).filter((t) => t.startsWith(topicPrefix));
      if (topics.length > 0) {
        await admin.deleteTopics({ topics, timeout: 30_000 });
        report.topics = topics.length;
      }
    } catch (err) {
      report.errors.push(`topics: ${messageOf(err)}`);
    }
  } catch (err) {
    report.errors.push(`Kafka admin: ${messageOf(err)}`);
  } finally {
    await admin.disconnect().catch(() => undefined);
  }

  try {
    const base = config.registryUrl.replace(/\/+$/, '');
    const res = await fetch(`${base}/subjects`);
    if (!res.ok) throw new Error(`GET /subjects: ${res.status}`);
    const subjects = ((await res.json()) as string[]).filter((s) => s.startsWith(topicPrefix));
    for (const subject of subjects) {
      const path = `${base}/subjects/${encodeURIComponent(subject)}`;
      const soft = await fetch(path, { method: 'DELETE' });
      await soft.arrayBuffer();
      const hard = await fetch(`${path}?permanent=true`, { method: 'DELETE' });
      await hard.arrayBuffer();
      if (soft.ok || hard.ok) report.subjects++;
    }
  } catch (err) {
    report.errors.push(`registry subjects: ${messageOf(err)}`);
  }

  const redis = new Redis(config.redisUrl, { lazyConnect: true, maxRetriesPerRequest: 2 });
  try {
    await redis.connect();
    let cursor = '0';
    do {
      const [next, keys] = await redis.scan(cursor, 'MATCH', `${redisPrefix}*`, 'COUNT', 1000);
      cursor = next;
      if (keys.length > 0) report.redisKeys += await redis.unlink(...keys);
    } while (cursor !== '0');
  } catch (err) {
    report.errors.push(`Redis keys: ${messageOf(err)}`);
  } finally {
    redis.disconnect();
  }
  return report;
}
