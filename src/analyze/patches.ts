/**
 * Patch algorithms `diffswap analyze` compares on the same similar pairs. The store itself
 * uses only zstd-delta (CodecId.zstdDelta); the others are here to answer which patch
 * algorithm wins on real memory, so each has a decoder and every pair is verified to
 * round-trip before its size counts.
 */
import assert from 'node:assert/strict';
import { deflateRawSync, inflateRawSync } from 'node:zlib';
import zstdBinding from 'zstd-napi/binding.js';
import { lz4Codec, ZstdCodec, ZstdDeltaCodec, zstdDeltaCodec } from '../codec/index.js';
import { PAGE_SIZE } from '../device/types.js';
import { bwtMtfForward, bwtMtfInverse } from './bwt.js';

export interface PatchAlgorithm {
  name: string;
  encode(page: Buffer, ref: Buffer): Buffer;
  decode(payload: Buffer, ref: Buffer): Buffer;
}

const zstd3 = new ZstdCodec(3);

/** Largest block the study compresses: 16 pages (grouping what-if) plus headers. */
const BLOCK_BYTES_MAX = 16 * PAGE_SIZE + 64;
const cctx = new zstdBinding.CCtx();
const dctx = new zstdBinding.DCtx();
const scratch = Buffer.allocUnsafe(zstdBinding.compressBound(BLOCK_BYTES_MAX));

/** zstd -3 of any length of bytes, through the store's context (frame carries its size). */
function zstdBytes(src: Buffer): Buffer {
  if (src.length === PAGE_SIZE) return zstd3.encode(src, 0, null, Infinity)!;
  return zstdAny(src);
}

/**
 * Blocks other than one page (BWT output carries a 2-byte header, RLE output varies, groups
 * of pages): compressed with one reused context, like the store's codecs.
 */
export function zstdAny(src: Buffer): Buffer {
  assert.ok(src.length <= BLOCK_BYTES_MAX, 'block too large for the study scratch');
  const length = cctx.compress(scratch, src, 3);
  return Buffer.from(scratch.subarray(0, length));
}

function unzstd(payload: Buffer): Buffer {
  const out = Buffer.allocUnsafe(BLOCK_BYTES_MAX);
  return out.subarray(0, dctx.decompress(out, payload));
}

/** Byte-wise XOR of two pages: zero wherever they agree. */
export function xorPages(a: Buffer, b: Buffer): Buffer {
  const out = Buffer.allocUnsafe(PAGE_SIZE);
  for (let i = 0; i < PAGE_SIZE; i++) out[i] = a[i]! ^ b[i]!;
  return out;
}

/**
 * Zero-run encoding of an XOR delta: pairs of (zero run, literal run), each length a LEB128
 * varint, then the literal bytes. The XOR family's simplest member, with no entropy coder.
 */
export function rleEncode(src: Buffer): Buffer {
  // Worst case: every byte a literal after a one-byte zero run, two varints of <= 2 bytes.
  const out = Buffer.allocUnsafe(src.length + 4 * (src.length / 2 + 1));
  let length = 0;
  const pushVarint = (value: number) => {
    let v = value;
    while (v >= 0x80) {
      out[length++] = (v & 0x7f) | 0x80;
      v >>>= 7;
    }
    out[length++] = v;
  };
  let i = 0;
  while (i < src.length) {
    const zeroStart = i;
    while (i < src.length && src[i] === 0) i++;
    const literalStart = i;
    // A literal run ends at the first pair of zeros: a single zero is cheaper inline.
    while (i < src.length && !(src[i] === 0 && (i + 1 === src.length || src[i + 1] === 0))) i++;
    pushVarint(literalStart - zeroStart);
    pushVarint(i - literalStart);
    length += src.copy(out, length, literalStart, i);
  }
  return Buffer.from(out.subarray(0, length));
}

/** Inverse of `rleEncode` into `length` bytes; throws RangeError on a damaged payload. */
export function rleDecode(payload: Buffer, length: number): Buffer {
  const out = Buffer.alloc(length);
  let at = 0;
  let p = 0;
  const readVarint = () => {
    let value = 0;
    let shift = 0;
    for (;;) {
      if (p >= payload.length) throw new RangeError('damaged RLE payload');
      const byte = payload[p++]!;
      value |= (byte & 0x7f) << shift;
      if (byte < 0x80) return value;
      shift += 7;
    }
  };
  while (p < payload.length) {
    at += readVarint();
    const literal = readVarint();
    if (at + literal > length || p + literal > payload.length) {
      throw new RangeError('damaged RLE payload');
    }
    payload.copy(out, at, p, p + literal);
    p += literal;
    at += literal;
  }
  return out;
}

/** A zstd-delta codec; a base it refuses (see ZstdDeltaCodec) costs a raw page + 1 byte. */
function deltaCodec(codec: ZstdDeltaCodec, name: string): PatchAlgorithm {
  return {
    name,
    encode(page, ref) {
      return codec.encode(page, 0, ref, Infinity) ?? Buffer.concat([Buffer.alloc(1), page]);
    },
    decode(payload, ref) {
      if (payload.length === PAGE_SIZE + 1) return payload.subarray(1);
      const out = Buffer.allocUnsafe(PAGE_SIZE);
      codec.decode(payload, ref, out, 0);
      return out;
    },
  };
}

/** Every patch algorithm of the study, the store's first. */
export function patchAlgorithms(): PatchAlgorithm[] {
  return [
    deltaCodec(zstdDeltaCodec as ZstdDeltaCodec, 'zstd-delta -3 (store)'),
    deltaCodec(new ZstdDeltaCodec(1), 'zstd-delta -1'),
    deltaCodec(new ZstdDeltaCodec(9), 'zstd-delta -9'),
    {
      name: 'XOR + zstd -3',
      encode: (page, ref) => zstdBytes(xorPages(page, ref)),
      decode: (payload, ref) => xorPages(unzstd(payload), ref),
    },
    {
      name: 'XOR + zero-run RLE',
      encode: (page, ref) => rleEncode(xorPages(page, ref)),
      decode: (payload, ref) => xorPages(rleDecode(payload, PAGE_SIZE), ref),
    },
    {
      name: 'XOR + RLE + zstd -3',
      encode: (page, ref) => zstdAny(rleEncode(xorPages(page, ref))),
      decode: (payload, ref) => xorPages(rleDecode(unzstd(payload), PAGE_SIZE), ref),
    },
    {
      name: 'XOR + lz4',
      encode: (page, ref) => lz4Codec.encode(xorPages(page, ref), 0, null, Infinity)!,
      decode(payload, ref) {
        const out = Buffer.allocUnsafe(PAGE_SIZE);
        lz4Codec.decode(payload, null, out, 0);
        return xorPages(out, ref);
      },
    },
    {
      name: 'XOR + deflate -6',
      encode: (page, ref) => deflateRawSync(xorPages(page, ref), { level: 6 }),
      decode: (payload, ref) => xorPages(inflateRawSync(payload), ref),
    },
    {
      name: 'XOR + BWT+MTF + zstd -3',
      encode: (page, ref) => zstdAny(bwtMtfForward(xorPages(page, ref))),
      decode: (payload, ref) => xorPages(bwtMtfInverse(unzstd(payload)), ref),
    },
    {
      name: 'BWT+MTF both, then zstd-delta -3',
      encode(page, ref) {
        // The transformed reference is the dictionary: both sides carry the 2-byte header.
        return zstdCompressUsingDict(bwtMtfForward(page), bwtMtfForward(ref));
      },
      decode: (payload, ref) => bwtMtfInverse(zstdDecompressUsingDict(payload, bwtMtfForward(ref))),
    },
  ];
}

function zstdCompressUsingDict(src: Buffer, dict: Buffer): Buffer {
  const length = cctx.compressUsingDict(scratch, src, dict, 3);
  return Buffer.from(scratch.subarray(0, length));
}

function zstdDecompressUsingDict(payload: Buffer, dict: Buffer): Buffer {
  const out = Buffer.allocUnsafe(PAGE_SIZE + 16);
  const length = dctx.decompressUsingDict(out, payload, dict);
  return out.subarray(0, length);
}
