// `diffswap analyze` counts page classes exactly on synthetic images with known answers,
// and its sizes are plausible.
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { type AnalysisReport, analyzeImages, openImages } from '../../src/analyze/index.js';
import { PAGE_SIZE } from '../../src/device/types.js';
import { makeTempDir, testSeed } from '../helpers/files.js';
import { type KnownCounts, syntheticImages } from '../helpers/synthetic-images.js';

describe('analyze on synthetic images', () => {
  const seed = testSeed();
  let dir: Awaited<ReturnType<typeof makeTempDir>>;
  let report: AnalysisReport;
  let counts: KnownCounts;

  before(async () => {
    dir = await makeTempDir('diffswap-analyze-');
    const images = syntheticImages(seed);
    counts = images.counts;
    await writeFile(join(dir.path, 'a.img'), images.a);
    await writeFile(join(dir.path, 'b.img'), images.b);
    report = await analyzeImages(openImages([join(dir.path, 'a.img'), join(dir.path, 'b.img')]), {
      sampleSize: 200,
      workers: 2,
    });
  });
  after(async () => dir.remove());

  it('gives the exact class counts', () => {
    const c = report.classes;
    const expected = {
      zero: counts.zero,
      sameWord: counts.sameWord,
      duplicateInFile: counts.duplicateInFile,
      duplicateAcrossFiles: counts.duplicateAcrossFiles,
      similar: counts.similar,
      uniqueCompressed: counts.uniqueCompressible,
      uniqueRaw: counts.uniqueRandom,
    };
    assert.deepEqual(c, expected, `seed ${seed}`);
    const total = Object.values(counts).reduce((sum, n) => sum + n, 0);
    assert.equal(report.pageCount, total);
    assert.equal(report.rawBytes, total * PAGE_SIZE);
  });

  it('gives plausible sizes for each technique', () => {
    const e = report.exact;
    const pages = (n: number) => n * PAGE_SIZE;
    assert.equal(e.zeroOnly, e.raw - pages(counts.zero));
    assert.equal(e.zeroAndSameWord, e.zeroOnly - pages(counts.sameWord));
    const distinct = counts.uniqueRandom + counts.uniqueCompressible + counts.similar;
    assert.equal(e.zeroSameWordIdentical, pages(distinct));
    // Random pages stay raw; nibble pages compress to about half; deltas of a few changed
    // bytes are tiny.
    const randomBytesStored = pages(counts.uniqueRandom + counts.similar);
    assert.ok(e.zeroIdenticalZstd > randomBytesStored);
    assert.ok(e.zeroIdenticalZstd < randomBytesStored + pages(counts.uniqueCompressible) * 0.6);
    const deltaBytes = e.combined - (e.zeroIdenticalZstd - pages(counts.similar));
    assert.ok(deltaBytes > 0 && deltaBytes < counts.similar * 100, `deltas took ${deltaBytes}`);
    assert.ok(e.lz4PerPage > e.zstdPerPage, 'lz4 compresses less than zstd');
    const all = report.techniques.find((t) => t.name.startsWith('all combined'))!;
    assert.equal(all.storedBytes, e.combined);
    assert.ok(all.savingPercent > 0 && all.savingPercent < 100);
  });

  it('compares patch algorithms on the similar pairs, the store codec included', () => {
    const studies = report.studies!;
    const store = studies.patches.find((p) => p.name.startsWith('zstd-delta -3'))!;
    assert.equal(store.sizes.count, counts.similar);
    assert.ok(store.sizes.mean < 100, `zstd-delta mean ${store.sizes.mean}`);
    const alone = studies.patches.find((p) => p.name.startsWith('no patch'))!;
    assert.equal(alone.sizes.mean, PAGE_SIZE, 'random pages do not compress alone');
    const rle = studies.patches.find((p) => p.name === 'XOR + zero-run RLE')!;
    assert.ok(rle.sizes.mean < 100, 'a few changed bytes make a short XOR run list');
    for (const row of studies.bwt) assert.ok(Number.isFinite(row.gainPercent), row.name);
    const storeDetector = studies.detectors[0]!;
    assert.equal(storeDetector.pagesWithCandidate, counts.similar, 'every near copy has a base');
  });
});
