/**
 * Garbage collection and compaction: overwritten and trimmed pages release their objects,
 * and compaction brings the segment files back to within 1.15x of the live payload, in the
 * background on its own and at once on request, with every page still reading back.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { PAGE_SIZE } from '../../src/device/types.js';
import { openPageStore, type PageStore } from '../../src/store/index.js';
import { makeTempDir } from '../helpers/files.js';
import { makePage, pagesOf } from '../helpers/store-pages.js';

let tmp: { path: string; remove(): Promise<void> };
before(async () => {
  tmp = await makeTempDir('diffswap-store-compact-');
});
after(async () => {
  await tmp.remove();
});

const PAGES = 1_536;
const exports = [{ name: 'a', sizeBytes: PAGES * PAGE_SIZE }];
const tuning = { segmentBytesMax: 256 * 1024, compactStepBytes: 64 * 1024 };

/** Writes unique pages 0..PAGES-1 in chunks of 64; returns the expected image. */
async function fill(store: PageStore, salt: number): Promise<Buffer> {
  const device = store.device('a');
  assert.ok(device);
  const pages: Buffer[] = [];
  for (let p = 0; p < PAGES; p++) pages.push(makePage('unique', salt * 100_000 + p));
  for (let p = 0; p < PAGES; p += 64) {
    await device.writePages(p, pagesOf(pages.slice(p, p + 64)), { fua: false });
  }
  await device.flush();
  return pagesOf(pages);
}

async function readBack(store: PageStore): Promise<Buffer> {
  const out = Buffer.alloc(PAGES * PAGE_SIZE);
  await store.device('a')?.readPages(0, PAGES, out, 0);
  return out;
}

test('explicit compaction reclaims overwritten and trimmed space to <= 1.15x live', async () => {
  const dir = `${tmp.path}/explicit`;
  // Background compaction off (ratio 0), so the explicit run does all the work.
  let store = await openPageStore({
    dataDir: dir,
    exports,
    tuning: { ...tuning, compactLiveRatioMin: 0 },
  });
  const image = await fill(store, 1);
  const device = store.device('a');
  assert.ok(device);
  // Overwrite 60% of the pages with new unique content, trim 20%.
  const overwrite: Buffer[] = [];
  for (let p = 0; p < PAGES * 0.6; p++) overwrite.push(makePage('unique', 900_000 + p));
  await device.writePages(0, pagesOf(overwrite), { fua: false });
  pagesOf(overwrite).copy(image, 0);
  const trimFirst = Math.floor(PAGES * 0.6);
  const trimCount = Math.floor(PAGES * 0.2);
  await device.zeroPages(trimFirst, trimCount, { fua: false, mayTrim: true });
  image.fill(0, trimFirst * PAGE_SIZE, (trimFirst + trimCount) * PAGE_SIZE);
  await device.flush();

  const live = store.stats().storedBytes;
  const before = store.segmentBytes();
  assert.ok(before > 1.5 * live, `garbage exists before compaction (${before} vs ${live})`);
  const report = await store.compact();
  const afterBytes = store.segmentBytes();
  assert.ok(report.segmentsCompacted > 0);
  assert.equal(report.reclaimedBytes, before - afterBytes, JSON.stringify({ report, before }));
  assert.ok(afterBytes <= 1.15 * live, `segments ${afterBytes} > 1.15 x live ${live}`);
  const stats = store.stats();
  assert.ok(stats.diskBytes <= 1.15 * live + stats.indexBytes);
  assert.equal(stats.compaction.reclaimedBytesTotal, report.reclaimedBytes);
  assert.ok((await readBack(store)).equals(image));
  assert.deepEqual((await store.check({ repair: false })).problems, []);
  await store.close();
  store = await openPageStore({ dataDir: dir, exports, tuning });
  assert.ok((await readBack(store)).equals(image));
  assert.equal(store.segmentBytes(), afterBytes);
  await store.close();
});

test('background compaction runs by itself while pages are overwritten', async () => {
  const store = await openPageStore({
    dataDir: `${tmp.path}/background`,
    exports,
    tuning: { ...tuning, compactLiveRatioMin: 0.5 },
  });
  await fill(store, 2);
  const image = await fill(store, 3);
  // Bounded wait: idle time is when background compaction runs.
  for (let i = 0; i < 200 && store.stats().compaction.reclaimedBytesTotal === 0; i++) {
    await sleep(20);
  }
  const stats = store.stats();
  assert.ok(stats.compaction.reclaimedBytesTotal > 0, 'background compaction reclaimed space');
  assert.ok((await readBack(store)).equals(image));
  assert.deepEqual((await store.check({ repair: false })).problems, []);
  await store.close();
});
