import { createClient, type ClickHouseClient } from '@clickhouse/client';
import type { FabricConfig } from '../config.js';

export type { ClickHouseClient };

/** A ClickHouse HTTP client; the caller owns it and closes it. */
export function createClickHouse(config: Pick<FabricConfig, 'clickhouseUrl' | 'clickhouseUser' | 'clickhousePassword'>, database?: string): ClickHouseClient {
  return createClient({
    url: config.clickhouseUrl,
    username: config.clickhouseUser,
    password: config.clickhousePassword,
    ...(database ? { database } : {}),
    request_timeout: 30_000,
    max_open_connections: 4,
    // 18.16 rejects settings it does not know; send none by default.
    clickhouse_settings: {},
  });
}

/**
 * Runs an idempotent ClickHouse call again when the connection broke before any answer (EPIPE,
 * ECONNRESET, socket hang up): a keep-alive socket the server closed while this process was busy is
 * reused once before the client notices. Other errors are the caller's.
 */
export async function retryOnBrokenSocket<T>(call: () => Promise<T>, attempts = 3): Promise<T> {
  for (let i = 1; ; i++) {
    try {
      return await call();
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      const broken = code === 'EPIPE' || code === 'ECONNRESET' || /socket hang up|EPIPE|ECONNRESET/.test((err as Error).message ?? '');
      if (!broken || i >= attempts) throw err;
    }
  }
}

/**
 * The one audited literal-escaping helper (18.16 has no server-side query parameters).
 * Strings are single-quoted with backslash escapes; numbers must be finite.
 */
export function sqlLiteral(value: string | number | boolean | null): string {
  if (value === null) return 'NULL';
  if (typeof value === 'boolean') return value ? '1' : '0';
  if (typeof value === 'number') {
    if (!Number.isFinite(value)) throw new Error(`cannot write non-finite number ${value} into SQL`);
    return String(value);
  }
  return `'${value.replace(/\\/g, '\\\\').replace(/'/g, "\\'").replace(/\n/g, '\\n').replace(/\r/g, '\\r').replace(/\t/g, '\\t').replace(/\0/g, '\\0')}'`;
}

/** Identifiers (database, table) are never escaped but validated. */
export function sqlIdentifier(name: string): string {
  if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(name)) throw new Error(`${JSON.stringify(name)} is not a safe SQL identifier`);
  return name;
}
