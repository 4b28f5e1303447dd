/**
 * The costly comparisons of `diffswap analyze`, run after the streaming pass on the samples
 * it drew (replay.ts): compressor levels and deflate, delta-only storage, each detector's
 * hit quality, patch algorithms on the same similar pairs, and BWT+MTF before compression.
 * Sizes and timings come from running the codecs on real pages read back from the images.
 */
import { deflateRawSync } from 'node:zlib';
import {
  FEATURE_COUNT,
  lz4Codec,
  type PageCodec,
  sketchPages,
  ZstdCodec,
  ZstdDictCodec,
  zstdDeltaCodec,
} from '../codec/index.js';
import { blockHash } from '../codec/sketch.js';
import { PAGE_SIZE } from '../device/types.js';
import { bwtMtfForward, bwtMtfInverse } from './bwt.js';
import { PageKind } from './chunk.js';
import { STUDY_DETECTORS } from './detectors.js';
import { patchAlgorithms, zstdAny } from './patches.js';
import type { DetectorCounts, Replay } from './replay.js';

/** Size distribution of a set of payloads, in bytes. */
export interface SizeStats {
  count: number;
  mean: number;
  p50: number;
  p90: number;
  p99: number;
}

export interface CompressorRow {
  name: string;
  sampledPages: number;
  /** Mean stored bytes per page (raw when the payload would not fit in a page). */
  meanBytes: number;
  encodeUs: number;
}

export interface DetectorRow extends DetectorCounts {
  /** Sampled distinct pages whose best candidate was delta-encoded. */
  sampledHits: number;
  /** Mean zstd-delta bytes against the candidate, and the same pages alone (zstd -3). */
  meanDeltaBytes: number;
  meanAloneBytes: number;
  /** Share of sampled hits where the delta beat the page alone. */
  usefulShare: number;
  /** Cost of computing the page's keys, microseconds per page. */
  keyUs: number;
}

export interface PatchRow {
  name: string;
  sizes: SizeStats;
  encodeUs: number;
  decodeUs: number;
}

export interface BwtRow {
  name: string;
  sampledPages: number;
  meanBytesWithout: number;
  meanBytesWith: number;
  /** Percent smaller with BWT+MTF (negative: it made things worse). */
  gainPercent: number;
  /** Extra cost per page: the forward transform, and the inverse on read. */
  forwardUs: number;
  inverseUs: number;
}

export interface StudyResults {
  compressors: CompressorRow[];
  /** Mean stored bytes per page with delta encoding alone (no zero, dedup, compression). */
  deltaOnlyMeanBytes: number;
  deltaOnlySampledPages: number;
  detectors: DetectorRow[];
  patches: PatchRow[];
  bwt: BwtRow[];
}

/** BWT is slow in TypeScript (a few ms a page): it runs on at most this many pages. */
const BWT_SAMPLE_MAX = 100;

/** Mean and nearest-rank percentiles of `sizes` (all zero when empty). */
export function sizeStats(sizes: number[]): SizeStats {
  if (sizes.length === 0) return { count: 0, mean: 0, p50: 0, p90: 0, p99: 0 };
  const sorted = [...sizes].sort((a, b) => a - b);
  const at = (q: number) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]!;
  const mean = sorted.reduce((sum, size) => sum + size, 0) / sorted.length;
  return { count: sorted.length, mean, p50: at(0.5), p90: at(0.9), p99: at(0.99) };
}

/**
 * CPU microseconds of this process. The studies run after the worker pool is closed, so this
 * is the main thread's work (plus GC), unaffected by other processes sharing the cores.
 */
function nowUs(): number {
  const usage = process.cpuUsage();
  return usage.user + usage.system;
}

/** A PageCodec-shaped compressor for pages alone, with its row name. */
interface Compressor {
  name: string;
  bytes(page: Buffer): number;
}

function codecCompressor(name: string, codec: PageCodec): Compressor {
  return { name, bytes: (page) => codec.encode(page, 0, null, PAGE_SIZE)?.length ?? PAGE_SIZE };
}

function deflateCompressor(level: number): Compressor {
  return {
    name: `deflate -${level} (node:zlib)`,
    bytes: (page) => Math.min(PAGE_SIZE, deflateRawSync(page, { level }).length),
  };
}

/** Pages of the raw-content dictionary in the dictionary what-if (64 KiB). */
const DICT_PAGES = 16;

/**
 * The store-dictionary what-if (CodecId.zstdDict): a raw-content dictionary made of the
 * first distinct sampled pages (zstd-napi has no trainer), measured on the other pages only.
 */
function dictionaryCompressor(distinct: Buffer[]): Compressor | null {
  if (distinct.length < DICT_PAGES * 2) return null;
  const dictionary = Buffer.concat(distinct.slice(0, DICT_PAGES));
  const codec = new ZstdDictCodec(dictionary, 3);
  return {
    name: `zstd -3 + ${DICT_PAGES}-page dictionary (what-if)`,
    bytes: (page) => codec.encode(page, 0, null, PAGE_SIZE)?.length ?? PAGE_SIZE,
  };
}

/** The store's compressor, for the reference sizes of ratio estimates. */
const zstd3 = new ZstdCodec(3);
const zstd3Bytes = (page: Buffer) => zstd3.encode(page, 0, null, PAGE_SIZE)?.length ?? PAGE_SIZE;

/**
 * Ratio estimate for a row measured on a subset: its bytes relative to zstd -3 on the same
 * pages, times zstd -3's mean over the whole sample. Comparing means of different subsets
 * would mostly measure which pages each subset drew.
 */
function ratioEstimate(subsetBytes: number, subsetZstd3Bytes: number, zstd3Mean: number) {
  return subsetZstd3Bytes > 0 ? (zstd3Mean * subsetBytes) / subsetZstd3Bytes : zstd3Mean;
}

/** zstd -19 is 60x slower than -3: it runs on a tenth of the sample. */
const SLOW_SUBSAMPLE_EVERY = 10;

function studyCompressors(pages: Buffer[], distinct: Buffer[]): CompressorRow[] {
  const dictionary = dictionaryCompressor(distinct);
  const compressors = [
    codecCompressor('zstd -1', new ZstdCodec(1)),
    codecCompressor('zstd -3 (store default)', new ZstdCodec(3)),
    codecCompressor('zstd -9', new ZstdCodec(9)),
    codecCompressor('zstd -19 (ratio est.)', new ZstdCodec(19)),
    codecCompressor('lz4', lz4Codec),
    deflateCompressor(1),
    deflateCompressor(6),
    ...(dictionary ? [dictionary] : []),
  ];
  // The dictionary's own pages would flatter it: every compressor is measured without them.
  const dictionaryPages = new Set(dictionary ? distinct.slice(0, DICT_PAGES) : []);
  const measured = pages.filter((page) => !dictionaryPages.has(page));
  const zstd3Mean = measured.reduce((sum, page) => sum + zstd3Bytes(page), 0) / measured.length;
  return compressors.map((compressor) => {
    const slow = compressor.name.startsWith('zstd -19');
    const sample = slow ? measured.filter((_, i) => i % SLOW_SUBSAMPLE_EVERY === 0) : measured;
    const started = nowUs();
    const total = sample.reduce((sum, page) => sum + compressor.bytes(page), 0);
    const elapsedUs = nowUs() - started;
    const count = Math.max(1, sample.length);
    const reference = slow ? sample.reduce((sum, page) => sum + zstd3Bytes(page), 0) : 0;
    return {
      name: compressor.name,
      sampledPages: sample.length,
      meanBytes: slow ? ratioEstimate(total, reference, zstd3Mean) : total / count,
      encodeUs: elapsedUs / count,
    };
  });
}

/** Pages per frame in the grouped-compression what-if, and how many groups to sample. */
const GROUP_SIZES = [4, 8, 16] as const;
const GROUP_SAMPLE_MAX = 250;

/**
 * What-if rows for compressing consecutive pages as one zstd -3 frame (DESIGN.md calls it
 * the biggest lever measured; the store does not do it). Each sampled page starts a group
 * of the pages that follow it in the image; the row is a ratio estimate against zstd -3 of
 * the same pages one by one (see ratioEstimate), bytes per page.
 */
function studyGroups(
  replay: Replay,
  read: (page: number) => Buffer,
  starts: number[],
  zstd3Mean: number,
): CompressorRow[] {
  return GROUP_SIZES.map((size) => {
    const groups = starts.filter((p) => p + size <= replay.pageCount).slice(0, GROUP_SAMPLE_MAX);
    let total = 0;
    let perPage = 0;
    let cpu = 0;
    for (const first of groups) {
      const pages = Array.from({ length: size }, (_, i) => Buffer.from(read(first + i)));
      const joined = Buffer.concat(pages);
      const started = nowUs();
      total += Math.min(joined.length, zstdAny(joined).length);
      cpu += nowUs() - started;
      for (const page of pages) perPage += zstd3Bytes(page);
    }
    const pageCount = Math.max(1, groups.length * size);
    return {
      name: `zstd -3, ${size}-page frames (what-if, ratio est.)`,
      sampledPages: groups.length * size,
      meanBytes: ratioEstimate(total, perPage, zstd3Mean),
      encodeUs: cpu / pageCount,
    };
  });
}

function deltaBytes(page: Buffer, ref: Buffer): number {
  return zstdDeltaCodec.encode(page, 0, ref, Number.POSITIVE_INFINITY)?.length ?? PAGE_SIZE;
}

/** Time to compute each detector's keys for one page, measured on `pages`. */
function detectorKeyUs(pages: Buffer[]): number[] {
  if (pages.length === 0) return STUDY_DETECTORS.map(() => 0);
  const joined = Buffer.concat(pages);
  const features = new Uint32Array(pages.length * FEATURE_COUNT);
  // Each timing runs twice and keeps the second: the first pays for JIT compilation.
  const timeSketch = (blocks: boolean, superFeatures: boolean) => {
    let perPageUs = 0;
    for (let round = 0; round < 2; round++) {
      const started = nowUs();
      sketchPages(joined, pages.length, features, { blocks, superFeatures });
      perPageUs = (nowUs() - started) / pages.length;
    }
    return perPageUs;
  };
  let blockUs = 0;
  for (let round = 0; round < 2; round++) {
    const started = nowUs();
    for (let i = 0; i < pages.length; i++) blockHash(joined, i * PAGE_SIZE + 1024, 1);
    blockUs = (nowUs() - started) / pages.length;
  }
  return STUDY_DETECTORS.map((detector) => {
    if (detector.keySet === 0) {
      return timeSketch(detector.slots.includes(0), detector.slots.includes(2));
    }
    const blocksPerKey = detector.keySet === 1 ? 1 : 2;
    return blockUs * blocksPerKey * detector.slots.length;
  });
}

function studyDetectors(replay: Replay, read: (page: number) => Buffer): DetectorRow[] {
  const counts = replay.detectorCounts();
  const targets = replay.targets.items;
  const keyUs = detectorKeyUs(targets.slice(0, 500).map((t) => Buffer.from(read(t.page))));
  return counts.map((count, index) => {
    let hits = 0;
    let useful = 0;
    let deltaTotal = 0;
    let aloneTotal = 0;
    for (const target of targets) {
      const candidate = target.candidates[index]!;
      if (candidate < 0) continue;
      const page = Buffer.from(read(target.page));
      const delta = deltaBytes(page, read(candidate));
      hits++;
      deltaTotal += delta;
      aloneTotal += target.aloneBytes;
      if (delta < target.aloneBytes) useful++;
    }
    return {
      ...count,
      sampledHits: hits,
      meanDeltaBytes: hits ? deltaTotal / hits : 0,
      meanAloneBytes: hits ? aloneTotal / hits : 0,
      usefulShare: hits ? useful / hits : 0,
      keyUs: keyUs[index]!,
    };
  });
}

function studyPatches(pairs: Array<[Buffer, Buffer]>): PatchRow[] {
  const rows: PatchRow[] = patchAlgorithms().map((algorithm) => {
    const sample = algorithm.name.includes('BWT') ? pairs.slice(0, BWT_SAMPLE_MAX) : pairs;
    const payloads: Buffer[] = [];
    let started = nowUs();
    for (const [page, ref] of sample) payloads.push(algorithm.encode(page, ref));
    const encodeUs = (nowUs() - started) / Math.max(1, sample.length);
    started = nowUs();
    const decoded = sample.map(([, ref], i) => algorithm.decode(payloads[i]!, ref));
    const decodeUs = (nowUs() - started) / Math.max(1, sample.length);
    decoded.forEach((page, i) => {
      if (!page.equals(sample[i]![0])) throw new Error(`${algorithm.name} did not round-trip`);
    });
    return {
      name: algorithm.name,
      sizes: sizeStats(payloads.map((payload) => Math.min(payload.length, PAGE_SIZE))),
      encodeUs,
      decodeUs,
    };
  });
  const alone = new ZstdCodec(3);
  const started = nowUs();
  const sizes = pairs.map(([page]) => alone.encode(page, 0, null, PAGE_SIZE)?.length ?? PAGE_SIZE);
  rows.push({
    name: 'no patch: page alone, zstd -3',
    sizes: sizeStats(sizes),
    encodeUs: (nowUs() - started) / Math.max(1, pairs.length),
    decodeUs: 0,
  });
  return rows;
}

function studyBwt(pages: Buffer[], pairs: Array<[Buffer, Buffer]>): BwtRow[] {
  const sample = pages.slice(0, BWT_SAMPLE_MAX);
  let without = 0;
  let withBwt = 0;
  let forwardUs = 0;
  let inverseUs = 0;
  for (const page of sample) {
    without += zstd3.encode(page, 0, null, PAGE_SIZE)?.length ?? PAGE_SIZE;
    let started = nowUs();
    const transformed = bwtMtfForward(page);
    forwardUs += nowUs() - started;
    withBwt += Math.min(PAGE_SIZE, zstdAny(transformed).length);
    started = nowUs();
    bwtMtfInverse(transformed);
    inverseUs += nowUs() - started;
  }
  const count = Math.max(1, sample.length);
  const rows: BwtRow[] = [
    {
      name: 'before compression (page alone, zstd -3)',
      sampledPages: sample.length,
      meanBytesWithout: without / count,
      meanBytesWith: withBwt / count,
      gainPercent: without ? (100 * (without - withBwt)) / without : 0,
      forwardUs: forwardUs / count,
      inverseUs: inverseUs / count,
    },
  ];
  const patches = studyPatchesSubset(pairs.slice(0, BWT_SAMPLE_MAX));
  if (patches !== null) rows.push(...patches);
  return rows;
}

/** BWT+MTF before delta: the two BWT patch variants against their plain counterparts. */
function studyPatchesSubset(pairs: Array<[Buffer, Buffer]>): BwtRow[] | null {
  if (pairs.length === 0) return null;
  const algorithms = new Map(patchAlgorithms().map((a) => [a.name, a]));
  const compare = (name: string, plain: string, transformed: string): BwtRow => {
    const a = algorithms.get(plain)!;
    const b = algorithms.get(transformed)!;
    let without = 0;
    let withBwt = 0;
    let started = nowUs();
    for (const [page, ref] of pairs) without += Math.min(PAGE_SIZE, a.encode(page, ref).length);
    const plainUs = nowUs() - started;
    started = nowUs();
    const payloads = pairs.map(([page, ref]) => b.encode(page, ref));
    const forwardUs = nowUs() - started - plainUs;
    withBwt = payloads.reduce((sum, p) => sum + Math.min(PAGE_SIZE, p.length), 0);
    started = nowUs();
    pairs.forEach(([, ref], i) => {
      b.decode(payloads[i]!, ref);
    });
    const inverseUs = nowUs() - started;
    return {
      name,
      sampledPages: pairs.length,
      meanBytesWithout: without / pairs.length,
      meanBytesWith: withBwt / pairs.length,
      gainPercent: without ? (100 * (without - withBwt)) / without : 0,
      forwardUs: Math.max(0, forwardUs) / pairs.length,
      inverseUs: inverseUs / pairs.length,
    };
  };
  return [
    compare('before delta: XOR then zstd -3', 'XOR + zstd -3', 'XOR + BWT+MTF + zstd -3'),
    compare(
      'before delta: zstd-delta of both pages',
      'zstd-delta -3 (store)',
      'BWT+MTF both, then zstd-delta -3',
    ),
  ];
}

function zstd3MeanOf(pages: Buffer[]): number {
  return pages.reduce((sum, page) => sum + zstd3Bytes(page), 0) / Math.max(1, pages.length);
}

/** Runs every sampled comparison; `read` returns a page's bytes (valid until next call). */
export function runStudies(replay: Replay, read: (page: number) => Buffer): StudyResults {
  const sampled = replay.pages.items;
  const pages = sampled.map((s) => Buffer.from(read(s.page)));
  const distinct = pages.filter((_, i) => sampled[i]!.kind === PageKind.other);
  let deltaOnlyTotal = 0;
  sampled.forEach((s, i) => {
    if (s.deltaOnlyCandidate < 0) deltaOnlyTotal += PAGE_SIZE;
    else deltaOnlyTotal += Math.min(PAGE_SIZE, deltaBytes(pages[i]!, read(s.deltaOnlyCandidate)));
  });
  const pairs = replay.pairs.items.map(([page, base]): [Buffer, Buffer] => [
    Buffer.from(read(page)),
    Buffer.from(read(base)),
  ]);
  return {
    compressors: [
      ...studyCompressors(pages, distinct),
      ...studyGroups(
        replay,
        read,
        sampled.map((s) => s.page),
        zstd3MeanOf(pages),
      ),
    ],
    deltaOnlyMeanBytes: sampled.length ? deltaOnlyTotal / sampled.length : PAGE_SIZE,
    deltaOnlySampledPages: sampled.length,
    detectors: studyDetectors(replay, read),
    patches: studyPatches(pairs),
    bwt: studyBwt(distinct, pairs),
  };
}
