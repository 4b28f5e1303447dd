/**
 * Similarity sketch of a page: FEATURE_COUNT 32-bit features, 0 meaning "none". Two pages
 * that share any feature are candidates for delta encoding against each other.
 *
 * Two kinds of feature, switchable separately:
 * - Block features (slots 0 and 1): the Difference Engine's detector (Gupta et al., "Difference
 *   Engine: Harnessing Memory Redundancy in Virtual Machines", OSDI '08, section 4.2): hash
 *   64-byte blocks at offsets fixed for every page, one block per key; the paper found two
 *   such keys (its HashSimilarityDetector(2,1)) the best trade-off. A block that is one
 *   repeated word (mostly zeros) gives no feature: it would pair unrelated pages.
 * - Super-features (slots 2 and 3): resemblance in Broder's sense ("On the resemblance and
 *   containment of documents", 1997), grouped into super-features as in Shilane et al. ("WAN
 *   optimized replication of backup datasets using stream-informed delta compression",
 *   FAST '12). Features are taken the way Finesse does (Zhang et al., FAST '19): the page is
 *   cut into SUB_CHUNK_COUNT sub-chunks and each contributes the largest Gear rolling-hash
 *   value (Xia et al., "Ddelta", 2014) inside it, one hash pass instead of one per feature.
 *   Finesse then groups features by rank; memory pages do not shift their content, so we
 *   group by position instead: super-feature j hashes the features of page half j, and a
 *   single local change can break at most one of the two. A half page of one repeated word
 *   (mostly zeros) gives no super-feature.
 * The slot number sits in the top two bits, so features of different kinds or slots never
 * collide in a shared index.
 *
 * This file is the TypeScript twin of the native sketch in native/src/pages.cc; the two must
 * agree bit for bit, so every constant here is mirrored there.
 */
import assert from 'node:assert/strict';
import { PAGE_SIZE } from '../device/types.js';
import { FEATURE_COUNT } from './types.js';

/** Byte size of one hashed block in the Difference Engine detector. */
export const BLOCK_BYTES = 64;
/**
 * Offsets of the two hashed blocks. The paper picks offsets at random once; these were
 * drawn once, kept 64-byte aligned and away from the first cache lines, where object headers
 * (which differ between otherwise similar pages) cluster.
 */
export const BLOCK_OFFSETS = [1216, 2752] as const;
/** Sub-chunks per page for the Gear features; two super-features of four each. */
export const SUB_CHUNK_COUNT = 8;
const SUB_CHUNK_SHIFT = 9; // log2(PAGE_SIZE / SUB_CHUNK_COUNT)
const FEATURES_PER_SUPER = SUB_CHUNK_COUNT / 2;
const HALF_PAGE = PAGE_SIZE / 2;

/** Feature slots; the slot is stored in the feature's top two bits. */
export const SLOT_BLOCK_A = 0;
export const SLOT_BLOCK_B = 1;
export const SLOT_SUPER_A = 2;
export const SLOT_SUPER_B = 3;

/** What to compute; a disabled kind leaves its slots 0. */
export interface SketchOptions {
  blocks: boolean;
  superFeatures: boolean;
}

/** Seed of the Gear table generator and of the block hashes (mirrored in pages.cc). */
const GEAR_SEED = 0x9e3779b9;
const BLOCK_SEED = 0x5d1f_f00d;
const SUPER_SEED = 0x2545_f491;

/** MurmurHash3's 32-bit finaliser (Appleby): spreads every input bit over the output. */
export function fmix32(value: number): number {
  let h = value >>> 0;
  h = Math.imul(h ^ (h >>> 16), 0x85ebca6b);
  h = Math.imul(h ^ (h >>> 13), 0xc2b2ae35);
  return (h ^ (h >>> 16)) >>> 0;
}

/** One MurmurHash3_x86_32 body step: absorbs the 32-bit word `k` into `h`. */
export function murmurStep(h: number, k: number): number {
  let x = Math.imul(k, 0xcc9e2d51);
  x = (x << 15) | (x >>> 17);
  x = Math.imul(x, 0x1b873593);
  let y = h ^ x;
  y = (y << 13) | (y >>> 19);
  return (Math.imul(y, 5) + 0xe6546b64) >>> 0;
}

/** The Gear table: 256 pseudo-random words, generated (not stored) so C and TS agree. */
export const GEAR_TABLE: Uint32Array = (() => {
  const table = new Uint32Array(256);
  let state = 0;
  for (let i = 0; i < 256; i++) {
    state = (state + GEAR_SEED) >>> 0;
    table[i] = fmix32(state);
  }
  return table;
})();

/**
 * True when `length` bytes at `offset` are one 8-byte word repeated (mostly: zeros). Such a
 * block or half page gives no feature: it would pair unrelated pages.
 */
export function periodic8(src: Buffer, offset: number, length: number): boolean {
  const end = offset + length;
  return src.compare(src, offset + 8, end, offset, end - 8) === 0;
}

/** Puts `slot` in the top two bits of `hash`; never 0, which means "no feature". */
export function tagFeature(hash: number, slot: number): number {
  const feature = ((hash >>> 2) | (slot << 30)) >>> 0;
  return feature === 0 ? 1 : feature;
}

/**
 * Murmur hash of the BLOCK_BYTES block at `offset` (read as little-endian words), or 0 when
 * the block is one repeated 8-byte word.
 */
export function blockHash(src: Buffer, offset: number, seed: number): number {
  if (periodic8(src, offset, BLOCK_BYTES)) return 0;
  const end = offset + BLOCK_BYTES;
  let h = seed;
  for (let at = offset; at < end; at += 4) h = murmurStep(h, src.readUInt32LE(at));
  return fmix32(h ^ BLOCK_BYTES);
}

/** Writes the largest Gear hash of each sub-chunk of the page at `offset` into `maxima`. */
export function gearMaxima(src: Buffer, offset: number, maxima: Uint32Array): void {
  const gear = GEAR_TABLE;
  maxima.fill(0);
  let fp = 0;
  for (let i = 0; i < PAGE_SIZE; i++) {
    // Gear: shift out the oldest byte's influence, add the new byte's random word. A 32-bit
    // state makes the window 32 bytes.
    fp = ((fp << 1) + gear[src[offset + i]!]!) >>> 0;
    const chunk = i >>> SUB_CHUNK_SHIFT;
    if (fp > maxima[chunk]!) maxima[chunk] = fp;
  }
}

/** Murmur hash of the FEATURES_PER_SUPER sub-chunk features starting at `first`. */
export function superFeature(maxima: Uint32Array, first: number): number {
  let h = SUPER_SEED;
  for (let i = first; i < first + FEATURES_PER_SUPER; i++) h = murmurStep(h, maxima[i]!);
  return fmix32(h ^ FEATURES_PER_SUPER);
}

const scratchMaxima = new Uint32Array(SUB_CHUNK_COUNT);

/**
 * TypeScript twin of the native sketch: FEATURE_COUNT features for each of the `pageCount`
 * pages at the start of `src`, page i's at `features[i * FEATURE_COUNT ...]`.
 */
export function sketchPagesTs(
  src: Buffer,
  pageCount: number,
  features: Uint32Array,
  options: SketchOptions,
): void {
  checkSketchArgs(src, pageCount, features);
  for (let page = 0; page < pageCount; page++) {
    const offset = page * PAGE_SIZE;
    const out = page * FEATURE_COUNT;
    features.fill(0, out, out + FEATURE_COUNT);
    if (options.blocks) {
      const a = blockHash(src, offset + BLOCK_OFFSETS[0], BLOCK_SEED);
      const b = blockHash(src, offset + BLOCK_OFFSETS[1], BLOCK_SEED);
      if (a !== 0) features[out + SLOT_BLOCK_A] = tagFeature(a, SLOT_BLOCK_A);
      if (b !== 0) features[out + SLOT_BLOCK_B] = tagFeature(b, SLOT_BLOCK_B);
    }
    if (options.superFeatures) {
      gearMaxima(src, offset, scratchMaxima);
      const a = periodic8(src, offset, HALF_PAGE) ? 0 : superFeature(scratchMaxima, 0);
      const b = periodic8(src, offset + HALF_PAGE, HALF_PAGE)
        ? 0
        : superFeature(scratchMaxima, FEATURES_PER_SUPER);
      if (a !== 0) features[out + SLOT_SUPER_A] = tagFeature(a, SLOT_SUPER_A);
      if (b !== 0) features[out + SLOT_SUPER_B] = tagFeature(b, SLOT_SUPER_B);
    }
  }
}

/** Shared argument guards of both sketch implementations. */
export function checkSketchArgs(src: Buffer, pageCount: number, features: Uint32Array): void {
  assert.ok(Number.isInteger(pageCount) && pageCount >= 0, 'pageCount must be a count');
  assert.ok(src.length >= pageCount * PAGE_SIZE, 'src shorter than pageCount pages');
  assert.ok(features.length >= pageCount * FEATURE_COUNT, 'features array too short');
}
