/**
 * Tuning knobs of the page store: every bounded queue, cache and size, in one place, each
 * with the reason for its default. Keys are plain numbers and strings so the config file
 * maps onto them directly.
 */
import { DeviceError } from '../device/types.js';

/** Largest export in pages: page numbers are 32-bit in page-map keys (16 TiB an export). */
export const EXPORT_PAGES_MAX = 2 ** 32;

export interface StoreTuning {
  /** Compressor for pages stored alone: 'zstd' (default) or 'lz4' (zram-like, faster). */
  compressor: 'zstd' | 'lz4';
  /** zstd level. 3: within 2% of level 9's size at a fifth of its CPU (DESIGN.md). */
  compressionLevel: number;
  /**
   * Pages the write-back buffer holds before writers wait (backpressure). 16,384 pages =
   * 64 MiB: absorbs a burst of a few hundred milliseconds at full ingest speed.
   */
  writeBufferPages: number;
  /**
   * Most pages encoded and committed as one batch. The parts of a batch that cannot yield
   * (applying it to the index overlay, lmdb-js taking its writes) grow with it and stall
   * reads: measured with fio, random writes at depth 16 beside a depth-1 reader, 2,048 pages
   * gave the reader p50 470 us / p99 15 ms, 256 pages 170 us / 8 ms, for 10% fewer writes.
   * Smaller commits also dirty fewer LMDB leaves each, so the index file keeps fewer free
   * pages (364 MiB of process memory: 24 MiB of index at 2,048, 18 MiB at 256). At 128 and
   * below the two fsyncs of each commit start to cost writes (a third fewer at 128).
   */
  batchPagesMax: number;
  /**
   * How long a small batch waits for more pages before it is encoded anyway (unless a FLUSH
   * or FUA asks for it at once). Latest-write-wins inside the window saves encoding work.
   */
  commitIntervalMs: number;
  /**
   * Pages encoded between two yields to the event loop: 16 pages is about 0.5-1 ms of work
   * (more on a loaded machine), the longest a read waits behind the encoder.
   */
  encodeSlicePages: number;
  /** Decoded reference pages cached for deltas and dedup checks: 2,048 x 4 KiB = 8 MiB. */
  referenceCachePages: number;
  /**
   * Bytes after which a segment is sealed and a new one started. 64 MiB: few files, and a
   * compaction step copies at most this much.
   */
  segmentBytesMax: number;
  /**
   * Background compaction rewrites a sealed segment once its live share falls under this.
   * 0.5: each rewritten byte frees at least one; write amplification stays under 2x.
   */
  compactLiveRatioMin: number;
  /**
   * An explicit `compact()` rewrites every segment under this live share. 0.9: afterwards
   * segments hold at most ~11% garbage, inside the 1.15x space bound with headers.
   */
  compactExplicitLiveRatioMin: number;
  /**
   * Bytes of records a compaction step reads before it lets writes and reads in again.
   * 1 MiB: a step then pauses the event loop for a few milliseconds at most.
   */
  compactStepBytes: number;
  /**
   * Which similarity features find delta bases: 'blocks' (the paper's two fixed-offset block
   * hashes), 'superfeatures' (two super-features of a rolling hash) or 'both'. 'blocks': on
   * 364 MiB of process memory 'both' stored 0.2% less payload but its index (twice the
   * entries, each rewritten as LMDB copies on write) took 10.6 MB more, 2.7% of the raw size.
   */
  similarity: 'both' | 'blocks' | 'superfeatures';
  /** Open segment descriptors kept; far below the usual 1,024 fd limit. */
  openSegmentsMax: number;
  /**
   * Pending trim/zero ranges (each may span the whole device) before callers wait; they are
   * applied ahead of page writes, so many at once would stall writes.
   */
  rangeOpsMax: number;
  /** Mapped pages a trim releases per commit: bounds one commit's size and pause. */
  rangeOpStepPages: number;
  /**
   * Bytes kept back on the data filesystem (a file of real blocks, see reserve.ts) so a
   * full disk can still take the TRIMs and compaction that empty it. 32 MiB holds the index
   * growth of trimming millions of pages; capped at a tenth of the filesystem. 0: none.
   */
  reserveBytes: number;
}

export const DEFAULT_STORE_TUNING: Readonly<StoreTuning> = Object.freeze({
  compressor: 'zstd',
  compressionLevel: 3,
  writeBufferPages: 16_384,
  batchPagesMax: 256,
  commitIntervalMs: 5,
  encodeSlicePages: 16,
  referenceCachePages: 2_048,
  segmentBytesMax: 64 * 1024 * 1024,
  compactLiveRatioMin: 0.5,
  compactExplicitLiveRatioMin: 0.9,
  compactStepBytes: 1024 * 1024,
  similarity: 'blocks',
  openSegmentsMax: 256,
  rangeOpsMax: 64,
  rangeOpStepPages: 16_384,
  reserveBytes: 32 * 1024 * 1024,
});

/** Hard ceiling of a segment: record offsets are stored in 48 bits, sizes as numbers. */
const SEGMENT_BYTES_CEILING = 2 ** 40;

/** Defaults overlaid with `partial`, validated; throws DeviceError EINVAL listing problems. */
export function resolveTuning(partial: Partial<StoreTuning> = {}): StoreTuning {
  const tuning: StoreTuning = { ...DEFAULT_STORE_TUNING, ...partial };
  const problems = tuningProblems(tuning);
  if (problems.length > 0) {
    throw new DeviceError('EINVAL', `invalid store tuning: ${problems.join('; ')}`);
  }
  return Object.freeze(tuning);
}

/** zstd's levels: 1 to 22 (above 19 they need much more memory and CPU). */
const ZSTD_LEVEL_MIN = 1;
const ZSTD_LEVEL_MAX = 22;

/**
 * Every problem of a complete tuning, each naming its key and what is allowed, so the
 * config check at start-up can list them all with the rest of the file's problems.
 */
export function tuningProblems(tuning: StoreTuning): string[] {
  const problems: string[] = [];
  const positiveInts: (keyof StoreTuning)[] = [
    'writeBufferPages',
    'batchPagesMax',
    'encodeSlicePages',
    'referenceCachePages',
    'segmentBytesMax',
    'compactStepBytes',
    'openSegmentsMax',
    'rangeOpsMax',
    'rangeOpStepPages',
  ];
  for (const key of positiveInts) {
    const value = tuning[key];
    if (typeof value !== 'number' || !Number.isInteger(value) || value < 1) {
      problems.push(`${key} must be a positive integer (got ${String(value)})`);
    }
  }
  if (!(tuning.commitIntervalMs >= 0)) problems.push('commitIntervalMs must be >= 0');
  if (!(Number.isInteger(tuning.reserveBytes) && tuning.reserveBytes >= 0)) {
    problems.push(`reserveBytes must be a whole number >= 0 (got ${String(tuning.reserveBytes)})`);
  }
  for (const key of ['compactLiveRatioMin', 'compactExplicitLiveRatioMin'] as const) {
    if (!(tuning[key] >= 0 && tuning[key] <= 1)) problems.push(`${key} must be in [0, 1]`);
  }
  if (tuning.segmentBytesMax > SEGMENT_BYTES_CEILING) {
    problems.push(`segmentBytesMax must be at most ${SEGMENT_BYTES_CEILING}`);
  }
  if (tuning.compressor !== 'zstd' && tuning.compressor !== 'lz4') {
    problems.push(`compressor must be 'zstd' or 'lz4' (got ${String(tuning.compressor)})`);
  }
  if (!['both', 'blocks', 'superfeatures'].includes(tuning.similarity)) {
    problems.push(`similarity must be 'both', 'blocks' or 'superfeatures'`);
  }
  const level = tuning.compressionLevel;
  if (!Number.isInteger(level) || level < ZSTD_LEVEL_MIN || level > ZSTD_LEVEL_MAX) {
    problems.push(
      `compressionLevel must be a whole number from ${ZSTD_LEVEL_MIN} to ${ZSTD_LEVEL_MAX} ` +
        `(got ${String(level)}); 3 is the default`,
    );
  }
  return problems;
}
