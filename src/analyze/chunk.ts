/**
 * The per-page work of `diffswap analyze` that needs only the page itself, done in worker
 * threads over chunks of consecutive pages: the store's fill-word scan, content hash,
 * similarity sketch and compressors, plus the block hashes the detector study keys on.
 * Everything order-dependent (duplicates, delta bases) happens later, in page order, in the
 * main thread (replay.ts).
 */
import {
  FEATURE_COUNT,
  hashPage,
  lz4Codec,
  type PageCodec,
  scanPages,
  sketchPages,
  zstdCodec,
} from '../codec/index.js';
import { blockHash } from '../codec/sketch.js';
import { PAGE_SIZE } from '../device/types.js';
import { STUDY_BLOCK_OFFSETS } from './detectors.js';

/** Page kinds found by the scan. */
export const PageKind = { other: 0, zero: 1, sameWord: 2 } as const;

/** What a chunk of `pageCount` pages yields; arrays are per page, in page order. */
export interface ChunkStats {
  pageCount: number;
  /** PageKind per page. */
  kind: Uint8Array;
  /** First 8 bytes of each page's SHA-256 (the store's content hash), as two words. */
  hashHi: Uint32Array;
  hashLo: Uint32Array;
  /** The store's sketch, FEATURE_COUNT per page. */
  features: Uint32Array;
  /** Hashes of the 64-byte blocks at STUDY_BLOCK_OFFSETS, for the detector study. */
  blocks: Uint32Array;
  /** Payload bytes of the store's compressor (zstd -3) and of LZ4, per page. */
  zstdBytes: Uint16Array;
  lz4Bytes: Uint16Array;
}

/** Seed of the study's block hashes: the store's blocks use their own (same function). */
const STUDY_SEED = 0x5d1f_f00d;

/** Payload size of `codec` for one page; PAGE_SIZE + 1 when it does not fit in a page. */
function encodedBytes(codec: PageCodec, src: Buffer, offset: number): number {
  const payload = codec.encode(src, offset, null, Number.POSITIVE_INFINITY);
  return payload === null ? PAGE_SIZE + 1 : Math.min(payload.length, PAGE_SIZE + 1);
}

/** Computes the ChunkStats of the `pageCount` pages at the start of `src`. */
export function chunkStats(src: Buffer, pageCount: number): ChunkStats {
  const blockCount = STUDY_BLOCK_OFFSETS.length;
  const stats: ChunkStats = {
    pageCount,
    kind: new Uint8Array(pageCount),
    hashHi: new Uint32Array(pageCount),
    hashLo: new Uint32Array(pageCount),
    features: new Uint32Array(pageCount * FEATURE_COUNT),
    blocks: new Uint32Array(pageCount * blockCount),
    zstdBytes: new Uint16Array(pageCount),
    lz4Bytes: new Uint16Array(pageCount),
  };
  const words = new BigUint64Array(pageCount);
  scanPages(src, pageCount, words, stats.kind);
  for (let i = 0; i < pageCount; i++) {
    if (stats.kind[i] === 1 && words[i] !== 0n) stats.kind[i] = PageKind.sameWord;
  }
  sketchPages(src, pageCount, stats.features, { blocks: true, superFeatures: true });
  for (let i = 0; i < pageCount; i++) {
    const offset = i * PAGE_SIZE;
    const hash = hashPage(src, offset);
    stats.hashHi[i] = hash.readUInt32LE(0);
    stats.hashLo[i] = hash.readUInt32LE(4);
    stats.zstdBytes[i] = encodedBytes(zstdCodec, src, offset);
    stats.lz4Bytes[i] = encodedBytes(lz4Codec, src, offset);
    if (stats.kind[i] !== PageKind.other) continue;
    for (let b = 0; b < blockCount; b++) {
      stats.blocks[i * blockCount + b] = blockHash(
        src,
        offset + STUDY_BLOCK_OFFSETS[b]!,
        STUDY_SEED,
      );
    }
  }
  return stats;
}

/** The typed arrays of `stats`, for transferring them between threads without copies. */
export function chunkTransferList(stats: ChunkStats): ArrayBuffer[] {
  return [
    stats.kind,
    stats.hashHi,
    stats.hashLo,
    stats.features,
    stats.blocks,
    stats.zstdBytes,
    stats.lz4Bytes,
  ].map((array) => array.buffer as ArrayBuffer);
}
