/**
 * One fuzz campaign against a real `diffswap serve` process: hostile sessions (fuzz-run.ts)
 * on one export, a well-behaved libnbd client (healthy-client.py) on another, the server's
 * memory and descriptors sampled throughout, and its refusal counters read from /metrics at
 * the end. Shared by test/reliability/fuzz.test.ts (bounded) and test/tools/fuzz.ts (long).
 */
import { createInterface } from 'node:readline';
import { type ServerProcess, startServerProcess } from '../helpers/server-process.js';
import { type FuzzTotals, runFuzz } from './fuzz-run.js';
import { MiB, type ProcSample, sampleProcess } from './proc-stats.js';
import { fetchMetrics, serverFaults, startPython, sumBy } from './support.js';

export const FUZZ_EXPORT = 'fuzz';
export const HEALTHY_EXPORT = 'healthy';
/** Each concurrent session writes only inside its own region of this size. */
const REGION_BYTES = MiB;
/** The healthy client may go this long without finishing a round before it counts as starved. */
const HEALTHY_STALL_MS_MAX = 20_000;

export interface FuzzCampaignOptions {
  seed: number;
  framesTarget: number;
  concurrency: number;
  hugePayloads: boolean;
  backend: 'store' | 'memory';
  /** Progress lines (the long run prints them). */
  log?: (line: string) => void;
}

export interface FuzzCampaignReport {
  seed: number;
  totals: FuzzTotals;
  elapsedMs: number;
  serverAlive: boolean;
  serverFaults: Record<string, unknown>[];
  rssMaxBytes: number;
  /** Largest anonymous RSS (RssAnon): what the bound is judged on (see proc-stats.ts). */
  anonMaxBytes: number;
  rssStartBytes: number;
  rssEndBytes: number;
  fdMax: number;
  fdStart: number;
  fdEnd: number;
  /** Server refusal counters by reason, read from /metrics. */
  rejectedByReason: Map<string, number>;
  healthyRounds: number;
  healthySlowestMs: number;
  healthyLongestStallMs: number;
  healthyExit: number | null;
  healthyOutput: string;
}

/** Runs the campaign and always stops what it started. */
export async function runFuzzCampaign(o: FuzzCampaignOptions): Promise<FuzzCampaignReport> {
  const exportBytes = Math.max(64 * MiB, o.concurrency * REGION_BYTES);
  const server = await startServerProcess({
    backend: o.backend,
    exports: [`${FUZZ_EXPORT}:${exportBytes}`, `${HEALTHY_EXPORT}:${64 * MiB}`],
  });
  try {
    return await campaign(server, exportBytes, o);
  } finally {
    await server.kill();
  }
}

async function campaign(
  server: ServerProcess,
  exportBytes: number,
  o: FuzzCampaignOptions,
): Promise<FuzzCampaignReport> {
  const pid = server.child.pid ?? 0;
  const sampler = sampleProcess(pid, 500);
  const healthy = startHealthy(server, o.seed);
  const startedAtMs = Date.now();
  let lastLogMs = 0;
  let totals: FuzzTotals;
  try {
    totals = await runFuzz({
      port: server.nbdPort,
      seed: o.seed,
      framesTarget: o.framesTarget,
      concurrency: o.concurrency,
      generator: {
        exportName: FUZZ_EXPORT,
        exportSizeBytes: exportBytes,
        regionBytes: REGION_BYTES,
        hugePayloads: o.hugePayloads,
      },
      shouldStop: () => server.child.exitCode !== null || server.child.signalCode !== null,
      onProgress: (t) => {
        healthy.checkStall();
        if (o.log && Date.now() - lastLogMs > 10_000) {
          lastLogMs = Date.now();
          const rate = Math.round(t.frames / ((Date.now() - startedAtMs) / 1000));
          o.log(
            `frames ${t.frames} sessions ${t.sessions} violations ${t.violationCount} ` +
              `(${rate} frames/s), healthy rounds ${healthy.rounds}`,
          );
        }
      },
    });
  } finally {
    await healthy.stop();
  }
  const elapsedMs = Date.now() - startedAtMs;
  const samples = sampler.stop();
  const serverAlive = server.child.exitCode === null && server.child.signalCode === null;
  const metrics = serverAlive ? await fetchMetrics(server.httpUrl('/metrics')) : [];
  return {
    seed: o.seed,
    totals,
    elapsedMs,
    serverAlive,
    serverFaults: serverFaults(server.logs),
    ...resourceFigures(samples),
    rejectedByReason: sumBy(metrics, 'diffswap_nbd_rejected_total', 'reason'),
    healthyRounds: healthy.rounds,
    healthySlowestMs: healthy.slowestMs,
    healthyLongestStallMs: healthy.longestStallMs,
    healthyExit: healthy.exitCode,
    healthyOutput: healthy.output(),
  };
}

function resourceFigures(samples: ProcSample[]) {
  const first = samples[0];
  const last = samples[samples.length - 1];
  return {
    rssMaxBytes: Math.max(0, ...samples.map((s) => s.rssBytes)),
    anonMaxBytes: Math.max(0, ...samples.map((s) => s.anonBytes)),
    rssStartBytes: first?.rssBytes ?? 0,
    rssEndBytes: last?.rssBytes ?? 0,
    fdMax: Math.max(0, ...samples.map((s) => s.fdCount)),
    fdStart: first?.fdCount ?? 0,
    fdEnd: last?.fdCount ?? 0,
  };
}

/** The libnbd client beside the hostile ones: progress, its slowest round, and stalls. */
function startHealthy(server: ServerProcess, seed: number) {
  const child = startPython('healthy-client.py', [
    server.uri(HEALTHY_EXPORT),
    String(seed),
    String(64 * MiB),
  ]);
  const lines: string[] = [];
  const state = {
    rounds: 0,
    slowestMs: 0,
    longestStallMs: 0,
    lastProgressMs: Date.now(),
    exitCode: null as number | null,
  };
  const exited = new Promise<void>((resolve) =>
    child.once('exit', (code) => {
      state.exitCode = code;
      resolve();
    }),
  );
  const onLine = (line: string) => {
    if (lines.length < 200) lines.push(line);
    const match = /^(?:ok|done) (\d+) ([\d.]+)$/.exec(line);
    if (!match) return;
    const now = Date.now();
    state.longestStallMs = Math.max(state.longestStallMs, now - state.lastProgressMs);
    state.lastProgressMs = now;
    state.rounds = Number(match[1]);
    state.slowestMs = Number(match[2]);
  };
  if (child.stdout) createInterface({ input: child.stdout }).on('line', onLine);
  if (child.stderr) createInterface({ input: child.stderr }).on('line', (l) => lines.push(l));
  return {
    get rounds() {
      return state.rounds;
    },
    get slowestMs() {
      return state.slowestMs;
    },
    get longestStallMs() {
      return Math.max(state.longestStallMs, Date.now() - state.lastProgressMs);
    },
    get exitCode() {
      return state.exitCode;
    },
    output: () => lines.join('\n'),
    /** Records a stall while the client is silent (the max is reported at the end). */
    checkStall() {
      if (Date.now() - state.lastProgressMs > HEALTHY_STALL_MS_MAX) {
        state.longestStallMs = Math.max(state.longestStallMs, Date.now() - state.lastProgressMs);
      }
    },
    async stop() {
      child.stdin?.end();
      // Bounded: a client stuck in a call the server never answers is killed.
      const timer = setTimeout(() => child.kill('SIGKILL'), 30_000);
      await exited;
      clearTimeout(timer);
      // The stall measured from the last line to the stop is not a stall of the server.
      state.lastProgressMs = Date.now();
    },
  };
}

/** A printable summary of a campaign (the long run's output and failure messages). */
export function summarize(r: FuzzCampaignReport): string {
  const t = r.totals;
  const kinds = [...t.sessionsByKind].map(([k, n]) => `${k} ${n}`).join(', ');
  const reasons = [...r.rejectedByReason]
    .sort((a, b) => b[1] - a[1])
    .map(([k, n]) => `${k}=${n}`)
    .join(' ');
  return [
    `seed ${r.seed}: ${t.frames} frames in ${t.sessions} sessions (${kinds}), ` +
      `${(r.elapsedMs / 1000).toFixed(1)} s, ${(t.bytesSent / MiB).toFixed(1)} MiB sent`,
    `answers checked ${t.answersChecked}, bytes verified ${t.bytesVerified}, ` +
      `wrong bytes ${t.wrongBytes}, violations ${t.violationCount}, ` +
      `slowest session ${t.slowestSessionMs} ms (${t.slowestSession})`,
    `server alive ${r.serverAlive}, faults logged ${r.serverFaults.length}, ` +
      `RSS start ${(r.rssStartBytes / MiB).toFixed(1)} max ${(r.rssMaxBytes / MiB).toFixed(1)} ` +
      `end ${(r.rssEndBytes / MiB).toFixed(1)} MiB (anonymous max ` +
      `${(r.anonMaxBytes / MiB).toFixed(1)} MiB), ` +
      `fds start ${r.fdStart} max ${r.fdMax} end ${r.fdEnd}`,
    `healthy client: ${r.healthyRounds} rounds, slowest ${r.healthySlowestMs} ms, ` +
      `longest silence ${r.healthyLongestStallMs} ms, exit ${r.healthyExit}`,
    `rejections by reason: ${reasons}`,
    ...t.violations.map((v) => `  violation: ${v}`),
  ].join('\n');
}
