/**
 * The soak: 8 fio jobs (libnbd engine, one connection each) over 4 exports of one
 * `diffswap serve`, writing memory-like 4 KiB blocks at random with crc32c verification of
 * everything written (verify_backlog: each job re-reads and checks its recent blocks as it
 * goes), for a set duration. Meanwhile the server's memory and open descriptors are sampled,
 * and at the end both must be flat: the last quarter no higher than the first (after warm-up)
 * beyond a small allowance. Memory is judged on anonymous RSS (see proc-stats.ts).
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { runFio } from '../helpers/clients.js';
import { startServerProcess } from '../helpers/server-process.js';
import { MiB, mib, type ProcSample, sampleProcess } from './proc-stats.js';
import { serverFaults } from './support.js';

const EXPORT_COUNT = 4;
const JOBS_PER_EXPORT = 2;
/** Each job owns a disjoint slice of its export, so verification never sees another's data. */
const JOB_BYTES = 128 * MiB;
const SAMPLE_INTERVAL_MS = 2_000;
/**
 * Growth allowed between the first and the last quarter of the run (after warm-up): caches
 * fill and the allocator settles, so not zero; a leak of one request's buffers per second
 * over a 30 minute soak would exceed it many times over.
 */
const RSS_GROWTH_BYTES_MAX = 96 * MiB;
/** Descriptors other than segment files (sockets, LMDB, logs) may differ by this much. */
const FD_GROWTH_MAX = 4;
/** The store's default openSegmentsMax: segment descriptors never exceed it. */
const SEGMENT_FDS_MAX = 256;

export interface SoakReport {
  minutes: number;
  jobs: number;
  verifyErrors: number;
  fioErrors: string[];
  writeIos: number;
  readIos: number;
  /** Anonymous resident memory (RssAnon), median of the first and last quarter. */
  anonFirstBytes: number;
  anonLastBytes: number;
  rssFirstBytes: number;
  rssLastBytes: number;
  rssMaxBytes: number;
  /** Descriptors other than segment files, median of the first and last quarter. */
  fdFirst: number;
  fdLast: number;
  /** Segment-file descriptors: most seen, and at the end. */
  segmentFdMax: number;
  segmentFdLast: number;
  serverFaults: number;
  problems: string[];
}

/** Runs the soak for `minutes` and reports; kills what it started. */
export async function runSoak(minutes: number): Promise<SoakReport> {
  const exports = Array.from(
    { length: EXPORT_COUNT },
    (_, i) => `soak${i}:${JOB_BYTES * JOBS_PER_EXPORT}`,
  );
  const server = await startServerProcess({ exports });
  const cwd = await mkdtemp(join(tmpdir(), 'diffswap-soak-'));
  const sampler = sampleProcess(server.child.pid ?? 0, SAMPLE_INTERVAL_MS);
  try {
    const runtimeS = Math.max(10, Math.round(minutes * 60));
    const { result, jobs } = await runFio(fioArgs(server.uri.bind(server), runtimeS), {
      cwd,
      timeoutMs: (runtimeS + 300) * 1000,
    });
    const samples = sampler.stop();
    const fioErrors = jobs.filter((j) => j.error !== 0).map((j) => `${j.name}: error ${j.error}`);
    const verifyErrors = (result.stdout.match(/verify: bad|verify failed/gi) ?? []).length;
    return judge({
      minutes,
      jobs: jobs.length,
      verifyErrors,
      fioErrors,
      writeIos: jobs.reduce((s, j) => s + j.write.totalIos, 0),
      readIos: jobs.reduce((s, j) => s + j.read.totalIos, 0),
      ...flatness(samples),
      serverFaults: serverFaults(server.logs).length,
      problems: [],
    });
  } finally {
    sampler.stop();
    await server.kill();
    await rm(cwd, { recursive: true, force: true });
  }
}

function fioArgs(uri: (name: string) => string, runtimeS: number): string[] {
  const global = [
    '--ioengine=nbd',
    '--rw=randwrite',
    '--bs=4k',
    '--iodepth=8',
    `--size=${JOB_BYTES}`,
    `--runtime=${runtimeS}`,
    '--time_based=1',
    // Memory-like data: half compressible, a third duplicates (dedup and compression at work).
    '--buffer_compress_percentage=50',
    '--dedupe_percentage=30',
    '--verify=crc32c',
    '--verify_backlog=256',
    '--verify_fatal=1',
    '--verify_state_save=0',
  ];
  const jobs: string[] = [];
  for (let e = 0; e < EXPORT_COUNT; e++) {
    for (let j = 0; j < JOBS_PER_EXPORT; j++) {
      jobs.push(`--name=soak${e}-${j}`, `--uri=${uri(`soak${e}`)}`, `--offset=${j * JOB_BYTES}`);
    }
  }
  return [...global, ...jobs];
}

/** RSS and descriptors of the first and last quarter, after the first fifth as warm-up. */
function flatness(samples: ProcSample[]) {
  const warm = samples.slice(Math.floor(samples.length / 5));
  const quarter = Math.max(1, Math.floor(warm.length / 4));
  const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? 0;
  const first = warm.slice(0, quarter);
  const last = warm.slice(-quarter);
  return {
    anonFirstBytes: median(first.map((s) => s.anonBytes)),
    anonLastBytes: median(last.map((s) => s.anonBytes)),
    rssFirstBytes: median(first.map((s) => s.rssBytes)),
    rssLastBytes: median(last.map((s) => s.rssBytes)),
    rssMaxBytes: Math.max(0, ...samples.map((s) => s.rssBytes)),
    fdFirst: median(first.map((s) => s.fdCount - s.segmentFdCount)),
    fdLast: median(last.map((s) => s.fdCount - s.segmentFdCount)),
    segmentFdMax: Math.max(0, ...samples.map((s) => s.segmentFdCount)),
    segmentFdLast: samples.at(-1)?.segmentFdCount ?? 0,
  };
}

function judge(r: SoakReport): SoakReport {
  if (r.verifyErrors > 0) r.problems.push(`${r.verifyErrors} fio verify errors`);
  r.problems.push(...r.fioErrors);
  if (r.jobs !== EXPORT_COUNT * JOBS_PER_EXPORT) r.problems.push(`fio reported ${r.jobs} jobs`);
  if (r.anonLastBytes > r.anonFirstBytes + RSS_GROWTH_BYTES_MAX) {
    r.problems.push(`anonymous RSS grew ${mib(r.anonFirstBytes)} -> ${mib(r.anonLastBytes)}`);
  }
  if (r.fdLast > r.fdFirst + FD_GROWTH_MAX) r.problems.push(`fds grew ${r.fdFirst} -> ${r.fdLast}`);
  if (r.segmentFdMax > SEGMENT_FDS_MAX) {
    r.problems.push(`${r.segmentFdMax} segment descriptors, over the store's ${SEGMENT_FDS_MAX}`);
  }
  if (r.serverFaults > 0) r.problems.push(`server logged ${r.serverFaults} faults`);
  return r;
}

export function summarizeSoak(r: SoakReport): string {
  return [
    `soak ${r.minutes} min, ${r.jobs} fio jobs: ${r.writeIos} writes, ${r.readIos} verify reads, ` +
      `${r.verifyErrors} verify errors`,
    `anonymous RSS first quarter ${mib(r.anonFirstBytes)}, last ${mib(r.anonLastBytes)}; ` +
      `total RSS (with the mapped index) ${mib(r.rssFirstBytes)} -> ${mib(r.rssLastBytes)}, ` +
      `max ${mib(r.rssMaxBytes)}; fds other than segments ${r.fdFirst} -> ${r.fdLast}, ` +
      `segment fds at most ${r.segmentFdMax} (end ${r.segmentFdLast}); ` +
      `server faults ${r.serverFaults}`,
    ...r.problems.map((p) => `  problem: ${p}`),
  ].join('\n');
}
