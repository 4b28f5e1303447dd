/**
 * A check on a live store walks its index in slices: reads and buffered writes issued while
 * it runs are served before it ends, progress is reported along the way, and the report is
 * the same as a check with nothing else going on.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { PAGE_SIZE } from '../../src/device/types.js';
import { type CheckProgress, openPageStore } from '../../src/store/index.js';
import { makeTempDir } from '../helpers/files.js';
import { makePage, pagesOf } from '../helpers/store-pages.js';

let tmp: { path: string; remove(): Promise<void> };
before(async () => {
  tmp = await makeTempDir('diffswap-store-check-live-');
});
after(async () => {
  await tmp.remove();
});

/** Enough records for a few dozen slices of the walk. */
const PAGES = 8_192;

test('reads and writes issued during a check are served before it ends', async () => {
  const store = await openPageStore({
    dataDir: `${tmp.path}/live`,
    exports: [{ name: 'a', sizeBytes: PAGES * PAGE_SIZE }],
  });
  try {
    const device = store.device('a');
    assert.ok(device);
    const pages: Buffer[] = [];
    for (let p = 0; p < PAGES; p++) pages.push(makePage('unique', 7_000 + p));
    for (let p = 0; p < PAGES; p += 256) {
      await device.writePages(p, pagesOf(pages.slice(p, p + 256)), { fua: false });
    }
    await device.flush();

    const progress: CheckProgress[] = [];
    let checkEnded = false;
    const issued: { io?: Promise<{ read: Buffer; readBack: Buffer; endedFirst: boolean }> } = {};
    const fresh = makePage('unique', 990_000);
    const served = async () => {
      // Issued from a later turn of the event loop, as a request off a socket would be: a
      // committed page, then a write and its read-back.
      const read = Buffer.alloc(PAGE_SIZE);
      await device.readPages(4_000, 1, read, 0);
      await device.writePages(17, fresh, { fua: false });
      const readBack = Buffer.alloc(PAGE_SIZE);
      await device.readPages(17, 1, readBack, 0);
      return { read, readBack, endedFirst: checkEnded };
    };
    let scheduled = false;
    const report = await store.check({
      repair: false,
      onProgress: (p) => {
        progress.push(p);
        if (scheduled) return;
        scheduled = true;
        setImmediate(() => {
          issued.io = served();
        });
      },
    });
    checkEnded = true;

    assert.ok(scheduled, 'no progress was reported during the walk');
    assert.ok(issued.io, 'the event loop never turned during the check');
    const during = await issued.io;
    assert.equal(during.endedFirst, false, 'the I/O waited for the whole check');
    assert.ok(during.read.equals(pages[4_000]!), 'committed page read during the check');
    assert.ok(during.readBack.equals(fresh), 'page written during the check reads back');

    assert.deepEqual(report.problems, []);
    assert.equal(report.mappingsChecked, PAGES);
    assert.equal(report.objectsChecked, PAGES);
    assert.ok(progress.length > 10, `${progress.length} progress reports`);
    for (let i = 1; i < progress.length; i++) {
      assert.ok(progress[i]!.done >= progress[i - 1]!.done, 'progress never goes back');
    }
    for (const p of progress) assert.ok(p.done <= p.total, `${p.done} of ${p.total}`);
    const last = progress.at(-1)!;
    assert.equal(last.done, last.total, 'the last report says the walk is complete');
    assert.equal(last.total, PAGES + 2 * PAGES);

    // The write made during the check is committed by the next flush, and a second check
    // finds the store as consistent as the first.
    await device.flush();
    const again = await store.check({ repair: false });
    assert.deepEqual(again.problems, []);
    assert.equal(again.mappingsChecked, PAGES);
    const page = Buffer.alloc(PAGE_SIZE);
    await device.readPages(17, 1, page, 0);
    assert.ok(page.equals(fresh));
  } finally {
    await store.close();
  }
});
