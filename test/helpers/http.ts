/**
 * The HTTP listener over a real NBD test server: a backend (memory or page store) served by
 * the NBD server in this process, with the dashboard and API on 127.0.0.1 port 0 reading
 * the same backend and metrics. Clients are real programs (qemu-io, nbdcopy, Chromium).
 */
import type { ExportSpec } from '../../src/device/types.js';
import { type HttpServer, type NbdView, startHttpServer } from '../../src/http/index.js';
import { silentLogger } from '../../src/log/index.js';
import { startTestServer, type TestBackend, type TestServer } from './nbd-server.js';

export interface HttpStack {
  srv: TestServer;
  http: HttpServer;
  /** `http://127.0.0.1:PORT` */
  base: string;
  /** fetch() on the listener, with the stack's token when it has one. */
  get(path: string, init?: RequestInit): Promise<Response>;
  close(): Promise<void>;
}

export interface HttpStackOptions {
  backend: Exclude<TestBackend, 'nbdkit'>;
  exports?: ExportSpec[];
  token?: string;
  ready?: () => boolean;
}

/** Starts NBD + HTTP over one backend; the caller must close() it. */
export async function startHttpStack(o: HttpStackOptions): Promise<HttpStack> {
  const srv = await startTestServer({
    backend: o.backend,
    ...(o.exports ? { exports: o.exports } : {}),
  });
  try {
    const backend = srv.backend;
    const metrics = srv.metrics;
    if (!backend || !metrics) throw new Error('test server without backend or metrics');
    const nbd = srv.server && 'connections' in srv.server ? (srv.server as NbdView) : null;
    const store = backend as {
      compact?(): Promise<unknown>;
      check?(o: { repair: boolean }): Promise<unknown>;
    };
    const http = await startHttpServer({
      host: '127.0.0.1',
      port: 0,
      backend,
      metrics,
      logger: silentLogger(),
      nbd,
      info: { version: 'test', startedAtMs: Date.now(), config: { http: { token: '[redacted]' } } },
      ...(typeof store.compact === 'function' ? { store } : {}),
      ...(o.token !== undefined ? { token: o.token } : {}),
      ...(o.ready ? { ready: o.ready } : {}),
    });
    const base = `http://127.0.0.1:${http.address.port}`;
    const auth: Record<string, string> = o.token ? { authorization: `Bearer ${o.token}` } : {};
    return {
      srv,
      http,
      base,
      get: (path, init = {}) =>
        fetch(base + path, { ...init, headers: { ...auth, ...(init.headers as object) } }),
      async close() {
        await http.close();
        await srv.close();
      },
    };
  } catch (err) {
    await srv.close();
    throw err;
  }
}

/** JSON body of a response, with the status checked. */
export async function jsonOf<T = Record<string, unknown>>(res: Response, status = 200): Promise<T> {
  const text = await res.text();
  if (res.status !== status) {
    throw new Error(`expected HTTP ${status}, got ${res.status} for ${res.url}: ${text}`);
  }
  return JSON.parse(text) as T;
}

/** Polls `probe` every 100 ms until it returns a value other than undefined (bounded). */
export async function waitFor<T>(
  what: string,
  probe: () => Promise<T | undefined>,
  timeoutMs = 10_000,
): Promise<T> {
  const deadlineMs = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > deadlineMs)
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Parses Prometheus text format into `name{labels}` -> value (samples only). */
export function parseMetrics(text: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const space = line.lastIndexOf(' ');
    out.set(line.slice(0, space), Number(line.slice(space + 1)));
  }
  return out;
}

/** Sum of every sample of `name` whose labels include all of `labels`. */
export function metricSum(
  samples: Map<string, number>,
  name: string,
  labels: Record<string, string> = {},
): number {
  let sum = 0;
  for (const [key, value] of samples) {
    const brace = key.indexOf('{');
    const metric = brace < 0 ? key : key.slice(0, brace);
    if (metric !== name) continue;
    const text = brace < 0 ? '' : key.slice(brace);
    if (Object.entries(labels).every(([k, v]) => text.includes(`${k}="${v}"`))) sum += value;
  }
  return sum;
}
