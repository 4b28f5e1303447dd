/**
 * Servers under benchmark, each in its own process so the client (fio) and every server get
 * the same treatment from the scheduler: diffswap through its CLI (`diffswap serve`), and
 * `nbdkit memory` (optionally with allocator=zstd) as the reference.
 *
 * Ports are picked free just before start (a small race, acceptable for a benchmark). Every
 * server started here is killed when the benchmark process exits, however it exits
 * (`killAllServers` on exit and signals; nbdkit also has `--exit-with-parent`).
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { freePort, waitForPort } from '../../helpers/nbd-server.js';

export interface BenchServer {
  /** Label for tables, e.g. `diffswap memory` or `nbdkit memory`. */
  label: string;
  port: number;
  pid: number;
  uri(exportName?: string): string;
  /** Resident set size of the server process, from /proc. */
  rssBytes(): Promise<number>;
  stop(): Promise<void>;
}

export interface DiffswapServerOptions {
  rootDir: string;
  backend: 'memory' | 'store';
  exports: Array<{ name: string; sizeBytes: number }>;
  /** Data dir for the store (required for backend `store`). */
  dataDir?: string;
  /** Extra `diffswap serve` arguments (e.g. `--config FILE`). */
  extraArgs?: string[];
  /** The HTTP listener (`HOST:PORT`); default off. */
  http?: string;
  label?: string;
}

/** Time a server gets to listen; the store may open LMDB and segment files first. */
const START_TIMEOUT_MS = 30_000;

/**
 * Starts `diffswap serve` from dist/ (or, with DIFFSWAP_BENCH_SERVER=child or no CLI built,
 * the bare server in serve-child.js) and resolves once it accepts connections.
 */
export async function startDiffswap(o: DiffswapServerOptions): Promise<BenchServer> {
  const port = await freePort();
  const cli = join(o.rootDir, 'dist/src/cli/main.js');
  const useCli = process.env.DIFFSWAP_BENCH_SERVER !== 'child' && existsSync(cli);
  const dataArgs = o.dataDir ? ['--data', o.dataDir] : [];
  const args = useCli
    ? [
        cli,
        'serve',
        '--listen',
        `127.0.0.1:${port}`,
        '--http',
        o.http ?? 'off',
        '--backend',
        o.backend,
        '--log-level',
        'warn',
        ...dataArgs,
        ...o.exports.map((e) => `--export=${e.name}:${humanSize(e.sizeBytes)}`),
        ...(o.extraArgs ?? []),
      ]
    : [
        join(o.rootDir, 'dist/test/bench/lib/serve-child.js'),
        '--port',
        String(port),
        '--backend',
        o.backend,
        ...dataArgs,
        ...o.exports.map((e) => `--export=${e.name}:${e.sizeBytes}`),
      ];
  const child = spawn(process.execPath, args, { stdio: ['ignore', 'ignore', 'inherit'] });
  const label = o.label ?? `diffswap ${o.backend}`;
  return await ready(child, port, label, o.exports[0]?.name ?? '');
}

export interface NbdkitOptions {
  sizeBytes: number;
  /** nbdkit memory's allocator: `sparse` (default, raw pages) or `zstd` (compressed). */
  allocator?: 'sparse' | 'malloc' | 'zstd';
  label?: string;
}

/** Starts `nbdkit memory SIZE` on 127.0.0.1 and resolves once it accepts connections. */
export async function startNbdkitMemory(o: NbdkitOptions): Promise<BenchServer> {
  const port = await freePort();
  const args = ['-f', '--exit-with-parent', '-i', '127.0.0.1', '-p', String(port), 'memory'];
  args.push(String(o.sizeBytes));
  if (o.allocator) args.push(`allocator=${o.allocator}`);
  const child = spawn('nbdkit', args, { stdio: ['ignore', 'ignore', 'inherit'] });
  const label = o.label ?? `nbdkit memory${o.allocator ? ` ${o.allocator}` : ''}`;
  return await ready(child, port, label, '');
}

/** Children not yet stopped, killed by `killAllServers`. */
const running = new Set<ChildProcess>();

/** Kills every server still running (synchronous: usable from an `exit` handler). */
export function killAllServers(): void {
  for (const child of running) child.kill('SIGKILL');
  running.clear();
}

/** A size as the CLI takes it: `256MiB`, `1GiB`, or plain bytes. */
export function humanSize(bytes: number): string {
  for (const [unit, scale] of [
    ['GiB', 2 ** 30],
    ['MiB', 2 ** 20],
    ['KiB', 2 ** 10],
  ] as const) {
    if (bytes % scale === 0) return `${bytes / scale}${unit}`;
  }
  return String(bytes);
}

async function ready(
  child: ChildProcess,
  port: number,
  label: string,
  defaultExport: string,
): Promise<BenchServer> {
  running.add(child);
  const exited = new Promise<number | null>((resolve) => child.once('exit', resolve));
  exited.then(() => running.delete(child));
  const died = exited.then((code) => {
    throw new Error(`${label} exited (${code}) before listening on ${port}`);
  });
  try {
    await Promise.race([waitForPort(port, START_TIMEOUT_MS), died]);
  } catch (err) {
    child.kill('SIGKILL');
    throw err;
  }
  died.catch(() => {}); // after start, an exit is reported by stop() or the next fio run
  const pid = child.pid ?? 0;
  return {
    label,
    port,
    pid,
    uri: (name = defaultExport) => `nbd://127.0.0.1:${port}/${encodeURIComponent(name)}`,
    rssBytes: async () => {
      const status = await readFile(`/proc/${pid}/status`, 'utf8');
      const kib = /VmRSS:\s+(\d+)\s+kB/.exec(status)?.[1];
      return Number(kib ?? 0) * 1024;
    },
    stop: async () => {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
      await exited;
      clearTimeout(timer);
    },
  };
}
