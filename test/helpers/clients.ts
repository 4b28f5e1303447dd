/**
 * Thin wrappers over the real NBD clients used by the integration suite and the benchmark:
 * nbdsh (python3-libnbd), nbdinfo, qemu-io and fio. Each returns what the tool printed,
 * parsed where the tool has a machine format, and fails with the tool's own stderr.
 */
import { runToolOk, type ToolOptions, type ToolResult } from './exec.js';

/**
 * Python run inside nbdsh before a test's script: `URI` is the export under test, and
 * `connect(uri)` opens one more handle (for multi-conn checks). `emit(obj)` prints one JSON
 * line the test reads back with `nbdshJson`.
 */
const NBDSH_PRELUDE = `
import json, os, sys
URI = os.environ['DIFFSWAP_TEST_URI']
def connect(uri=URI, structured=True):
    handle = nbd.NBD()
    handle.set_request_structured_replies(structured)
    handle.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
    handle.connect_uri(uri)
    return handle
def emit(obj):
    print('@json ' + json.dumps(obj))
    sys.stdout.flush()
`;

/**
 * nbdsh runs `python3 -m nbd` from PATH, but Debian installs the nbd module for the system
 * interpreter only; a python3 from pyenv or a venv earlier on PATH cannot import it. Putting
 * /usr/bin first makes nbdsh use the interpreter its package was built for.
 */
const NBDSH_PATH = `/usr/bin:${process.env.PATH ?? ''}`;

/** Runs a Python script in nbdsh with `URI` set to `uri`; rejects on any exception. */
export function runNbdsh(uri: string, script: string, options: ToolOptions = {}) {
  return runToolOk('nbdsh', ['-c', `${NBDSH_PRELUDE}\n${script}`], {
    ...options,
    env: { ...options.env, DIFFSWAP_TEST_URI: uri, PATH: NBDSH_PATH },
  });
}

/** The objects a script printed with `emit()`, in order. */
export function nbdshJson<T = unknown>(result: ToolResult): T[] {
  return result.stdout
    .split('\n')
    .filter((line) => line.startsWith('@json '))
    .map((line) => JSON.parse(line.slice('@json '.length)) as T);
}

/** One export as `nbdinfo --json` describes it (the fields the suite checks). */
export interface NbdinfoExport {
  'export-name': string;
  description?: string;
  'export-size': number;
  contexts?: string[];
  is_read_only: boolean;
  can_cache: boolean;
  can_df: boolean;
  can_fast_zero: boolean;
  can_flush: boolean;
  can_fua: boolean;
  can_multi_conn: boolean;
  can_trim: boolean;
  can_zero: boolean;
  block_size_minimum?: number;
  block_size_preferred?: number;
  block_size_maximum?: number;
}

export interface NbdinfoReport {
  protocol: string;
  TLS: boolean;
  structured: boolean;
  exports: NbdinfoExport[];
}

/** `nbdinfo --json [--list] URI`, parsed. */
export async function nbdinfo(uri: string, list = false): Promise<NbdinfoReport> {
  const args = ['--json', ...(list ? ['--list'] : []), uri];
  const result = await runToolOk('nbdinfo', args);
  return JSON.parse(result.stdout) as NbdinfoReport;
}

/** qemu-io on a raw NBD image, one `-c` per command; rejects unless every command passed. */
export async function qemuIo(uri: string, commands: string[], options: ToolOptions = {}) {
  const args = ['-f', 'raw', uri, ...commands.flatMap((c) => ['-c', c])];
  const result = await runToolOk('qemu-io', args, options);
  // qemu-io exits 0 even when a command fails; its per-command failures go to stdout/stderr.
  const failed = /(failed|error|Pattern verification)/i;
  const text = `${result.stdout}\n${result.stderr}`;
  if (failed.test(text)) {
    throw new Error(`qemu-io reported a failure:\n${result.command}\n${text.trim()}`);
  }
  return result;
}

/** Latency percentiles and throughput of one fio direction. */
export interface FioDirection {
  iops: number;
  bwBytesPerS: number;
  ioBytes: number;
  totalIos: number;
  errors: number;
  p50LatencyUs: number;
  p99LatencyUs: number;
}

export interface FioJobResult {
  name: string;
  error: number;
  read: FioDirection;
  write: FioDirection;
}

/** Runs fio with `--output-format=json` and the given arguments; parses every job. */
export async function runFio(args: string[], options: ToolOptions = {}) {
  const result = await runToolOk('fio', ['--output-format=json', ...args], options);
  const start = result.stdout.indexOf('{');
  if (start < 0) throw new Error(`fio printed no JSON:\n${result.stdout}\n${result.stderr}`);
  const report = JSON.parse(result.stdout.slice(start)) as { jobs: RawFioJob[] };
  return { result, jobs: report.jobs.map(parseFioJob) };
}

interface RawFioDirection {
  iops: number;
  bw_bytes: number;
  io_bytes: number;
  total_ios: number;
  short_ios?: number;
  drop_ios?: number;
  clat_ns?: { percentile?: Record<string, number> };
}
interface RawFioJob {
  jobname: string;
  error: number;
  read: RawFioDirection;
  write: RawFioDirection;
}

function parseFioJob(job: RawFioJob): FioJobResult {
  return {
    name: job.jobname,
    error: job.error,
    read: parseDirection(job.read),
    write: parseDirection(job.write),
  };
}

function parseDirection(d: RawFioDirection): FioDirection {
  const pct = d.clat_ns?.percentile ?? {};
  return {
    iops: d.iops,
    bwBytesPerS: d.bw_bytes,
    ioBytes: d.io_bytes,
    totalIos: d.total_ios,
    errors: (d.short_ios ?? 0) + (d.drop_ios ?? 0),
    p50LatencyUs: (pct['50.000000'] ?? Number.NaN) / 1000,
    p99LatencyUs: (pct['99.000000'] ?? Number.NaN) / 1000,
  };
}
