/**
 * `diffswap serve`: opens the backend, starts the NBD listeners and the HTTP dashboard, and
 * shuts all of it down in order on SIGTERM/SIGINT (stop accepting, finish or fail in-flight
 * requests, flush and close the store, exit 0).
 */
import { mkdirSync, readFileSync } from 'node:fs';
import { createSecureContext } from 'node:tls';
import { parseArgs } from 'node:util';
import {
  type Config,
  ConfigError,
  type ConfigOverrides,
  loadConfig,
  redactConfig,
} from '../config/index.js';
import { MemoryBackend } from '../device/memory.js';
import type { Backend } from '../device/types.js';
import { bindRefusal } from '../http/auth.js';
import { type HttpServer, startHttpServer } from '../http/index.js';
import { createLogger, type Logger } from '../log/index.js';
import { Metrics } from '../metrics/index.js';
import { applyHostSafety, refreshHostSafety } from '../native/host.js';
import { type ListenSpec, type NbdServer, type ServerTls, startNbdServer } from '../nbd/server.js';
import { storeConfigProblems } from './store-config.js';
import { version } from './version.js';

export const SERVE_USAGE = `Usage: diffswap serve [options]

Serves the configured exports over NBD. Flags override the config file.

Options:
  --config FILE         YAML config file (see config/diffswap.example.yaml)
  --listen HOST:PORT    NBD TCP listener; repeat for several (default 127.0.0.1:10809)
  --socket PATH         NBD Unix socket listener
  --data DIR            data directory for the page store (default ./data)
  --export NAME:SIZE    an export, e.g. swap:8GiB; repeat for several (replaces the file's)
  --http HOST:PORT|off  dashboard, API and /metrics (default 127.0.0.1:8080)
  --backend store|memory  page store (default) or raw in-memory pages (nothing persisted)
  --log-level LEVEL     fatal, error, warn, info (default), debug, trace, silent
  -h, --help            this text`;

function parseServeArgs(argv: string[]): { configPath?: string; overrides: ConfigOverrides } {
  const { values } = parseArgs({
    args: argv,
    strict: true,
    options: {
      config: { type: 'string' },
      listen: { type: 'string', multiple: true },
      socket: { type: 'string' },
      data: { type: 'string' },
      export: { type: 'string', multiple: true },
      http: { type: 'string' },
      backend: { type: 'string' },
      'log-level': { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) {
    console.log(SERVE_USAGE);
    process.exit(0);
  }
  const overrides: ConfigOverrides = {};
  if (values.listen) overrides.listen = values.listen;
  if (values.socket) overrides.socket = values.socket;
  if (values.data) overrides.data = values.data;
  if (values.export) overrides.exports = values.export;
  if (values.http) overrides.http = values.http;
  if (values.backend !== undefined) {
    if (values.backend !== 'store' && values.backend !== 'memory') {
      throw new ConfigError([`--backend: '${values.backend}' is not store or memory`]);
    }
    overrides.backend = values.backend;
  }
  if (values['log-level'] !== undefined) {
    overrides.logLevel = values['log-level'] as Config['log']['level'];
  }
  return values.config === undefined ? { overrides } : { configPath: values.config, overrides };
}

async function openBackend(config: Readonly<Config>, logger: Logger): Promise<Backend> {
  if (config.backend === 'memory') return new MemoryBackend(config.exports);
  const store = await import('../store/index.js');
  mkdirSync(config.dataDir, { recursive: true });
  guardUnhandledRejections(logger, store.isStrayCommitRejection);
  return store.openPageStore({
    dataDir: config.dataDir,
    exports: [...config.exports],
    logger,
    tuning: { ...config.store },
  });
}

/**
 * A failed LMDB commit (a full disk) reaches the store through its own promise, but lmdb-js
 * also leaves an internal one rejected; Node would end the process for it. Those are let
 * pass at debug; any other unhandled rejection is a bug and ends the server as Node would.
 */
function guardUnhandledRejections(logger: Logger, isStray: (reason: unknown) => boolean) {
  process.on('unhandledRejection', (reason) => {
    if (isStray(reason)) {
      logger.debug({ err: reason }, 'ignored the stray rejection of a failed index commit');
      return;
    }
    logger.fatal({ err: reason }, 'unhandled promise rejection');
    logger.flush();
    process.exit(1);
  });
}

function listenSpecs(config: Readonly<Config>): ListenSpec[] {
  const specs: ListenSpec[] = config.nbd.listen.map((e) => ({ host: e.host, port: e.port }));
  const { socket, socketMode } = config.nbd;
  if (socket)
    specs.push(socketMode === null ? { path: socket } : { path: socket, mode: socketMode });
  return specs;
}

/**
 * The TLS context from the configured PEM files (TLS 1.2 at least, as the NBD spec asks);
 * null when TLS is off. Throws ConfigError when a file does not hold what it should.
 */
function serverTls(config: Readonly<Config>): ServerTls | null {
  const tls = config.nbd.tls;
  if (tls.mode === 'off' || tls.certFile === null || tls.keyFile === null) return null;
  try {
    const context = createSecureContext({
      cert: readFileSync(tls.certFile),
      key: readFileSync(tls.keyFile),
      ...(tls.caFile ? { ca: readFileSync(tls.caFile) } : {}),
      minVersion: 'TLSv1.2',
    });
    return { mode: tls.mode, context, requestCert: tls.caFile !== null };
  } catch (error) {
    // The message names the failing part (e.g. "key values mismatch"), never key bytes.
    throw new ConfigError([
      `nbd.tls: cannot use the certificate files: ${(error as Error).message}`,
    ]);
  }
}

export async function run(argv: string[]): Promise<number> {
  let config: Readonly<Config>;
  let tls: ServerTls | null;
  try {
    const { configPath, overrides } = parseServeArgs(argv);
    config = loadConfig(configPath, overrides, process.env, storeConfigProblems);
    tls = serverTls(config);
    const httpListen = config.http.listen;
    const refusal = httpListen && bindRefusal(httpListen.host, config.http.token ?? undefined);
    if (refusal) throw new ConfigError([`http: ${refusal}`]);
  } catch (error) {
    console.error(`diffswap serve: ${(error as Error).message}`);
    if (!(error instanceof ConfigError)) console.error(SERVE_USAGE);
    return 2;
  }
  const logger = createLogger({ level: config.log.level });
  const startedAtMs = Date.now();
  const hostSafety = applyHostSafety(config.host, logger.child({ component: 'host' }));

  let backend: Backend;
  try {
    backend = await openBackend(config, logger);
  } catch (error) {
    logger.fatal({ err: error, dataDir: config.dataDir }, 'cannot open the store');
    console.error(`diffswap serve: cannot open the store: ${(error as Error).message}`);
    return error instanceof ConfigError ? 2 : 1;
  }
  const metrics = new Metrics({ collectProcess: true });
  let ready = true;
  let nbd: NbdServer | null = null;
  let http: HttpServer | null = null;
  try {
    nbd = await startNbdServer({
      backend,
      metrics,
      logger,
      listen: listenSpecs(config),
      access: config.exportAccess,
      busyPollUs: config.nbd.busyPollUs,
      ...(tls ? { tls } : {}),
    });
    for (const address of nbd.addresses) logger.info({ ...address }, 'nbd listening');
    http = config.http.listen
      ? await startHttpServer({
          host: config.http.listen.host,
          port: config.http.listen.port,
          ...(config.http.token ? { token: config.http.token } : {}),
          backend,
          metrics,
          logger: logger.child({ component: 'http' }),
          nbd,
          info: { version, startedAtMs, config: redactConfig(config) },
          store: backend as never,
          hostSafety: () => refreshHostSafety(hostSafety),
          ready: () => ready,
        })
      : null;
  } catch (error) {
    // A listener that cannot bind (a port in use, an address not on this host) ends the
    // server: half of it serving would keep a supervisor from ever restarting it.
    logger.fatal({ err: error }, 'cannot start the listeners');
    console.error(`diffswap serve: cannot listen: ${(error as Error).message}`);
    await nbd?.close({ graceMs: 0 }).catch(() => undefined);
    await backend.close().catch(() => undefined);
    logger.flush();
    return 1;
  }
  if (http) logger.info({ ...http.address }, 'http listening');
  logger.info(
    { version, backend: config.backend, dataDir: config.dataDir, exports: backend.exportNames() },
    'diffswap serving',
  );
  const server = nbd;

  return new Promise<number>((resolveExit) => {
    let stopping = false;
    const stop = async (signal: string) => {
      if (stopping) {
        logger.warn({ signal }, 'second signal: exiting without a clean shutdown');
        process.exit(1);
      }
      stopping = true;
      ready = false;
      logger.info({ signal }, 'shutting down');
      try {
        await server.close({ graceMs: config.shutdownGraceMs });
        await http?.close();
        await backend.close();
        logger.info('stopped cleanly');
        logger.flush();
        resolveExit(0);
      } catch (error) {
        logger.error({ err: error }, 'shutdown failed');
        logger.flush();
        resolveExit(1);
      }
    };
    process.once('SIGTERM', () => void stop('SIGTERM'));
    process.once('SIGINT', () => void stop('SIGINT'));
  });
}
