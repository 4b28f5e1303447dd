/**
 * `diffswap analyze`: what each storage technique would save on memory images, measured
 * with the store's own codecs. Design:
 * - One streaming pass reads every image in chunks of CHUNK_PAGES pages; worker threads
 *   (one per core) compute what needs only the page (scan, hash, sketch, compressed sizes,
 *   study block hashes); the main thread replays the results in page order to decide what
 *   the store would keep (replay.ts), doing the delta encodes itself. Exact over all pages.
 * - The costly comparisons (other compressors and levels, delta only, detector hit quality,
 *   patch algorithms, BWT+MTF) then run on seeded reservoir samples (study.ts); the report
 *   marks these figures as sampled and gives the sample sizes.
 * Memory: about 200 bytes per page read for the exact replay (page locations, content and
 * similarity indexes) plus about 500 per distinct page for the detector study (capped, see
 * DETECTOR_STUDY_PAGES_MAX); chunk buffers are bounded by the pool's in-flight limit.
 * XXX: the exact replay itself is not capped; images far beyond RAM/200 pages need --sample
 * style sampling of the exact pass too, which does not exist yet.
 */
import { closeSync, openSync, readSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { PAGE_SIZE } from '../device/types.js';
import { type ImageInput, openImage } from './input.js';
import { ChunkPool, type ChunkReply } from './pool.js';
import { DETECTOR_STUDY_PAGES_MAX, type ExactBytes, type PageClasses, Replay } from './replay.js';
import { runStudies, type StudyResults } from './study.js';

/** Pages per chunk sent to a worker: 4 MiB, large enough that messaging costs nothing. */
export const CHUNK_PAGES = 1024;
/** Default size of each sample of the costly comparisons. */
export const SAMPLE_SIZE_DEFAULT = 1000;

export interface AnalyzeOptions {
  /** Size of each sample for the costly comparisons (pages, or pairs). */
  sampleSize?: number;
  /** Worker threads; default one per core. 0 computes in the main thread. */
  workers?: number;
  seed?: number;
  /** Called after each chunk with bytes done and bytes total. */
  onProgress?(doneBytes: number, totalBytes: number): void;
  /** Called once the streaming pass is over and the sampled comparisons start. */
  onStudies?(): void;
  /** Skips the sampled studies (only the exact figures). */
  exactOnly?: boolean;
}

export interface FileSummary {
  path: string;
  format: ImageInput['format'];
  sizeBytes: number;
  pageCount: number;
  tailBytes: number;
}

/** One row of the technique table: stored payload bytes and saving of one policy. */
export interface TechniqueRow {
  name: string;
  storedBytes: number;
  /** 1 - stored / raw, in percent. */
  savingPercent: number;
  /** 'exact' over every page, or 'sampled' (estimated from the page sample). */
  basis: 'exact' | 'sampled';
}

export interface AnalysisReport {
  files: FileSummary[];
  pageCount: number;
  rawBytes: number;
  classes: PageClasses;
  exact: ExactBytes;
  techniques: TechniqueRow[];
  studies: StudyResults | null;
  sampleSize: number;
  detectorPagesCapped: boolean;
  timing: {
    elapsedS: number;
    streamS: number;
    studyS: number;
    workers: number;
    mibPerS: number;
    replayDeltaEncodes: number;
    replayDeltaUsPerEncode: number;
  };
  notes: string[];
}

/** Checks every path first; throws InputError for the first bad one. */
export function openImages(paths: readonly string[]): ImageInput[] {
  return paths.map((path) => openImage(path));
}

/** Reads `pageCount` pages at `offset` into a fresh transferable buffer. */
function readChunk(fd: number, offset: number, pageCount: number): ArrayBuffer {
  const buffer = new ArrayBuffer(pageCount * PAGE_SIZE);
  const view = Buffer.from(buffer);
  let done = 0;
  while (done < view.length) {
    const got = readSync(fd, view, done, view.length - done, offset + done);
    if (got === 0) throw new Error(`file shrank while being read (offset ${offset + done})`);
    done += got;
  }
  return buffer;
}

async function streamImages(
  images: ImageInput[],
  replay: Replay,
  pool: ChunkPool,
  options: AnalyzeOptions,
): Promise<void> {
  const totalBytes = images.reduce((sum, image) => sum + image.pageCount * PAGE_SIZE, 0);
  let doneBytes = 0;
  const inFlight: Array<{ reply: Promise<ChunkReply>; file: number; offset: number }> = [];
  const drainOne = async () => {
    const next = inFlight.shift()!;
    const reply = await next.reply;
    const src = Buffer.from(reply.buffer);
    replay.addChunk(src, reply.stats, next.file, next.offset);
    doneBytes += src.length;
    options.onProgress?.(doneBytes, totalBytes);
  };
  for (const [file, image] of images.entries()) {
    const fd = openSync(image.path, 'r');
    try {
      for (const range of image.ranges) {
        for (let page = 0; page < range.pageCount; page += CHUNK_PAGES) {
          const pageCount = Math.min(CHUNK_PAGES, range.pageCount - page);
          const offset = range.offset + page * PAGE_SIZE;
          const buffer = readChunk(fd, offset, pageCount);
          const reply = pool.submit(buffer, pageCount);
          // Awaited in order below; this guard only keeps a failure of a later chunk from
          // being reported as unhandled while an earlier one is being awaited.
          reply.catch(() => {});
          inFlight.push({ reply, file, offset });
          if (inFlight.length >= pool.inFlightMax) await drainOne();
        }
      }
    } finally {
      closeSync(fd);
    }
  }
  while (inFlight.length > 0) await drainOne();
}

function row(name: string, stored: number, raw: number, basis: TechniqueRow['basis']) {
  return { name, storedBytes: stored, savingPercent: raw ? 100 * (1 - stored / raw) : 0, basis };
}

function techniqueRows(
  exact: ExactBytes,
  studies: StudyResults | null,
  pageCount: number,
): TechniqueRow[] {
  const raw = exact.raw;
  const rows: TechniqueRow[] = [
    row('zero pages only', exact.zeroOnly, raw, 'exact'),
    row('zero + same-word pages', exact.zeroAndSameWord, raw, 'exact'),
    row('+ identical pages (dedup)', exact.zeroSameWordIdentical, raw, 'exact'),
    row('zram-style: same-word free, lz4, raw if > 3/4 page', exact.zramStyle, raw, 'exact'),
    row('compression only: lz4 per page', exact.lz4PerPage, raw, 'exact'),
    row('compression only: zstd -3 per page', exact.zstdPerPage, raw, 'exact'),
  ];
  // Sampled compressors are scaled by their ratio to zstd -3 on the same sample, applied
  // to the exact zstd -3 total: page sizes are skewed (mostly tiny, some whole pages), so a
  // sample mean alone can miss the exact figure by points; the ratio is far steadier.
  const reference = studies?.compressors.find((c) => c.name.startsWith('zstd -3 ('));
  for (const compressor of studies?.compressors ?? []) {
    if (compressor === reference || compressor.name === 'lz4' || !reference) continue;
    const stored = (exact.zstdPerPage * compressor.meanBytes) / reference.meanBytes;
    rows.push(row(`compression only: ${compressor.name}`, stored, raw, 'sampled'));
  }
  if (studies) {
    rows.push(
      row('delta only (raw otherwise)', studies.deltaOnlyMeanBytes * pageCount, raw, 'sampled'),
    );
  }
  rows.push(
    row('zero + identical + lz4', exact.zeroIdenticalLz4, raw, 'exact'),
    row('zero + identical + zstd -3', exact.zeroIdenticalZstd, raw, 'exact'),
    row('all combined (store default: + delta)', exact.combined, raw, 'exact'),
  );
  return rows;
}

/** Analyzes already opened images (see openImages); the report of every table. */
export async function analyzeImages(
  images: ImageInput[],
  options: AnalyzeOptions = {},
): Promise<AnalysisReport> {
  const started = performance.now();
  const sampleSize = options.sampleSize ?? SAMPLE_SIZE_DEFAULT;
  const replay = new Replay(
    images.map((image) => image.path),
    { sampleSize, seed: options.seed ?? 1 },
  );
  const pool = new ChunkPool(options.workers ?? availableParallelism());
  try {
    await streamImages(images, replay, pool, options);
  } finally {
    await pool.close();
  }
  const streamS = (performance.now() - started) / 1000;
  const scratch = Buffer.allocUnsafe(PAGE_SIZE);
  let studies: StudyResults | null = null;
  try {
    if (!options.exactOnly) options.onStudies?.();
    if (!options.exactOnly) studies = runStudies(replay, (page) => replay.readPage(page, scratch));
  } finally {
    replay.close();
  }
  const elapsedS = (performance.now() - started) / 1000;
  const detectorCounts = replay.detectorCounts();
  const detectorPagesCapped = (detectorCounts[0]?.pagesLooked ?? 0) >= DETECTOR_STUDY_PAGES_MAX;
  const notes = [
    'Savings are of payload bytes (1 - stored / raw); object and index metadata not counted.',
    `Rows marked 'sampled' and the study tables use seeded samples of ${sampleSize} pages ` +
      'or pairs.',
  ];
  if (detectorPagesCapped) {
    notes.push(`Detector counts cover the first ${DETECTOR_STUDY_PAGES_MAX} distinct pages.`);
  }
  for (const image of images) {
    if (image.tailBytes > 0) {
      notes.push(`${image.path}: last ${image.tailBytes} bytes are not a whole page, ignored.`);
    }
  }
  return {
    files: images.map(({ path, format, sizeBytes, pageCount, tailBytes }) => ({
      path,
      format,
      sizeBytes,
      pageCount,
      tailBytes,
    })),
    pageCount: replay.pageCount,
    rawBytes: replay.bytes.raw,
    classes: { ...replay.classes },
    exact: { ...replay.bytes },
    techniques: techniqueRows(replay.bytes, studies, replay.pageCount),
    studies,
    sampleSize,
    detectorPagesCapped,
    timing: {
      elapsedS,
      streamS,
      studyS: elapsedS - streamS,
      workers: pool.workerCount,
      mibPerS: replay.bytes.raw / (1 << 20) / Math.max(streamS, 1e-6),
      replayDeltaEncodes: replay.deltaEncodes,
      replayDeltaUsPerEncode: replay.deltaEncodes ? replay.deltaEncodeUs / replay.deltaEncodes : 0,
    },
    notes,
  };
}

export { ExitCode, InputError } from './input.js';
