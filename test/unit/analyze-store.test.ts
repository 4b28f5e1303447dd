// The combined figure of `diffswap analyze` matches what the page store really stores for
// the same images, within 2 points of saving (issue 4).
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { analyzeImages, openImages } from '../../src/analyze/index.js';
import { PAGE_SIZE } from '../../src/device/types.js';
import { openPageStore } from '../../src/store/index.js';
import { makeTempDir, testSeed } from '../helpers/files.js';
import { realMemoryPages } from '../helpers/process-memory.js';
import { syntheticImages } from '../helpers/synthetic-images.js';

/** Pages per write: a few NBD-sized requests' worth, so the store batches as in service. */
const WRITE_PAGES = 64;

describe('analyze against the page store', () => {
  const seed = testSeed();
  let dir: Awaited<ReturnType<typeof makeTempDir>>;
  let images: Buffer[] = [];
  before(async () => {
    dir = await makeTempDir('diffswap-analyze-store-');
    const synthetic = syntheticImages(seed);
    images = [await realMemoryPages(16 << 20, true), synthetic.a, synthetic.b];
  });
  after(async () => dir.remove());

  it('predicts the stored payload within 2 points of saving', async (t) => {
    const paths = images.map((_, i) => join(dir.path, `image-${i}.img`));
    await Promise.all(images.map((image, i) => writeFile(paths[i]!, image)));
    const report = await analyzeImages(openImages(paths), { exactOnly: true, workers: 2 });

    const store = await openPageStore({
      dataDir: join(dir.path, 'store'),
      exports: images.map((image, i) => ({ name: `vm${i}`, sizeBytes: image.length })),
    });
    try {
      for (const [i, image] of images.entries()) {
        const device = store.device(`vm${i}`)!;
        for (let page = 0; page * PAGE_SIZE < image.length; page += WRITE_PAGES) {
          const end = Math.min(image.length, (page + WRITE_PAGES) * PAGE_SIZE);
          await device.writePages(page, image.subarray(page * PAGE_SIZE, end), { fua: false });
        }
        await device.flush();
      }
      const stats = store.stats();
      assert.equal(stats.logicalBytes, report.rawBytes);
      const storeSaving = 100 * (1 - stats.storedBytes / stats.logicalBytes);
      const analyzeSaving = 100 * (1 - report.exact.combined / report.rawBytes);
      t.diagnostic(`store ${storeSaving.toFixed(3)}%, analyze ${analyzeSaving.toFixed(3)}%`);
      assert.ok(
        Math.abs(storeSaving - analyzeSaving) <= 2,
        `seed ${seed}: store saves ${storeSaving.toFixed(2)}%, analyze says ` +
          `${analyzeSaving.toFixed(2)}%`,
      );
      // The counts behind it agree too: deltas and zero pages, page for page.
      assert.equal(stats.techniques.delta.pages, report.classes.similar, `seed ${seed}`);
      const uniform = report.classes.zero + report.classes.sameWord;
      assert.equal(stats.techniques.zero.pages, uniform, `seed ${seed}`);
    } finally {
      await store.close();
    }
  });
});
