import { pino, type Logger } from 'pino';
import type { FabricConfig } from '../config.js';

export type { Logger };

/** The root logger; components take child loggers bound to processor/topic/partition/offset. */
export function createLogger(config: Pick<FabricConfig, 'logLevel'>, bindings: Record<string, unknown> = {}): Logger {
  return pino({ level: config.logLevel, base: { ...bindings }, timestamp: pino.stdTimeFunctions.isoTime });
}
