/**
 * Codec microbenchmark: cost per 4 KiB page of the per-page steps (native and TypeScript
 * side by side in one run) and the size each codec gets on real process memory.
 * Real pages come from a fresh node child's anonymous memory (test/helpers/process-memory).
 *
 * Run alone: `node dist/test/bench/sections/codec.js [MiB]`; `npm run bench` runs it as the
 * section named 'codec'.
 */
import { pathToFileURL } from 'node:url';
import {
  FEATURE_COUNT,
  hashPage,
  lz4Codec,
  type PageCodec,
  scanPagesNative,
  scanPagesTs,
  sketchPagesNative,
  sketchPagesTs,
  usingNativePages,
  ZstdCodec,
  ZstdDictCodec,
  zstdDeltaCodec,
} from '../../../src/codec/index.js';
import { PAGE_SIZE } from '../../../src/device/types.js';
import { realMemoryPages } from '../../helpers/process-memory.js';
import type { BenchContext, BenchSection } from '../lib/section.js';

/** Real memory to sample by default: enough pages for stable means, quick on 2 cores. */
const SAMPLE_BYTES_DEFAULT = 32 << 20;
/** Minimum wall time per timed step, so short steps are not dominated by timer noise. */
const STEP_MS_MIN = 200;

export interface CodecFigure {
  step: string;
  usPerPage: number;
  /** Mean payload bytes per page, for encoders. */
  bytesPerPage?: number;
}

/** CPU time of this process in microseconds: robust to other processes sharing the cores. */
function cpuUs(): number {
  const usage = process.cpuUsage();
  return usage.user + usage.system;
}

/**
 * Runs `body` (which handles `pageCount` pages) until STEP_MS_MIN of CPU passed; returns CPU
 * microseconds per page. CPU time, not wall time: these machines are shared, and a busy
 * neighbour would otherwise inflate every figure.
 */
function timePerPage(pageCount: number, body: () => void): number {
  body(); // warm-up: JIT, lazily created contexts
  let rounds = 0;
  const start = cpuUs();
  let elapsedUs = 0;
  do {
    body();
    rounds++;
    elapsedUs = cpuUs() - start;
  } while (elapsedUs < STEP_MS_MIN * 1000);
  return elapsedUs / (rounds * pageCount);
}

/** The non-uniform pages of `image`, packed: the ones the store would sketch and compress. */
function nonUniformPages(image: Buffer): Buffer {
  const pageCount = image.length / PAGE_SIZE;
  const words = new BigUint64Array(pageCount);
  const uniform = new Uint8Array(pageCount);
  scanPagesTs(image, pageCount, words, uniform);
  const kept: Buffer[] = [];
  for (let i = 0; i < pageCount; i++) {
    if (uniform[i] === 0) kept.push(image.subarray(i * PAGE_SIZE, (i + 1) * PAGE_SIZE));
  }
  return Buffer.concat(kept);
}

/** Pairs (page, reference) that share a sketch feature and are not identical. */
function similarPairs(pages: Buffer, pairsMax: number): Array<[Buffer, Buffer]> {
  const pageCount = pages.length / PAGE_SIZE;
  const features = new Uint32Array(pageCount * FEATURE_COUNT);
  sketchPagesTs(pages, pageCount, features, { blocks: true, superFeatures: true });
  const firstByFeature = new Map<number, number>();
  const pairs: Array<[Buffer, Buffer]> = [];
  const pageAt = (i: number) => pages.subarray(i * PAGE_SIZE, (i + 1) * PAGE_SIZE);
  for (let i = 0; i < pageCount && pairs.length < pairsMax; i++) {
    let match = -1;
    for (let slot = 0; slot < FEATURE_COUNT; slot++) {
      const feature = features[i * FEATURE_COUNT + slot]!;
      if (feature === 0) continue;
      const seen = firstByFeature.get(feature);
      if (seen === undefined) firstByFeature.set(feature, i);
      else if (match < 0 && !pageAt(seen).equals(pageAt(i))) match = seen;
    }
    if (match >= 0) pairs.push([pageAt(i), pageAt(match)]);
  }
  return pairs;
}

function timeLoops(pages: Buffer): CodecFigure[] {
  const pageCount = pages.length / PAGE_SIZE;
  const words = new BigUint64Array(pageCount);
  const uniform = new Uint8Array(pageCount);
  const features = new Uint32Array(pageCount * FEATURE_COUNT);
  const figures: CodecFigure[] = [];
  const sketchKinds = [
    ['blocks + super-features', { blocks: true, superFeatures: true }],
    ['blocks', { blocks: true, superFeatures: false }],
    ['super-features', { blocks: false, superFeatures: true }],
  ] as const;
  figures.push({
    step: 'fill-word scan, TS',
    usPerPage: timePerPage(pageCount, () => scanPagesTs(pages, pageCount, words, uniform)),
  });
  for (const [label, options] of sketchKinds) {
    figures.push({
      step: `sketch ${label}, TS`,
      usPerPage: timePerPage(pageCount, () => sketchPagesTs(pages, pageCount, features, options)),
    });
  }
  if (usingNativePages) {
    figures.push({
      step: 'fill-word scan, native',
      usPerPage: timePerPage(pageCount, () => scanPagesNative(pages, pageCount, words, uniform)),
    });
    for (const [label, options] of sketchKinds) {
      figures.push({
        step: `sketch ${label}, native`,
        usPerPage: timePerPage(pageCount, () =>
          sketchPagesNative(pages, pageCount, features, options),
        ),
      });
    }
  }
  figures.push({
    step: 'SHA-256 (hashPage)',
    usPerPage: timePerPage(pageCount, () => {
      for (let i = 0; i < pageCount; i++) hashPage(pages, i * PAGE_SIZE);
    }),
  });
  return figures;
}

/** Encode and decode cost and mean size of `codec` over `pages` (or over `pairs` if delta). */
function timeCodec(codec: PageCodec, label: string, inputs: Array<[Buffer, Buffer | null]>) {
  const payloads = inputs.map(([page, ref]) => codec.encode(page, 0, ref, Infinity)!);
  const bytes = payloads.reduce((sum, payload) => sum + payload.length, 0);
  const out = Buffer.allocUnsafe(PAGE_SIZE);
  const encodeUs = timePerPage(inputs.length, () => {
    for (const [page, ref] of inputs) codec.encode(page, 0, ref, Infinity);
  });
  const decodeUs = timePerPage(inputs.length, () => {
    for (let i = 0; i < inputs.length; i++) codec.decode(payloads[i]!, inputs[i]![1], out, 0);
  });
  return [
    { step: `${label} encode`, usPerPage: encodeUs, bytesPerPage: bytes / inputs.length },
    { step: `${label} decode`, usPerPage: decodeUs },
  ];
}

function timeCodecs(pages: Buffer): CodecFigure[] {
  const pageCount = Math.min(pages.length / PAGE_SIZE, 4000);
  const alone: Array<[Buffer, null]> = [];
  for (let i = 0; i < pageCount; i++) {
    alone.push([pages.subarray(i * PAGE_SIZE, (i + 1) * PAGE_SIZE), null]);
  }
  const pairs = similarPairs(pages, 2000);
  // A raw-content dictionary of sampled pages; zstd-napi exposes no dictionary trainer.
  const dictionary = Buffer.concat(
    Array.from({ length: 16 }, (_, i) => alone[(i * 97) % alone.length]![0]),
  );
  const figures: CodecFigure[] = [];
  for (const level of [1, 3, 9]) {
    figures.push(...timeCodec(new ZstdCodec(level), `zstd -${level}`, alone));
  }
  figures.push(...timeCodec(lz4Codec, 'lz4', alone));
  figures.push(...timeCodec(new ZstdDictCodec(dictionary, 3), 'zstd -3, 64 KiB raw dict', alone));
  if (pairs.length > 0) {
    figures.push(...timeCodec(zstdDeltaCodec, `zstd-delta (${pairs.length} pairs)`, pairs));
    const pairPagesAlone = pairs.map(([page]): [Buffer, null] => [page, null]);
    figures.push(...timeCodec(new ZstdCodec(3), 'same pair pages, zstd -3 alone', pairPagesAlone));
  }
  return figures;
}

/** Measures and prints the figures; returns them for the JSON report. */
export async function measureCodecs(sampleBytes: number, log: (line: string) => void) {
  const image = await realMemoryPages(sampleBytes, true);
  const pages = nonUniformPages(image);
  log(
    `${image.length / PAGE_SIZE} real anonymous pages of a node process, ` +
      `${pages.length / PAGE_SIZE} not uniform; native loops ${usingNativePages ? 'on' : 'off'}`,
  );
  const figures = [...timeLoops(pages), ...timeCodecs(pages)];
  log(['step'.padEnd(44), 'us/page'.padStart(9), 'bytes/page'.padStart(11)].join(''));
  for (const f of figures) {
    const bytes = f.bytesPerPage === undefined ? '' : f.bytesPerPage.toFixed(0);
    log([f.step.padEnd(44), f.usPerPage.toFixed(2).padStart(9), bytes.padStart(11)].join(''));
  }
  return figures;
}

export const section: BenchSection = {
  name: 'codec',
  description: 'per-page cost of hash, scan, sketch (native and TypeScript) and codecs',
  async run(ctx: BenchContext) {
    const sampleBytes = ctx.quick ? 4 << 20 : SAMPLE_BYTES_DEFAULT;
    const figures = await measureCodecs(sampleBytes, (line) => ctx.log(line));
    ctx.record('figures', figures);
  },
};

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  const mib = Number(process.argv[2] ?? SAMPLE_BYTES_DEFAULT / (1 << 20));
  await measureCodecs(mib << 20, (line) => console.log(line));
}
