/**
 * The crash loop: rounds of start `diffswap serve` on one data dir, write from several libnbd
 * connections (crash-writer.py) with FLUSH and FUA, SIGKILL the server at a seeded random
 * moment (in some rounds while a compaction runs), check the stopped store with
 * `diffswap check`, restart, and read every page back through libnbd (hash-pages.py).
 *
 * The rule checked (DESIGN.md, crash rules): every write acknowledged before a FLUSH that
 * completed, and every acknowledged FUA write, reads back byte for byte after the restart. A
 * page may read as its last durable write or any later write to it (a later write may or may
 * not have landed), never as something older ("lost") or never written there ("wrong").
 * Pages are compared by SHA-256, as the writer reports them; counts are whole pages.
 */
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { cp, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { runTool, runToolOk } from '../helpers/exec.js';
import { CLI_PATH, type ServerProcess, startServerProcess } from '../helpers/server-process.js';
import { SYSTEM_PYTHON, scriptPath, serverFaults, sleep, startPython } from './support.js';

const PAGE_BYTES = 4096;
export const CRASH_EXPORT = 'crash';
/** 16 MiB: small enough to read back whole every round, big enough for many segments. */
const EXPORT_PAGES = 4096;
const WRITER_CONNECTIONS = 4;
/** The writer stops by itself after this, should a kill never come. */
const WRITER_SECONDS_MAX = 60;
/** Kill delay after the writer started: at least a few batches in, at most a few seconds. */
const KILL_DELAY_MS_MIN = 150;
const KILL_DELAY_MS_SPREAD = 2_500;
/**
 * Store tuning that makes compaction frequent: small segments seal often, background
 * compaction starts early, and it copies in small steps, so a kill lands inside one.
 */
const STORE_TUNING = {
  segmentBytesMax: 256 * 1024,
  compactLiveRatioMin: 0.9,
  compactStepBytes: 32 * 1024,
};

export interface RoundResult {
  round: number;
  seed: number;
  killDelayMs: number;
  compactionRound: boolean;
  /** Whether the store reported a compaction running just before the kill. */
  compactionRunningAtKill: boolean;
  writesSent: number;
  writesAcked: number;
  durableWrites: number;
  flushesCompleted: number;
  pagesVerified: number;
  lostPages: number;
  wrongPages: number;
  /** Pages the restarted server answered with an error instead of data. */
  unreadablePages: number;
  problems: string[];
}

export interface CrashLoopReport {
  seed: number;
  rounds: RoundResult[];
  roundsSurvived: number;
  killsDuringCompaction: number;
  lostBytes: number;
  wrongBytes: number;
  unreadableBytes: number;
  /** Copy of the data dir as the first failing round left it, for a post-mortem. */
  keptDataDir: string | null;
  durableWrites: number;
  problems: string[];
  elapsedMs: number;
}

export interface CrashLoopOptions {
  rounds: number;
  seed: number;
  /** Every n-th round asks for a compaction and kills while it runs (0: never). */
  compactionEvery: number;
  /** Run `diffswap check` with background compaction on (see checkStore); default off. */
  checkWithCompaction?: boolean;
  /**
   * The memory backend keeps nothing across a kill: the negative control that proves the
   * loop detects lost writes. The store is the default and the subject.
   */
  backend?: 'store' | 'memory';
  log?: (line: string) => void;
}

/** Runs the loop; always removes its data dir and kills what it started. */
export async function runCrashLoop(o: CrashLoopOptions): Promise<CrashLoopReport> {
  const dir = await mkdtemp(join(tmpdir(), 'diffswap-crash-'));
  const configPath = join(dir, 'diffswap.yaml');
  const dataDir = join(dir, 'data');
  await writeFile(configPath, configYaml(dataDir));
  // `diffswap check` gets a config with background compaction off, so it sees the store as
  // the kill left it (see the note at checkStore).
  const checkConfigPath = join(dir, 'check.yaml');
  const checkTuning = o.checkWithCompaction ? {} : { compactLiveRatioMin: 0 };
  await writeFile(checkConfigPath, configYaml(dataDir, checkTuning));
  const startedAtMs = Date.now();
  const rng = mulberry32(o.seed);
  const rounds: RoundResult[] = [];
  let baseline = new Array<string>(EXPORT_PAGES).fill(ZERO_PAGE_HASH);
  let history: WriterLog | null = null;
  const finalProblems: string[] = [];
  let keptDataDir: string | null = null;
  try {
    for (let round = 0; round <= o.rounds; round++) {
      const server = await startServer(configPath, dataDir, o.backend ?? 'store');
      try {
        // Verify the previous round's writes survived its kill.
        if (history) {
          const previous = rounds[rounds.length - 1];
          const pages = await readAllPages(server);
          const outcome = verifyRound(history, baseline, pages);
          if (previous) {
            Object.assign(previous, outcome.figures);
            previous.problems.push(...outcome.problems, ...faultsOf(server));
            o.log?.(describeRound(previous));
          }
          baseline = pages;
          if (previous && previous.problems.length > 0) {
            // Keep the evidence and stop: later rounds would only trip over the same damage.
            await server.kill();
            if (existsSync(dataDir)) {
              keptDataDir = `${dir}-kept-round-${previous.round}`;
              await cp(dataDir, keptDataDir, { recursive: true });
            }
            break;
          }
        }
        if (round === o.rounds) {
          // The end: a clean stop, and the store's own check of the cleanly closed files.
          const code = await server.stop();
          if (code !== 0) finalProblems.push(`clean stop exited ${code}`);
          if (o.backend !== 'memory') finalProblems.push(...(await checkStore(checkConfigPath)));
          break;
        }
        const result = newRound(round, rng, o);
        rounds.push(result);
        history = await writeAndKill(server, result);
      } finally {
        await server.kill();
      }
      const last = rounds[rounds.length - 1];
      if (last && o.backend !== 'memory')
        last.problems.push(...(await checkStore(checkConfigPath)));
    }
    return report(o.seed, rounds, finalProblems, keptDataDir, startedAtMs);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

function configYaml(dataDir: string, tuningOverrides: Record<string, number> = {}): string {
  const merged = { ...STORE_TUNING, ...tuningOverrides };
  const tuning = Object.entries(merged).map(([k, v]) => `  ${k}: ${v}`);
  return [
    `data: ${JSON.stringify(dataDir)}`,
    'exports:',
    `  - { name: ${CRASH_EXPORT}, size: ${EXPORT_PAGES * PAGE_BYTES} }`,
    'store:',
    ...tuning,
    '',
  ].join('\n');
}

function startServer(
  configPath: string,
  dataDir: string,
  backend: 'store' | 'memory',
): Promise<ServerProcess> {
  return startServerProcess({
    backend,
    dataDir,
    exports: [`${CRASH_EXPORT}:${EXPORT_PAGES * PAGE_BYTES}`],
    args: ['--config', configPath],
    startTimeoutMs: 60_000,
  });
}

function faultsOf(server: ServerProcess): string[] {
  return serverFaults(server.logs).map(
    (entry) => `server logged a fault: ${JSON.stringify(entry)}`,
  );
}

function newRound(round: number, rng: () => number, o: CrashLoopOptions): RoundResult {
  return {
    round,
    seed: rng(),
    killDelayMs: KILL_DELAY_MS_MIN + (rng() % KILL_DELAY_MS_SPREAD),
    compactionRound: o.compactionEvery > 0 && round % o.compactionEvery === o.compactionEvery - 1,
    compactionRunningAtKill: false,
    writesSent: 0,
    writesAcked: 0,
    durableWrites: 0,
    flushesCompleted: 0,
    pagesVerified: 0,
    lostPages: 0,
    wrongPages: 0,
    unreadablePages: 0,
    problems: [],
  };
}

// ---------------------------------------------------------------------------------------------
// Writing and killing

interface WriterLog {
  lines: string[];
  exitCode: number | null;
}

async function writeAndKill(server: ServerProcess, result: RoundResult): Promise<WriterLog> {
  const child = startPython('crash-writer.py', [
    server.uri(CRASH_EXPORT),
    String(result.seed),
    String(WRITER_CONNECTIONS),
    String(EXPORT_PAGES),
    String(WRITER_SECONDS_MAX),
  ]);
  const log: WriterLog = { lines: [], exitCode: null };
  const stderr: string[] = [];
  const exited = new Promise<void>((resolve) =>
    child.once('exit', (code) => {
      log.exitCode = code;
      resolve();
    }),
  );
  if (child.stdout) createInterface({ input: child.stdout }).on('line', (l) => log.lines.push(l));
  if (child.stderr) createInterface({ input: child.stderr }).on('line', (l) => stderr.push(l));
  child.stdin?.end();

  await waitFor(() => log.lines.includes('R') || log.exitCode !== null, 30_000);
  if (result.compactionRound) {
    // Let garbage build up, start a compaction over HTTP, and kill while it runs.
    await sleep(result.killDelayMs);
    await startCompaction(server);
    result.compactionRunningAtKill = await waitForCompaction(server, result.seed % 200);
  } else {
    await sleep(result.killDelayMs);
    result.compactionRunningAtKill = await compactionRunning(server);
  }
  await server.kill();
  const timer = setTimeout(() => child.kill('SIGKILL'), 30_000);
  await exited;
  clearTimeout(timer);
  if (log.exitCode !== 0) {
    result.problems.push(`writer exited ${log.exitCode}: ${stderr.slice(-5).join(' | ')}`);
  }
  return log;
}

async function waitFor(condition: () => boolean, timeoutMs: number): Promise<void> {
  const deadlineMs = Date.now() + timeoutMs;
  while (!condition() && Date.now() < deadlineMs) await sleep(10);
}

async function startCompaction(server: ServerProcess): Promise<void> {
  // 202: started; 409 (busy): a background compaction already runs, which serves as well.
  await fetch(server.httpUrl('/api/v1/compaction'), { method: 'POST' }).catch(() => {});
}

/** Polls until the store reports a compaction running, then waits `extraMs` more. */
async function waitForCompaction(server: ServerProcess, extraMs: number): Promise<boolean> {
  const deadlineMs = Date.now() + 3_000;
  let running = false;
  while (!running && Date.now() < deadlineMs) {
    running = await compactionRunning(server);
    if (!running) await sleep(5);
  }
  if (!running) return false;
  await sleep(extraMs);
  return compactionRunning(server);
}

async function compactionRunning(server: ServerProcess): Promise<boolean> {
  try {
    const response = await fetch(server.httpUrl('/api/v1/stats'));
    const stats = (await response.json()) as { compaction?: { running?: boolean } };
    if (stats.compaction?.running) return true;
    const job = await fetch(server.httpUrl('/api/v1/compaction'));
    return ((await job.json()) as { running?: boolean }).running === true;
  } catch {
    return false;
  }
}

// ---------------------------------------------------------------------------------------------
// Checking

/**
 * `diffswap check` on the stopped store: its exit status and the problems and damaged pages it
 * lists. By default it runs with background compaction off, so it sees the store exactly as
 * the kill left it. XXX: once, with compaction on, check reported two segments' liveBytes off
 * by equal and opposite amounts right after a kill; suspected to be check() reading a
 * compaction step's uncommitted figures, not reproduced since (`--check-with-compaction`).
 */
async function checkStore(configPath: string): Promise<string[]> {
  const result = await runTool(
    process.execPath,
    [CLI_PATH, 'check', '--config', configPath, '--json'],
    {
      timeoutMs: 120_000,
    },
  );
  const problems: string[] = [];
  const start = result.stdout.indexOf('{');
  let report: { problems?: unknown[]; damaged?: unknown[] } = {};
  try {
    report = JSON.parse(result.stdout.slice(start)) as typeof report;
  } catch {
    problems.push(`diffswap check printed no report: ${result.stdout} ${result.stderr}`);
  }
  for (const p of [...(report.problems ?? []), ...(report.damaged ?? [])]) {
    problems.push(`diffswap check: ${typeof p === 'string' ? p : JSON.stringify(p)}`);
  }
  if (result.code !== 0)
    problems.push(`diffswap check exited ${result.code}: ${result.stderr.trim()}`);
  return problems;
}

/**
 * Reads the whole export through libnbd and hashes each page; a page the server refuses to
 * read (EIO) is listed as such, so one damaged page does not hide the state of the others.
 */
async function readAllPages(server: ServerProcess): Promise<string[]> {
  const result = await runToolOk(
    SYSTEM_PYTHON,
    [scriptPath('hash-pages.py'), server.uri(CRASH_EXPORT)],
    {
      timeoutMs: 120_000,
    },
  );
  const pages = result.stdout.trim().split('\n');
  if (pages.length !== EXPORT_PAGES)
    throw new Error(`read ${pages.length} pages: ${result.stderr}`);
  return pages;
}

function pageHash(page: Buffer): string {
  return createHash('sha256').update(page).digest('hex').slice(0, 24);
}

const ZERO_PAGE_HASH = pageHash(Buffer.alloc(PAGE_BYTES));

interface WriteRecord {
  conn: number;
  fua: boolean;
  state: 'sent' | 'acked' | 'error';
  /** Position in the ack order (global and per connection), for FLUSH coverage. */
  ackIndex: number;
  connAckIndex: number;
}

interface PageVersion {
  write: WriteRecord;
  hash: string;
}

/** Replays the writer's event log into per-page histories and durability marks. */
function replay(lines: string[]) {
  const writes = new Map<string, WriteRecord>();
  const history = new Map<number, PageVersion[]>();
  let multiConn = false;
  let ackCount = 0;
  const connAcks = new Map<number, number>();
  const flushSnapshots = new Map<string, number>();
  let durableGlobal = 0;
  const durableByConn = new Map<number, number>();
  let flushesCompleted = 0;
  for (const line of lines) {
    const f = line.split(' ');
    const conn = Number(f[1]);
    const key = `${f[1]}:${f[2]}`;
    switch (f[0]) {
      case 'M':
        multiConn = f[1] === '1';
        break;
      case 'S': {
        const write: WriteRecord = {
          conn,
          fua: f[4] === '1',
          state: 'sent',
          ackIndex: -1,
          connAckIndex: -1,
        };
        writes.set(key, write);
        f.slice(5).forEach((hash, i) => {
          const page = Number(f[3]) + i;
          const list = history.get(page) ?? [];
          list.push({ write, hash });
          history.set(page, list);
        });
        break;
      }
      case 'A': {
        const write = writes.get(key);
        if (!write) break;
        write.state = 'acked';
        write.ackIndex = ackCount++;
        write.connAckIndex = connAcks.get(conn) ?? 0;
        connAcks.set(conn, write.connAckIndex + 1);
        break;
      }
      case 'E': {
        const write = writes.get(key);
        if (write) write.state = 'error';
        break;
      }
      case 'F':
        flushSnapshots.set(key, multiConn ? ackCount : (connAcks.get(conn) ?? 0));
        break;
      case 'G': {
        const covered = flushSnapshots.get(key) ?? 0;
        flushesCompleted++;
        if (multiConn) durableGlobal = Math.max(durableGlobal, covered);
        else durableByConn.set(conn, Math.max(durableByConn.get(conn) ?? 0, covered));
        break;
      }
    }
  }
  const isDurable = (w: WriteRecord) =>
    w.state === 'acked' &&
    (w.fua ||
      (multiConn ? w.ackIndex < durableGlobal : w.connAckIndex < (durableByConn.get(w.conn) ?? 0)));
  return { writes, history, isDurable, flushesCompleted };
}

/** Compares what the restarted server reads with what the log says must be there. */
function verifyRound(log: WriterLog, baseline: string[], pages: string[]) {
  const { writes, history, isDurable, flushesCompleted } = replay(log.lines);
  let lostPages = 0;
  let wrongPages = 0;
  let unreadablePages = 0;
  const problems: string[] = [];
  for (let page = 0; page < EXPORT_PAGES; page++) {
    const read = pages[page] ?? '';
    const versions = history.get(page) ?? [];
    let lastDurable = -1;
    versions.forEach((v, i) => {
      if (isDurable(v.write)) lastDurable = i;
    });
    const allowed = new Set(versions.slice(Math.max(0, lastDurable)).map((v) => v.hash));
    if (lastDurable < 0) allowed.add(baseline[page] ?? ZERO_PAGE_HASH);
    if (allowed.has(read)) continue;
    if (!/^[0-9a-f]{24}$/.test(read)) {
      unreadablePages++;
      if (problems.length < 20) problems.push(`page ${page}: read failed (${read})`);
      continue;
    }
    const older = new Set([baseline[page], ...versions.slice(0, lastDurable).map((v) => v.hash)]);
    if (older.has(read)) {
      lostPages++;
      if (problems.length < 20) problems.push(`page ${page}: a durable write was lost`);
    } else {
      wrongPages++;
      if (problems.length < 20) problems.push(`page ${page}: reads bytes never written there`);
    }
  }
  const all = [...writes.values()];
  return {
    problems,
    figures: {
      writesSent: all.length,
      writesAcked: all.filter((w) => w.state === 'acked').length,
      durableWrites: all.filter(isDurable).length,
      flushesCompleted,
      pagesVerified: EXPORT_PAGES,
      lostPages,
      wrongPages,
      unreadablePages,
    },
  };
}

function report(
  seed: number,
  rounds: RoundResult[],
  finalProblems: string[],
  keptDataDir: string | null,
  startedAtMs: number,
): CrashLoopReport {
  const problems = rounds.flatMap((r) => r.problems.map((p) => `round ${r.round}: ${p}`));
  problems.push(...finalProblems.map((p) => `after the last round: ${p}`));
  return {
    seed,
    rounds,
    roundsSurvived: rounds.filter((r) => r.problems.length === 0).length,
    killsDuringCompaction: rounds.filter((r) => r.compactionRunningAtKill).length,
    lostBytes: rounds.reduce((s, r) => s + r.lostPages * PAGE_BYTES, 0),
    wrongBytes: rounds.reduce((s, r) => s + r.wrongPages * PAGE_BYTES, 0),
    unreadableBytes: rounds.reduce((s, r) => s + r.unreadablePages * PAGE_BYTES, 0),
    keptDataDir,
    durableWrites: rounds.reduce((s, r) => s + r.durableWrites, 0),
    problems,
    elapsedMs: Date.now() - startedAtMs,
  };
}

export function describeRound(r: RoundResult): string {
  return (
    `round ${r.round}: kill after ${r.killDelayMs} ms` +
    `${r.compactionRound ? ' (compaction asked)' : ''}` +
    `${r.compactionRunningAtKill ? ' inside a compaction' : ''}; ` +
    `writes sent ${r.writesSent} acked ${r.writesAcked} durable ${r.durableWrites}, ` +
    `flushes ${r.flushesCompleted}; lost pages ${r.lostPages}, wrong pages ${r.wrongPages}, ` +
    `unreadable pages ${r.unreadablePages}` +
    `${r.problems.length > 0 ? `; PROBLEMS: ${r.problems.slice(0, 5).join('; ')}` : ''}`
  );
}

export function summarizeCrashLoop(r: CrashLoopReport): string {
  return [
    `crash loop seed ${r.seed}: ${r.rounds.length} rounds in ` +
      `${(r.elapsedMs / 1000).toFixed(0)} s, ` +
      `${r.roundsSurvived} survived, ${r.killsDuringCompaction} kills inside a compaction`,
    `durable writes checked ${r.durableWrites}, lost bytes ${r.lostBytes}, ` +
      `wrong bytes ${r.wrongBytes}, unreadable bytes ${r.unreadableBytes}` +
      `${r.keptDataDir ? `; data dir kept at ${r.keptDataDir}` : ''}`,
    ...r.problems.slice(0, 30).map((p) => `  problem: ${p}`),
  ].join('\n');
}

/** mulberry32 (public-domain 32-bit mixer), seeded per loop so rounds replay. */
function mulberry32(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  };
}
