/**
 * The order-dependent half of `diffswap analyze`, run in the main thread over chunks in
 * page order: it decides for every page what the page store would store, by the store's own
 * rules (src/store/store.ts), with the store's codecs:
 * - a page of one repeated word: no payload;
 * - a page whose SHA-256 was seen before (any file: one sharing group): a reference;
 * - else the store's compressor (zstd -3; raw when that does not fit in a page), and, when
 *   the similarity index offers a base, zstd-delta against the base kept only if smaller;
 *   the base is the indexed page sharing most features (ties: the newest), and only pages
 *   not stored as deltas enter the index, one (newest) page per feature.
 * Alongside, it counts candidates for every detector of the study and samples the pages and
 * pairs the costly comparisons (study.ts) run on.
 */
import { closeSync, openSync, readSync } from 'node:fs';
import { FEATURE_COUNT, zstdDeltaCodec } from '../codec/index.js';
import { SLOT_BLOCK_A, SLOT_BLOCK_B, SLOT_SUPER_A, SLOT_SUPER_B } from '../codec/sketch.js';
import { PAGE_SIZE } from '../device/types.js';
import { sketchOptionsOf } from '../store/codecs.js';
import { DEFAULT_STORE_TUNING } from '../store/tuning.js';
import { type ChunkStats, PageKind } from './chunk.js';
import { type Detector, KEY_SETS, STUDY_DETECTORS } from './detectors.js';
import { Reservoir } from './sampling.js';
import { KeyTable } from './table.js';

/** The feature slots the store's default similarity finder keys on (tuning `similarity`). */
const STORE_SLOTS: readonly number[] = (() => {
  const sketch = sketchOptionsOf(DEFAULT_STORE_TUNING);
  return [
    ...(sketch.blocks ? [SLOT_BLOCK_A, SLOT_BLOCK_B] : []),
    ...(sketch.superFeatures ? [SLOT_SUPER_A, SLOT_SUPER_B] : []),
  ];
})();

/** Page counts by class, as the store would classify them. */
export interface PageClasses {
  zero: number;
  sameWord: number;
  duplicateInFile: number;
  duplicateAcrossFiles: number;
  /** Stored as a delta against a similar page. */
  similar: number;
  /** Stored alone, compressed. */
  uniqueCompressed: number;
  /** Stored alone, raw: zstd did not shrink it below a page. */
  uniqueRaw: number;
}

/** Exact stored payload bytes of the policies computed over every page. */
export interface ExactBytes {
  raw: number;
  zeroOnly: number;
  zeroAndSameWord: number;
  zeroSameWordIdentical: number;
  zstdPerPage: number;
  lz4PerPage: number;
  zramStyle: number;
  zeroIdenticalZstd: number;
  zeroIdenticalLz4: number;
  /** Everything the store does by default: the combined figure. */
  combined: number;
}

/** One detector's exact counts over all pages. */
export interface DetectorCounts {
  name: string;
  keyCount: number;
  /** Distinct pages (not zero, same-word or duplicate) looked up. */
  pagesLooked: number;
  /** Of those, pages for which an earlier page shared a key. */
  pagesWithCandidate: number;
}

/** A sampled page with each detector's best candidate at the time it was seen (-1: none). */
export interface SampledTarget {
  page: number;
  /** Compressed size alone, as the store would store it. */
  aloneBytes: number;
  candidates: number[];
}

/** A sampled page of any kind, with its delta-only candidate (-1: none). */
export interface SampledPage {
  page: number;
  kind: number;
  deltaOnlyCandidate: number;
}

/** Capacity of the samples; the caller's --sample. */
export interface ReplayOptions {
  sampleSize: number;
  seed: number;
}

/** zram keeps a compressed page only below this size (its huge_class_size, 3/4 page). */
const ZRAM_HUGE_BYTES = (PAGE_SIZE * 3) / 4;

/**
 * Distinct pages the detector study indexes at most: its three indexes take about 500
 * bytes a page, so 2^20 pages (4 GiB of distinct pages) cap them near 512 MiB of memory.
 * Past it the detector counts cover the first pages only, and the report says so.
 */
export const DETECTOR_STUDY_PAGES_MAX = 1 << 20;

/** The replay state of one analysis: feed chunks in order, then read the counters. */
export class Replay {
  readonly classes: PageClasses = {
    zero: 0,
    sameWord: 0,
    duplicateInFile: 0,
    duplicateAcrossFiles: 0,
    similar: 0,
    uniqueCompressed: 0,
    uniqueRaw: 0,
  };
  readonly bytes: ExactBytes = {
    raw: 0,
    zeroOnly: 0,
    zeroAndSameWord: 0,
    zeroSameWordIdentical: 0,
    zstdPerPage: 0,
    lz4PerPage: 0,
    zramStyle: 0,
    zeroIdenticalZstd: 0,
    zeroIdenticalLz4: 0,
    combined: 0,
  };
  /** Pages read so far (the global page number of the next page). */
  pageCount = 0;
  /** Microseconds spent in delta encodes while replaying, and their number. */
  deltaEncodeUs = 0;
  deltaEncodes = 0;

  readonly targets: Reservoir<SampledTarget>;
  readonly pages: Reservoir<SampledPage>;
  /** Sampled (page, base) pairs where the store's index offered a base. */
  readonly pairs: Reservoir<[number, number]>;

  private readonly contentTable = new KeyTable(16);
  private readonly similarTable = new KeyTable(16);
  private readonly deltaOnlyTable = new KeyTable(16);
  private readonly keyTables = KEY_SETS.map(() => new KeyTable(14));
  private readonly keys = KEY_SETS.map((set) => new Uint32Array(set.keyCount));
  private readonly counts: DetectorCounts[] = STUDY_DETECTORS.map((detector) => ({
    name: detector.name,
    keyCount: detector.slots.length,
    pagesLooked: 0,
    pagesWithCandidate: 0,
  }));
  private readonly files: number[] = [];
  private readonly offsets: number[] = [];
  private readonly fds = new Map<number, number>();
  private readonly baseScratch = Buffer.alloc(PAGE_SIZE);
  private readonly votes = new Map<number, number>();

  constructor(
    private readonly paths: readonly string[],
    options: ReplayOptions,
  ) {
    this.targets = new Reservoir(options.sampleSize, options.seed);
    this.pages = new Reservoir(options.sampleSize, options.seed + 1);
    this.pairs = new Reservoir(options.sampleSize, options.seed + 2);
  }

  /** Exact counts of every detector of the study. */
  detectorCounts(): DetectorCounts[] {
    return this.counts.map((counts) => ({ ...counts }));
  }

  /** Reads page `page` (global number) into `out`; for bases and the sampled studies. */
  readPage(page: number, out: Buffer): Buffer {
    const file = this.files[page]!;
    let fd = this.fds.get(file);
    if (fd === undefined) {
      fd = openSync(this.paths[file]!, 'r');
      this.fds.set(file, fd);
    }
    const got = readSync(fd, out, 0, PAGE_SIZE, this.offsets[page]!);
    if (got !== PAGE_SIZE) throw new Error(`${this.paths[file]}: short read at page ${page}`);
    return out;
  }

  close(): void {
    for (const fd of this.fds.values()) closeSync(fd);
    this.fds.clear();
  }

  /**
   * Replays one chunk: `src` holds its pages, read from `file` at `fileOffset`, and `stats`
   * what the workers computed for them. Chunks must come in page order.
   */
  addChunk(src: Buffer, stats: ChunkStats, file: number, fileOffset: number): void {
    for (let i = 0; i < stats.pageCount; i++) {
      const page = this.pageCount++;
      this.files.push(file);
      this.offsets.push(fileOffset + i * PAGE_SIZE);
      this.addPage(src, stats, i, page, file);
    }
  }

  private addPage(src: Buffer, stats: ChunkStats, i: number, page: number, file: number): void {
    const kind = stats.kind[i]!;
    const zstdBytes = Math.min(stats.zstdBytes[i]!, PAGE_SIZE);
    const lz4Bytes = Math.min(stats.lz4Bytes[i]!, PAGE_SIZE);
    const bytes = this.bytes;
    bytes.raw += PAGE_SIZE;
    bytes.zstdPerPage += zstdBytes;
    bytes.lz4PerPage += lz4Bytes;
    if (kind !== PageKind.sameWord && kind !== PageKind.zero) {
      bytes.zramStyle += stats.lz4Bytes[i]! < ZRAM_HUGE_BYTES ? stats.lz4Bytes[i]! : PAGE_SIZE;
    }
    const deltaOnlyCandidate = this.lookupDeltaOnly(stats, i, page);
    this.pages.offer(() => ({ page, kind, deltaOnlyCandidate }));
    if (kind === PageKind.zero) {
      this.classes.zero++;
      return;
    }
    bytes.zeroOnly += PAGE_SIZE;
    if (kind === PageKind.sameWord) {
      this.classes.sameWord++;
      return;
    }
    bytes.zeroAndSameWord += PAGE_SIZE;
    const first = this.contentTable.get(stats.hashHi[i]!, stats.hashLo[i]!);
    if (first >= 0) {
      if (this.files[first] === file) this.classes.duplicateInFile++;
      else this.classes.duplicateAcrossFiles++;
      return;
    }
    this.contentTable.set(stats.hashHi[i]!, stats.hashLo[i]!, page);
    bytes.zeroSameWordIdentical += PAGE_SIZE;
    bytes.zeroIdenticalLz4 += lz4Bytes;
    const aloneBytes = zstdBytes; // already capped: a page that zstd cannot shrink is raw
    bytes.zeroIdenticalZstd += aloneBytes;
    const candidates = this.lookupDetectors(stats, i, page);
    this.targets.offer(() => ({ page, aloneBytes, candidates }));
    this.storeDistinctPage(src, stats, i, page, aloneBytes);
  }

  /** The store's decision for a page that is neither uniform nor a duplicate. */
  private storeDistinctPage(
    src: Buffer,
    stats: ChunkStats,
    i: number,
    page: number,
    aloneBytes: number,
  ): void {
    const base = this.bestCandidate(this.similarTable, stats.features, i * FEATURE_COUNT);
    let deltaBytes = -1;
    if (base >= 0) {
      this.pairs.offer(() => [page, base]);
      const started = performance.now();
      const ref = this.readPage(base, this.baseScratch);
      const delta = zstdDeltaCodec.encode(src, i * PAGE_SIZE, ref, aloneBytes);
      this.deltaEncodeUs += (performance.now() - started) * 1000;
      this.deltaEncodes++;
      if (delta !== null) deltaBytes = delta.length;
    }
    if (deltaBytes >= 0) {
      this.classes.similar++;
      this.bytes.combined += deltaBytes;
      return;
    }
    if (aloneBytes < PAGE_SIZE) this.classes.uniqueCompressed++;
    else this.classes.uniqueRaw++;
    this.bytes.combined += aloneBytes;
    for (const slot of STORE_SLOTS) {
      const feature = stats.features[i * FEATURE_COUNT + slot]!;
      if (feature !== 0) this.similarTable.set(1, feature, page);
    }
  }

  /**
   * The store's base choice: the page sharing most features (ties: the newest), or -1.
   * Features carry their slot in their top bits, so one key word per feature suffices.
   */
  private bestCandidate(table: KeyTable, features: Uint32Array, at: number): number {
    return this.vote(
      STORE_SLOTS.length,
      (i) => features[at + STORE_SLOTS[i]!]!,
      (_slot, key) => table.get(1, key),
    );
  }

  /** Votes among the pages found for `keyCount` keys; returns the winner or -1. */
  private vote(
    keyCount: number,
    keyOf: (slot: number) => number,
    find: (slot: number, key: number) => number,
  ): number {
    const votes = this.votes;
    votes.clear();
    for (let slot = 0; slot < keyCount; slot++) {
      const key = keyOf(slot);
      if (key === 0) continue;
      const found = find(slot, key);
      if (found >= 0) votes.set(found, (votes.get(found) ?? 0) + 1);
    }
    let best = -1;
    let bestVotes = 0;
    for (const [page, count] of votes) {
      if (count > bestVotes || (count === bestVotes && page > best)) {
        best = page;
        bestVotes = count;
      }
    }
    return best;
  }

  /** "Delta only": every page is indexed (no dedup, no deltas excluded). */
  private lookupDeltaOnly(stats: ChunkStats, i: number, page: number): number {
    const at = i * FEATURE_COUNT;
    const best = this.bestCandidate(this.deltaOnlyTable, stats.features, at);
    for (const slot of STORE_SLOTS) {
      const feature = stats.features[at + slot]!;
      if (feature !== 0) this.deltaOnlyTable.set(1, feature, page);
    }
    return best;
  }

  /**
   * Looks the page up with every study detector (STUDY_DETECTORS order), counts hits and
   * indexes the page; returns each detector's best candidate (-1: none, or past the cap).
   */
  private lookupDetectors(stats: ChunkStats, i: number, page: number): number[] {
    if (this.counts[0]!.pagesLooked >= DETECTOR_STUDY_PAGES_MAX) {
      return STUDY_DETECTORS.map(() => -1);
    }
    const hashes = { blocks: stats.blocks, features: stats.features };
    KEY_SETS.forEach((set, index) => {
      set.keysOf(hashes, i, this.keys[index]!);
    });
    const candidates = STUDY_DETECTORS.map((detector, index) => {
      const best = this.detectorBest(detector);
      const counts = this.counts[index]!;
      counts.pagesLooked++;
      if (best >= 0) counts.pagesWithCandidate++;
      return best;
    });
    KEY_SETS.forEach((_set, index) => {
      const keys = this.keys[index]!;
      const table = this.keyTables[index]!;
      for (let slot = 0; slot < keys.length; slot++) {
        if (keys[slot] !== 0) table.set(slot + 1, keys[slot]!, page);
      }
    });
    return candidates;
  }

  private detectorBest(detector: Detector): number {
    const keys = this.keys[detector.keySet]!;
    const table = this.keyTables[detector.keySet]!;
    const slots = detector.slots;
    return this.vote(
      slots.length,
      (n) => keys[slots[n]!]!,
      (n, key) => table.get(slots[n]! + 1, key),
    );
  }
}
