/**
 * A real guest swaps onto diffswap: the Debian kernel and a busybox initramfs boot under qemu
 * with 128 MiB of RAM and an NBD export as their only swap; memfill maps several times the
 * RAM, fills it with memory-like pages, verifies, overwrites and verifies again.
 *
 * 1. qemu's reconnect option, proven against a peer we did not write: nbdkit (file plugin, so
 *    its data outlives it) is killed and started again mid-run; the guest must not notice.
 * 2. The guest on `diffswap serve`: every page verified, swap traffic both ways several times
 *    the RAM, and the store's per-technique saving for the run, printed.
 * 3. The same while diffswap is stopped with SIGTERM and started again (same port, same data
 *    directory) twice mid-run: no I/O error reaches the guest, no page comes back wrong.
 *
 * Sizes: DIFFSWAP_GUEST_FILL_MIB (default 384, three times the RAM) of the guest's 128 MiB.
 * Under TCG on two
 * cores a run takes a few minutes; with KVM (kvm_intel/kvm_amd loaded) far less.
 */
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import {
  buildGuest,
  describeGuestRun,
  type GuestImage,
  type GuestRun,
  runGuest,
} from '../helpers/guest.js';
import { freePort, waitForPort } from '../helpers/nbd-server.js';
import { type ServerProcess, startServerProcess } from '../helpers/server-process.js';

const MEMORY_MIB = 128;
const FILL_MIB = Number(process.env.DIFFSWAP_GUEST_FILL_MIB ?? 384);
const PAGES_PER_MIB = 256;
/** "Several times the RAM": each direction must move at least this many RAMs of pages. */
const SWAP_TRAFFIC_RAMS_MIN = 3;
/** A guest run under TCG on a busy two-core machine; it normally ends well before. */
const GUEST_TIMEOUT_MS = 20 * 60_000;
/** Long enough to cover a server restart (stop, flush, reopen) with a wide margin. */
const RECONNECT_DELAY_S = 60;
/** Pause between a phase line and the restart, so the guest is mid-swap when it happens. */
const RESTART_AFTER_PHASE_MS = 3000;
const EXPORT_SIZE = '1GiB';
const ARTIFACTS_DIR = fileURLToPath(new URL('../../../test-artifacts/e2e/', import.meta.url));

let image: GuestImage;
let scratchDir: string;

function assertGuestPassed(run: GuestRun): void {
  const why = describeGuestRun(run);
  assert.equal(run.timedOut, false, `guest timed out\n${why}`);
  assert.equal(run.exitCode, 0, `qemu failed\n${why}`);
  assert.ok(run.result, `no result line\n${why}`);
  assert.equal(run.result.ok, true, `memfill failed\n${why}`);
  assert.equal(run.result.errorCount, 0, why);
  assert.equal(run.result.pageCount, FILL_MIB * PAGES_PER_MIB, why);
  assert.equal(run.result.checkedCount, 2 * run.result.pageCount, 'every page checked twice');
  assert.deepEqual(run.ioErrors, [], `the guest saw I/O errors\n${why}`);
  const ramPages = MEMORY_MIB * PAGES_PER_MIB;
  assert.ok(run.swapOutPages >= SWAP_TRAFFIC_RAMS_MIN * ramPages, `too little swap-out\n${why}`);
  assert.ok(run.swapInPages >= SWAP_TRAFFIC_RAMS_MIN * ramPages, `too little swap-in\n${why}`);
}

function logRun(label: string, run: GuestRun): void {
  const phases = run.phases.map((p) => `${p.name}(${p.generation}) ${p.ms} ms`).join(', ');
  console.log(
    `${label}: ${run.accel}, ${run.wallMs} ms wall, workload ${run.result?.ms} ms; ` +
      `swap-in ${run.swapInPages} / swap-out ${run.swapOutPages} pages; ${phases}`,
  );
}

interface TechniqueStats {
  pages: number;
  storedBytes: number;
  savedBytes: number;
}

interface StoreStatsView {
  logicalBytes: number;
  storedBytes: number;
  savedBytes: number;
  savingRatio: number;
  techniques: Record<string, TechniqueStats>;
}

async function storeStats(server: ServerProcess): Promise<StoreStatsView> {
  const response = await fetch(server.httpUrl('/api/v1/stats'));
  assert.equal(response.status, 200);
  return (await response.json()) as StoreStatsView;
}

function printStats(label: string, stats: StoreStatsView): void {
  const mib = (bytes: number) => (bytes / 2 ** 20).toFixed(1);
  console.log(
    `${label}: logical ${mib(stats.logicalBytes)} MiB, stored ${mib(stats.storedBytes)} MiB,` +
      ` saving ${(stats.savingRatio * 100).toFixed(1)}%`,
  );
  for (const [name, t] of Object.entries(stats.techniques)) {
    console.log(
      `  ${name.padEnd(10)} ${String(t.pages).padStart(7)} pages, stored ` +
        `${mib(t.storedBytes).padStart(6)} MiB, saved ${mib(t.savedBytes).padStart(6)} MiB`,
    );
  }
}

function assertTechniquesPaid(stats: StoreStatsView): void {
  // memfill writes zero, repeated, near-repeated and compressible pages: each technique must
  // have taken some and saved bytes with them.
  for (const name of ['zero', 'duplicate', 'delta', 'compressed']) {
    const t = stats.techniques[name];
    assert.ok(t, `stats lack technique ${name}: ${JSON.stringify(stats.techniques)}`);
    assert.ok(t.pages > 0 && t.savedBytes > 0, `${name} saved nothing: ${JSON.stringify(t)}`);
  }
  assert.ok(stats.logicalBytes > 0 && stats.storedBytes < stats.logicalBytes);
}

/** nbdkit's file plugin on a sparse file: its data outlives the process, unlike `memory`. */
function startNbdkitFile(path: string, port: number): ChildProcess {
  return spawn(
    'nbdkit',
    ['-f', '--exit-with-parent', '-i', '127.0.0.1', '-p', String(port), 'file', path],
    { stdio: ['ignore', 'ignore', 'inherit'] },
  );
}

function killAndWait(child: ChildProcess, signal: NodeJS.Signals): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    child.once('exit', () => resolve());
    child.kill(signal);
  });
}

/**
 * Calls `restart` RESTART_AFTER_PHASE_MS after each console line naming one of `phases`;
 * returns the promises so the test can await them and see their errors.
 */
function restartOnPhases(phases: string[], restart: (phase: string) => Promise<void>) {
  const pending: Promise<void>[] = [];
  const onLine = (line: string) => {
    const phase = phases.find((p) => line.startsWith(`DIFFSWAP-GUEST-PHASE ${p}`));
    if (!phase) return;
    pending.push(
      new Promise<void>((resolve) => setTimeout(resolve, RESTART_AFTER_PHASE_MS)).then(() =>
        restart(phase),
      ),
    );
  };
  return { onLine, pending };
}

describe('a guest swapping onto an NBD export', { timeout: 3 * GUEST_TIMEOUT_MS }, () => {
  before(() => {
    image = buildGuest();
    scratchDir = mkdtempSync(join(tmpdir(), 'diffswap-e2e-'));
  });
  after(() => rmSync(scratchDir, { recursive: true, force: true }));

  it('survives its NBD server being killed and restarted (qemu reconnect-delay)', async () => {
    const diskPath = join(scratchDir, 'nbdkit-disk.img');
    writeFileSync(diskPath, '');
    truncateSync(diskPath, 2 ** 30);
    const port = await freePort();
    let nbdkit = startNbdkitFile(diskPath, port);
    await waitForPort(port);
    // SIGKILL, not SIGTERM: nbdkit answers requests in flight at SIGTERM with ESHUTDOWN,
    // which qemu passes to the guest as an I/O error instead of reconnecting.
    const restarts = restartOnPhases(['fill gen=1'], async () => {
      await killAndWait(nbdkit, 'SIGKILL');
      nbdkit = startNbdkitFile(diskPath, port);
      await waitForPort(port);
    });
    try {
      const run = await runGuest({
        image,
        disk: { host: '127.0.0.1', port, exportName: '', reconnectDelayS: RECONNECT_DELAY_S },
        memoryMiB: MEMORY_MIB,
        fillMiB: FILL_MIB,
        timeoutMs: GUEST_TIMEOUT_MS,
        consolePath: join(ARTIFACTS_DIR, 'nbdkit-restart.console.log'),
        onLine: restarts.onLine,
      });
      await Promise.all(restarts.pending);
      logRun('nbdkit file, killed and restarted once', run);
      assert.equal(restarts.pending.length, 1, 'the restart happened');
      assertGuestPassed(run);
    } finally {
      await killAndWait(nbdkit, 'SIGTERM');
    }
  });

  it('without reconnect-delay, the same restart reaches the guest as I/O errors', async () => {
    // The control for the test above: proves the option, not luck, kept the guest alive.
    const diskPath = join(scratchDir, 'nbdkit-disk-control.img');
    writeFileSync(diskPath, '');
    truncateSync(diskPath, 2 ** 30);
    const port = await freePort();
    let nbdkit = startNbdkitFile(diskPath, port);
    await waitForPort(port);
    const restarts = restartOnPhases(['fill gen=1'], async () => {
      await killAndWait(nbdkit, 'SIGKILL');
      nbdkit = startNbdkitFile(diskPath, port);
      await waitForPort(port);
    });
    try {
      const run = await runGuest({
        image,
        disk: { host: '127.0.0.1', port, exportName: '', reconnectDelayS: 0 },
        memoryMiB: MEMORY_MIB,
        fillMiB: FILL_MIB,
        timeoutMs: GUEST_TIMEOUT_MS,
        consolePath: join(ARTIFACTS_DIR, 'nbdkit-restart-no-reconnect.console.log'),
        onLine: restarts.onLine,
      });
      await Promise.all(restarts.pending);
      logRun('nbdkit file, restarted, no reconnect-delay', run);
      assert.equal(run.timedOut, false, describeGuestRun(run));
      assert.ok(run.ioErrors.length > 0, `the guest saw no I/O error\n${describeGuestRun(run)}`);
      assert.notEqual(run.result?.ok, true, 'the workload cannot have passed');
    } finally {
      await killAndWait(nbdkit, 'SIGTERM');
    }
  });

  it('swaps onto diffswap: every page verified, the saving reported', async () => {
    const server = await startServerProcess({ exports: [`swap:${EXPORT_SIZE}`] });
    try {
      const run = await runGuest({
        image,
        disk: { host: '127.0.0.1', port: server.nbdPort, exportName: 'swap' },
        memoryMiB: MEMORY_MIB,
        fillMiB: FILL_MIB,
        timeoutMs: GUEST_TIMEOUT_MS,
        consolePath: join(ARTIFACTS_DIR, 'diffswap.console.log'),
      });
      logRun('diffswap', run);
      assertGuestPassed(run);
      const stats = await storeStats(server);
      printStats('diffswap store after the run', stats);
      assertTechniquesPaid(stats);
    } finally {
      assert.equal(await server.stop(), 0, 'diffswap exits cleanly on SIGTERM');
      rmSync(server.dataDir, { recursive: true, force: true });
    }
  });

  it('survives diffswap restarted with SIGTERM twice while the guest swaps', async () => {
    let server = await startServerProcess({ exports: [`swap:${EXPORT_SIZE}`] });
    const { dataDir, nbdPort } = server;
    const exitCodes: Array<number | null> = [];
    // Once while it reads back (verify), once while it overwrites (fill of generation 2).
    const restarts = restartOnPhases(['fill gen=1', 'verify-forward gen=1'], async () => {
      exitCodes.push(await server.stop());
      server = await startServerProcess({
        exports: [`swap:${EXPORT_SIZE}`],
        dataDir,
        nbdPort,
      });
    });
    try {
      const run = await runGuest({
        image,
        disk: {
          host: '127.0.0.1',
          port: nbdPort,
          exportName: 'swap',
          reconnectDelayS: RECONNECT_DELAY_S,
        },
        memoryMiB: MEMORY_MIB,
        fillMiB: FILL_MIB,
        timeoutMs: GUEST_TIMEOUT_MS,
        consolePath: join(ARTIFACTS_DIR, 'diffswap-restart.console.log'),
        onLine: restarts.onLine,
      });
      await Promise.all(restarts.pending);
      logRun('diffswap, restarted twice', run);
      assert.deepEqual(exitCodes, [0, 0], 'both stops were clean');
      assertGuestPassed(run);
      const stats = await storeStats(server);
      printStats('diffswap store after the restarts', stats);
      // The reopened store goes on deduplicating, delta-encoding and compressing.
      assertTechniquesPaid(stats);
    } finally {
      await server.stop();
      rmSync(dataDir, { recursive: true, force: true });
    }
  });
});
