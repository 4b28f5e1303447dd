/**
 * Host safety (src/native/host.ts) in real child processes: as this user, and as `nobody`
 * with small RLIMIT_MEMLOCK values (setpriv, prlimit), so the kernel itself refuses. These
 * tests need root to switch user, as CI has.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import type { HostSafetyReport } from '../../src/native/host.js';

const CHILD = fileURLToPath(new URL('../helpers/host-safety-child.js', import.meta.url));
/** Runs the child as uid/gid 65534 (nobody) with no capabilities at all. */
const AS_NOBODY = [
  'setpriv',
  '--reuid=65534',
  '--regid=65534',
  '--clear-groups',
  '--inh-caps=-all',
];
const CAP_SYS_RESOURCE = 24;
/** Long enough for V8 to free code pages many times over (it aborted within 1 s when locked). */
const CHURN_MS = 3000;

interface ChildResult {
  status: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

function runChild(prefix: string[], args: string[]): ChildResult {
  const command = [...prefix, process.execPath, '--expose-gc', CHILD, ...args];
  const result = spawnSync(command[0]!, command.slice(1), { encoding: 'utf8', timeout: 60_000 });
  if (result.error) throw result.error;
  return {
    status: result.status,
    signal: result.signal,
    stdout: result.stdout,
    stderr: result.stderr,
  };
}

function applyIn(prefix: string[], options: object, churnMs = 0): HostSafetyReport {
  const result = runChild(prefix, ['apply', JSON.stringify(options), String(churnMs)]);
  assert.equal(result.status, 0, `child failed (${result.signal}): ${result.stderr.slice(-2000)}`);
  return (JSON.parse(result.stdout) as { report: HostSafetyReport }).report;
}

/** Lowers RLIMIT_MEMLOCK (raising it needs CAP_SYS_RESOURCE, which containers often lack). */
function memlock(bytes: number): string[] {
  return ['prlimit', `--memlock=${bytes}:${bytes}`];
}

function selfHasCapability(capability: number): boolean {
  const match = /^CapEff:\s*([0-9a-f]+)$/m.exec(readFileSync('/proc/self/status', 'utf8'));
  return ((BigInt(`0x${match![1]}`) >> BigInt(capability)) & 1n) === 1n;
}

describe('host safety', () => {
  it('is root, as these tests need to switch user', () => {
    assert.equal(process.getuid?.(), 0, 'run the host-safety tests as root (CI does)');
  });

  it("locks all memory, redirects V8's discards, and survives code churn", () => {
    const report = applyIn([], { mlock: true, ioFlusher: false, oomScoreAdj: null }, CHURN_MS);
    assert.equal(report.mlock.inEffect, true, String(report.mlock.error));
    assert.equal(report.mlock.error, null);
    assert.equal(report.mlock.hookedSlotCount, 2, 'madvise and mprotect of the node executable');
    assert.ok((report.mlock.discardUnlockCount ?? 0) > 0, 'V8 gave back locked pages');
    assert.ok((report.mlock.lockedBytes ?? 0) > 0, 'VmLck reports locked memory');
    assert.ok((report.mlock.residentBytes ?? 0) > 0);
  });

  it('shows why the redirection exists: V8 aborts when it discards locked pages', () => {
    // mlockall(CURRENT | FUTURE | ONFAULT) without the redirection, then the same churn. If a
    // future Node survives this, the test fails: the redirection can go.
    const result = runChild([], ['raw-mlock', '7', String(CHURN_MS)]);
    assert.equal(JSON.parse(result.stdout.split('\n')[0]!).errno, 0);
    assert.notEqual(result.status, 0, 'V8 survived freeing locked code pages');
    assert.match(result.stderr, /Check failed/);
  });

  it('leaves every option alone when none is requested', () => {
    const report = applyIn([], { mlock: false, ioFlusher: false, oomScoreAdj: null });
    assert.deepEqual(
      [report.mlock.inEffect, report.ioFlusher.inEffect, report.oomScoreAdj.inEffect],
      [false, false, false],
    );
    assert.deepEqual(
      [report.mlock.error, report.ioFlusher.error, report.oomScoreAdj.error],
      [null, null, null],
    );
    assert.equal(report.mlock.hookedSlotCount, 0);
  });

  it('marks the I/O flusher exactly when CAP_SYS_RESOURCE is held', () => {
    const report = applyIn([], { mlock: false, ioFlusher: true, oomScoreAdj: null });
    if (selfHasCapability(CAP_SYS_RESOURCE)) {
      assert.equal(report.ioFlusher.inEffect, true, String(report.ioFlusher.error));
      assert.ok((report.ioFlusher.threadsMarked ?? 0) >= 1, 'the main thread is marked');
    } else {
      assert.equal(report.ioFlusher.inEffect, false);
      assert.match(String(report.ioFlusher.error), /EPERM: needs CAP_SYS_RESOURCE/);
    }
  });

  it('refuses to lock under a finite RLIMIT_MEMLOCK without CAP_IPC_LOCK, keeps running', () => {
    const report = applyIn([...memlock(65536), ...AS_NOBODY], {
      mlock: true,
      ioFlusher: true,
      oomScoreAdj: -500,
    });
    assert.equal(report.mlock.inEffect, false);
    assert.match(String(report.mlock.error), /RLIMIT_MEMLOCK is 65536 bytes and CAP_IPC_LOCK/);
    assert.equal(report.mlock.lockedBytes, 0, 'nothing was locked');
    assert.equal(report.ioFlusher.inEffect, false);
    assert.match(String(report.ioFlusher.error), /EPERM: needs CAP_SYS_RESOURCE/);
    assert.equal(report.oomScoreAdj.inEffect, false);
    assert.match(String(report.oomScoreAdj.error), /EACCES: lowering .* needs CAP_SYS_RESOURCE/);
    assert.equal(report.oomScoreAdj.value, 0, 'the inherited score is unchanged');
  });

  it('raises the OOM score without privileges and rejects values out of range', () => {
    const raised = applyIn(AS_NOBODY, { mlock: false, ioFlusher: false, oomScoreAdj: 300 });
    assert.deepEqual([raised.oomScoreAdj.inEffect, raised.oomScoreAdj.value], [true, 300]);
    const bad = applyIn([], { mlock: false, ioFlusher: false, oomScoreAdj: 2000 });
    assert.equal(bad.oomScoreAdj.inEffect, false);
    assert.match(String(bad.oomScoreAdj.error), /from -1000 to 1000, got 2000/);
    assert.notEqual(bad.oomScoreAdj.value, 2000);
  });

  it('passes the kernel errno from mlockAll: EPERM at limit 0, ENOMEM when small', () => {
    const eperm = runChild([...memlock(0), ...AS_NOBODY], ['raw-mlock', '7']);
    assert.equal(JSON.parse(eperm.stdout).errno, 1, eperm.stderr);
    const enomem = runChild([...memlock(65536), ...AS_NOBODY], ['raw-mlock', '7']);
    assert.equal(JSON.parse(enomem.stdout).errno, 12, enomem.stderr);
  });
});
