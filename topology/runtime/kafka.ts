import { Kafka, logLevel as KafkaLogLevel, type LogEntry } from 'kafkajs';
import type { FabricConfig } from '../config.js';
import type { Logger } from './log.js';

/** A kafkajs client whose logs go through pino. One per process component; owners disconnect what they create. */
export function createKafka(config: Pick<FabricConfig, 'kafkaBrokers' | 'kafkaClientId'>, log: Logger, clientSuffix: string): Kafka {
  const kafkaLog = log.child({ component: 'kafkajs' });
  return new Kafka({
    clientId: `${config.kafkaClientId}-${clientSuffix}`,
    brokers: config.kafkaBrokers.split(',').map((b) => b.trim()).filter(Boolean),
    connectionTimeout: 3000,
    requestTimeout: 30000,
    retry: { initialRetryTime: 200, retries: 8, maxRetryTime: 5000 },
    logLevel: KafkaLogLevel.WARN,
    logCreator: () => ({ level, log: entry }: LogEntry) => {
      const { message, ...extra } = entry;
      // Task producers bound their retries on purpose (stream.ts: a failed send aborts the transaction).
      if (message.startsWith('Limiting retries for the idempotent producer')) return;
      // The broker still completing the previous transaction: routine, retried by kafkajs or the runtime.
      if (/another concurrent operation on the same transaction/.test(String((extra as { error?: unknown }).error ?? message))) return;
      if (level <= KafkaLogLevel.ERROR) kafkaLog.error(extra, message);
      else if (level === KafkaLogLevel.WARN) kafkaLog.warn(extra, message);
      else kafkaLog.debug(extra, message);
    },
  });
}
