/**
 * The codec contract: pure functions over 4 KiB pages, used by the page store (src/store),
 * `diffswap analyze` and the benchmarks. Implementations live in this folder and in native/;
 * callers import only from `src/codec/index.ts`.
 *
 * Every stored object records the numeric id of the codec that wrote it, so ids are forever:
 * never reuse or renumber one, only add.
 */

/** Stable codec ids as stored on disk. */
export const CodecId = {
  /** Payload is the page itself, 4096 bytes. */
  raw: 0,
  /** zstd frame of the page alone. */
  zstd: 1,
  /** zstd frame of the page with a reference page as dictionary (a delta). */
  zstdDelta: 2,
  /** LZ4 block of the page (what zram does); for comparison and fast ingest. */
  lz4: 3,
  /** zstd frame with the store's trained dictionary. */
  zstdDict: 4,
} as const;
export type CodecIdValue = (typeof CodecId)[keyof typeof CodecId];

/**
 * A page codec. `encode` returns a new buffer the caller owns, or null when the encoding
 * would not be smaller than `limitBytes` (so callers can try cheaper outcomes first).
 * `decode` writes exactly one page into `out` at `outOffset` and throws on damaged input.
 * Delta codecs need `ref`, the reference page; others ignore it.
 */
export interface PageCodec {
  readonly id: number;
  readonly name: string;
  readonly delta: boolean;
  encode(page: Buffer, pageOffset: number, ref: Buffer | null, limitBytes: number): Buffer | null;
  decode(payload: Buffer, ref: Buffer | null, out: Buffer, outOffset: number): void;
}

/** Number of similarity features per page produced by `sketchPages`. */
export const FEATURE_COUNT = 4;
