/**
 * Full disk: the data dir on a small ext4 filesystem the test makes (an image file, loop
 * mounted, no reserved blocks), an export far larger than it, and incompressible unique data
 * written through libnbd until the filesystem is full. Then: writes answer ENOSPC (not EIO,
 * not a crash), reads keep working, everything flushed before is intact, and after a TRIM of
 * the data plus a compaction, writing resumes. Needs root (mount); CI runs as root.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { runTool, runToolOk } from '../helpers/exec.js';
import { CLI_PATH, type ServerProcess, startServerProcess } from '../helpers/server-process.js';
import { SYSTEM_PYTHON, scriptPath, serverFaults } from './support.js';

const MiB = 1024 * 1024;
/** Filesystem size: a few dozen chunks fill it, quickly. */
const FS_BYTES = 48 * MiB;
/** Export size: four times the filesystem, so the filesystem fills first. */
const EXPORT_BYTES = 4 * FS_BYTES;
const SEED = 7;
/** Chunks written before the disk is near full: these must survive everything after. */
const KEPT_CHUNKS = 8;
/** Upper bound of chunks tried while filling (the loop ends at the first error). */
const FILL_CHUNKS_MAX = Math.ceil((2 * FS_BYTES) / MiB);
const NBD_ENOSPC = 28;

/** The server's state for failure messages: alive or not, and what it logged at warn+. */
function serverState(server: ServerProcess | null): string {
  if (!server) return 'no server';
  const exit = server.child.exitCode ?? server.child.signalCode;
  const notable = server.logs.filter((e) => typeof e.level === 'number' && e.level >= 40);
  const lines = notable.slice(-5).map((e) => JSON.stringify(e).slice(0, 400));
  const state = exit === null ? 'alive' : `exited (${exit})`;
  return `server ${state}; last warnings:\n${lines.join('\n')}`;
}

interface ChunkLine {
  kind: 'ok' | 'err' | 'match' | 'mismatch';
  chunk: number;
  errno?: number;
  text: string;
}

async function chunkIo(uri: string, mode: string, first: number, count: number) {
  const result = await runTool(
    SYSTEM_PYTHON,
    [scriptPath('chunk-io.py'), uri, mode, String(SEED), String(first), String(count)],
    { timeoutMs: 120_000 },
  );
  const lines: ChunkLine[] = result.stdout
    .split('\n')
    .filter((l) => l !== '')
    .map((text) => {
      const [kind, chunk, errno] = text.split(' ');
      return { kind: kind as ChunkLine['kind'], chunk: Number(chunk), errno: Number(errno), text };
    });
  return { result, lines };
}

describe('full disk', () => {
  let dir = '';
  let mountPoint = '';
  let server: ServerProcess | null = null;
  let filledChunks = 0;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'diffswap-fulldisk-'));
    mountPoint = join(dir, 'mnt');
    const image = join(dir, 'fs.img');
    await runToolOk('mkdir', ['-p', mountPoint]);
    await runToolOk('truncate', ['-s', String(FS_BYTES), image]);
    await runToolOk('mkfs.ext4', ['-q', '-F', '-m', '0', image]);
    await runToolOk('mount', ['-o', 'loop', image, mountPoint]);
    server = await startServerProcess({
      dataDir: join(mountPoint, 'data'),
      exports: [`full:${EXPORT_BYTES}`],
    });
  });

  after(async () => {
    await server?.kill();
    // Always unmount, even when a process still holds a file there (lazy unmount then).
    const plain = await runTool('umount', [mountPoint]);
    if (plain.code !== 0 && mountPoint !== '') await runTool('umount', ['-l', mountPoint]);
    if (dir !== '') await rm(dir, { recursive: true, force: true });
  });

  test('data written while there is room is flushed', async () => {
    const { lines } = await chunkIo(server!.uri('full'), 'write', 0, KEPT_CHUNKS);
    assert.deepEqual(
      lines.map((l) => l.text),
      Array.from({ length: KEPT_CHUNKS }, (_, i) => `ok ${i}`),
    );
  });

  test('writes answer ENOSPC once the filesystem is full', async () => {
    const { lines } = await chunkIo(server!.uri('full'), 'write', KEPT_CHUNKS, FILL_CHUNKS_MAX);
    const failure = lines.find((l) => l.kind === 'err');
    filledChunks = lines.filter((l) => l.kind === 'ok').length;
    assert.ok(failure, `no write failed after ${filledChunks} MiB on a ${FS_BYTES / MiB} MiB disk`);
    assert.equal(
      failure.errno,
      NBD_ENOSPC,
      `expected ENOSPC, got: ${failure.text}; ${serverState(server)}`,
    );
    assert.equal(server!.child.exitCode, null, 'the server exited');
  });

  test('reads keep working and flushed data is intact', async () => {
    const { lines } = await chunkIo(server!.uri('full'), 'verify', 0, KEPT_CHUNKS + filledChunks);
    const bad = lines.filter((l) => l.kind !== 'match');
    assert.deepEqual(
      bad.map((l) => l.text),
      [],
      `flushed chunks must read back exactly; ${serverState(server)}`,
    );
    assert.equal(lines.length, KEPT_CHUNKS + filledChunks);
  });

  test('writing resumes after a TRIM and a compaction free space', async () => {
    const uri = server!.uri('full');
    const trimmed = await chunkIo(uri, 'trim', KEPT_CHUNKS, filledChunks + 1);
    assert.deepEqual(
      trimmed.lines.map((l) => l.kind),
      ['ok'],
      `${trimmed.result.stdout}; ${serverState(server)}`,
    );
    const response = await fetch(server!.httpUrl('/api/v1/compaction?wait=true'), {
      method: 'POST',
    });
    assert.ok(response.ok, `compaction: ${response.status} ${await response.text()}`);
    const again = await chunkIo(uri, 'write', KEPT_CHUNKS, 4);
    assert.deepEqual(
      again.lines.map((l) => l.text),
      ['ok 8', 'ok 9', 'ok 10', 'ok 11'],
      'writes after freeing space',
    );
    const kept = await chunkIo(uri, 'verify', 0, KEPT_CHUNKS + 4);
    assert.ok(
      kept.lines.every((l) => l.kind === 'match'),
      kept.result.stdout,
    );
  });

  test('the store stops cleanly and its check finds no damage', async () => {
    assert.deepEqual(
      serverFaults(server!.logs).map((e) => e.msg),
      [],
      'server faults logged',
    );
    assert.equal(await server!.stop(), 0);
    const check = await runTool(
      process.execPath,
      [CLI_PATH, 'check', '--data', join(mountPoint, 'data'), '--json'],
      { timeoutMs: 120_000 },
    );
    const report = JSON.parse(check.stdout.slice(check.stdout.indexOf('{'))) as {
      problems?: string[];
    };
    assert.deepEqual(report.problems ?? [], []);
    assert.equal(check.code, 0, check.stderr);
  });
});
