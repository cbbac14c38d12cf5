import { pino, type Logger } from 'pino';
import type { FabricConfig } from '../config.js';

export type { Logger };

/** The root logger; components take child loggers bound to processor/topic/partition/offset. */
export function createLogger(config: Pick<FabricConfig, 'logLevel'>, bindings: Record<string, unknown> = {}, options: { stderr?: boolean } = {}): Logger {
  const settings = { level: config.logLevel, base: { ...bindings }, timestamp: pino.stdTimeFunctions.isoTime };
  // Commands print their data (--json) on stdout: their logs go to stderr.
  return options.stderr ? pino(settings, pino.destination(2)) : pino(settings);
}
