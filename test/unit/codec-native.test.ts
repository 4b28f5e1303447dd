// The native per-page loops and their TypeScript twins give identical results.
import assert from 'node:assert/strict';
import { before, describe, it } from 'node:test';
import {
  FEATURE_COUNT,
  scanPagesNative,
  scanPagesTs,
  sketchPagesNative,
  sketchPagesTs,
  usingNativePages,
} from '../../src/codec/index.js';
import { PAGE_SIZE } from '../../src/device/types.js';
import { runTool } from '../helpers/exec.js';
import { randomBytes, seededRandom, testSeed } from '../helpers/files.js';
import { realMemoryPages } from '../helpers/process-memory.js';

/** Pages that hit every branch: zero, fill words, uniform halves and blocks, random. */
function edgePages(seed: number): Buffer {
  const next = seededRandom(seed);
  const random = () => next() / 2 ** 32;
  const pageCount = 64;
  const buf = randomBytes(pageCount * PAGE_SIZE, seed);
  buf.fill(0, 0, PAGE_SIZE); // page 0: zero
  for (let i = 0; i < PAGE_SIZE / 8; i++) buf.writeBigUInt64LE(0xdeadbeefn, PAGE_SIZE + i * 8);
  buf.fill(0xff, 2 * PAGE_SIZE, 3 * PAGE_SIZE); // page 2: all ones
  buf.fill(0, 3 * PAGE_SIZE, 3 * PAGE_SIZE + PAGE_SIZE / 2); // page 3: zero first half
  buf.fill(0, 4 * PAGE_SIZE + 1216, 4 * PAGE_SIZE + 1280); // page 4: zero block A
  buf.fill(7, 5 * PAGE_SIZE, 6 * PAGE_SIZE - 1); // page 5: uniform but the last byte
  for (let page = 6; page < pageCount; page++) {
    // sparse pages: mostly zero with a few random runs, like half-used heap pages
    if (page % 3 !== 0) continue;
    const offset = page * PAGE_SIZE;
    buf.fill(0, offset, offset + PAGE_SIZE);
    for (let run = 0; run < 4; run++) {
      const at = offset + Math.floor(random() * (PAGE_SIZE - 64));
      randomBytes(1 + Math.floor(random() * 63), seed + page + run).copy(buf, at);
    }
  }
  return buf;
}

function assertTwinsAgree(buf: Buffer, label: string): void {
  const pageCount = buf.length / PAGE_SIZE;
  const wordsTs = new BigUint64Array(pageCount);
  const wordsNative = new BigUint64Array(pageCount);
  const uniformTs = new Uint8Array(pageCount);
  const uniformNative = new Uint8Array(pageCount);
  scanPagesTs(buf, pageCount, wordsTs, uniformTs);
  scanPagesNative(buf, pageCount, wordsNative, uniformNative);
  assert.deepEqual(uniformNative, uniformTs, `${label}: uniform flags differ`);
  assert.deepEqual(wordsNative, wordsTs, `${label}: fill words differ`);

  for (const options of [
    { blocks: true, superFeatures: true },
    { blocks: true, superFeatures: false },
    { blocks: false, superFeatures: true },
  ]) {
    const ts = new Uint32Array(pageCount * FEATURE_COUNT);
    const native = new Uint32Array(pageCount * FEATURE_COUNT).fill(0xffffffff);
    sketchPagesTs(buf, pageCount, ts, options);
    sketchPagesNative(buf, pageCount, native, options);
    assert.deepEqual(native, ts, `${label}: sketches differ with ${JSON.stringify(options)}`);
  }
}

describe('native page loops', () => {
  it('are loaded (CI builds the addon)', () => {
    assert.equal(usingNativePages, true);
  });

  it('agree with the TypeScript twins on random and edge-case pages', () => {
    const seed = testSeed();
    assertTwinsAgree(edgePages(seed), `seed ${seed}`);
  });

  describe('on real process memory', () => {
    let pages: Buffer = Buffer.alloc(0);
    before(async () => {
      pages = await realMemoryPages(16 << 20, true);
    });

    it('agree with the TypeScript twins', () => {
      assert.ok(pages.length >= 256 * PAGE_SIZE, `only ${pages.length} bytes read`);
      assertTwinsAgree(pages, 'real pages');
    });
  });

  it('accept a page buffer that is a view at an odd offset', () => {
    const seed = testSeed();
    const backing = randomBytes(8 * PAGE_SIZE + 3, seed);
    const view = backing.subarray(3);
    assertTwinsAgree(view, `odd offset, seed ${seed}`);
  });

  it('are replaced by the twins with DIFFSWAP_NATIVE=0, with the same results', async () => {
    const seed = testSeed();
    const codecUrl = new URL('../../src/codec/index.js', import.meta.url).href;
    const filesUrl = new URL('../helpers/files.js', import.meta.url).href;
    const script = `
      const codec = await import(${JSON.stringify(codecUrl)});
      const { randomBytes } = await import(${JSON.stringify(filesUrl)});
      const pages = randomBytes(16 * 4096, ${seed});
      const features = new Uint32Array(16 * codec.FEATURE_COUNT);
      codec.sketchPages(pages, 16, features, { blocks: true, superFeatures: true });
      console.log(JSON.stringify({ native: codec.usingNativePages, features: [...features] }));
    `;
    const result = await runTool(process.execPath, ['--input-type=module', '-e', script], {
      env: { DIFFSWAP_NATIVE: '0' },
    });
    assert.equal(result.code, 0, result.stderr);
    const child = JSON.parse(result.stdout) as { native: boolean; features: number[] };
    assert.equal(child.native, false);
    const features = new Uint32Array(16 * FEATURE_COUNT);
    const pages = randomBytes(16 * PAGE_SIZE, seed);
    sketchPagesNative(pages, 16, features, { blocks: true, superFeatures: true });
    assert.deepEqual(child.features, [...features], `seed ${seed}`);
  });

  it('reject short buffers and wrong array types', () => {
    const buf = Buffer.alloc(2 * PAGE_SIZE);
    const words = new BigUint64Array(4);
    const uniform = new Uint8Array(4);
    assert.throws(() => scanPagesNative(buf, 3, words, uniform), /more pages/);
    assert.throws(() => scanPagesNative(buf, 2, new BigUint64Array(1), uniform), /shorter/);
    const wrong = new Float64Array(4) as unknown as BigUint64Array;
    assert.throws(() => scanPagesNative(buf, 2, wrong, uniform), /expected/);
    const features = new Uint32Array(FEATURE_COUNT);
    assert.throws(() => sketchPagesNative(buf, 2, features, { blocks: true, superFeatures: true }));
  });
});
