import type { Logger } from 'pino';
import type { BatchContext, Output, ProcessorLogic, SourceRecord } from '../../topology/runtime/processor.js';
import { wholeBatch } from '../../topology/runtime/processor.js';
import { messageOf } from '../../topology/errors.js';
import type { Metrics } from '../../topology/runtime/metrics.js';
import type { Alert } from '../../schemas/types.generated.js';

/** One HTTP POST: the status, or a thrown error when no answer came. */
export type Post = (url: string, body: string, headers: Record<string, string>, timeoutMs: number) => Promise<number>;

export const fetchPost: Post = async (url, body, headers, timeoutMs) => {
  const res = await fetch(url, { method: 'POST', body, headers, signal: AbortSignal.timeout(timeoutMs) });
  await res.arrayBuffer().catch(() => undefined);
  return res.status;
};

export interface WebhookOptions {
  /** Where alerts are POSTed; empty: the processor reads the alerts and sends nothing. */
  readonly url: string;
  /** Tries per alert before it is given up (counted, logged). Default 5. */
  readonly attempts?: number;
  /** First backoff between tries, doubled each time (capped at 30 s). Default 500 ms. */
  readonly backoffMs?: number;
  readonly timeoutMs?: number;
  readonly post?: Post;
  readonly metrics?: Metrics;
  readonly log?: Logger;
  readonly sleep?: (ms: number) => Promise<void>;
  /** Processor name. Default alert-webhook. */
  readonly name?: string;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/**
 * POSTs every alert on `alerts` (monitoring and experiment alerts alike) to a webhook as JSON, in
 * topic order, one request per alert, with the header `Idempotency-Key: <alert_id>`: delivery is at
 * least once (an alert whose batch is retried, or whose answer was lost, is sent again), and a
 * receiver deduplicates on the key. A 2xx answer delivers; a 4xx other than 408 and 429 is a refusal
 * (the receiver will not take it: logged, counted, not retried); anything else (5xx, 408, 429, no
 * answer in time) is tried again with exponential backoff, up to `attempts` tries, then given up,
 * logged and counted (`fabric_alert_webhook_total{outcome="failed"}`), so a dead receiver never holds
 * the alerts topic back for long; the alerts stay in Kafka and ClickHouse either way.
 */
export function alertWebhookProcessor(options: WebhookOptions): ProcessorLogic {
  const name = options.name ?? 'alert-webhook';
  const attempts = options.attempts ?? 5;
  const post = options.post ?? fetchPost;
  const wait = options.sleep ?? sleep;
  const timeoutMs = options.timeoutMs ?? 5_000;

  async function deliver(alert: Alert, log: BatchContext['log']): Promise<void> {
    const body = JSON.stringify(alert);
    let delay = options.backoffMs ?? 500;
    for (let attempt = 1; ; attempt++) {
      let outcome: string;
      try {
        const status = await post(options.url, body, { 'content-type': 'application/json', 'idempotency-key': alert.alert_id }, timeoutMs);
        if (status >= 200 && status < 300) {
          options.metrics?.alertWebhook.inc({ outcome: 'delivered' });
          return;
        }
        if (status >= 400 && status < 500 && status !== 408 && status !== 429) {
          options.metrics?.alertWebhook.inc({ outcome: 'refused' });
          log.warn({ alert: alert.alert_id, status }, 'alert webhook refused the alert; not retried');
          return;
        }
        outcome = `HTTP ${status}`;
      } catch (err) {
        outcome = messageOf(err);
      }
      if (attempt >= attempts) {
        options.metrics?.alertWebhook.inc({ outcome: 'failed' });
        log.error({ alert: alert.alert_id, attempts, last: outcome }, 'alert webhook: given up after every attempt (the alert stays on the alerts topic and in ClickHouse)');
        return;
      }
      await wait(delay);
      delay = Math.min(delay * 2, 30_000);
    }
  }

  async function handle(records: SourceRecord[], ctx: BatchContext): Promise<Output[]> {
    if (!options.url) return [];
    for (const record of records) {
      const alert = record.value as Alert | null;
      if (!alert || typeof alert !== 'object' || typeof alert.alert_id !== 'string') continue;
      await deliver(alert, ctx.log);
    }
    return [];
  }

  return { name, process: wholeBatch(handle) };
}
