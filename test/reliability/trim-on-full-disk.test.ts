/**
 * A TRIM acknowledged while a batch of older writes is being committed must win, also when
 * that commit finds the disk full and the batch goes back to the write-back buffer: the
 * trimmed pages read back as zeros then, after space is freed, and after a restart. The data
 * folder is on a small tmpfs the test mounts and then fills (needs root; CI runs as root).
 */
import assert from 'node:assert/strict';
import { closeSync, openSync, rmSync, writeSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { setImmediate as nextTurn } from 'node:timers/promises';
import { PAGE_SIZE } from '../../src/device/types.js';
import { openPageStore } from '../../src/store/index.js';
import { runToolOk } from '../helpers/exec.js';
import { makePage, pagesOf } from '../helpers/store-pages.js';

const MiB = 1024 * 1024;
const FS_BYTES = 16 * MiB;
const PAGES = 256;
/** Bound of event-loop turns waited for the writer to take the batch. */
const TURNS_MAX = 10_000;

let dir = '';
let mountPoint = '';

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'diffswap-trim-full-'));
  mountPoint = join(dir, 'mnt');
  await runToolOk('mkdir', ['-p', mountPoint]);
  await runToolOk('mount', ['-t', 'tmpfs', '-o', `size=${FS_BYTES}`, 'tmpfs', mountPoint]);
});

after(async () => {
  await runToolOk('umount', ['-l', mountPoint]).catch(() => undefined);
  await rm(dir, { recursive: true, force: true });
});

/** Writes zeros into `path` until the filesystem has no room left. */
function fillFilesystem(path: string): void {
  const fd = openSync(path, 'w');
  const chunk = Buffer.alloc(64 * 1024, 1);
  try {
    for (;;) writeSync(fd, chunk);
  } catch (error) {
    assert.equal((error as NodeJS.ErrnoException).code, 'ENOSPC');
  } finally {
    closeSync(fd);
  }
}

test('a TRIM issued during a commit that hits a full disk still wins', async () => {
  const dataDir = join(mountPoint, 'data');
  const exports = [{ name: 'a', sizeBytes: 4 * PAGES * PAGE_SIZE }];
  const tuning = { reserveBytes: 0 };
  let store = await openPageStore({ dataDir, exports, tuning });
  let device = store.device('a');
  assert.ok(device);
  // Pages PAGES..2*PAGES-1 are durable before the disk fills; they must survive all of it.
  const kept = pagesOf(Array.from({ length: PAGES }, (_, i) => makePage('unique', 50_000 + i)));
  await device.writePages(PAGES, kept, { fua: false });
  await device.flush();

  const filler = join(mountPoint, 'filler');
  fillFilesystem(filler);
  const doomed = pagesOf(Array.from({ length: PAGES }, (_, i) => makePage('unique', i)));
  await device.writePages(0, doomed, { fua: false });
  let flushSettled = false;
  const flushed = device.flush().finally(() => {
    flushSettled = true;
  });
  flushed.catch(() => undefined);
  // Wait until the writer has taken the pages out of the buffer into its batch.
  for (let turn = 0; store.stats().writeBuffer.pages > 0; turn++) {
    assert.ok(turn < TURNS_MAX, 'the writer never took the batch');
    await nextTurn();
  }
  assert.equal(flushSettled, false, 'the trim must arrive while the batch is in flight');
  await device.zeroPages(0, PAGES, { mayTrim: true, fua: false });
  await assert.rejects(flushed, (error: Error & { code?: string }) => error.code === 'ENOSPC');

  const zeros = Buffer.alloc(PAGES * PAGE_SIZE);
  const out = Buffer.alloc(PAGES * PAGE_SIZE);
  await device.readPages(0, PAGES, out, 0);
  assert.ok(out.equals(zeros), 'trimmed pages read as zeros while the disk is full');

  rmSync(filler);
  await device.flush();
  await device.readPages(0, PAGES, out, 0);
  assert.ok(out.equals(zeros), 'trimmed pages read as zeros once space is back');
  await store.close();

  store = await openPageStore({ dataDir, exports, tuning });
  device = store.device('a');
  assert.ok(device);
  await device.readPages(0, PAGES, out, 0);
  assert.ok(out.equals(zeros), 'trimmed pages read as zeros after a restart');
  await device.readPages(PAGES, PAGES, out, 0);
  assert.ok(out.equals(kept), 'pages flushed before the disk filled are intact');
  await store.close();
});
