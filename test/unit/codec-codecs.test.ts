// Every page codec round-trips every kind of page, refuses damaged payloads, and the delta
// codec is small for a page with a few changed bytes.
import assert from 'node:assert/strict';
import { before, describe, it } from 'node:test';
import { compress as zstdCompress } from 'zstd-napi';
import {
  CodecError,
  CodecId,
  codecById,
  codecByName,
  compressorFor,
  lz4Codec,
  type PageCodec,
  rawCodec,
  ZstdDictCodec,
  zstdCodec,
  zstdDeltaCodec,
} from '../../src/codec/index.js';
import { PAGE_SIZE } from '../../src/device/types.js';
import { randomBytes, seededRandom, testSeed } from '../helpers/files.js';
import { realMemoryPages } from '../helpers/process-memory.js';

const NO_LIMIT = Number.POSITIVE_INFINITY;

function textPage(): Buffer {
  const words = 'the quick brown fox jumps over a lazy dog while swap pages wait; '.repeat(80);
  return Buffer.from(words.slice(0, PAGE_SIZE), 'latin1');
}

function nearDuplicate(page: Buffer, changes: number, seed: number): Buffer {
  const next = seededRandom(seed);
  const out = Buffer.from(page);
  for (let i = 0; i < changes; i++) {
    const at = next() % PAGE_SIZE;
    out[at] = out[at]! ^ (1 + (next() % 255));
  }
  return out;
}

function roundTrip(codec: PageCodec, page: Buffer, ref: Buffer | null): number {
  const padded = Buffer.concat([Buffer.alloc(100, 9), page]); // encode reads at an offset
  const payload = codec.encode(padded, 100, ref, NO_LIMIT);
  assert.ok(payload !== null, `${codec.name} gave up with no limit`);
  const out = Buffer.alloc(PAGE_SIZE + 10, 0x55);
  codec.decode(payload, ref, out, 10);
  assert.ok(out.subarray(10).equals(page), `${codec.name} did not round-trip`);
  assert.ok(out.subarray(0, 10).equals(Buffer.alloc(10, 0x55)), `${codec.name} wrote outside`);
  return payload.length;
}

const dictionary = Buffer.concat([textPage(), randomBytes(PAGE_SIZE, 99)]);
const allCodecs: PageCodec[] = [
  rawCodec,
  zstdCodec,
  compressorFor({ codec: 'zstd', level: 1 }),
  compressorFor({ codec: 'zstd', level: 9 }),
  compressorFor({ codec: 'zstd', level: -1 }),
  lz4Codec,
  zstdDeltaCodec,
  new ZstdDictCodec(dictionary, 3),
];

describe('page codecs', () => {
  let real: Buffer = Buffer.alloc(0);
  before(async () => {
    real = await realMemoryPages(4 << 20, true);
  });

  it('round-trip random, zero, text, near-duplicate and real pages', () => {
    const seed = testSeed();
    const random = randomBytes(PAGE_SIZE, seed);
    const pages = [
      random,
      Buffer.alloc(PAGE_SIZE),
      textPage(),
      nearDuplicate(random, 10, seed),
      ...Array.from({ length: 32 }, (_, i) =>
        real.subarray(((i * 29) % 1000) * PAGE_SIZE).subarray(0, PAGE_SIZE),
      ),
    ];
    for (const codec of allCodecs) {
      for (const page of pages) {
        assert.equal(page.length, PAGE_SIZE);
        roundTrip(codec, page, codec.delta ? random : null);
      }
    }
  });

  it('compress what is compressible and keep raw exact', () => {
    assert.equal(roundTrip(rawCodec, textPage(), null), PAGE_SIZE);
    for (const codec of [zstdCodec, lz4Codec]) {
      assert.ok(roundTrip(codec, Buffer.alloc(PAGE_SIZE), null) < 40, codec.name);
      assert.ok(roundTrip(codec, textPage(), null) < 400, codec.name);
    }
  });

  it('encode a page with a few changed bytes as a small delta', () => {
    const seed = testSeed();
    const ref = randomBytes(PAGE_SIZE, seed);
    const size = roundTrip(zstdDeltaCodec, nearDuplicate(ref, 4, seed), ref);
    assert.ok(size < 64, `seed ${seed}: delta of 4 changed bytes is ${size} bytes`);
    const alone = roundTrip(zstdCodec, nearDuplicate(ref, 4, seed), null);
    assert.ok(alone > PAGE_SIZE, `random page compressed alone: ${alone}`);
  });

  it('return null when the payload would not beat limitBytes', () => {
    const random = randomBytes(PAGE_SIZE, 5);
    assert.equal(zstdCodec.encode(random, 0, null, PAGE_SIZE), null);
    assert.equal(lz4Codec.encode(random, 0, null, PAGE_SIZE), null);
    assert.equal(rawCodec.encode(random, 0, null, PAGE_SIZE), null);
    const size = zstdCodec.encode(textPage(), 0, null, NO_LIMIT)!.length;
    assert.equal(zstdCodec.encode(textPage(), 0, null, size), null);
    assert.notEqual(zstdCodec.encode(textPage(), 0, null, size + 1), null);
  });

  it('refuse a reference page that zstd would read as a formatted dictionary', () => {
    const ref = randomBytes(PAGE_SIZE, 8);
    ref.writeUInt32LE(0xec30a437, 0);
    assert.equal(zstdDeltaCodec.encode(nearDuplicate(ref, 2, 8), 0, ref, NO_LIMIT), null);
  });

  it('throw CodecError on truncated, garbage, misplaced and wrong-length payloads', () => {
    const page = textPage();
    const ref = randomBytes(PAGE_SIZE, 4);
    const out = Buffer.alloc(PAGE_SIZE);
    for (const codec of allCodecs) {
      const r = codec.delta ? ref : null;
      const payload = codec.encode(page, 0, r, NO_LIMIT)!;
      const damaged = [
        payload.subarray(0, payload.length - 1),
        payload.subarray(0, 3),
        Buffer.alloc(0),
        Buffer.concat([payload, Buffer.from([1, 2, 3])]),
      ];
      // Raw has no structure to check beyond its length.
      if (codec !== rawCodec) damaged.push(randomBytes(payload.length, 77));
      for (const bad of damaged) {
        assert.throws(() => codec.decode(bad, r, out, 0), CodecError, `${codec.name}`);
      }
    }
    // Well-formed zstd frames of half a page and of two pages are not pages either.
    for (const size of [PAGE_SIZE / 2, 2 * PAGE_SIZE]) {
      const frame = zstdCompress(Buffer.alloc(size, 3));
      assert.throws(() => zstdCodec.decode(frame, null, out, 0), CodecError, `${size}`);
    }
    assert.throws(() => zstdDeltaCodec.decode(Buffer.alloc(10), null, out, 0), /reference/);
  });

  it('are registered once by name and by stored id', () => {
    for (const codec of [rawCodec, zstdCodec, zstdDeltaCodec, lz4Codec]) {
      assert.equal(codecById(codec.id), codec);
      assert.equal(codecByName(codec.name), codec);
    }
    assert.equal(codecById(CodecId.zstd).name, 'zstd');
    assert.equal(compressorFor({ codec: 'zstd', level: 3 }), zstdCodec);
    assert.equal(compressorFor({ codec: 'zstd', level: 7 }).id, CodecId.zstd);
    assert.equal(compressorFor({ codec: 'lz4', level: 1 }), lz4Codec);
    assert.throws(() => codecById(99), /unknown codec id 99/);
    assert.throws(() => codecById(CodecId.zstdDict), /dictionary/);
    assert.throws(() => codecByName('gzip'), /unknown codec 'gzip'/);
    assert.throws(() => compressorFor({ codec: 'zstd', level: 1000 }), RangeError);
  });
});
