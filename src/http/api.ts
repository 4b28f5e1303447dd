/**
 * The JSON API under /api/v1. Read routes answer from the store's stats and the history
 * sampler; write routes (compaction, check) start store jobs and are marked `write` for the
 * auth hook. The page uses exactly these routes, so the API shows what the page shows.
 */
import type { FastifyInstance } from 'fastify';
import type { ExportStats, StoreStats } from '../device/types.js';
import { ApiError } from './errors.js';
import { type HistorySampler, RECENT_ERRORS_WINDOW_MS } from './history.js';
import type { HttpServerOptions } from './index.js';
import type { StoreJob } from './jobs.js';
import {
  connectionsRoute,
  exportRoute,
  exportsRoute,
  historyRoute,
  infoRoute,
  jobStartRoute,
  jobStatusRoute,
  statsRoute,
} from './schemas.js';

export const API_PREFIX = '/api/v1';

export interface ApiContext {
  options: HttpServerOptions;
  stats: () => StoreStats;
  sampler: HistorySampler;
  compaction: StoreJob<void>;
  check: StoreJob<{ repair: boolean }>;
  connectionsByExport: () => Record<string, number>;
}

/** Registers the API routes on `app` (inside a plugin prefixed with API_PREFIX). */
export function registerApiRoutes(app: FastifyInstance, ctx: ApiContext) {
  app.get('/info', { schema: infoRoute }, async () => infoView(ctx));
  app.get('/exports', { schema: exportsRoute }, async () => ({ exports: exportViews(ctx) }));
  app.get<{ Params: { name: string } }>(
    '/exports/:name',
    { schema: exportRoute },
    async (request) => {
      const view = exportViews(ctx).find((e) => e.name === request.params.name);
      if (!view) throw new ApiError('EXPORT_NOT_FOUND', `no export named ${request.params.name}`);
      return view;
    },
  );
  app.get('/stats', { schema: statsRoute }, async () => statsView(ctx));
  app.get<{ Querystring: { sinceMs?: number; limit?: number } }>(
    '/history',
    { schema: historyRoute },
    async (request) => ({
      intervalMs: ctx.sampler.intervalMs,
      capacity: ctx.sampler.capacity,
      samples: ctx.sampler.samples(request.query.sinceMs, request.query.limit),
    }),
  );
  app.get('/connections', { schema: connectionsRoute }, async () => ({
    connections: ctx.options.nbd?.connections() ?? [],
  }));
  registerJobRoutes(app, ctx);
}

function registerJobRoutes(app: FastifyInstance, ctx: ApiContext) {
  const write = { write: true };
  app.get('/compaction', { schema: jobStatusRoute }, async () => ctx.compaction.status());
  app.post<{ Querystring: { wait: boolean } }>(
    '/compaction',
    { schema: jobStartRoute({}), config: write },
    async (request, reply) => {
      const done = ctx.compaction.start();
      if (request.query.wait) await done;
      return reply.code(request.query.wait ? 200 : 202).send(ctx.compaction.status());
    },
  );
  app.get('/check', { schema: jobStatusRoute }, async () => ctx.check.status());
  app.post<{ Querystring: { wait: boolean; repair: boolean } }>(
    '/check',
    { schema: jobStartRoute({ repair: { type: 'boolean', default: false } }), config: write },
    async (request, reply) => {
      const done = ctx.check.start({ repair: request.query.repair });
      if (request.query.wait) await done;
      return reply.code(request.query.wait ? 200 : 202).send(ctx.check.status());
    },
  );
}

function infoView(ctx: ApiContext) {
  const o = ctx.options;
  return {
    name: 'diffswap',
    version: o.info.version,
    startedAtMs: o.info.startedAtMs,
    uptimeS: Math.max(0, (Date.now() - o.info.startedAtMs) / 1000),
    backend: o.backend.kind,
    exportCount: o.backend.exportNames().length,
    ready: o.ready?.() ?? true,
    nbd: o.nbd ? { addresses: [...o.nbd.addresses] } : null,
    capabilities: { compact: ctx.compaction.supported, check: ctx.check.supported },
    auth: { tokenRequired: o.token !== undefined },
    history: { intervalMs: ctx.sampler.intervalMs, capacity: ctx.sampler.capacity },
    config: o.info.config ?? null,
    hostSafety: safeCall(o.hostSafety),
  };
}

function safeCall(read: (() => unknown) | undefined): unknown {
  if (!read) return null;
  try {
    return read() ?? null;
  } catch (err) {
    return { error: err instanceof Error ? err.message : String(err) };
  }
}

/** 1 - stored/logical, or 0 when nothing is stored. */
export function savingRatio(logicalBytes: number, storedBytes: number): number {
  return logicalBytes > 0 ? 1 - storedBytes / logicalBytes : 0;
}

function exportViews(ctx: ApiContext) {
  const clients = ctx.connectionsByExport();
  return ctx.stats().exports.map((e) => exportView(ctx, e, clients[e.name] ?? 0));
}

function exportView(ctx: ApiContext, e: ExportStats, clients: number) {
  const device = ctx.options.backend.device(e.name);
  return {
    ...e,
    description: ctx.options.backend.description(e.name),
    readOnly: device ? !device.writable : false,
    savedBytes: e.logicalBytes - e.storedBytes,
    savingRatio: savingRatio(e.logicalBytes, e.storedBytes),
    clients,
    recentErrors: {
      windowS: RECENT_ERRORS_WINDOW_MS / 1000,
      ...ctx.sampler.recentErrors(e.name),
    },
  };
}

function statsView(ctx: ApiContext) {
  const s = ctx.stats();
  const byExport = ctx.connectionsByExport();
  const latest = ctx.sampler.latest();
  return {
    ...s,
    atMs: Date.now(),
    savedBytes: s.logicalBytes - s.storedBytes,
    savingRatio: savingRatio(s.logicalBytes, s.storedBytes),
    connections: {
      total: Object.values(byExport).reduce((a, b) => a + b, 0),
      byExport,
    },
    rates: latest ?? null,
    exports: s.exports.map((e) => exportView(ctx, e, byExport[e.name] ?? 0)),
  };
}
