/**
 * A diffswap NBD server started inside the test process, for tests whose clients are real
 * external programs (qemu-io, nbdinfo, nbdsh, nbdcopy, fio).
 *
 * The server listens on 127.0.0.1 port 0 (and optionally a Unix socket in a fresh temp dir),
 * serving either the in-memory device or the page store in a fresh data dir. The suite runs
 * once per backend named in DIFFSWAP_TEST_BACKENDS (default: both), so every client test
 * also proves the page store behaves as a block device.
 *
 * A third target, `nbdkit`, is a reference run for checking the tests themselves: the same
 * tests against `nbdkit memory`, configured with diffswap's advertised block sizes. It is
 * never in the default list. nbdkit's memory plugin has one size and one content for all
 * export names, so tests that need independent exports look at `independentExports`.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { connect, createServer } from 'node:net';
import { join } from 'node:path';
import type { ExportAccessConfig } from '../../src/config/index.js';
import { MemoryBackend } from '../../src/device/memory.js';
import type { Backend, ExportSpec } from '../../src/device/types.js';
import { createLogger, type Logger, silentLogger } from '../../src/log/index.js';
import { Metrics } from '../../src/metrics/index.js';
import {
  type ListenSpec,
  type NbdServer,
  type ServerTls,
  startNbdServer,
} from '../../src/nbd/server.js';
import { makeTempDir } from './files.js';

export type TestBackend = 'memory' | 'store' | 'nbdkit';

const MiB = 1024 * 1024;

/** Exports a test gets when it names none: one 64 MiB disk. */
export const DEFAULT_EXPORTS: ExportSpec[] = [
  { name: 'disk', sizeBytes: 64 * MiB, description: 'diffswap test disk' },
];

/** Time a server gets to start listening (the store opens LMDB; nbdkit forks). */
const START_TIMEOUT_MS = 15_000;
/** Time in-flight requests get to finish when a test server closes. */
const CLOSE_GRACE_MS = 2_000;

export interface TestServer {
  kind: TestBackend;
  /** TCP port on 127.0.0.1. */
  port: number;
  /** Unix socket path, when asked for. */
  socketPath?: string;
  exports: ExportSpec[];
  /** `nbd://127.0.0.1:PORT/NAME` (first export when no name is given). */
  uri(exportName?: string): string;
  /** `nbd+unix:///NAME?socket=PATH`; throws unless started with `unixSocket`. */
  unixUri(exportName?: string): string;
  /** `nbd://[::1]:PORT/NAME`; throws unless started with `ipv6`. */
  ipv6Uri(exportName?: string): string;
  /** The device behind the server (absent for the nbdkit reference). */
  backend?: Backend;
  /** The server's metrics registry (absent for the nbdkit reference). */
  metrics?: Metrics;
  server?: NbdServer;
  /** Page store data dir (store backend only). */
  dataDir?: string;
  /** False when all export names share one content (nbdkit reference only). */
  independentExports: boolean;
  close(): Promise<void>;
}

export interface TestServerOptions {
  backend: TestBackend;
  exports?: ExportSpec[];
  unixSocket?: boolean;
  /** Also listen on [::1] port 0 (see `ipv6Uri`). */
  ipv6?: boolean;
  /** Permission bits of the Unix socket file. */
  socketMode?: number;
  tls?: ServerTls;
  access?: Record<string, ExportAccessConfig>;
}

/** The backends the suite runs against: DIFFSWAP_TEST_BACKENDS (comma list) or both. */
export function backendsUnderTest(): TestBackend[] {
  const raw = process.env.DIFFSWAP_TEST_BACKENDS ?? 'memory,store';
  const names = raw
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s !== '');
  for (const name of names) {
    if (name !== 'memory' && name !== 'store' && name !== 'nbdkit') {
      throw new Error(`DIFFSWAP_TEST_BACKENDS: unknown backend '${name}' (memory, store, nbdkit)`);
    }
  }
  return names as TestBackend[];
}

/**
 * Starts a server for one test. The caller must `close()` it (use `t.after` or try/finally);
 * close stops the server, closes the device and removes the temp dirs.
 */
export async function startTestServer(options: TestServerOptions): Promise<TestServer> {
  const exports = options.exports ?? DEFAULT_EXPORTS;
  if (options.backend === 'nbdkit') {
    return startNbdkitReference(exports, options.unixSocket || options.ipv6);
  }
  const temp = await makeTempDir('diffswap-srv-');
  const logger = testLogger();
  const cleanups: Array<() => Promise<void>> = [() => temp.remove()];
  try {
    let backend: Backend;
    let dataDir: string | undefined;
    if (options.backend === 'store') {
      dataDir = join(temp.path, 'data');
      // Loaded only when asked for: the store opens LMDB and native bindings.
      const store = await import('../../src/store/index.js');
      backend = await store.openPageStore({ dataDir, exports, logger });
      assert.equal(backend.kind, 'pagestore', 'the store backend is not the page store');
    } else {
      backend = new MemoryBackend(exports);
    }
    cleanups.unshift(() => backend.close());

    const metrics = new Metrics();
    const socketPath = options.unixSocket ? join(temp.path, 'nbd.sock') : undefined;
    const listen: ListenSpec[] = [{ host: '127.0.0.1', port: 0 }];
    if (options.ipv6) listen.push({ host: '::1', port: 0 });
    if (socketPath) {
      listen.push(
        options.socketMode === undefined
          ? { path: socketPath }
          : { path: socketPath, mode: options.socketMode },
      );
    }
    const server = await startNbdServer({
      backend,
      metrics,
      logger,
      listen,
      ...(options.tls ? { tls: options.tls } : {}),
      ...(options.access ? { access: options.access } : {}),
    });
    cleanups.unshift(() => server.close({ graceMs: CLOSE_GRACE_MS }));

    const tcpPort = (host: string) =>
      server.addresses.find(
        (a): a is { host: string; port: number } => 'port' in a && a.host === host,
      )?.port ?? 0;
    const port = tcpPort('127.0.0.1');
    if (port === 0) throw new Error('test server reports no bound TCP port');
    const port6 = options.ipv6 ? tcpPort('::1') : undefined;
    if (port6 === 0) throw new Error('test server reports no bound [::1] port');
    return {
      kind: options.backend,
      port,
      ...(socketPath ? { socketPath } : {}),
      exports,
      ...uris(port, socketPath, exports, port6),
      backend,
      metrics,
      server,
      ...(dataDir ? { dataDir } : {}),
      independentExports: true,
      close: () => runCleanups(cleanups),
    };
  } catch (err) {
    await runCleanups(cleanups);
    throw err;
  }
}

/** Runs `fn` with a fresh server and always closes it. */
export async function withTestServer<T>(
  options: TestServerOptions,
  fn: (server: TestServer) => Promise<T>,
): Promise<T> {
  const server = await startTestServer(options);
  try {
    return await fn(server);
  } finally {
    await server.close();
  }
}

/**
 * Sum of `diffswap_nbd_requests_total` for an export, split into ok and failed answers,
 * or undefined for the nbdkit reference (no metrics).
 */
export async function requestCounts(
  server: TestServer,
  exportName: string,
): Promise<{ ok: number; failed: number; byCommand: Record<string, number> } | undefined> {
  if (!server.metrics) return undefined;
  const values = (await server.metrics.nbdRequests.get()).values;
  let ok = 0;
  let failed = 0;
  const byCommand: Record<string, number> = {};
  for (const { value, labels } of values) {
    if (labels.export !== exportName) continue;
    if (labels.result === 'ok') ok += value;
    else failed += value;
    const command = String(labels.command);
    byCommand[command] = (byCommand[command] ?? 0) + value;
  }
  return { ok, failed, byCommand };
}

/** Connections accepted since start, or undefined for the nbdkit reference. */
export async function connectionsAccepted(server: TestServer): Promise<number | undefined> {
  if (!server.metrics) return undefined;
  const values = (await server.metrics.nbdConnectionsAccepted.get()).values;
  return values.reduce((sum, v) => sum + v.value, 0);
}

function uris(port: number, socketPath: string | undefined, exports: ExportSpec[], port6?: number) {
  const first = exports[0]?.name ?? '';
  return {
    uri: (name = first) => `nbd://127.0.0.1:${port}/${encodeURIComponent(name)}`,
    ipv6Uri: (name = first) => {
      if (port6 === undefined) throw new Error('test server started without ipv6');
      return `nbd://[::1]:${port6}/${encodeURIComponent(name)}`;
    },
    unixUri: (name = first) => {
      if (!socketPath) throw new Error('test server started without unixSocket');
      return `nbd+unix:///${encodeURIComponent(name)}?socket=${socketPath}`;
    },
  };
}

function testLogger(): Logger {
  const level = process.env.DIFFSWAP_TEST_LOG;
  return level ? createLogger({ level: level as 'debug' }) : silentLogger();
}

async function runCleanups(cleanups: Array<() => Promise<void>>): Promise<void> {
  const errors: unknown[] = [];
  for (const cleanup of cleanups) {
    try {
      await cleanup();
    } catch (err) {
      errors.push(err);
    }
  }
  if (errors.length > 0) throw new AggregateError(errors, 'test server cleanup failed');
}

/**
 * `nbdkit memory` with the block sizes diffswap advertises and the test's export names (all
 * sharing one content and the first export's size). The process exits with the test process.
 */
async function startNbdkitReference(
  exports: ExportSpec[],
  unixSocket: boolean | undefined,
): Promise<TestServer> {
  if (unixSocket) throw new Error('the nbdkit reference target serves 127.0.0.1 only');
  const port = await freePort();
  const first = exports[0];
  if (!first) throw new Error('no exports');
  const args = [
    '-f',
    '--exit-with-parent',
    '-i',
    '127.0.0.1',
    '-p',
    String(port),
    '--filter=blocksize-policy',
    '--filter=exportname',
    'memory',
    String(first.sizeBytes),
    'blocksize-minimum=1',
    'blocksize-preferred=4096',
    `blocksize-maximum=${32 * MiB}`,
    'exportname-list=explicit',
    'exportname-strict=true',
    `exportdesc=fixed:${first.description ?? 'nbdkit reference'}`,
    ...exports.map((e) => `exportname=${e.name}`),
  ];
  // nbdkit logs every refused request on stderr; shown only when test logging is on.
  const stderr = process.env.DIFFSWAP_TEST_LOG ? 'inherit' : 'ignore';
  const child = spawn('nbdkit', args, { stdio: ['ignore', 'ignore', stderr] });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  await waitForPort(port);
  return {
    kind: 'nbdkit',
    port,
    exports,
    ...uris(port, undefined, exports),
    independentExports: false,
    close: async () => {
      child.kill('SIGTERM');
      await exited;
    },
  };
}

/** A TCP port free right now on 127.0.0.1 (racy; used only for the nbdkit reference). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const probe = createServer();
    probe.once('error', reject);
    probe.listen(0, '127.0.0.1', () => {
      const address = probe.address();
      const port = typeof address === 'object' && address ? address.port : 0;
      probe.close(() => resolve(port));
    });
  });
}

/** Resolves once something accepts TCP connections on 127.0.0.1:port (bounded polling). */
export async function waitForPort(port: number, timeoutMs = START_TIMEOUT_MS): Promise<void> {
  const deadlineMs = Date.now() + timeoutMs;
  while (Date.now() < deadlineMs) {
    const ok = await new Promise<boolean>((resolve) => {
      const socket = connect(port, '127.0.0.1');
      socket.once('connect', () => {
        socket.destroy();
        resolve(true);
      });
      socket.once('error', () => resolve(false));
    });
    if (ok) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`nothing listens on 127.0.0.1:${port} after ${timeoutMs} ms`);
}
