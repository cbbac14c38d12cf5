import type { Admin, Kafka } from 'kafkajs';
import { messageOf } from '../errors.js';
import type { Logger } from './log.js';

export interface Reachability {
  readonly kafka: boolean;
  readonly registry: boolean;
  readonly errors: Readonly<Record<string, string>>;
}

/**
 * Probes Kafka (a metadata round trip) and the schema registry (GET /subjects) every intervalMs, so
 * readiness reports what is reachable now rather than a flag set once at start-up. Probes are
 * bounded by timeoutMs; the last answer is served synchronously to /readyz and `fabric status`.
 */
export class HealthMonitor {
  private admin: Admin | null = null;
  private timer: NodeJS.Timeout | null = null;
  private current: Reachability = { kafka: false, registry: false, errors: {} };
  private probing: Promise<void> | null = null;

  constructor(private readonly kafka: Kafka, private readonly registryUrl: string, private readonly log: Logger, private readonly options: { intervalMs?: number; timeoutMs?: number } = {}) {}

  get reachability(): Reachability {
    return this.current;
  }

  /** Runs the first probe and keeps probing in the background. */
  async start(): Promise<Reachability> {
    await this.probe();
    this.timer = setInterval(() => void this.probe(), this.options.intervalMs ?? 2000);
    this.timer.unref();
    return this.current;
  }

  probe(): Promise<void> {
    this.probing ??= this.run().finally(() => (this.probing = null));
    return this.probing;
  }

  private async run(): Promise<void> {
    const timeoutMs = this.options.timeoutMs ?? 1500;
    const errors: Record<string, string> = {};
    const [kafka, registry] = await Promise.all([
      this.withTimeout(this.kafkaProbe(), timeoutMs).then(
        () => true,
        (err: unknown) => {
          errors.kafka = messageOf(err);
          return false;
        },
      ),
      fetch(`${this.registryUrl.replace(/\/$/, '')}/subjects`, { signal: AbortSignal.timeout(timeoutMs) }).then(
        (res) => {
          if (!res.ok) errors.registry = `HTTP ${res.status}`;
          return res.ok;
        },
        (err: unknown) => {
          errors.registry = messageOf(err);
          return false;
        },
      ),
    ]);
    if (kafka !== this.current.kafka || registry !== this.current.registry) this.log.info({ kafka, registry, errors }, 'reachability changed');
    this.current = { kafka, registry, errors };
  }

  private async kafkaProbe(): Promise<void> {
    if (!this.admin) {
      const admin = this.kafka.admin({ retry: { retries: 0 } });
      await admin.connect();
      this.admin = admin;
    }
    try {
      await this.admin.describeCluster();
    } catch (err) {
      const admin = this.admin;
      this.admin = null;
      await admin?.disconnect().catch(() => undefined);
      throw err;
    }
  }

  private withTimeout<T>(work: Promise<T>, ms: number): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no answer within ${ms} ms`)), ms);
      work.then(
        (v) => {
          clearTimeout(timer);
          resolve(v);
        },
        (err: unknown) => {
          clearTimeout(timer);
          reject(err instanceof Error ? err : new Error(String(err)));
        },
      );
    });
  }

  async close(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    await this.probing?.catch(() => undefined);
    await this.admin?.disconnect().catch(() => undefined);
    this.admin = null;
  }
}
