import { userInfo } from 'node:os';
import { Redis } from 'ioredis';
import { loadConfig, type FabricConfig } from '../../topology/config.js';
import { FabricError } from '../../topology/errors.js';
import { createLogger, type Logger } from '../../topology/runtime/log.js';

/** Helpers every `fabric` command shares. */

/** Prints data as JSON with --json, otherwise as the given text. */
/** Who runs the command, recorded with what it writes (registry stages, rule sets). */
export function operator(): string {
  try {
    return userInfo().username;
  } catch {
    return 'unknown';
  }
}

export function out(json: boolean, data: unknown, text: () => string): void {
  process.stdout.write(`${json ? JSON.stringify(data, null, 2) : text()}\n`);
}

export function config(): FabricConfig {
  return loadConfig();
}

export function cliLog(cfg: FabricConfig, quiet = false): Logger {
  return createLogger({ logLevel: quiet ? 'warn' : cfg.logLevel }, {}, { stderr: true });
}

export function positiveInt(name: string) {
  return (v: string): number => {
    const n = Number(v);
    if (!Number.isFinite(n) || n <= 0) throw new FabricError('FABRIC_CLI_USAGE', `--${name} must be a positive number, got ${JSON.stringify(v)}`);
    return n;
  };
}

/** An instant flag: epoch milliseconds or an ISO 8601 instant. */
export function instant(flag: string) {
  return (v: string): number => {
    const ms = /^-?\d+$/.test(v) ? Number(v) : Date.parse(v);
    // Beyond +-8.64e15 ms a Date is invalid.
    if (!Number.isSafeInteger(ms) || Math.abs(ms) > 8.64e15) throw new FabricError('FABRIC_CLI_USAGE', `--${flag} must be an ISO 8601 instant or epoch milliseconds, got ${JSON.stringify(v)}`);
    return ms;
  };
}

/**
 * Progress of long work on stderr: one line rewritten in place on a terminal, otherwise a JSON line
 * at most every `everyMs` (and always for the last call with `final`).
 */
export function progressReporter(task: string, everyMs = 1000): (p: Record<string, unknown> & { done: number; total?: number }, final?: boolean) => void {
  const tty = process.stderr.isTTY === true;
  const started = Date.now();
  let last = 0;
  return (p, final = false) => {
    const now = Date.now();
    if (!final && now - last < (tty ? 100 : everyMs)) return;
    last = now;
    const seconds = (now - started) / 1000;
    const rate = seconds > 0 ? Math.round(p.done / seconds) : 0;
    if (!tty) {
      process.stderr.write(`${JSON.stringify({ progress: task, ...p, rate_per_sec: rate, elapsed_sec: Math.round(seconds * 10) / 10 })}\n`);
      return;
    }
    const total = p.total && p.total > 0 ? p.total : 0;
    const width = 30;
    const filled = total ? Math.min(width, Math.round((p.done / total) * width)) : 0;
    const bar = total ? `[${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ` : '';
    const eta = total && rate > 0 ? ` eta ${Math.max(0, Math.round((total - p.done) / rate))}s` : '';
    const phase = typeof p.phase === 'string' ? `${p.phase} ` : '';
    process.stderr.write(`\r${task}: ${phase}${bar}${p.done}${total ? `/${total}` : ''} ${rate}/s${eta}   ${final ? '\n' : ''}`);
  };
}

/** A connected Redis client for a command (the command disconnects it); unreachable is FABRIC_SINK_FAILED. */
export async function connectRedis(cfg: FabricConfig): Promise<Redis> {
  const redis = new Redis(cfg.redisUrl, { lazyConnect: true, maxRetriesPerRequest: 1 });
  try {
    await redis.connect();
  } catch (err) {
    redis.disconnect();
    throw new FabricError('FABRIC_SINK_FAILED', `Redis is not reachable at ${cfg.redisUrl}: ${(err as Error).message}`, { cause: err });
  }
  return redis;
}
