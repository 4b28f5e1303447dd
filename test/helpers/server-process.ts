/**
 * Starts `diffswap serve` as a child process, as a user would, and learns its ports from the
 * structured log lines it writes on stderr ("nbd listening", "http listening"). Used by tests
 * that need a real process: restarts, SIGTERM/SIGKILL, guests, benchmarks.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

/** The compiled CLI entry point (tests run from dist/test). */
export const CLI_PATH = fileURLToPath(new URL('../../src/cli/main.js', import.meta.url));

export interface ServerProcess {
  child: ChildProcess;
  nbdPort: number;
  httpPort: number | null;
  dataDir: string;
  /** Log lines seen so far (parsed JSON), for assertions and failure messages. */
  logs: Record<string, unknown>[];
  uri(exportName: string): string;
  httpUrl(path: string): string;
  /** SIGTERM, then wait for exit; resolves with the exit code. */
  stop(timeoutMs?: number): Promise<number | null>;
  /** SIGKILL, then wait for exit. */
  kill(): Promise<void>;
  exited: Promise<number | null>;
}

export interface ServerProcessOptions {
  /** Extra CLI args after `serve`; defaults listen on 127.0.0.1:0 for NBD and HTTP. */
  args?: string[];
  dataDir?: string;
  /** Export specs as NAME:SIZE. */
  exports?: string[];
  backend?: 'store' | 'memory';
  /** NBD port to bind (0 = any); a restart passes the previous port. */
  nbdPort?: number;
  httpPort?: number;
  env?: NodeJS.ProcessEnv;
  startTimeoutMs?: number;
}

export async function startServerProcess(
  options: ServerProcessOptions = {},
): Promise<ServerProcess> {
  const dataDir = options.dataDir ?? mkdtempSync(join(tmpdir(), 'diffswap-data-'));
  const args = [
    CLI_PATH,
    'serve',
    '--listen',
    `127.0.0.1:${options.nbdPort ?? 0}`,
    '--http',
    `127.0.0.1:${options.httpPort ?? 0}`,
    '--data',
    dataDir,
    '--backend',
    options.backend ?? 'store',
    ...(options.exports ?? ['swap:1GiB']).flatMap((e) => ['--export', e]),
    ...(options.args ?? []),
  ];
  const child = spawn(process.execPath, args, {
    stdio: ['ignore', 'inherit', 'pipe'],
    env: { ...process.env, ...options.env },
  });
  const logs: Record<string, unknown>[] = [];
  const exited = new Promise<number | null>((resolve) =>
    child.once('exit', (code) => resolve(code)),
  );
  let nbdPort = 0;
  let httpPort: number | null = null;
  const lines = createInterface({ input: child.stderr! });
  const ready = new Promise<void>((resolve, reject) => {
    const timer = setTimeout(
      () => reject(new Error(`server did not start in time; logs: ${JSON.stringify(logs)}`)),
      options.startTimeoutMs ?? 30_000,
    );
    lines.on('line', (line) => {
      let entry: Record<string, unknown>;
      try {
        entry = JSON.parse(line) as Record<string, unknown>;
      } catch {
        entry = { msg: line };
      }
      logs.push(entry);
      if (entry.msg === 'nbd listening' && typeof entry.port === 'number' && nbdPort === 0) {
        nbdPort = entry.port;
      }
      if (entry.msg === 'http listening' && typeof entry.port === 'number') httpPort = entry.port;
      if (entry.msg === 'diffswap serving') {
        clearTimeout(timer);
        resolve();
      }
    });
    void exited.then((code) => {
      clearTimeout(timer);
      reject(new Error(`server exited with ${code} before serving; logs: ${JSON.stringify(logs)}`));
    });
  });
  await ready;
  return {
    child,
    nbdPort,
    httpPort,
    dataDir,
    logs,
    exited,
    uri: (name) => `nbd://127.0.0.1:${nbdPort}/${name}`,
    httpUrl: (path) => `http://127.0.0.1:${httpPort}${path}`,
    async stop(timeoutMs = 30_000) {
      if (child.exitCode !== null) return child.exitCode;
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
      const code = await exited;
      clearTimeout(timer);
      return code;
    },
    async kill() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      await exited;
    },
  };
}
