import { FabricError } from '../../topology/errors.js';

/** API keys from `key:stream|stream,key2:*`; `*` allows every stream and the admin routes, `admin` in the list the admin routes. */
export class ApiKeys {
  private readonly keys = new Map<string, ReadonlySet<string> | '*'>();

  constructor(spec: string) {
    for (const entry of spec.split(',').map((e) => e.trim()).filter(Boolean)) {
      const colon = entry.lastIndexOf(':');
      if (colon <= 0) throw new FabricError('FABRIC_CONFIG_INVALID', `FABRIC_GATEWAY_API_KEYS entry ${JSON.stringify(entry)} must be key:stream|stream or key:*`);
      const key = entry.slice(0, colon);
      const streams = entry.slice(colon + 1);
      this.keys.set(key, streams === '*' ? '*' : new Set(streams.split('|').filter(Boolean)));
    }
  }

  /** Throws 401 for a missing or unknown key, 403 for a key not allowed on `stream`. */
  check(authorization: string | undefined, stream: string): void {
    const allowed = this.scopes(authorization);
    if (allowed !== '*' && !allowed.has(stream)) throw new FabricError('FABRIC_HTTP_FORBIDDEN', `this API key may not write to stream ${stream}`);
  }

  /** The admin routes (the metadata webhook): 401 as for streams, 403 for a key without the admin scope. */
  checkAdmin(authorization: string | undefined): void {
    const allowed = this.scopes(authorization);
    if (allowed !== '*' && !allowed.has('admin')) throw new FabricError('FABRIC_HTTP_FORBIDDEN', 'this API key has no admin scope');
  }

  /** Any valid key (read routes). */
  checkAny(authorization: string | undefined): void {
    this.scopes(authorization);
  }

  private scopes(authorization: string | undefined): ReadonlySet<string> | '*' {
    const match = authorization ? /^Bearer\s+(\S+)\s*$/i.exec(authorization) : null;
    if (!match) throw new FabricError('FABRIC_HTTP_UNAUTHORIZED', 'missing API key: send Authorization: Bearer <key>');
    const allowed = this.keys.get(match[1]!);
    if (!allowed) throw new FabricError('FABRIC_HTTP_UNAUTHORIZED', 'unknown API key');
    return allowed;
  }
}
