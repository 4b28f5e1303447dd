/**
 * Page store benchmark (issue 3), two reports.
 *
 * Savings: real memory images (lib/images.ts: three processes, two guests' RAM) are written
 * through NBD (nbdcopy) into `diffswap serve` with one set of techniques on at a time, then
 * compacted, and the store's files are measured on disk: segment payloads plus the LMDB index,
 * allocated blocks, every byte of metadata counted (the space reserve file is not data and is
 * left out). Beside them, computed here over the same pages: zram-style (same-filled pages
 * free, lz4, raw when over 3/4 page) and zstd -3 per page, payload only.
 *
 * Throughput: fio 4 KiB random write and read at depth 16 and random read at depth 1 with
 * memory-like buffers (partly compressible, some duplicates), against `nbdkit memory` (raw
 * pages in RAM) and `nbdkit memory allocator=zstd`, runs alternated over rounds.
 *
 * Goals: saving >= 80% on process memory with all metadata; >= 1.0x nbdkit's raw store in
 * IOPS both ways; depth-1 p99 within 1.2x.
 */
import { mkdir, readdir, readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { lz4Codec, ZstdCodec } from '../../../src/codec/index.js';
import type { StoreStats, TechniqueSwitches } from '../../../src/device/types.js';
import { runToolOk } from '../../helpers/exec.js';
import { freePort } from '../../helpers/nbd-server.js';
import { type FioBenchJob, prefill, runFioJob } from '../lib/fio.js';
import { guestImages, type MemoryImage, processImage } from '../lib/images.js';
import type { BenchContext, BenchSection } from '../lib/section.js';
import { type BenchServer, startDiffswap, startNbdkitMemory } from '../lib/servers.js';
import { type Cell, formatTable, median } from '../lib/table.js';

const MiB = 1024 * 1024;
const PAGE = 4096;
/** zram keeps a page raw when its compressed form is larger than this (3/4 page). */
const ZRAM_RAW_THRESHOLD = (PAGE * 3) / 4;
/** Goals of issue 3. */
const SAVING_GOAL = 0.8;
const P99_RATIO_MAX = 1.2;

type Techniques = TechniqueSwitches;
const OFF: Techniques = { zero: false, dedup: false, delta: false, compress: false };

/** The technique sets measured: each alone, then combined as the store runs by default. */
const POLICIES: Array<{ label: string; techniques: Techniques }> = [
  { label: 'none (raw pages + metadata)', techniques: OFF },
  { label: 'zero only', techniques: { ...OFF, zero: true } },
  { label: 'dedup only', techniques: { ...OFF, dedup: true } },
  { label: 'delta only', techniques: { ...OFF, delta: true } },
  { label: 'compress only (zstd -3)', techniques: { ...OFF, compress: true } },
  { label: 'zero + dedup', techniques: { ...OFF, zero: true, dedup: true } },
  {
    label: 'zero + dedup + compress',
    techniques: { ...OFF, zero: true, dedup: true, compress: true },
  },
  {
    label: 'all (store default)',
    techniques: { zero: true, dedup: true, delta: true, compress: true },
  },
];

interface ImageSet {
  name: string;
  /** One export per image, all in one sharing group (cross-image duplicates count). */
  images: MemoryImage[];
}

interface StoreFigures {
  rawBytes: number;
  segmentBytes: number;
  indexBytes: number;
  diskBytes: number;
  saving: number;
  /** The store's own accounting of payload (no metadata). */
  payloadSaving: number;
  ingestMiBs: number;
}

/** Allocated bytes of a file (blocks actually used, not its apparent size). */
async function allocated(path: string): Promise<number> {
  const info = await stat(path);
  return info.blocks * 512;
}

async function dirAllocated(dir: string): Promise<number> {
  let total = 0;
  for (const name of await readdir(dir)) total += await allocated(join(dir, name));
  return total;
}

/** A config with one export per image (listeners come from the command line). */
async function writeConfig(dir: string, set: ImageSet, techniques: Techniques): Promise<string> {
  const exports = set.images
    .map((image) => {
      const size = Math.ceil(image.bytes / MiB) * MiB;
      const t = JSON.stringify(techniques);
      return `  - { name: ${image.name}, size: ${size}, techniques: ${t} }`;
    })
    .join('\n');
  const path = join(dir, 'config.yaml');
  await mkdir(dir, { recursive: true });
  await writeFile(path, [`data: ${join(dir, 'data')}`, 'exports:', exports, ''].join('\n'));
  return path;
}

async function httpJson<T>(port: number, path: string, method = 'GET'): Promise<T> {
  const response = await fetch(`http://127.0.0.1:${port}${path}`, { method });
  if (!response.ok)
    throw new Error(`${method} ${path}: ${response.status} ${await response.text()}`);
  return (await response.json()) as T;
}

/** Writes a set into a fresh store with `techniques`, compacts, stops, measures the files. */
async function measureStore(
  ctx: BenchContext,
  set: ImageSet,
  techniques: Techniques,
  runDir: string,
): Promise<StoreFigures> {
  const httpPort = await freePort();
  const config = await writeConfig(runDir, set, techniques);
  const server = await startDiffswap({
    rootDir: ctx.rootDir,
    backend: 'store',
    exports: [],
    extraArgs: ['--config', config],
    http: `127.0.0.1:${httpPort}`,
    label: 'diffswap store',
  });
  let stats: StoreStats;
  const startedMs = performance.now();
  try {
    for (const image of set.images) {
      await runToolOk('nbdcopy', ['--flush', image.path, server.uri(image.name)], {
        timeoutMs: 20 * 60_000,
      });
    }
    const ingestS = (performance.now() - startedMs) / 1000;
    await httpJson(httpPort, '/api/v1/compaction?wait=true', 'POST');
    stats = await httpJson<StoreStats>(httpPort, '/api/v1/stats');
    await server.stop();
    const data = join(runDir, 'data');
    const segmentBytes = await dirAllocated(join(data, 'segments'));
    const indexBytes = await dirAllocated(join(data, 'index'));
    const rawBytes = set.images.reduce((sum, image) => sum + image.bytes, 0);
    const diskBytes = segmentBytes + indexBytes;
    return {
      rawBytes,
      segmentBytes,
      indexBytes,
      diskBytes,
      saving: 1 - diskBytes / rawBytes,
      payloadSaving: 1 - stats.storedBytes / rawBytes,
      ingestMiBs: rawBytes / MiB / ingestS,
    };
  } finally {
    await server.stop();
  }
}

/** zram-style and zstd-only stored bytes of a set, computed page by page (payload only). */
async function referenceBytes(set: ImageSet): Promise<{ zram: number; zstd: number }> {
  const zstd = new ZstdCodec(3);
  let zram = 0;
  let zstdBytes = 0;
  for (const image of set.images) {
    const data = await readFile(image.path);
    for (let at = 0; at + PAGE <= data.length; at += PAGE) {
      const page = data.subarray(at, at + PAGE);
      // zram: a page of one repeated word costs nothing (its same-filled pages).
      const word = page.readBigUInt64LE(0);
      let same = true;
      for (let i = 8; i < PAGE && same; i += 8) same = page.readBigUInt64LE(i) === word;
      if (!same) {
        const lz4 = lz4Codec.encode(page, 0, null, PAGE)?.length ?? PAGE;
        zram += lz4 > ZRAM_RAW_THRESHOLD ? PAGE : lz4;
      }
      zstdBytes += zstd.encode(page, 0, null, PAGE)?.length ?? PAGE;
    }
  }
  return { zram, zstd: zstdBytes };
}

const pct = (x: number) => `${(x * 100).toFixed(1)}%`;
const mib = (x: number) => (x / MiB).toFixed(1);

async function savings(ctx: BenchContext): Promise<void> {
  const perProcess = ctx.quick ? 16 * MiB : 128 * MiB;
  ctx.log('making images: three processes (node, python3, cc1) and two guests (qemu, TCG)');
  const sets: ImageSet[] = [
    { name: 'processes', images: [await processImage(ctx.tmpDir, perProcess)] },
  ];
  if (!ctx.quick) sets.push({ name: 'two guests', images: await guestImages(ctx.tmpDir) });

  const recorded: Record<string, unknown> = {};
  for (const set of sets) {
    const raw = set.images.reduce((sum, image) => sum + image.bytes, 0);
    ctx.log(`\n${set.name}: ${set.images.map((i) => `${i.name} ${mib(i.bytes)} MiB`).join(', ')}`);
    const rows: Cell[][] = [];
    const figures: Record<string, StoreFigures> = {};
    let n = 0;
    for (const policy of POLICIES) {
      const runDir = join(ctx.tmpDir, `${set.name.replace(/\W+/g, '-')}-${n++}`);
      const f = await measureStore(ctx, set, policy.techniques, runDir);
      figures[policy.label] = f;
      rows.push([
        policy.label,
        mib(f.segmentBytes),
        mib(f.indexBytes),
        mib(f.diskBytes),
        pct(f.saving),
        pct(f.payloadSaving),
        f.ingestMiBs.toFixed(0),
      ]);
      ctx.log(`  ${policy.label}: ${pct(f.saving)} saved on disk`);
    }
    const reference = await referenceBytes(set);
    rows.push([
      'zram-style lz4 (computed, payload)',
      mib(reference.zram),
      '',
      '',
      pct(1 - reference.zram / raw),
      '',
      '',
    ]);
    rows.push([
      'zstd -3 per page (computed, payload)',
      mib(reference.zstd),
      '',
      '',
      pct(1 - reference.zstd / raw),
      '',
      '',
    ]);
    ctx.log();
    ctx.log(
      formatTable(
        ['techniques', 'segments MiB', 'index MiB', 'disk MiB', 'saving', 'payload', 'MiB/s in'],
        rows,
      ),
    );
    ctx.log(
      `(raw ${mib(raw)} MiB; saving = 1 - (segments + LMDB index, allocated) / raw; payload: ` +
        "the store's accounting without metadata; MiB/s in: nbdcopy ingest incl. flush)",
    );
    recorded[set.name] = { rawBytes: raw, figures, reference };
  }
  const processes = (recorded.processes as { figures: Record<string, StoreFigures> }).figures;
  const all = processes['all (store default)']?.saving ?? 0;
  ctx.log(
    `goal: saving >= ${pct(SAVING_GOAL)} on process memory with all metadata: ` +
      `${pct(all)} ${all >= SAVING_GOAL ? 'met' : 'SHORT'}`,
  );
  ctx.record('savings', recorded);
  ctx.record('savingGoalMet', all >= SAVING_GOAL);
}

/** `diffswap serve` with the page store and one export, its data under the bench's tmp dir. */
function startStore(ctx: BenchContext, name: string, sizeBytes: number, dir: string) {
  return startDiffswap({
    rootDir: ctx.rootDir,
    backend: 'store',
    exports: [{ name, sizeBytes }],
    dataDir: join(ctx.tmpDir, dir),
    label: 'diffswap store',
  });
}

/** fio's memory-like buffers: half-compressible pages, a fifth duplicates. */
const MEMORY_LIKE = [
  '--buffer_compress_percentage=50',
  '--buffer_compress_chunk=4096',
  '--dedupe_percentage=20',
  '--refill_buffers',
];

async function throughput(ctx: BenchContext): Promise<void> {
  const regionBytes = (ctx.quick ? 64 : 256) * MiB;
  const runtimeS = ctx.quick ? 2 : 8;
  const rounds = ctx.quick ? 1 : 2;
  const base = { blockBytes: 4096, regionBytes, runtimeS, rampS: 1, extra: MEMORY_LIKE };
  const jobs: FioBenchJob[] = [
    { ...base, label: 'randwrite qd16', rw: 'randwrite', iodepth: 16 },
    { ...base, label: 'randread qd16', rw: 'randread', iodepth: 16 },
    { ...base, label: 'randread qd1', rw: 'randread', iodepth: 1 },
  ];
  ctx.log(
    `\nfio 4 KiB, memory-like buffers (${MEMORY_LIKE.join(' ')}), ${regionBytes / MiB} MiB, ` +
      `${runtimeS} s per run, ${rounds} round(s), servers alternated`,
  );
  const servers: BenchServer[] = [];
  try {
    servers.push(await startStore(ctx, 'bench', regionBytes, 'fio-data'));
    servers.push(await startNbdkitMemory({ sizeBytes: regionBytes }));
    servers.push(await startNbdkitMemory({ sizeBytes: regionBytes, allocator: 'zstd' }));
    for (const server of servers) await prefill(server.uri(), regionBytes, MEMORY_LIKE);

    const samples = new Map<string, number[]>();
    const add = (key: string, value: number) =>
      samples.set(key, [...(samples.get(key) ?? []), value]);
    for (let round = 0; round < rounds; round++) {
      for (const [j, job] of jobs.entries()) {
        const order = (round + j) % 2 === 0 ? servers : [...servers].reverse();
        for (const server of order) {
          const result = await runFioJob(server.uri(), job);
          const dir = job.rw === 'randwrite' ? result.write : result.read;
          add(`${job.label}|${server.label}|IOPS`, dir.iops);
          add(`${job.label}|${server.label}|p99 us`, dir.p99LatencyUs);
          add(`${job.label}|${server.label}|p50 us`, dir.p50LatencyUs);
          ctx.log(
            `  round ${round + 1} ${job.label.padEnd(15)} ${server.label.padEnd(20)} ` +
              `${Math.round(dir.iops)} IOPS, p99 ${dir.p99LatencyUs.toFixed(0)} us`,
          );
        }
      }
    }
    const [store, raw, zstd] = servers.map((s) => s.label) as [string, string, string];
    const rows: Cell[][] = [];
    const figures: Record<string, Record<string, number>> = {};
    for (const job of jobs) {
      for (const metric of ['IOPS', 'p50 us', 'p99 us']) {
        const m = (server: string) => median(samples.get(`${job.label}|${server}|${metric}`) ?? []);
        const row = { diffswap: m(store), nbdkit: m(raw), nbdkitZstd: m(zstd) };
        figures[`${job.label} ${metric}`] = { ...row, ratio: row.diffswap / row.nbdkit };
        rows.push([
          job.label,
          metric,
          row.diffswap,
          row.nbdkit,
          row.nbdkitZstd,
          row.diffswap / row.nbdkit,
        ]);
      }
    }
    ctx.log();
    ctx.log(formatTable(['job', 'metric', store, raw, zstd, 'ratio d/raw'], rows));
    const ratio = (key: string) => figures[key]?.ratio ?? Number.NaN;
    const checks: Array<[string, boolean]> = [
      ['write IOPS >= 1.0x', ratio('randwrite qd16 IOPS') >= 1],
      ['read IOPS >= 1.0x', ratio('randread qd16 IOPS') >= 1],
      [`qd1 p99 <= ${P99_RATIO_MAX}x`, ratio('randread qd1 p99 us') <= P99_RATIO_MAX],
    ];
    ctx.log(
      `goal against ${raw}: ${checks.map(([w, ok]) => `${w} ${ok ? 'met' : 'SHORT'}`).join(', ')}`,
    );
    const rss = await Promise.all(servers.map(async (s) => [s.label, await s.rssBytes()]));
    ctx.record('throughput', { figures, rssBytesAfter: Object.fromEntries(rss) });
    ctx.record(
      'throughputGoalMet',
      checks.every(([, ok]) => ok),
    );
  } finally {
    for (const server of servers) await server.stop();
  }
}

/**
 * Reading a memory image back out with the tools people copy disks with: `qemu-img convert`
 * (asks BLOCK_STATUS one extent at a time, then reads the data) and `nbdcopy`, from the
 * store with its defaults and from `nbdkit memory` holding the same image, alternated.
 */
async function readBack(ctx: BenchContext): Promise<void> {
  const image = await processImage(ctx.tmpDir, ctx.quick ? 16 * MiB : 64 * MiB);
  const sizeBytes = Math.ceil(image.bytes / MiB) * MiB;
  const rounds = ctx.quick ? 1 : 3;
  ctx.log(`\nread back: ${mib(image.bytes)} MiB of process memory, ${rounds} round(s)`);
  const servers: BenchServer[] = [];
  try {
    servers.push(await startStore(ctx, 'img', sizeBytes, 'readback-data'));
    servers.push(await startNbdkitMemory({ sizeBytes }));
    for (const server of servers) {
      await runToolOk('nbdcopy', ['--flush', image.path, server.uri('img')]);
    }
    const out = join(ctx.tmpDir, 'readback.raw');
    const tools: Array<[string, (uri: string) => [string, string[]]]> = [
      ['qemu-img convert', (uri) => ['qemu-img', ['convert', '-O', 'raw', uri, out]]],
      ['nbdcopy', (uri) => ['nbdcopy', [uri, out]]],
    ];
    const seconds = new Map<string, number[]>();
    for (let round = 0; round < rounds; round++) {
      const order = round % 2 === 0 ? servers : [...servers].reverse();
      for (const [tool, command] of tools) {
        for (const server of order) {
          const [file, args] = command(server.uri('img'));
          const startedMs = performance.now();
          await runToolOk(file, args, { timeoutMs: 300_000 });
          const key = `${tool}|${server.label}`;
          seconds.set(key, [...(seconds.get(key) ?? []), (performance.now() - startedMs) / 1000]);
        }
      }
    }
    const [store, raw] = servers.map((s) => s.label) as [string, string];
    const figures: Record<string, Record<string, number>> = {};
    const rows: Cell[][] = tools.map(([tool]) => {
      const d = median(seconds.get(`${tool}|${store}`) ?? []);
      const n = median(seconds.get(`${tool}|${raw}`) ?? []);
      figures[tool] = { diffswap: d, nbdkit: n, ratio: d / n };
      return [tool, d.toFixed(2), n.toFixed(2), (d / n).toFixed(2)];
    });
    ctx.log(formatTable(['tool', `${store} s`, `${raw} s`, 'ratio'], rows));
    ctx.record('readBack', { imageBytes: image.bytes, figures });
  } finally {
    for (const server of servers) await server.stop();
  }
}

export const section: BenchSection = {
  name: 'store',
  description: 'page store: saving on real memory images with metadata; fio vs nbdkit memory',
  async run(ctx) {
    await savings(ctx);
    await throughput(ctx);
    await readBack(ctx);
  },
};

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  const { mkdtemp, rm } = await import('node:fs/promises');
  const { tmpdir } = await import('node:os');
  const tmpDir = await mkdtemp(join(tmpdir(), 'diffswap-bench-store-'));
  const rootDir = new URL('../../../../', import.meta.url).pathname;
  const quick = process.argv.includes('--quick');
  try {
    await section.run({
      rootDir,
      tmpDir,
      quick,
      log: (l = '') => console.log(l),
      record: () => {},
    });
  } finally {
    await rm(tmpDir, { recursive: true, force: true });
  }
}
