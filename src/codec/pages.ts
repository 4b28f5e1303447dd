/**
 * Whole-page checks in TypeScript: content hash, the fill-word scan and its inverse.
 * `scanPagesTs` is the twin of the native `scanPages` in native/src/pages.cc; both must give
 * identical results (test/unit/codec-native.test.ts holds them to it).
 */
import assert from 'node:assert/strict';
import { hash } from 'node:crypto';
import { PAGE_SIZE } from '../device/types.js';

/** Bytes of one fill word: a page of one repeated 64-bit word is stored as the word alone. */
export const FILL_WORD_BYTES = 8;

/** Bytes of a content hash (SHA-256). */
export const HASH_BYTES = 32;

/**
 * SHA-256 of the page at `src[offset .. offset + PAGE_SIZE)`, as a new 32-byte buffer the
 * caller owns. Cryptographic so that a crafted page cannot alias another's content cheaply;
 * the store still compares bytes on a hit (DESIGN.md, content index).
 */
export function hashPage(src: Buffer, offset: number): Buffer {
  assert.ok(offset >= 0 && offset + PAGE_SIZE <= src.length, 'page out of range');
  const page = src.subarray(offset, offset + PAGE_SIZE);
  // crypto.hash (Node >= 20.12) skips the Hash object: 4 us a page with SHA-NI.
  return hash('sha256', page, 'buffer');
}

/**
 * TypeScript twin of the native fill-word scan. For each of the `pageCount` pages at the
 * start of `src`: `uniform[i] = 1` and `words[i]` = the word when the page is one 8-byte word
 * repeated (a zero page gives 0n), else `uniform[i] = 0` and `words[i] = 0n`.
 */
export function scanPagesTs(
  src: Buffer,
  pageCount: number,
  words: BigUint64Array,
  uniform: Uint8Array,
): void {
  checkScanArgs(src, pageCount, words, uniform);
  for (let i = 0; i < pageCount; i++) {
    const offset = i * PAGE_SIZE;
    // A page is periodic with period 8 exactly when it equals itself shifted by 8 bytes:
    // one memcmp inside Buffer.compare, no JS loop.
    const end = offset + PAGE_SIZE;
    const same = src.compare(src, offset + FILL_WORD_BYTES, end, offset, end - FILL_WORD_BYTES);
    uniform[i] = same === 0 ? 1 : 0;
    words[i] = same === 0 ? src.readBigUInt64LE(offset) : 0n;
  }
}

/** Shared argument guards of both scan implementations. */
export function checkScanArgs(
  src: Buffer,
  pageCount: number,
  words: BigUint64Array,
  uniform: Uint8Array,
): void {
  assert.ok(Number.isInteger(pageCount) && pageCount >= 0, 'pageCount must be a count');
  assert.ok(src.length >= pageCount * PAGE_SIZE, 'src shorter than pageCount pages');
  assert.ok(words.length >= pageCount && uniform.length >= pageCount, 'output arrays too short');
}

/**
 * Writes one page of `word` repeated (little-endian, as `scanPages` read it) into `out` at
 * `outOffset`. The inverse of the scan: `fillPage(words[i], ...)` rebuilds page i exactly.
 */
export function fillPage(word: bigint, out: Buffer, outOffset: number): void {
  assert.ok(outOffset >= 0 && outOffset + PAGE_SIZE <= out.length, 'page out of range');
  if (word === 0n) {
    out.fill(0, outOffset, outOffset + PAGE_SIZE);
    return;
  }
  out.writeBigUInt64LE(word, outOffset);
  // Double the filled prefix until the page is full: 9 copies instead of 512 writes.
  for (let filled = FILL_WORD_BYTES; filled < PAGE_SIZE; filled *= 2) {
    out.copy(out, outOffset + filled, outOffset, outOffset + filled);
  }
}
