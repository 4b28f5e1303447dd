// Scan, fill, hash and similarity sketch behave as the store relies on.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { describe, it } from 'node:test';
import {
  FEATURE_COUNT,
  fillPage,
  hashPage,
  type SketchOptions,
  scanPages,
  sketchPages,
} from '../../src/codec/index.js';
import { PAGE_SIZE } from '../../src/device/types.js';
import { randomBytes, seededRandom, testSeed } from '../helpers/files.js';
import { realMemoryPages } from '../helpers/process-memory.js';

const BOTH: SketchOptions = { blocks: true, superFeatures: true };

function sketch(buf: Buffer, options = BOTH): Uint32Array {
  const features = new Uint32Array((buf.length / PAGE_SIZE) * FEATURE_COUNT);
  sketchPages(buf, buf.length / PAGE_SIZE, features, options);
  return features;
}

function featuresOf(all: Uint32Array, page: number): number[] {
  return [...all.subarray(page * FEATURE_COUNT, (page + 1) * FEATURE_COUNT)];
}

function shared(a: number[], b: number[]): number {
  return a.filter((f, i) => f !== 0 && f === b[i]).length;
}

/** A copy of `page` with `changes` random bytes changed at random places. */
function mutate(page: Buffer, changes: number, random: () => number): Buffer {
  const out = Buffer.from(page);
  for (let i = 0; i < changes; i++) {
    const at = Math.floor(random() * PAGE_SIZE);
    out[at] = (out[at]! + 1 + Math.floor(random() * 255)) & 0xff;
  }
  return out;
}

describe('fill-word scan', () => {
  it('finds zero and one-word pages and fillPage rebuilds them', () => {
    const buf = Buffer.alloc(4 * PAGE_SIZE);
    fillPage(0x0102030405060708n, buf, PAGE_SIZE);
    fillPage(0xffffffffffffffffn, buf, 2 * PAGE_SIZE);
    randomBytes(PAGE_SIZE, 1).copy(buf, 3 * PAGE_SIZE);
    const words = new BigUint64Array(4);
    const uniform = new Uint8Array(4);
    scanPages(buf, 4, words, uniform);
    assert.deepEqual([...uniform], [1, 1, 1, 0]);
    assert.deepEqual([...words], [0n, 0x0102030405060708n, 0xffffffffffffffffn, 0n]);
    const rebuilt = Buffer.alloc(PAGE_SIZE, 0xaa);
    fillPage(words[1]!, rebuilt, 0);
    assert.ok(rebuilt.equals(buf.subarray(PAGE_SIZE, 2 * PAGE_SIZE)));
    fillPage(0n, rebuilt, 0);
    assert.ok(rebuilt.equals(Buffer.alloc(PAGE_SIZE)));
  });

  it('does not call a page uniform when one byte differs', () => {
    const buf = Buffer.alloc(PAGE_SIZE);
    buf[PAGE_SIZE - 1] = 1;
    const words = new BigUint64Array(1);
    const uniform = new Uint8Array(1);
    scanPages(buf, 1, words, uniform);
    assert.equal(uniform[0], 0);
  });
});

describe('hashPage', () => {
  it('is SHA-256 of exactly one page at the offset', () => {
    const buf = randomBytes(3 * PAGE_SIZE, 7);
    const expected = createHash('sha256')
      .update(buf.subarray(PAGE_SIZE, 2 * PAGE_SIZE))
      .digest();
    assert.ok(hashPage(buf, PAGE_SIZE).equals(expected));
    assert.throws(() => hashPage(buf, 2 * PAGE_SIZE + 1));
  });
});

describe('similarity sketch', () => {
  it('gives near-identical pages shared features and unrelated pages none', () => {
    const seed = testSeed();
    const next = seededRandom(seed);
    const random = () => next() / 2 ** 32;
    const pageCount = 200;
    const originals = randomBytes(pageCount * PAGE_SIZE, seed);
    const copies = Buffer.concat(
      Array.from({ length: pageCount }, (_, i) =>
        mutate(originals.subarray(i * PAGE_SIZE, (i + 1) * PAGE_SIZE), 4, random),
      ),
    );
    const a = sketch(originals);
    const b = sketch(copies);
    let similarWithShared = 0;
    let unrelatedShared = 0;
    for (let i = 0; i < pageCount; i++) {
      if (shared(featuresOf(a, i), featuresOf(b, i)) > 0) similarWithShared++;
      unrelatedShared += shared(featuresOf(a, i), featuresOf(b, (i + 1) % pageCount));
    }
    // 4 changed bytes leave one page half untouched at least half the time, and the two
    // blocks cover 128 of 4096 bytes: nearly every copy keeps a feature.
    assert.ok(similarWithShared >= pageCount * 0.95, `seed ${seed}: ${similarWithShared}`);
    assert.equal(unrelatedShared, 0, `seed ${seed}`);
  });

  it('finds real heap pages with a few changed bytes', async () => {
    const seed = testSeed();
    const next = seededRandom(seed);
    const random = () => next() / 2 ** 32;
    const real = await realMemoryPages(8 << 20, true);
    const pageCount = real.length / PAGE_SIZE;
    const words = new BigUint64Array(pageCount);
    const uniform = new Uint8Array(pageCount);
    scanPages(real, pageCount, words, uniform);
    const originals: Buffer[] = [];
    for (let i = 0; i < pageCount && originals.length < 300; i++) {
      if (uniform[i] === 0) originals.push(real.subarray(i * PAGE_SIZE, (i + 1) * PAGE_SIZE));
    }
    assert.ok(originals.length >= 100, `only ${originals.length} non-uniform real pages`);
    const a = sketch(Buffer.concat(originals));
    const b = sketch(Buffer.concat(originals.map((page) => mutate(page, 2, random))));
    let found = 0;
    for (let i = 0; i < originals.length; i++) {
      if (shared(featuresOf(a, i), featuresOf(b, i)) > 0) found++;
    }
    assert.ok(found >= originals.length * 0.8, `seed ${seed}: ${found}/${originals.length}`);
  });

  it('gives no features for uniform pages and leaves disabled kinds at 0', () => {
    const buf = Buffer.concat([Buffer.alloc(PAGE_SIZE), randomBytes(PAGE_SIZE, 3)]);
    const both = sketch(buf);
    assert.deepEqual(featuresOf(both, 0), [0, 0, 0, 0]);
    assert.ok(featuresOf(both, 1).every((f) => f !== 0));
    const blocksOnly = sketch(buf, { blocks: true, superFeatures: false });
    assert.deepEqual(featuresOf(blocksOnly, 1).slice(2), [0, 0]);
    const superOnly = sketch(buf, { blocks: false, superFeatures: true });
    assert.deepEqual(featuresOf(superOnly, 1).slice(0, 2), [0, 0]);
    assert.deepEqual(featuresOf(both, 1), [
      ...featuresOf(blocksOnly, 1).slice(0, 2),
      ...featuresOf(superOnly, 1).slice(2),
    ]);
  });

  it('tags every feature with its slot, so kinds never collide', () => {
    const features = sketch(randomBytes(64 * PAGE_SIZE, 11));
    for (let i = 0; i < features.length; i++) {
      if (features[i] === 0) continue;
      assert.equal(features[i]! >>> 30, i % FEATURE_COUNT);
    }
  });
});
