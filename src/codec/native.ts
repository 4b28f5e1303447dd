/**
 * Picks the native per-page loops when the addon is loaded and falls back to the TypeScript
 * twins otherwise (`DIFFSWAP_NATIVE=0` forces the twins). The public `scanPages` and
 * `sketchPages` are exported from `index.ts`; the `*Native` / `*Ts` pairs are exported for
 * tests and benchmarks that compare both paths in one process.
 */
import { nativeAddon } from '../native/addon.js';
import { checkScanArgs, scanPagesTs } from './pages.js';
import { checkSketchArgs, type SketchOptions, sketchPagesTs } from './sketch.js';

/** The addon's page functions, as registered by native/src/pages.cc. */
interface NativePages {
  scanPages(src: Buffer, pageCount: number, words: BigUint64Array, uniform: Uint8Array): void;
  sketchPages(src: Buffer, pageCount: number, features: Uint32Array, flags: number): void;
}

/** Bits of the native sketch's flags argument (kSketchBlocks, kSketchSuperFeatures). */
const SKETCH_BLOCKS = 1;
const SKETCH_SUPER_FEATURES = 2;

function loadNativePages(): NativePages | null {
  const addon = nativeAddon();
  if (addon === null) return null;
  if (typeof addon.scanPages !== 'function' || typeof addon.sketchPages !== 'function') {
    return null;
  }
  return addon as unknown as NativePages;
}

const native = loadNativePages();

/** True when the public functions run the native loops. */
export const usingNativePages = native !== null;

/** Native scan; throws when the addon is not loaded. Same contract as `scanPagesTs`. */
export function scanPagesNative(
  src: Buffer,
  pageCount: number,
  words: BigUint64Array,
  uniform: Uint8Array,
): void {
  if (native === null) throw new Error('native addon not loaded');
  native.scanPages(src, pageCount, words, uniform);
}

/** Native sketch; throws when the addon is not loaded. Same contract as `sketchPagesTs`. */
export function sketchPagesNative(
  src: Buffer,
  pageCount: number,
  features: Uint32Array,
  options: SketchOptions,
): void {
  if (native === null) throw new Error('native addon not loaded');
  const flags =
    (options.blocks ? SKETCH_BLOCKS : 0) | (options.superFeatures ? SKETCH_SUPER_FEATURES : 0);
  native.sketchPages(src, pageCount, features, flags);
}

/**
 * For each of the `pageCount` pages at the start of `src`: `uniform[i] = 1` and `words[i]` =
 * the word when the page is one 8-byte little-endian word repeated (zero page: 0n); else
 * `uniform[i] = 0`, `words[i] = 0n`. One call per batch; allocates nothing.
 */
export function scanPages(
  src: Buffer,
  pageCount: number,
  words: BigUint64Array,
  uniform: Uint8Array,
): void {
  if (native === null) {
    scanPagesTs(src, pageCount, words, uniform);
    return;
  }
  checkScanArgs(src, pageCount, words, uniform);
  native.scanPages(src, pageCount, words, uniform);
}

/**
 * FEATURE_COUNT similarity features per page (see sketch.ts), page i's at
 * `features[i * FEATURE_COUNT ...]`, 0 meaning none. One call per batch; allocates nothing.
 */
export function sketchPages(
  src: Buffer,
  pageCount: number,
  features: Uint32Array,
  options: SketchOptions,
): void {
  if (native === null) {
    sketchPagesTs(src, pageCount, features, options);
    return;
  }
  checkSketchArgs(src, pageCount, features);
  sketchPagesNative(src, pageCount, features, options);
}
