/**
 * A real guest swapping onto an NBD export: builds the tiny guest (test/e2e/guest/build.sh),
 * boots it under qemu-system-x86_64 with the export as its only disk, and parses what its
 * /init and memfill print on the serial console (lines starting with DIFFSWAP-GUEST-).
 *
 * The disk is attached with -blockdev so the NBD client can be told to reconnect: with
 * `reconnect-delay=N`, qemu's nbd driver holds requests while the server is gone and resends
 * them once it is back, for up to N seconds, instead of failing them to the guest.
 */
import { spawn, spawnSync } from 'node:child_process';
import { accessSync, constants, createWriteStream, existsSync, mkdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

/** Sources of the guest (dist/test/helpers -> test/e2e/guest in the repository). */
export const GUEST_SOURCE_DIR = fileURLToPath(new URL('../../../test/e2e/guest/', import.meta.url));
/** Where the kernel and initramfs are cached (gitignored); DIFFSWAP_GUEST_DIR overrides. */
export const GUEST_BUILD_DIR = process.env.DIFFSWAP_GUEST_DIR ?? join(GUEST_SOURCE_DIR, 'build');
/** First build downloads and unpacks a 70 MB kernel package. */
const BUILD_TIMEOUT_MS = 10 * 60_000;
/** Console lines kept in memory for failure messages; the whole console goes to a file. */
const CONSOLE_LINES_MAX = 400;

export interface GuestImage {
  kernelPath: string;
  initrdPath: string;
}

/** Builds the guest if its sources changed since the last build; throws with the output. */
export function buildGuest(outDir = GUEST_BUILD_DIR): GuestImage {
  const result = spawnSync('bash', [join(GUEST_SOURCE_DIR, 'build.sh'), outDir], {
    encoding: 'utf8',
    timeout: BUILD_TIMEOUT_MS,
  });
  if (result.status !== 0) {
    throw new Error(`guest build failed (${result.status}): ${result.stderr}${result.stdout}`);
  }
  return { kernelPath: join(outDir, 'vmlinuz'), initrdPath: join(outDir, 'initrd.img') };
}

/**
 * KVM only where the host's KVM module for this CPU is loaded and /dev/kvm is usable; else
 * TCG. (Some hosts expose a /dev/kvm that only takes other kinds of guests.)
 */
export function qemuAccel(): 'kvm' | 'tcg' {
  const moduleLoaded = ['kvm_intel', 'kvm_amd'].some((m) => existsSync(`/sys/module/${m}`));
  if (!moduleLoaded) return 'tcg';
  try {
    accessSync('/dev/kvm', constants.R_OK | constants.W_OK);
    return 'kvm';
  } catch {
    return 'tcg';
  }
}

export interface GuestDisk {
  host: string;
  port: number;
  exportName: string;
  /** Seconds qemu keeps retrying a lost server before failing I/O; 0 = fail at once. */
  reconnectDelayS?: number;
}

/** The -blockdev value attaching an NBD export as a raw disk (also shown in deploy/README). */
export function nbdBlockdev(disk: GuestDisk, nodeName = 'swap0'): string {
  return JSON.stringify({
    driver: 'raw',
    'node-name': nodeName,
    cache: { direct: true },
    file: {
      driver: 'nbd',
      server: { type: 'inet', host: disk.host, port: String(disk.port) },
      export: disk.exportName,
      'reconnect-delay': disk.reconnectDelayS ?? 0,
    },
  });
}

export interface GuestRunOptions {
  image: GuestImage;
  disk: GuestDisk;
  /** Guest RAM; the workload maps `fillMiB`, several times this. */
  memoryMiB: number;
  fillMiB: number;
  timeoutMs: number;
  /** Full serial console is written here. */
  consolePath: string;
  /** Called for every console line, e.g. to restart the server at a given phase. */
  onLine?: (line: string) => void;
}

export interface GuestPhase {
  name: string;
  generation: number;
  ms: number;
}

export interface GuestResult {
  ok: boolean;
  pageCount: number;
  checkedCount: number;
  errorCount: number;
  ms: number;
}

export interface GuestRun {
  accel: 'kvm' | 'tcg';
  exitCode: number | null;
  timedOut: boolean;
  wallMs: number;
  result: GuestResult | null;
  /** Why /init gave up, when it did (e.g. `swapon`). */
  failReason: string | null;
  phases: GuestPhase[];
  mismatches: string[];
  /** Pages swapped in and out during the workload (/proc/vmstat pswpin, pswpout). */
  swapInPages: number;
  swapOutPages: number;
  /** Kernel lines reporting block or swap I/O errors. */
  ioErrors: string[];
  /** Last console lines, for failure messages. */
  consoleTail: string[];
}

function vmstatOf(line: string): { in: number; out: number } {
  const pswpin = /pswpin=(\d+)/.exec(line)?.[1];
  const pswpout = /pswpout=(\d+)/.exec(line)?.[1];
  return { in: Number(pswpin ?? 0), out: Number(pswpout ?? 0) };
}

function field(line: string, name: string): number {
  return Number(new RegExp(`\\b${name}=(\\d+)`).exec(line)?.[1] ?? Number.NaN);
}

/** Folds one console line into the run. */
function parseConsoleLine(run: GuestRun, before: { in: number; out: number }, line: string) {
  if (/I\/O error|(Read|Write)-error on swap|Buffer I\/O error/.test(line)) run.ioErrors.push(line);
  if (line.startsWith('DIFFSWAP-GUEST-PHASE ')) {
    const name = line.split(' ')[1] ?? '';
    run.phases.push({ name, generation: field(line, 'gen'), ms: field(line, 'ms') });
  } else if (line.startsWith('DIFFSWAP-GUEST-MISMATCH')) {
    run.mismatches.push(line);
  } else if (line.startsWith('DIFFSWAP-GUEST-VMSTAT-BEFORE')) {
    Object.assign(before, vmstatOf(line));
  } else if (line.startsWith('DIFFSWAP-GUEST-VMSTAT-AFTER')) {
    const after = vmstatOf(line);
    run.swapInPages = after.in - before.in;
    run.swapOutPages = after.out - before.out;
  } else if (line.startsWith('DIFFSWAP-GUEST-RESULT FAIL reason=')) {
    run.failReason = line.slice('DIFFSWAP-GUEST-RESULT FAIL reason='.length);
  } else if (line.startsWith('DIFFSWAP-GUEST-RESULT ')) {
    run.result = {
      ok: line.split(' ')[1] === 'ok',
      pageCount: field(line, 'pages'),
      checkedCount: field(line, 'checked'),
      errorCount: field(line, 'errors'),
      ms: field(line, 'ms'),
    };
  }
}

function qemuArgs(o: GuestRunOptions, accel: 'kvm' | 'tcg'): string[] {
  return [
    ...['-accel', accel, '-m', `${o.memoryMiB}M`, '-smp', '1'],
    ...['-display', 'none', '-monitor', 'none', '-serial', 'stdio', '-no-reboot'],
    ...['-kernel', o.image.kernelPath, '-initrd', o.image.initrdPath],
    '-append',
    `console=ttyS0 panic=-1 quiet memfill_mib=${o.fillMiB}`,
    ...['-blockdev', nbdBlockdev(o.disk), '-device', 'virtio-blk-pci,drive=swap0'],
  ];
}

/** Boots the guest and resolves when qemu exits (or is killed at the timeout). */
export function runGuest(o: GuestRunOptions): Promise<GuestRun> {
  const accel = qemuAccel();
  const run: GuestRun = {
    accel,
    exitCode: null,
    timedOut: false,
    wallMs: 0,
    result: null,
    failReason: null,
    phases: [],
    mismatches: [],
    swapInPages: 0,
    swapOutPages: 0,
    ioErrors: [],
    consoleTail: [],
  };
  const before = { in: 0, out: 0 };
  mkdirSync(dirname(o.consolePath), { recursive: true });
  const consoleFile = createWriteStream(o.consolePath);
  const startedMs = Date.now();
  const qemu = spawn('qemu-system-x86_64', qemuArgs(o, accel), {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const onLine = (line: string) => {
    consoleFile.write(`${line}\n`);
    run.consoleTail.push(line);
    if (run.consoleTail.length > CONSOLE_LINES_MAX) run.consoleTail.shift();
    parseConsoleLine(run, before, line.replace(/\r$/, ''));
    o.onLine?.(line);
  };
  createInterface({ input: qemu.stdout }).on('line', onLine);
  createInterface({ input: qemu.stderr }).on('line', (line) => onLine(`qemu: ${line}`));
  const timer = setTimeout(() => {
    run.timedOut = true;
    qemu.kill('SIGKILL');
  }, o.timeoutMs);
  return new Promise((resolve, reject) => {
    qemu.once('error', (error) => {
      clearTimeout(timer);
      reject(error);
    });
    qemu.once('close', (code) => {
      clearTimeout(timer);
      run.exitCode = code;
      run.wallMs = Date.now() - startedMs;
      consoleFile.end(() => resolve(run));
    });
  });
}

/** One paragraph describing a run, for assertion messages and logs. */
export function describeGuestRun(run: GuestRun): string {
  const phases = run.phases.map((p) => `${p.name}/${p.generation} ${p.ms} ms`).join(', ');
  return [
    `accel=${run.accel} exit=${run.exitCode} timedOut=${run.timedOut} wall=${run.wallMs} ms`,
    `result=${JSON.stringify(run.result)} fail=${run.failReason}`,
    `swap in=${run.swapInPages} out=${run.swapOutPages} pages; phases: ${phases}`,
    `io errors: ${run.ioErrors.slice(0, 5).join(' | ') || 'none'}`,
    `mismatches: ${run.mismatches.slice(0, 5).join(' | ') || 'none'}`,
    `console tail:\n${run.consoleTail.slice(-40).join('\n')}`,
  ].join('\n');
}
