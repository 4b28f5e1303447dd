/**
 * The HTTP listener of `diffswap serve`: the dashboard page, the JSON API under /api/v1,
 * Prometheus metrics at /metrics, and the /healthz and /readyz probes (Fastify).
 *
 * Design note. Nothing here is on the data path: the page and the API read the store's
 * stats (a cached synchronous call) and a history ring filled once a second from the
 * Prometheus instruments the NBD layer already updates. Loopback by default; anywhere else
 * the operator must set a bearer token (see auth.ts), and write routes need it whenever one
 * is set.
 */
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import type { Backend } from '../device/types.js';
import type { Logger } from '../log/index.js';
import type { Metrics } from '../metrics/index.js';
import type { HostSafetyReport } from '../native/host.js';
import { API_PREFIX, type ApiContext, registerApiRoutes } from './api.js';
import { bindRefusal, isLoopbackHost, TokenCheck } from './auth.js';
import { errorHandler, sendError } from './errors.js';
import { HistorySampler } from './history.js';
import { StoreJob } from './jobs.js';
import { probeRoute } from './schemas.js';
import { cachedStats, registerStoreMetrics } from './store-metrics.js';
import { registerUiRoutes } from './ui.js';

declare module 'fastify' {
  interface FastifyContextConfig {
    /** The route changes the store: refused off loopback without a token. */
    write?: boolean;
    /**
     * The route carries no store data (the page's static files, the probes): served without
     * the token. Every other route, unknown paths included, wants it when one is set.
     */
    public?: boolean;
  }
}

/** What the NBD server tells the page about its clients. */
export interface NbdView {
  connections(): Array<{
    id: number;
    exportName: string | null;
    remote: string;
    connectedAtMs: number;
    /** The connection runs over TLS. */
    tls: boolean;
    inFlight: number;
  }>;
  readonly addresses: unknown[];
}

export interface HttpServerOptions {
  host: string;
  /** 0 picks a free port; the chosen one is in the result's address. */
  port: number;
  /** Bearer token; required when `host` is not loopback. */
  token?: string;
  backend: Backend;
  metrics: Metrics;
  /** The listener's logger (pass a child bound to the component); no per-request lines. */
  logger: Logger;
  nbd: NbdView | null;
  /** `config` must already be redacted: it is shown to API clients as is. */
  info: { version: string; startedAtMs: number; config?: unknown };
  store?: { compact?(): Promise<unknown>; check?(o: { repair: boolean }): Promise<unknown> };
  /**
   * Report of host safety measures (mlock, IO flusher, OOM score), read fresh for
   * /api/v1/info and /metrics.
   */
  hostSafety?: () => HostSafetyReport;
  /** True once the store is open and NBD listens; /readyz answers 503 until then. */
  ready?: () => boolean;
}

export interface HttpServer {
  address: { host: string; port: number };
  close(): Promise<void>;
}

/**
 * Request bodies accepted. No route takes more than a few flags; anything bigger is a
 * mistake or an attack and is refused before it is buffered.
 */
export const HTTP_BODY_BYTES_MAX = 16 * 1024;
/** Open HTTP connections at most: a dashboard and a scraper need a handful. */
export const HTTP_CONNECTIONS_MAX = 64;
/** Time a client has to send a whole request; slow senders would hold a connection. */
export const HTTP_REQUEST_TIMEOUT_MS = 30_000;

/**
 * Starts the listener. Rejects, without binding, when `host` is off loopback and no token
 * is set, or the token is too short. The returned `close()` stops the sampler, unregisters
 * the store gauges from `metrics.registry` and closes the listener.
 */
export async function startHttpServer(o: HttpServerOptions): Promise<HttpServer> {
  const refusal = bindRefusal(o.host, o.token);
  if (refusal) throw new Error(refusal);
  // The API and the sampler read fresh stats (one cheap call each); the gauges of a scrape
  // share one reading.
  const stats = () => o.backend.stats();
  const scrapeStats = cachedStats(stats);
  const connectionsByExport = () => countByExport(o.nbd);
  const sampler = new HistorySampler({
    stats,
    metrics: o.metrics,
    connections: connectionsByExport,
    logger: o.logger,
  });
  const unregister = registerStoreMetrics(o.metrics.registry, scrapeStats, {
    version: o.info.version,
    backendKind: o.backend.kind,
    counters: storeCounters(o.backend),
    hostSafety: o.hostSafety,
  });
  const jobs = storeJobs(o.store, o.logger);
  const ctx: ApiContext = { options: o, stats, sampler, ...jobs, connectionsByExport };
  const refreshScrape = () => scrapeStats.refresh();

  const app = Fastify({
    logger: false,
    bodyLimit: HTTP_BODY_BYTES_MAX,
    requestTimeout: HTTP_REQUEST_TIMEOUT_MS,
    // Unknown query parameters are an error, not silently dropped.
    ajv: { customOptions: { removeAdditional: false } },
  });
  try {
    await registerRoutes(app, ctx, refreshScrape);
    await sampler.start();
    await app.listen({ host: o.host, port: o.port });
  } catch (err) {
    sampler.stop();
    unregister();
    await app.close();
    throw err;
  }
  const address = boundAddress(app);
  o.logger.debug({ address, auth: o.token !== undefined }, 'http listener bound');
  return {
    address,
    async close() {
      sampler.stop();
      await app.close();
      await Promise.all([jobs.compaction.settled(), jobs.check.settled()]);
      unregister();
    },
  };
}

async function registerRoutes(app: FastifyInstance, ctx: ApiContext, beforeScrape: () => void) {
  const o = ctx.options;
  const routes = collectRoutes(app);
  app.server.maxConnections = HTTP_CONNECTIONS_MAX;
  app.setErrorHandler(errorHandler(o.logger));
  app.setNotFoundHandler((request, reply) =>
    sendError(reply, 'NOT_FOUND', `no route ${request.method} ${request.url.split('?')[0]}`),
  );
  addSecurityHooks(app, o.token === undefined ? null : new TokenCheck(o.token));
  registerProbes(app, o.ready);
  app.get('/metrics', async (_request, reply) => {
    reply.header('content-type', o.metrics.registry.contentType);
    beforeScrape();
    return o.metrics.registry.metrics();
  });
  await app.register(async (api) => registerApiRoutes(api, ctx), { prefix: API_PREFIX });
  registerUiRoutes(app);
  await app.after();
  registerMethodNotAllowed(app, routes);
}

/** Every route's path, methods and config, as they are registered. */
function collectRoutes(app: FastifyInstance) {
  const routes = new Map<string, { methods: Set<string>; isPublic: boolean }>();
  app.addHook('onRoute', (route) => {
    const entry = routes.get(route.url) ?? { methods: new Set(), isPublic: false };
    for (const method of [route.method].flat()) entry.methods.add(method);
    entry.isPublic ||= route.config?.public === true;
    routes.set(route.url, entry);
  });
  return routes;
}

/** Methods a client might try on a path that takes others: answered 405, not 404. */
const OTHER_METHODS = ['GET', 'POST', 'PUT', 'DELETE', 'PATCH'] as const;

/**
 * A known path asked with a method it does not take answers METHOD_NOT_ALLOWED with an
 * Allow header (its token rules are the path's own).
 */
function registerMethodNotAllowed(
  app: FastifyInstance,
  routes: Map<string, { methods: Set<string>; isPublic: boolean }>,
) {
  for (const [url, { methods, isPublic }] of [...routes]) {
    const missing = OTHER_METHODS.filter((m) => !methods.has(m));
    if (missing.length === 0) continue;
    const allow = [...methods].join(', ');
    app.route({
      method: missing,
      url,
      config: { public: isPublic },
      handler: async (request, reply) => {
        reply.header('allow', allow);
        return sendError(reply, 'METHOD_NOT_ALLOWED', `${request.method} ${url}: use ${allow}`);
      },
    });
  }
}

/** The store jobs the API can start; unsupported when the store lacks the method. */
function storeJobs(store: HttpServerOptions['store'], logger: Logger) {
  const compact = store?.compact;
  const check = store?.check;
  return {
    compaction: new StoreJob<void>(
      'compaction',
      compact ? () => compact.call(store) : undefined,
      logger,
    ),
    check: new StoreJob<{ repair: boolean }>(
      'check',
      check ? (arg, onProgress) => check.call(store, { ...arg, onProgress }) : undefined,
      logger,
    ),
  };
}

/** The page store's failure and work counters, when the backend keeps them. */
function storeCounters(backend: Backend): (() => Readonly<Record<string, number>>) | undefined {
  const withCounters = backend as Backend & { counters?: Readonly<Record<string, number>> };
  if (typeof withCounters.counters !== 'object' || withCounters.counters === null) return undefined;
  return () => withCounters.counters ?? {};
}

function countByExport(nbd: NbdView | null): Record<string, number> {
  const counts: Record<string, number> = {};
  for (const c of nbd?.connections() ?? []) {
    if (c.exportName !== null) counts[c.exportName] = (counts[c.exportName] ?? 0) + 1;
  }
  return counts;
}

function boundAddress(app: FastifyInstance): { host: string; port: number } {
  const addr = app.server.address();
  if (addr === null || typeof addr === 'string') throw new Error('http listener has no address');
  return { host: addr.address, port: addr.port };
}

/**
 * Whether the request wants the token when one is set: decided by the route the router
 * matched (which sees the decoded path, so `/%61pi/...` is the API too), never by the raw URL.
 */
function wantsToken(request: FastifyRequest): boolean {
  return request.routeOptions.config.public !== true;
}

function addSecurityHooks(app: FastifyInstance, tokenCheck: TokenCheck | null) {
  app.addHook('onRequest', async (request: FastifyRequest, reply: FastifyReply) => {
    const refusal = writeRefusal(request, tokenCheck !== null);
    if (refusal) return sendError(reply, 'FORBIDDEN', refusal);
    if (tokenCheck && wantsToken(request)) {
      if (!tokenCheck.matches(request.headers.authorization)) {
        reply.header('www-authenticate', 'Bearer realm="diffswap"');
        return sendError(reply, 'UNAUTHORIZED', 'a valid bearer token is required');
      }
    }
  });
  app.addHook('onSend', async (request, reply) => {
    reply.header('x-content-type-options', 'nosniff');
    reply.header('referrer-policy', 'no-referrer');
    reply.header('x-frame-options', 'DENY');
    if (wantsToken(request)) reply.header('cache-control', 'no-store');
  });
}

/**
 * Why a write route must be refused before auth, or null. A browser sends Origin with a
 * cross-site POST, so a page elsewhere cannot trigger store jobs through the operator's
 * browser (CSRF); curl and scripts send none. Without a token the listener is on loopback,
 * so a write must come from a loopback peer (not a forwarded port) and name a loopback Host
 * (a DNS-rebound name would not).
 */
function writeRefusal(request: FastifyRequest, hasToken: boolean): string | null {
  if (!request.routeOptions.config.write) return null;
  const origin = request.headers.origin;
  const host = hostOfUrl(`http://${request.headers.host ?? ''}`);
  if (origin !== undefined && hostOfUrl(origin) !== host) {
    return `cross-origin write refused (Origin ${origin})`;
  }
  if (hasToken) return null;
  if (!isLoopbackHost(request.socket.remoteAddress ?? '')) {
    return 'write routes need a token when called from off loopback';
  }
  if (!isLoopbackHost((host ?? '').replace(/:\d+$/, ''))) {
    return `write refused for Host ${request.headers.host ?? '(none)'}`;
  }
  return null;
}

/** `host[:port]` of a URL, or null when it does not parse. */
function hostOfUrl(url: string): string | null {
  try {
    return new URL(url).host;
  } catch {
    return null;
  }
}

function registerProbes(app: FastifyInstance, ready: (() => boolean) | undefined) {
  const open = { public: true };
  app.get('/healthz', { schema: probeRoute, config: open }, async () => ({ status: 'ok' }));
  app.get('/readyz', { schema: probeRoute, config: open }, async (_request, reply) => {
    const isReady = ready?.() ?? true;
    return reply.code(isReady ? 200 : 503).send({ status: isReady ? 'ready' : 'starting' });
  });
}
