/**
 * Protocol benchmark (issue 2): the NBD layer alone, diffswap over its in-memory device
 * against `nbdkit memory`, both storing raw pages in RAM, so the difference is the protocol
 * path. fio 4 KiB random write and read at queue depth 16, and random read at depth 1 for
 * latency (p50, p99). Runs alternate between the servers within each round so drift in the
 * machine's load affects both; the figure reported is the median over rounds.
 *
 * Goal (issue 2): IOPS ratio diffswap/nbdkit >= 1.0 both ways; depth-1 p99 no worse.
 */
import type { FioJobResult } from '../../helpers/clients.js';
import { type FioBenchJob, prefill, runFioJob } from '../lib/fio.js';
import type { BenchContext, BenchSection } from '../lib/section.js';
import { type BenchServer, startDiffswap, startNbdkitMemory } from '../lib/servers.js';
import { type Cell, formatTable, median } from '../lib/table.js';

const MiB = 1024 * 1024;

interface Settings {
  regionBytes: number;
  runtimeS: number;
  rampS: number;
  rounds: number;
}

function settings(quick: boolean): Settings {
  return quick
    ? { regionBytes: 64 * MiB, runtimeS: 2, rampS: 1, rounds: 1 }
    : { regionBytes: 256 * MiB, runtimeS: 8, rampS: 1, rounds: 2 };
}

function jobs(s: Settings): FioBenchJob[] {
  const base = { blockBytes: 4096, regionBytes: s.regionBytes, runtimeS: s.runtimeS };
  return [
    { ...base, label: 'randwrite qd16', rw: 'randwrite', iodepth: 16, rampS: s.rampS },
    { ...base, label: 'randread qd16', rw: 'randread', iodepth: 16, rampS: s.rampS },
    { ...base, label: 'randread qd1', rw: 'randread', iodepth: 1, rampS: s.rampS },
  ];
}

type Samples = Map<string, FioJobResult[]>; // key: `${job}|${server}`

async function measure(ctx: BenchContext, servers: BenchServer[], s: Settings): Promise<Samples> {
  const samples: Samples = new Map();
  for (let round = 0; round < s.rounds; round++) {
    for (const job of jobs(s)) {
      // Alternate who goes first, so neither server always runs on a warmer (or hotter) box.
      const order = (round + jobs(s).indexOf(job)) % 2 === 0 ? servers : [...servers].reverse();
      for (const server of order) {
        const result = await runFioJob(server.uri(), job);
        const key = `${job.label}|${server.label}`;
        samples.set(key, [...(samples.get(key) ?? []), result]);
        const dir = job.rw === 'randwrite' ? result.write : result.read;
        ctx.log(
          `  round ${round + 1} ${job.label.padEnd(15)} ${server.label.padEnd(16)} ` +
            `${Math.round(dir.iops)} IOPS, p99 ${dir.p99LatencyUs.toFixed(0)} us`,
        );
      }
    }
  }
  return samples;
}

interface Figure {
  job: string;
  metric: string;
  diffswap: number;
  nbdkit: number;
  ratio: number;
  /** True when a larger number is better (IOPS), false for latencies. */
  higherIsBetter: boolean;
}

function figures(samples: Samples, s: Settings, names: [string, string]): Figure[] {
  const out: Figure[] = [];
  for (const job of jobs(s)) {
    const pick = (server: string, f: (r: FioJobResult) => number) =>
      median((samples.get(`${job.label}|${server}`) ?? []).map(f));
    const dir = (r: FioJobResult) => (job.rw === 'randwrite' ? r.write : r.read);
    const metrics: Array<[string, (r: FioJobResult) => number, boolean]> = [
      ['IOPS', (r) => dir(r).iops, true],
      ['p50 us', (r) => dir(r).p50LatencyUs, false],
      ['p99 us', (r) => dir(r).p99LatencyUs, false],
    ];
    for (const [metric, f, higherIsBetter] of metrics) {
      const diffswap = pick(names[0], f);
      const nbdkit = pick(names[1], f);
      out.push({
        job: job.label,
        metric,
        diffswap,
        nbdkit,
        ratio: diffswap / nbdkit,
        higherIsBetter,
      });
    }
  }
  return out;
}

async function run(ctx: BenchContext): Promise<void> {
  const s = settings(ctx.quick);
  const name = 'bench';
  ctx.log(
    `fio 4 KiB, nbd engine, 1 job, ${s.regionBytes / MiB} MiB region, ` +
      `${s.runtimeS} s + ${s.rampS} s ramp per run, ${s.rounds} round(s), runs alternated`,
  );
  const servers: BenchServer[] = [];
  try {
    servers.push(
      await startDiffswap({
        rootDir: ctx.rootDir,
        backend: 'memory',
        exports: [{ name, sizeBytes: s.regionBytes }],
        dataDir: `${ctx.tmpDir}/data`,
      }),
    );
    servers.push(await startNbdkitMemory({ sizeBytes: s.regionBytes }));
    for (const server of servers) await prefill(server.uri(), s.regionBytes);

    const samples = await measure(ctx, servers, s);
    const labels: [string, string] = [servers[0]?.label ?? '', servers[1]?.label ?? ''];
    const table = figures(samples, s, labels);
    const rows: Cell[][] = table.map((f) => [f.job, f.metric, f.diffswap, f.nbdkit, f.ratio]);
    ctx.log();
    ctx.log(formatTable(['job', 'metric', labels[0], labels[1], 'ratio d/n'], rows));
    ctx.log('(ratio d/n = diffswap / nbdkit: higher is better for IOPS, lower for latency)');
    const goal = goalCheck(table);
    ctx.log(`goal: IOPS ratio >= 1.0 both ways, qd1 p99 ratio <= 1.0: ${goal.summary}`);

    ctx.record('settings', s);
    ctx.record('servers', labels);
    ctx.record('figures', table);
    ctx.record('goalMet', goal.met);
    const rss = await Promise.all(servers.map(async (srv) => [srv.label, await srv.rssBytes()]));
    ctx.record('rssBytesAfter', Object.fromEntries(rss));
  } finally {
    for (const server of servers) await server.stop();
  }
}

function goalCheck(table: Figure[]): { met: boolean; summary: string } {
  const find = (job: string, metric: string) =>
    table.find((f) => f.job === job && f.metric === metric)?.ratio ?? Number.NaN;
  const checks: Array<[string, boolean]> = [
    ['write IOPS', find('randwrite qd16', 'IOPS') >= 1],
    ['read IOPS', find('randread qd16', 'IOPS') >= 1],
    ['qd1 p99', find('randread qd1', 'p99 us') <= 1],
  ];
  const met = checks.every(([, ok]) => ok);
  const summary = checks.map(([what, ok]) => `${what} ${ok ? 'met' : 'SHORT'}`).join(', ');
  return { met, summary };
}

export const section: BenchSection = {
  name: 'protocol',
  description: 'NBD layer: diffswap memory device vs nbdkit memory, fio 4 KiB qd16 and qd1',
  run,
};
