/**
 * The store's view of the codec layer, plus the one test hook the store needs: replacing the
 * content hash, so a test can force two different pages onto one hash and prove that the
 * byte comparison on a dedup hit keeps them apart.
 */
import {
  compressorFor,
  hashPage,
  type PageCodec,
  type SketchOptions,
  scanPages,
  sketchPages,
  zstdDeltaCodec,
} from '../codec/index.js';
import type { StoreTuning } from './tuning.js';

export { codecById, FEATURE_COUNT, fillPage, type PageCodec } from '../codec/index.js';
export { scanPages, sketchPages, zstdDeltaCodec };

type HashFunction = (src: Buffer, offset: number) => Buffer;
let hashOverride: HashFunction | null = null;

/**
 * TEST ONLY: replaces the content hash of every store in this process (null restores
 * SHA-256). Production code never calls this.
 */
export function setContentHashForTests(fn: HashFunction | null): void {
  hashOverride = fn;
}

/** Content hash of the page at `src[offset..]`: SHA-256 unless a test replaced it. */
export function contentHash(src: Buffer, offset: number): Buffer {
  return hashOverride ? hashOverride(src, offset) : hashPage(src, offset);
}

/** The compressor for pages stored alone under this tuning. */
export function compressorOf(tuning: StoreTuning): PageCodec {
  return compressorFor({ codec: tuning.compressor, level: tuning.compressionLevel });
}

/** Sketch options under this tuning. */
export function sketchOptionsOf(tuning: StoreTuning): SketchOptions {
  return {
    blocks: tuning.similarity !== 'superfeatures',
    superFeatures: tuning.similarity !== 'blocks',
  };
}
