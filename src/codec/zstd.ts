/**
 * zstd page codecs over zstd-napi's low-level binding, so that each codec owns one reusable
 * compression context per level and all share one decompression context: no context is
 * allocated per call (a fresh ZSTD_CCtx costs more than compressing a page).
 *
 * - `ZstdCodec`: one page alone, one zstd frame.
 * - `ZstdDeltaCodec`: one page with a reference page as a raw-content dictionary
 *   (ZSTD_compress_usingDict): the delta encoder measured best on real similar pages
 *   (220-590 bytes a page, against 775 for xdelta3 and 1,523 for XOR then deflate).
 *   The binding does not expose ZSTD_CCtx_refPrefix; the dictionary form is what it offers.
 * - `ZstdDictCodec`: one page with a dictionary trained or chosen from the store's pages.
 *
 * Frames carry their content size, so decode can refuse a frame of the wrong length before
 * writing past the page; they carry no checksum, because segment records have their own.
 */
import assert from 'node:assert/strict';
import zstd from 'zstd-napi/binding.js';
import { PAGE_SIZE } from '../device/types.js';
import { CodecError } from './errors.js';
import { CodecId, type PageCodec } from './types.js';

/** Default level: 3 is zstd's own default; levels 1-3 cost about the same here (DESIGN.md). */
export const ZSTD_LEVEL_DEFAULT = 3;

/** Worst-case frame size of one page: the shared output scratch must hold it. */
const FRAME_BYTES_MAX = zstd.compressBound(PAGE_SIZE);

/** Output scratch shared by every encoder in this thread; results are copied out of it. */
const scratch = Buffer.allocUnsafeSlow(FRAME_BYTES_MAX);

/** One decompression context for every zstd codec in this thread (JS runs one at a time). */
const dctx = new zstd.DCtx();

/** Compression contexts by level, created on first use and kept for the thread's life. */
const cctxByLevel = new Map<number, zstd.CCtx>();

function cctxFor(level: number): zstd.CCtx {
  let cctx = cctxByLevel.get(level);
  if (cctx === undefined) {
    cctx = new zstd.CCtx();
    cctxByLevel.set(level, cctx);
  }
  return cctx;
}

/** Checks a level against the linked zstd's bounds (negative levels are the fast modes). */
export function checkZstdLevel(level: number): void {
  const ok = Number.isInteger(level) && level >= zstd.minCLevel() && level <= zstd.maxCLevel();
  if (!ok) {
    throw new RangeError(`zstd level ${level} outside ${zstd.minCLevel()}..${zstd.maxCLevel()}`);
  }
}

/** The page at `page[offset ..]` as a view; asserts it is whole. */
export function pageView(page: Buffer, offset: number): Buffer {
  assert.ok(offset >= 0 && offset + PAGE_SIZE <= page.length, 'page out of range');
  return page.subarray(offset, offset + PAGE_SIZE);
}

/** Copies the first `length` scratch bytes into a buffer the caller owns, or null. */
function takeScratch(length: number, limitBytes: number): Buffer | null {
  if (length >= limitBytes) return null;
  const out = Buffer.allocUnsafe(length);
  scratch.copy(out, 0, 0, length);
  return out;
}

/** Runs a zstd decode into the page at `out[outOffset ..]`, mapping every failure. */
function decodeInto(
  name: string,
  out: Buffer,
  outOffset: number,
  decode: (dst: Buffer) => number,
): void {
  const dst = pageView(out, outOffset);
  let length: number;
  try {
    length = decode(dst);
  } catch (error) {
    throw new CodecError(name, `damaged payload (${(error as Error).message})`);
  }
  if (length !== PAGE_SIZE) throw new CodecError(name, `decoded ${length} bytes, not a page`);
}

/** A page alone in one zstd frame at a fixed level. */
export class ZstdCodec implements PageCodec {
  readonly id = CodecId.zstd;
  readonly name = 'zstd';
  readonly delta = false;
  private readonly cctx: zstd.CCtx;

  constructor(readonly level: number) {
    checkZstdLevel(level);
    this.cctx = cctxFor(level);
  }

  encode(page: Buffer, pageOffset: number, _ref: Buffer | null, limitBytes: number) {
    const length = this.cctx.compress(scratch, pageView(page, pageOffset), this.level);
    return takeScratch(length, limitBytes);
  }

  decode(payload: Buffer, _ref: Buffer | null, out: Buffer, outOffset: number): void {
    decodeInto(this.name, out, outOffset, (dst) => dctx.decompress(dst, payload));
  }
}

/**
 * zstd's dictionary loader treats a buffer that starts with this magic as a formatted
 * dictionary, not raw content; such a reference page cannot serve as a delta base.
 */
const DICT_MAGIC = zstd.MAGIC_DICTIONARY;

/** Returns the reference page view, or null when it cannot be used as raw content. */
function refView(name: string, ref: Buffer | null): Buffer {
  if (ref === null) throw new CodecError(name, 'a delta needs its reference page');
  return pageView(ref, 0);
}

/** A page encoded against a reference page used as a raw-content dictionary. */
export class ZstdDeltaCodec implements PageCodec {
  readonly id = CodecId.zstdDelta;
  readonly name = 'zstd-delta';
  readonly delta = true;
  private readonly cctx: zstd.CCtx;

  constructor(readonly level: number) {
    checkZstdLevel(level);
    this.cctx = cctxFor(level);
  }

  /** Null also when `ref` starts with zstd's dictionary magic (see DICT_MAGIC). */
  encode(page: Buffer, pageOffset: number, ref: Buffer | null, limitBytes: number) {
    const base = refView(this.name, ref);
    if (base.readUInt32LE(0) === DICT_MAGIC) return null;
    const src = pageView(page, pageOffset);
    const length = this.cctx.compressUsingDict(scratch, src, base, this.level);
    return takeScratch(length, limitBytes);
  }

  decode(payload: Buffer, ref: Buffer | null, out: Buffer, outOffset: number): void {
    const base = refView(this.name, ref);
    decodeInto(this.name, out, outOffset, (dst) => dctx.decompressUsingDict(dst, payload, base));
  }
}

/**
 * A page compressed with a dictionary shared by a whole store (CodecId.zstdDict). The
 * dictionary is part of the store's state, so this codec is built per store, not registered
 * in the static table; a payload must be decoded with the same dictionary bytes.
 */
export class ZstdDictCodec implements PageCodec {
  readonly id = CodecId.zstdDict;
  readonly name = 'zstd-dict';
  readonly delta = false;
  private readonly cctx = new zstd.CCtx();
  private readonly cdict: zstd.CDict;
  private readonly ddict: zstd.DDict;

  constructor(
    readonly dictionary: Buffer,
    readonly level: number,
  ) {
    checkZstdLevel(level);
    this.cdict = new zstd.CDict(dictionary, level);
    this.ddict = new zstd.DDict(dictionary);
  }

  encode(page: Buffer, pageOffset: number, _ref: Buffer | null, limitBytes: number) {
    const length = this.cctx.compressUsingCDict(scratch, pageView(page, pageOffset), this.cdict);
    return takeScratch(length, limitBytes);
  }

  decode(payload: Buffer, _ref: Buffer | null, out: Buffer, outOffset: number): void {
    const ddict = this.ddict;
    decodeInto(this.name, out, outOffset, (dst) => dctx.decompressUsingDDict(dst, payload, ddict));
  }
}
