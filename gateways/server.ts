import * as uWS from 'uWebSockets.js';
import { FabricError, isFabricError, messageOf, type ErrorCode } from '../topology/errors.js';
import type { Logger } from '../topology/runtime/log.js';
import type { Metrics } from '../topology/runtime/metrics.js';
import type { ApiKeys } from './ingest/auth.js';
import type { IngestService } from './ingest/ingest.js';
import { parseEvents } from './ingest/parse.js';
import { PredictTimeout, type OnlinePredictor } from '../serving/predict.js';
import type { MetadataService } from './metadata.js';

export interface GatewayOptions {
  readonly host: string;
  readonly port: number;
  readonly maxBodyBytes: number;
  /** WebSocket messages awaiting their ack per connection before further ones are refused. */
  readonly maxPendingPerSocket?: number;
}

export interface Readiness {
  ready: boolean;
  checks: Record<string, boolean>;
  /** Per-component detail shown with the answer (e.g. each processor's state). */
  details?: Record<string, unknown>;
}

export interface GatewayDeps {
  readonly ingest: IngestService;
  readonly apiKeys: ApiKeys;
  readonly metrics: Metrics;
  readonly log: Logger;
  readiness(): Readiness;
  /** POST /v1/predict/{model}; absent: the route answers 404 FABRIC_MODEL_UNKNOWN. */
  readonly predictor?: OnlinePredictor;
  /** PUT|DELETE|GET /v1/metadata/{kind}/{id}; absent: 503. */
  readonly metadata?: MetadataService;
}

const STATUS_TEXT: Record<number, string> = { 200: '200 OK', 202: '202 Accepted', 400: '400 Bad Request', 401: '401 Unauthorized', 403: '403 Forbidden', 404: '404 Not Found', 409: '409 Conflict', 413: '413 Payload Too Large', 429: '429 Too Many Requests', 500: '500 Internal Server Error', 503: '503 Service Unavailable', 504: '504 Gateway Timeout' };

interface SocketData {
  stream: string;
  seq: number;
  pending: number;
  closed: boolean;
}

/**
 * The ingestion edge on uWebSockets.js. Every answer that comes after an await registers onAborted
 * first and writes inside cork(); bodies are copied chunk by chunk and cut off with 413 as soon as
 * they exceed the limit. 2xx means every accepted event is acknowledged by Kafka.
 */
export class Gateway {
  private listenSocket: uWS.us_listen_socket | null = null;
  private readonly app: uWS.TemplatedApp;
  private readonly sockets = new Set<uWS.WebSocket<SocketData>>();
  private draining = false;

  constructor(private readonly deps: GatewayDeps, private readonly options: GatewayOptions) {
    this.app = uWS.App();
    this.routes();
  }

  private routes(): void {
    const { deps } = this;
    this.app.get('/healthz', (res) => reply(res, 200, { status: 'ok' }));
    this.app.get('/readyz', (res) => {
      const r = deps.readiness();
      const ready = r.ready && !this.draining;
      reply(res, ready ? 200 : 503, { ready, checks: r.checks, ...(r.details ?? {}), ...(this.draining ? { draining: true } : {}) });
    });
    this.app.get('/metrics', (res) => {
      const state = watch(res);
      deps.metrics.registry.metrics().then(
        (text) => !state.aborted && res.cork(() => res.writeStatus('200 OK').writeHeader('Content-Type', deps.metrics.registry.contentType).end(text)),
        (err: unknown) => !state.aborted && replyError(res, new FabricError('FABRIC_SINK_FAILED', messageOf(err))),
      );
    });
    this.app.post('/v1/events/:stream', (res, req) => this.postEvents(res, req));
    this.app.post('/v1/predict/:model', (res, req) => this.postPredict(res, req));
    this.app.put('/v1/metadata/:kind/:id', (res, req) => this.metadataRoute(res, req, 'put'));
    this.app.del('/v1/metadata/:kind/:id', (res, req) => this.metadataRoute(res, req, 'delete'));
    this.app.get('/v1/metadata/:kind/:id', (res, req) => this.metadataRoute(res, req, 'get'));
    this.app.ws<SocketData>('/v1/events/:stream', {
      maxPayloadLength: this.options.maxBodyBytes,
      maxBackpressure: 1024 * 1024,
      idleTimeout: 120,
      upgrade: (res, req, context) => {
        const stream = req.getParameter(0) ?? '';
        const auth = req.getHeader('authorization');
        const key = req.getHeader('sec-websocket-key');
        const protocol = req.getHeader('sec-websocket-protocol');
        const extensions = req.getHeader('sec-websocket-extensions');
        try {
          if (this.draining) throw new FabricError('FABRIC_SHUTTING_DOWN', 'gateway is shutting down');
          deps.apiKeys.check(auth, stream);
          deps.ingest.stream(stream);
        } catch (err) {
          replyError(res, err);
          return;
        }
        res.upgrade<SocketData>({ stream, seq: 0, pending: 0, closed: false }, key, protocol, extensions, context);
      },
      open: (ws) => {
        this.sockets.add(ws);
      },
      message: (ws, message) => this.wsMessage(ws, Buffer.from(message).toString('utf8')),
      close: (ws) => {
        ws.getUserData().closed = true;
        this.sockets.delete(ws);
      },
    });
    this.app.any('/*', (res, req) => replyError(res, new FabricError('FABRIC_HTTP_NOT_FOUND', `no route for ${req.getMethod().toUpperCase()} ${req.getUrl()}`)));
  }

  /**
   * The one way a route answers after an await: onAborted registered first, metrics by route and
   * status, nothing written to an aborted response.
   */
  private responder(res: uWS.HttpResponse, route: string, started: number): (status: number, body: unknown, headers?: Record<string, string>) => void {
    const state = watch(res);
    return (status, body, headers = {}) => {
      this.deps.metrics.gatewayRequests.inc({ route, status: String(status) });
      this.deps.metrics.gatewayLatency.observe({ route }, (performance.now() - started) / 1000);
      if (!state.aborted) reply(res, status, body, headers);
    };
  }

  private postEvents(res: uWS.HttpResponse, req: uWS.HttpRequest): void {
    const started = performance.now();
    const stream = req.getParameter(0) ?? '';
    const auth = req.getHeader('authorization');
    const contentType = req.getHeader('content-type') || undefined;
    const declared = Number(req.getHeader('content-length') || '0');
    const finish = this.responder(res, 'events', started);
    const fail = (err: unknown): void => {
      const e = toFabricError(err);
      if (e.status >= 500) this.deps.log.warn({ code: e.code, err: e.message, stream }, 'ingest failed');
      finish(e.status, { error: e.toJSON() }, e.code === 'FABRIC_HTTP_RATE_LIMITED' || e.code === 'FABRIC_KAFKA_UNAVAILABLE' ? { 'Retry-After': '1' } : {});
    };
    try {
      if (this.draining) throw new FabricError('FABRIC_SHUTTING_DOWN', 'gateway is shutting down');
      this.deps.apiKeys.check(auth, stream);
      this.deps.ingest.stream(stream);
      if (declared > this.options.maxBodyBytes) throw new FabricError('FABRIC_HTTP_TOO_LARGE', `body of ${declared} bytes exceeds ${this.options.maxBodyBytes}`);
    } catch (err) {
      fail(err);
      return;
    }
    readBody(res, this.options.maxBodyBytes, (err, body) => {
      if (err) return fail(err);
      let events: unknown[];
      try {
        events = parseEvents(body!.toString('utf8'), contentType);
      } catch (e) {
        fail(e);
        return;
      }
      this.deps.ingest.ingest(stream, events).then((result) => {
        if (result.accepted === 0 && result.rejected.length > 0) {
          // The first rejection's code: an all-skewed request says FABRIC_EVENT_TIME_SKEW, not a schema problem.
          const first = result.rejected[0]!;
          finish(400, { error: { code: first.code satisfies ErrorCode, message: `no event accepted: ${first.message}` }, accepted: 0, rejected: result.rejected });
        } else finish(202, result);
      }, fail);
    });
  }

  private postPredict(res: uWS.HttpResponse, req: uWS.HttpRequest): void {
    const started = performance.now();
    let model = req.getParameter(0) ?? '';
    const auth = req.getHeader('authorization');
    const finish = this.responder(res, 'predict', started);
    const fail = (err: unknown): void => {
      if (err instanceof PredictTimeout) return finish(504, { error: err.toJSON(), ...err.result });
      const e = isFabricError(err) ? err : new FabricError('FABRIC_MODEL_UNAVAILABLE', messageOf(err), { cause: err });
      if (e.status >= 500) this.deps.log.warn({ code: e.code, err: e.message, model }, 'predict failed');
      finish(e.status, { error: e.toJSON() }, e.retriable ? { 'Retry-After': '1' } : {});
    };
    try {
      if (this.draining) throw new FabricError('FABRIC_SHUTTING_DOWN', 'gateway is shutting down');
      this.deps.apiKeys.check(auth, 'transactions');
      model = decodePathParam(model);
      if (!this.deps.predictor) throw new FabricError('FABRIC_MODEL_UNKNOWN', `no model is served by this gateway (model ${JSON.stringify(model)})`);
    } catch (err) {
      fail(err);
      return;
    }
    const predictor = this.deps.predictor;
    readBody(res, this.options.maxBodyBytes, (err, body) => {
      if (err) return fail(err);
      let event: unknown;
      try {
        event = JSON.parse(body!.toString('utf8'));
      } catch (e) {
        return fail(new FabricError('FABRIC_HTTP_MALFORMED', `body is not JSON: ${messageOf(e)}`));
      }
      predictor.predict(model, event).then((result) => finish(200, result), fail);
    });
  }

  /** The metadata source's webhook: PUT (upsert) and DELETE need the admin scope; GET any key. */
  private metadataRoute(res: uWS.HttpResponse, req: uWS.HttpRequest, method: 'put' | 'delete' | 'get'): void {
    const started = performance.now();
    let kind = req.getParameter(0) ?? '';
    let id = req.getParameter(1) ?? '';
    const auth = req.getHeader('authorization');
    const finish = this.responder(res, 'metadata', started);
    const fail = (err: unknown): void => {
      const e = toFabricError(err);
      if (e.status >= 500) this.deps.log.warn({ code: e.code, err: e.message, kind, id }, 'metadata request failed');
      finish(e.status, { error: e.toJSON() }, e.retriable ? { 'Retry-After': '1' } : {});
    };
    let service: MetadataService;
    try {
      if (this.draining) throw new FabricError('FABRIC_SHUTTING_DOWN', 'gateway is shutting down');
      if (method === 'get') this.deps.apiKeys.checkAny(auth);
      else this.deps.apiKeys.checkAdmin(auth);
      kind = decodePathParam(kind);
      id = decodePathParam(id);
      if (!this.deps.metadata) throw new FabricError('FABRIC_KAFKA_UNAVAILABLE', 'the metadata webhook is not available on this gateway (Kafka was unreachable at start)');
      service = this.deps.metadata;
    } catch (err) {
      fail(err);
      return;
    }
    if (method === 'delete') {
      service.delete(kind, id).then((r) => finish(200, r), fail);
      return;
    }
    if (method === 'get') {
      service.get(kind, id).then((r) => (r ? finish(200, r) : fail(new FabricError('FABRIC_HTTP_NOT_FOUND', `no ${kind} metadata for ${JSON.stringify(id)}`))), fail);
      return;
    }
    readBody(res, this.options.maxBodyBytes, (err, body) => {
      if (err) return fail(err);
      let attributes: unknown;
      try {
        attributes = JSON.parse(body!.toString('utf8'));
      } catch (e) {
        return fail(new FabricError('FABRIC_HTTP_MALFORMED', `body is not JSON: ${messageOf(e)}`));
      }
      service.put(kind, id, attributes, 'webhook').then((r) => finish(200, r), fail);
    });
  }

  private wsMessage(ws: uWS.WebSocket<SocketData>, text: string): void {
    const data = ws.getUserData();
    const seq = data.seq++;
    const send = (body: unknown): void => {
      if (!data.closed) ws.cork(() => ws.send(JSON.stringify(body)));
    };
    let ack: unknown = seq;
    let events: unknown[];
    try {
      const parsed: unknown = JSON.parse(text);
      // An envelope {"seq": s, "events": [...]} lets the client name its own sequence number.
      if (parsed !== null && typeof parsed === 'object' && !Array.isArray(parsed) && 'events' in parsed && Array.isArray((parsed as { events: unknown }).events)) {
        ack = (parsed as { seq?: unknown }).seq ?? seq;
        events = (parsed as { events: unknown[] }).events;
      } else events = Array.isArray(parsed) ? parsed : [parsed];
    } catch (err) {
      send({ ack, accepted: 0, rejected: [], error: { code: 'FABRIC_HTTP_MALFORMED', message: `message is not valid JSON: ${(err as Error).message}` } });
      return;
    }
    if (data.pending >= (this.options.maxPendingPerSocket ?? 256) || this.draining) {
      const e = this.draining ? new FabricError('FABRIC_SHUTTING_DOWN', 'gateway is shutting down') : new FabricError('FABRIC_HTTP_RATE_LIMITED', `more than ${this.options.maxPendingPerSocket ?? 256} messages await acknowledgement on this socket`);
      send({ ack, accepted: 0, rejected: [], error: e.toJSON() });
      return;
    }
    data.pending++;
    this.deps.ingest.ingest(data.stream, events).then(
      (result) => send({ ack, ...result }),
      (err: unknown) => send({ ack, accepted: 0, rejected: [], error: toFabricError(err).toJSON() }),
    ).finally(() => data.pending--);
  }

  /** Listens; resolves with the bound port. */
  listen(): Promise<number> {
    return new Promise((resolve, reject) => {
      this.app.listen(this.options.host, this.options.port, (token) => {
        if (!token) return reject(new FabricError('FABRIC_CONFIG_INVALID', `gateway cannot listen on ${this.options.host}:${this.options.port} (in use?)`));
        this.listenSocket = token;
        resolve(uWS.us_socket_local_port(token as unknown as uWS.us_socket));
      });
    });
  }

  /** Stops accepting, waits for in-flight events to be acknowledged (bounded), closes sockets. */
  async close(timeoutMs = 10_000): Promise<void> {
    this.draining = true;
    if (this.listenSocket) {
      uWS.us_listen_socket_close(this.listenSocket);
      this.listenSocket = null;
    }
    const deadline = Date.now() + timeoutMs;
    while (this.deps.ingest.eventsInFlight > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    for (const ws of this.sockets) ws.end(1001, 'server shutting down');
    this.sockets.clear();
    this.app.close();
  }
}

/** A percent-encoded path segment; malformed encoding is a 400 (a URIError thrown in a uWS handler ends the process). */
function decodePathParam(raw: string): string {
  try {
    return decodeURIComponent(raw);
  } catch {
    throw new FabricError('FABRIC_HTTP_MALFORMED', `path segment ${JSON.stringify(raw.slice(0, 80))} is not valid percent-encoding`);
  }
}

/** Reads a body up to maxBytes (413 beyond), copying uWS's reused chunks. */
function readBody(res: uWS.HttpResponse, maxBytes: number, done: (err: FabricError | null, body?: Buffer) => void): void {
  const chunks: Buffer[] = [];
  let size = 0;
  let over = false;
  res.onData((chunk, isLast) => {
    if (over) return;
    size += chunk.byteLength;
    if (size > maxBytes) {
      over = true;
      done(new FabricError('FABRIC_HTTP_TOO_LARGE', `body exceeds ${maxBytes} bytes`));
      return;
    }
    chunks.push(Buffer.from(chunk.slice(0)));
    if (isLast) done(null, Buffer.concat(chunks, size));
  });
}

function watch(res: uWS.HttpResponse): { aborted: boolean } {
  const state = { aborted: false };
  res.onAborted(() => {
    state.aborted = true;
  });
  return state;
}

function toFabricError(err: unknown): FabricError {
  if (isFabricError(err)) return err;
  return new FabricError('FABRIC_KAFKA_UNAVAILABLE', messageOf(err), { cause: err });
}

function reply(res: uWS.HttpResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  res.cork(() => {
    res.writeStatus(STATUS_TEXT[status] ?? `${status} Status`);
    res.writeHeader('Content-Type', 'application/json');
    for (const [k, v] of Object.entries(headers)) res.writeHeader(k, v);
    res.end(JSON.stringify(body));
  });
}

function replyError(res: uWS.HttpResponse, err: unknown): void {
  const e = toFabricError(err);
  reply(res, e.status, { error: e.toJSON() }, e.retriable ? { 'Retry-After': '1' } : {});
}
