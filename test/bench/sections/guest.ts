/**
 * Guest benchmark (issue 6): the e2e test's guest (128 MiB of RAM, memfill over several times
 * that) swapping onto `nbdkit memory` and onto `diffswap serve` with the page store, one after
 * the other, same kernel, same workload. Reports wall time, the workload's own time and its
 * phases, the time ratio diffswap/nbdkit, what the store saved per technique, and the
 * server's resident (with mlock: locked) memory after the run.
 *
 * diffswap runs with host safety on, as deploy/diffswap.yaml sets it, so the resident figure
 * is the locked footprint of the default store configuration under this load.
 *
 * Goal (issue 6): diffswap no slower than 1.2x nbdkit.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  buildGuest,
  describeGuestRun,
  type GuestImage,
  type GuestRun,
  runGuest,
} from '../../helpers/guest.js';
import { startServerProcess } from '../../helpers/server-process.js';
import type { BenchContext, BenchSection } from '../lib/section.js';
import { startNbdkitMemory } from '../lib/servers.js';
import { type Cell, formatTable } from '../lib/table.js';

const MEMORY_MIB = 128;
const EXPORT_BYTES = 2 ** 30;
/** A bench run is never left hanging; TCG on a loaded machine can be slow. */
const GUEST_TIMEOUT_MS = 30 * 60_000;
const TIME_RATIO_GOAL = 1.2;

interface Settings {
  fillMiB: number;
}

function settings(quick: boolean): Settings {
  return quick ? { fillMiB: 192 } : { fillMiB: 384 };
}

interface TechniqueView {
  pages: number;
  storedBytes: number;
  savedBytes: number;
}

interface StatsView {
  logicalBytes: number;
  storedBytes: number;
  savingRatio: number;
  techniques: Record<string, TechniqueView>;
}

interface Measured {
  label: string;
  run: GuestRun;
}

function processMemory(pid: number): { residentBytes: number; lockedBytes: number } {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kib = (field: string) => Number(new RegExp(`^${field}:\\s*(\\d+)`, 'm').exec(status)?.[1]);
  return { residentBytes: kib('VmRSS') * 1024, lockedBytes: kib('VmLck') * 1024 };
}

async function guestOn(
  ctx: BenchContext,
  image: GuestImage,
  label: string,
  port: number,
  exportName: string,
  s: Settings,
): Promise<Measured> {
  const run = await runGuest({
    image,
    disk: { host: '127.0.0.1', port, exportName },
    memoryMiB: MEMORY_MIB,
    fillMiB: s.fillMiB,
    timeoutMs: GUEST_TIMEOUT_MS,
    consolePath: join(ctx.tmpDir, `${label.replace(/\W+/g, '-')}.console.log`),
  });
  if (!run.result?.ok || run.exitCode !== 0 || run.ioErrors.length > 0) {
    throw new Error(`guest on ${label} failed:\n${describeGuestRun(run)}`);
  }
  const phases = run.phases.map((p) => `${p.name}(${p.generation}) ${(p.ms / 1000).toFixed(1)}`);
  ctx.log(`  ${label}: ${(run.wallMs / 1000).toFixed(1)} s wall; ${phases.join(', ')}`);
  return { label, run };
}

async function onNbdkit(ctx: BenchContext, image: GuestImage, s: Settings): Promise<Measured> {
  const server = await startNbdkitMemory({ sizeBytes: EXPORT_BYTES });
  try {
    return await guestOn(ctx, image, server.label, server.port, '', s);
  } finally {
    await server.stop();
  }
}

async function onDiffswap(ctx: BenchContext, image: GuestImage, s: Settings) {
  const configPath = join(ctx.tmpDir, 'diffswap.yaml');
  writeFileSync(configPath, 'host: { mlock: true, ioFlusher: true, oomScoreAdj: -900 }\n');
  const server = await startServerProcess({
    dataDir: join(ctx.tmpDir, 'data'),
    exports: ['swap:1GiB'],
    args: ['--config', configPath],
  });
  try {
    const measured = await guestOn(ctx, image, 'diffswap store', server.nbdPort, 'swap', s);
    const response = await fetch(server.httpUrl('/api/v1/stats'));
    const stats = (await response.json()) as StatsView;
    const memory = processMemory(server.child.pid ?? 0);
    const logged = server.logs.find((l) => l.msg === 'host safety applied') ?? {};
    const safety = {
      mlock: logged.mlock,
      ioFlusher: logged.ioFlusher,
      oomScoreAdj: logged.oomScoreAdj,
    };
    return { measured, stats, memory, safety };
  } finally {
    await server.stop();
  }
}

function timeTable(nbdkit: Measured, diffswap: Measured): string {
  const phaseNames = nbdkit.run.phases.map((p) => `${p.name}(${p.generation})`);
  const rows: Cell[][] = [nbdkit, diffswap].map((m) => [
    m.label,
    m.run.wallMs / 1000,
    (m.run.result?.ms ?? 0) / 1000,
    ...m.run.phases.map((p) => p.ms / 1000),
    m.run.swapInPages,
    m.run.swapOutPages,
  ]);
  const header = ['server', 'wall s', 'workload s', ...phaseNames, 'swap-in pg', 'swap-out pg'];
  return formatTable(header, rows);
}

function savingTable(stats: StatsView): string {
  const MiB = 2 ** 20;
  const rows: Cell[][] = Object.entries(stats.techniques).map(([name, t]) => [
    name,
    t.pages,
    t.storedBytes / MiB,
    t.savedBytes / MiB,
  ]);
  rows.push([
    'total',
    null,
    stats.storedBytes / MiB,
    (stats.logicalBytes - stats.storedBytes) / MiB,
  ]);
  return formatTable(['technique', 'pages', 'stored MiB', 'saved MiB'], rows);
}

async function run(ctx: BenchContext): Promise<void> {
  const s = settings(ctx.quick);
  const image = buildGuest();
  ctx.log(`guest: ${MEMORY_MIB} MiB RAM, memfill over ${s.fillMiB} MiB`);
  const nbdkit = await onNbdkit(ctx, image, s);
  const diffswap = await onDiffswap(ctx, image, s);
  const ratio = diffswap.measured.run.wallMs / nbdkit.run.wallMs;
  const workloadRatio = (diffswap.measured.run.result?.ms ?? 0) / (nbdkit.run.result?.ms ?? 1);

  ctx.log(timeTable(nbdkit, diffswap.measured));
  ctx.log(
    `time ratio diffswap/nbdkit: ${ratio.toFixed(2)} wall, ${workloadRatio.toFixed(2)} workload` +
      ` (goal <= ${TIME_RATIO_GOAL}) ${ratio <= TIME_RATIO_GOAL ? 'MET' : 'NOT MET'}`,
  );
  ctx.log(
    `saving ${(diffswap.stats.savingRatio * 100).toFixed(1)}% of the pages the guest swapped:`,
  );
  ctx.log(savingTable(diffswap.stats));
  const mib = (bytes: number) => (bytes / 2 ** 20).toFixed(1);
  ctx.log(
    `diffswap after the run: resident ${mib(diffswap.memory.residentBytes)} MiB, ` +
      `VmLck ${mib(diffswap.memory.lockedBytes)} MiB; ` +
      `host safety ${JSON.stringify(diffswap.safety)}`,
  );

  ctx.record('settings', { memoryMiB: MEMORY_MIB, ...s, accel: nbdkit.run.accel });
  ctx.record('nbdkit', summary(nbdkit.run));
  ctx.record('diffswap', summary(diffswap.measured.run));
  ctx.record('timeRatio', { wall: ratio, workload: workloadRatio, goal: TIME_RATIO_GOAL });
  ctx.record('saving', diffswap.stats);
  ctx.record('serverMemory', diffswap.memory);
}

function summary(run: GuestRun) {
  return {
    wallMs: run.wallMs,
    workloadMs: run.result?.ms ?? null,
    phases: run.phases,
    swapInPages: run.swapInPages,
    swapOutPages: run.swapOutPages,
  };
}

export const section: BenchSection = {
  name: 'guest',
  description: 'a qemu guest swapping onto diffswap vs nbdkit memory: time ratio and saving',
  run,
};
