/**
 * The NBD server: listeners (TCP with TCP_NODELAY, Unix sockets), the export table shared by
 * every connection, and graceful shutdown. Protocol work lives in connection.ts and below.
 */
import assert from 'node:assert/strict';
import { chmod, stat, unlink } from 'node:fs/promises';
import net from 'node:net';
import type { ClientOrigin } from '../config/access.js';
import type { ExportAccessConfig } from '../config/index.js';
import type { Backend } from '../device/types.js';
import type { Logger } from '../log/index.js';
import type { Metrics } from '../metrics/index.js';
import { BusyPoll } from './busy-poll.js';
import { minimumBufferedBytes, NbdConnection, type ServerTls } from './connection.js';
import { ExportTable } from './exports.js';
import { DEFAULT_LIMITS, type NbdLimits } from './limits.js';
import { ReplySlab } from './slab.js';

export type { ServerTls } from './connection.js';
export type { NbdLimits } from './limits.js';
export { DEFAULT_LIMITS } from './limits.js';

/** A TCP listener, or a Unix socket (with the permission bits of its file, when given). */
export type ListenSpec = { host: string; port: number } | { path: string; mode?: number };

export interface NbdServerOptions {
  backend: Backend;
  metrics: Metrics;
  logger: Logger;
  listen: ListenSpec[];
  /** Overrides of the defaults in limits.ts (each documented there). */
  limits?: Partial<NbdLimits>;
  /** STARTTLS, optional or required; absent: TLS off (STARTTLS gets ERR_POLICY). */
  tls?: ServerTls;
  /** Allow lists and TLS demands by export name (absent: open to every client). */
  access?: Readonly<Record<string, ExportAccessConfig>>;
  /** Busy-poll window after going idle, microseconds (busy-poll.ts); 0: off. */
  busyPollUs?: number;
}

/**
 * Busy-poll window by default: most of the depth-1 gain (busy-poll.ts) at little CPU. The
 * config's default (nbd.busyPollUs) is the same; this one serves callers that pass none.
 */
export const BUSY_POLL_US_DEFAULT = 50;

export interface NbdConnectionInfo {
  id: number;
  exportName: string | null;
  remote: string;
  connectedAtMs: number;
  /** The connection runs over TLS. */
  tls: boolean;
  inFlight: number;
  /** Bytes held for this connection (input not yet parsed, requests in flight, replies). */
  bufferedBytes: number;
}

export interface NbdServer {
  /** Addresses as bound (port resolved when 0 was asked for). */
  readonly addresses: ListenSpec[];
  connections(): NbdConnectionInfo[];
  /**
   * Stops accepting; requests in flight finish, later ones get ESHUTDOWN, options get
   * ERR_SHUTDOWN; connections close when drained, and all are closed after `graceMs`.
   */
  close(options?: { graceMs?: number }): Promise<void>;
}

/** Default time connections get to finish their requests at shutdown. */
const CLOSE_GRACE_MS_DEFAULT = 5_000;

/**
 * Starts listening on every address of `options.listen` and serves the backend's exports.
 * Resolves once all listeners are bound (rejects, closing what was bound, if one fails).
 * The backend stays owned by the caller: close() does not close it.
 */
export async function startNbdServer(options: NbdServerOptions): Promise<NbdServer> {
  const limits: NbdLimits = { ...DEFAULT_LIMITS, ...options.limits };
  assert.ok(
    limits.bufferedBytesMax >= minimumBufferedBytes(limits),
    'bufferedBytesMax must hold at least one maximal WRITE',
  );
  const exports = new ExportTable(options.backend, options.access);
  const log = options.logger.child({ component: 'nbd' });
  const connections = new Set<NbdConnection>();
  const busyPoll = new BusyPoll(options.busyPollUs ?? BUSY_POLL_US_DEFAULT);
  const listeners: net.Server[] = [];
  let nextId = 1;
  let closing = false;

  const accept = (socket: net.Socket) => {
    options.metrics.nbdConnectionsAccepted.inc();
    if (closing || connections.size >= limits.connectionsMax) {
      options.metrics.nbdRejected.labels(closing ? 'shutting_down' : 'too_many_connections').inc();
      socket.destroy();
      return;
    }
    if (socket.remoteAddress !== undefined) socket.setNoDelay(true);
    const connection = new NbdConnection({
      id: nextId++,
      transport: socket,
      remote: describeRemote(socket),
      origin: originOf(socket),
      tls: options.tls ?? null,
      exports,
      metrics: options.metrics,
      logger: options.logger,
      limits,
      // Its own slabs: a client that does not read its replies pins only slabs of its own,
      // which its buffered-bytes bound already counts.
      slab: new ReplySlab(),
      busyPoll,
      onClose: (c) => connections.delete(c),
    });
    connections.add(connection);
    connection.start();
  };

  const addresses: ListenSpec[] = [];
  try {
    for (const spec of options.listen) {
      const server = net.createServer({ allowHalfOpen: true, noDelay: true }, accept);
      listeners.push(server);
      addresses.push(await listen(server, spec));
    }
  } catch (error) {
    await Promise.all(listeners.map(closeListener));
    throw error;
  }
  log.info({ addresses, exports: exports.list().map((e) => e.name) }, 'NBD server listening');

  return {
    addresses,
    connections: () =>
      [...connections].map((c) => ({
        id: c.id,
        exportName: c.exportName,
        remote: c.remote,
        connectedAtMs: c.connectedAtMs,
        tls: c.tls,
        inFlight: c.inFlight,
        bufferedBytes: c.bufferedBytes,
      })),
    async close(closeOptions = {}) {
      if (closing) return;
      closing = true;
      const graceMs = closeOptions.graceMs ?? CLOSE_GRACE_MS_DEFAULT;
      const listenersClosed = Promise.all(listeners.map(closeListener));
      const open = [...connections];
      for (const c of open) c.shutdown();
      let timer: NodeJS.Timeout | undefined;
      const graceOver = new Promise<void>((resolve) => {
        timer = setTimeout(resolve, graceMs);
      });
      await Promise.race([Promise.all(open.map((c) => c.closed)), graceOver]);
      clearTimeout(timer);
      for (const c of connections) c.destroy();
      await Promise.all(open.map((c) => c.closed));
      await listenersClosed;
      log.info('NBD server closed');
    },
  };
}

async function listen(server: net.Server, spec: ListenSpec): Promise<ListenSpec> {
  try {
    return await listenOnce(server, spec);
  } catch (error) {
    // A socket file left behind by a server that died is in the way; nobody answers on it.
    const inUse = (error as NodeJS.ErrnoException).code === 'EADDRINUSE';
    if (!('path' in spec) || !inUse || !(await isStaleSocket(spec.path))) throw error;
    await unlink(spec.path);
    return listenOnce(server, spec);
  }
}

function listenOnce(server: net.Server, spec: ListenSpec): Promise<ListenSpec> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    const onListening = () => {
      server.off('error', reject);
      const address = server.address();
      if ('path' in spec) {
        // Who may connect is who may write the socket file: set before anyone can.
        if (spec.mode === undefined) resolve(spec);
        else chmod(spec.path, spec.mode).then(() => resolve(spec), reject);
      } else if (address === null || typeof address === 'string') resolve(spec);
      else resolve({ host: spec.host, port: address.port });
    };
    if ('path' in spec) server.listen(spec.path, onListening);
    else server.listen(spec.port, spec.host, onListening);
  });
}

/** True when `path` is a Unix socket nobody listens on. */
async function isStaleSocket(path: string): Promise<boolean> {
  const info = await stat(path).catch(() => null);
  if (info === null || !info.isSocket()) return false;
  return new Promise((resolve) => {
    const probe = net.connect({ path });
    probe.once('connect', () => {
      probe.destroy();
      resolve(false);
    });
    probe.once('error', (error: NodeJS.ErrnoException) => resolve(error.code === 'ECONNREFUSED'));
  });
}

function closeListener(server: net.Server): Promise<void> {
  return new Promise((resolve) => {
    if (!server.listening) resolve();
    else server.close(() => resolve());
  });
}

function originOf(socket: net.Socket): ClientOrigin {
  const address = socket.remoteAddress;
  return address === undefined ? { kind: 'unix' } : { kind: 'tcp', address };
}

function describeRemote(socket: net.Socket): string {
  if (socket.remoteAddress === undefined) return 'unix';
  const host = socket.remoteFamily === 'IPv6' ? `[${socket.remoteAddress}]` : socket.remoteAddress;
  return `${host}:${socket.remotePort ?? 0}`;
}
