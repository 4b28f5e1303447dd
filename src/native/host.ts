/**
 * Host safety: what a server holding its own host's swap needs so it never waits on the memory
 * it is asked to free. Three independent options, each reported as requested / in effect /
 * why not, and never fatal: a refused option is logged and reported, the server still runs.
 *
 * - mlock: mlockall(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT). ON_FAULT matters: without it the
 *   kernel would populate every mapping at once, including LMDB's whole map. Every resident
 *   page of the process is then pinned, so the footprint to budget is VmRSS (VmLck counts
 *   locked address space, most of it never touched).
 *   V8 cannot live with locked memory as it is: when it gives pages back (young-generation
 *   pages after a scavenge, JIT code pages) it discards them with madvise(MADV_DONTNEED) and
 *   aborts the process on the EINVAL a locked page gives (seen on Node 20 within a minute of
 *   guest swap traffic). So before locking, native/src/host.cc redirects the node
 *   executable's madvise and mprotect: a refused discard unlocks the range V8 is giving up
 *   and retries; a range made accessible again is locked again (lazily). Without that
 *   redirection locking is refused. `discardUnlockCount` counts the unlocked discards.
 *   With a finite RLIMIT_MEMLOCK and no CAP_IPC_LOCK, locking is refused up front: future
 *   allocations past the limit would fail and V8 would abort.
 * - ioFlusher: prctl(PR_SET_IO_FLUSHER): allocations of the marked threads never recurse into
 *   I/O reclaim and are not throttled as writers. Needs CAP_SYS_RESOURCE and Linux 5.6. It
 *   marks the calling (main) thread and threads created after it; the report counts marks.
 * - oomScoreAdj: written to /proc/self/oom_score_adj. Lowering it needs CAP_SYS_RESOURCE.
 */
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { constants } from 'node:os';
import type { Logger } from '../log/index.js';
import { nativeAddon, nativeLoadError } from './addon.js';

export interface HostSafetyOptions {
  mlock: boolean;
  ioFlusher: boolean;
  /** -1000..1000, or null to leave the inherited value alone. */
  oomScoreAdj: number | null;
}

export interface MlockReport {
  requested: boolean;
  inEffect: boolean;
  error: string | null;
  /** GOT slots of the node executable redirected (madvise, mprotect; see the design note). */
  hookedSlotCount: number;
  /** Discards of locked ranges the madvise wrapper turned into unlock + discard. */
  discardUnlockCount: number | null;
  /** VmLck: address space marked locked (touched or not). */
  lockedBytes: number | null;
  /** VmRSS: resident bytes; with mlock in effect, all of them are pinned. */
  residentBytes: number | null;
}

export interface IoFlusherReport {
  requested: boolean;
  inEffect: boolean;
  error: string | null;
  /** Threads of this process carrying the I/O flusher marks, out of `threadCount`. */
  threadsMarked: number | null;
  threadCount: number | null;
}

export interface OomScoreReport {
  requested: number | null;
  inEffect: boolean;
  error: string | null;
  /** The value the kernel holds now. */
  value: number | null;
}

export interface HostSafetyReport {
  mlock: MlockReport;
  ioFlusher: IoFlusherReport;
  oomScoreAdj: OomScoreReport;
}

/** Bits of the native mlockAll flags (kLock* in native/src/host.cc). */
const MLOCK_CURRENT = 1;
const MLOCK_FUTURE = 2;
const MLOCK_ON_FAULT = 4;
/** Capability numbers (include/uapi/linux/capability.h). */
const CAP_IPC_LOCK = 14;
const CAP_SYS_RESOURCE = 24;
/** Task flags PR_SET_IO_FLUSHER sets (include/linux/sched.h): MEMALLOC_NOIO, LOCAL_THROTTLE. */
const PF_IO_FLUSHER_MASK = 0x00080000 | 0x00100000;
/** Field index of `flags` in /proc/PID/stat, counted after the ")" that ends `comm`. */
const STAT_FLAGS_INDEX = 6;
const OOM_SCORE_ADJ_MIN = -1000;
const OOM_SCORE_ADJ_MAX = 1000;

interface HostAddon {
  mlockAll(flags: number): number;
  munlockAll(): number;
  setIoFlusher(on: boolean): number;
  getIoFlusher(): number;
  installDiscardHook(): number;
  discardUnlockCount(): number;
  punchHole(fd: number, offset: number, length: number): number;
}

function hostAddon(): HostAddon | null {
  const addon = nativeAddon();
  if (!addon || typeof addon.mlockAll !== 'function') return null;
  return addon as unknown as HostAddon;
}

function errnoName(errno: number): string {
  const entry = Object.entries(constants.errno).find(([, value]) => value === errno);
  return entry ? entry[0] : `errno ${errno}`;
}

/** Effective capability set of this process, from /proc/self/status. */
export function hasCapability(capability: number): boolean {
  const match = /^CapEff:\s*([0-9a-f]+)$/m.exec(readFileSync('/proc/self/status', 'utf8'));
  if (!match?.[1]) return false;
  return ((BigInt(`0x${match[1]}`) >> BigInt(capability)) & 1n) === 1n;
}

/** Soft RLIMIT_MEMLOCK in bytes, Infinity for unlimited, from /proc/self/limits. */
export function memlockLimitBytes(): number {
  const match = /^Max locked memory\s+(\S+)/m.exec(readFileSync('/proc/self/limits', 'utf8'));
  if (!match?.[1] || match[1] === 'unlimited') return Number.POSITIVE_INFINITY;
  return Number(match[1]);
}

function statusBytes(field: 'VmLck' | 'VmRSS'): number | null {
  const match = new RegExp(`^${field}:\\s*(\\d+) kB$`, 'm').exec(
    readFileSync('/proc/self/status', 'utf8'),
  );
  return match?.[1] ? Number(match[1]) * 1024 : null;
}

function mlockRefusal(): string | null {
  if (hasCapability(CAP_IPC_LOCK)) return null;
  const limitBytes = memlockLimitBytes();
  if (limitBytes === Number.POSITIVE_INFINITY) return null;
  return (
    `not locking: RLIMIT_MEMLOCK is ${limitBytes} bytes and CAP_IPC_LOCK is missing, so ` +
    'allocations past the limit would fail and abort the server; grant CAP_IPC_LOCK ' +
    '(AmbientCapabilities=CAP_IPC_LOCK) or set LimitMEMLOCK=infinity'
  );
}

function mlockErrorText(errno: number): string {
  const name = errnoName(errno);
  if (name === 'EPERM') return 'mlockall: EPERM: needs CAP_IPC_LOCK or a RLIMIT_MEMLOCK above 0';
  if (name === 'ENOMEM') {
    return 'mlockall: ENOMEM: the mapped size exceeds RLIMIT_MEMLOCK; raise LimitMEMLOCK';
  }
  return `mlockall: ${name}`;
}

let unlockOnExitInstalled = false;

function applyMlock(requested: boolean, addon: HostAddon | null): MlockReport {
  const report: MlockReport = {
    requested,
    inEffect: false,
    error: null,
    hookedSlotCount: 0,
    discardUnlockCount: null,
    lockedBytes: null,
    residentBytes: null,
  };
  if (!requested) return report;
  if (!addon) {
    report.error = nativeLoadError() ?? 'native addon lacks mlockAll';
    return report;
  }
  report.error = mlockRefusal();
  if (report.error) return report;
  const hooked = addon.installDiscardHook();
  if (hooked < 2) {
    report.error =
      hooked < 0
        ? `not locking: cannot redirect node's madvise/mprotect (${errnoName(-hooked)})`
        : `not locking: found ${hooked} of node's madvise/mprotect imports to redirect, ` +
          'and V8 aborts when it discards locked pages without them';
    return report;
  }
  report.hookedSlotCount = hooked;
  const errno = addon.mlockAll(MLOCK_CURRENT | MLOCK_FUTURE | MLOCK_ON_FAULT);
  if (errno !== 0) {
    report.error = mlockErrorText(errno);
    return report;
  }
  report.inEffect = true;
  // Teardown releases pages in bulk; unlocked first, it needs no redirection at all.
  if (!unlockOnExitInstalled) {
    unlockOnExitInstalled = true;
    process.once('exit', () => addon.munlockAll());
  }
  return report;
}

/** Threads of this process carrying both I/O flusher task flags, and all threads. */
export function ioFlusherThreads(): { marked: number; total: number } {
  let marked = 0;
  let total = 0;
  for (const tid of readdirSync('/proc/self/task')) {
    let stat: string;
    try {
      stat = readFileSync(`/proc/self/task/${tid}/stat`, 'utf8');
    } catch {
      continue; // the thread ended between the listing and the read
    }
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    total++;
    const flags = Number(fields[STAT_FLAGS_INDEX] ?? 0);
    if ((flags & PF_IO_FLUSHER_MASK) === PF_IO_FLUSHER_MASK) marked++;
  }
  return { marked, total };
}

function applyIoFlusher(requested: boolean, addon: HostAddon | null): IoFlusherReport {
  const report: IoFlusherReport = {
    requested,
    inEffect: false,
    error: null,
    threadsMarked: null,
    threadCount: null,
  };
  if (!requested) return report;
  if (!addon) {
    report.error = nativeLoadError() ?? 'native addon lacks setIoFlusher';
    return report;
  }
  const errno = addon.setIoFlusher(true);
  if (errno !== 0) {
    const name = errnoName(errno);
    report.error =
      name === 'EPERM'
        ? 'prctl(PR_SET_IO_FLUSHER): EPERM: needs CAP_SYS_RESOURCE'
        : name === 'EINVAL'
          ? 'prctl(PR_SET_IO_FLUSHER): EINVAL: the kernel is older than 5.6'
          : `prctl(PR_SET_IO_FLUSHER): ${name}`;
    return report;
  }
  report.inEffect = addon.getIoFlusher() === 1;
  const threads = ioFlusherThreads();
  report.threadsMarked = threads.marked;
  report.threadCount = threads.total;
  return report;
}

function readOomScoreAdj(): number | null {
  try {
    return Number(readFileSync('/proc/self/oom_score_adj', 'utf8').trim());
  } catch {
    return null;
  }
}

function applyOomScoreAdj(requested: number | null): OomScoreReport {
  const report: OomScoreReport = { requested, inEffect: false, error: null, value: null };
  if (requested !== null) {
    if (
      !Number.isInteger(requested) ||
      requested < OOM_SCORE_ADJ_MIN ||
      requested > OOM_SCORE_ADJ_MAX
    ) {
      report.error = `oom_score_adj must be a whole number from -1000 to 1000, got ${requested}`;
    } else {
      try {
        writeFileSync('/proc/self/oom_score_adj', `${requested}\n`);
      } catch (error) {
        const code = (error as NodeJS.ErrnoException).code ?? 'error';
        report.error =
          code === 'EACCES' || code === 'EPERM'
            ? `oom_score_adj: ${code}: lowering it below its current value needs CAP_SYS_RESOURCE`
            : `oom_score_adj: ${(error as Error).message}`;
      }
    }
  }
  report.value = readOomScoreAdj();
  report.inEffect = requested !== null && report.value === requested;
  return report;
}

/**
 * Applies the host-safety options once, early at start-up (before large mappings such as the
 * store's are made, so ON_FAULT locking stays cheap). Never throws: each option's outcome is
 * in the report, refused options are logged as warnings with the fix.
 */
export function applyHostSafety(options: HostSafetyOptions, logger: Logger): HostSafetyReport {
  const addon = hostAddon();
  const report: HostSafetyReport = {
    mlock: applyMlock(options.mlock, addon),
    ioFlusher: applyIoFlusher(options.ioFlusher, addon),
    oomScoreAdj: applyOomScoreAdj(options.oomScoreAdj),
  };
  refreshHostSafety(report);
  for (const [name, item] of Object.entries(report) as Array<[string, { error: string | null }]>) {
    if (item.error) logger.warn({ option: name, error: item.error }, 'host safety not in effect');
  }
  logger.info(
    {
      mlock: report.mlock.inEffect,
      ioFlusher: report.ioFlusher.inEffect,
      oomScoreAdj: report.oomScoreAdj.value,
    },
    'host safety applied',
  );
  return report;
}

/** Updates the live figures of a report (locked and resident bytes, marked threads). */
export function refreshHostSafety(report: HostSafetyReport): HostSafetyReport {
  report.mlock.lockedBytes = statusBytes('VmLck');
  report.mlock.residentBytes = statusBytes('VmRSS');
  if (report.mlock.inEffect)
    report.mlock.discardUnlockCount = hostAddon()?.discardUnlockCount() ?? null;
  if (report.ioFlusher.inEffect) {
    const threads = ioFlusherThreads();
    report.ioFlusher.threadsMarked = threads.marked;
    report.ioFlusher.threadCount = threads.total;
  }
  report.oomScoreAdj.value = readOomScoreAdj();
  return report;
}

/** CAP_SYS_RESOURCE in the effective set: PR_SET_IO_FLUSHER and a lower OOM score need it. */
export function hasSysResource(): boolean {
  return hasCapability(CAP_SYS_RESOURCE);
}

/** True when the native addon can punch holes (no TypeScript twin: Node has no fallocate). */
export function canPunchHoles(): boolean {
  return typeof hostAddon()?.punchHole === 'function';
}

/**
 * Frees the blocks of `[offset, offset + length)` of an open file, keeping its size; returns
 * 0 or an errno (EOPNOTSUPP without the native addon or on a filesystem that cannot).
 */
export function punchHole(fd: number, offset: number, length: number): number {
  const addon = hostAddon();
  if (!addon || typeof addon.punchHole !== 'function') return constants.errno.EOPNOTSUPP;
  return addon.punchHole(fd, offset, length);
}
