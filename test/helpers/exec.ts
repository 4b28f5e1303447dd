/**
 * Running the real NBD clients (qemu-io, nbdinfo, nbdsh, fio, ...) from tests and benchmarks.
 *
 * Every run has a timeout, so a hung client fails its test instead of the whole suite, and a
 * failure message carries the command line, exit status and both output streams: a red test
 * should say what the tool complained about without re-running it by hand.
 */
import { spawn } from 'node:child_process';

/** Default time a tool may run before it is killed; generous for a loaded 2-core machine. */
export const TOOL_TIMEOUT_MS = 60_000;
/** Output kept per stream; a runaway tool must not fill the test process's memory. */
const OUTPUT_BYTES_MAX = 16 * 1024 * 1024;

export interface ToolOptions {
  timeoutMs?: number;
  /** Bytes written to the tool's stdin (stdin is closed after them; /dev/null when absent). */
  input?: string | Buffer;
  /** Extra environment variables, merged over the test process's environment. */
  env?: Record<string, string>;
  cwd?: string;
}

export interface ToolResult {
  command: string;
  /** Exit status, or null when the tool died of a signal. */
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  timedOut: boolean;
  elapsedMs: number;
}

/** A shell-like rendering of a command for messages (not for execution). */
export function showCommand(file: string, args: readonly string[]): string {
  const quote = (a: string) => (/^[\w@%+=:,./-]+$/.test(a) ? a : `'${a.replace(/'/g, "'\\''")}'`);
  return [file, ...args].map(quote).join(' ');
}

/**
 * Runs `file` with `args` (no shell) and resolves with its outcome whatever it is; never
 * rejects except when the program cannot be started at all.
 */
export function runTool(
  file: string,
  args: readonly string[],
  options: ToolOptions = {},
): Promise<ToolResult> {
  const command = showCommand(file, args);
  const startedAtMs = performance.now();
  return new Promise((resolve, reject) => {
    const child = spawn(file, args, {
      env: { ...process.env, ...options.env },
      cwd: options.cwd,
      stdio: [options.input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'],
    });
    const stdout = collect(child.stdout);
    const stderr = collect(child.stderr);
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, options.timeoutMs ?? TOOL_TIMEOUT_MS);
    child.on('error', (err) => {
      clearTimeout(timer);
      reject(new Error(`cannot start ${command}: ${err.message}`, { cause: err }));
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({
        command,
        code,
        signal,
        stdout: stdout(),
        stderr: stderr(),
        timedOut,
        elapsedMs: performance.now() - startedAtMs,
      });
    });
    if (options.input !== undefined && child.stdin) child.stdin.end(options.input);
  });
}

/** Runs a tool and rejects with a readable error unless it exits 0 within its timeout. */
export async function runToolOk(
  file: string,
  args: readonly string[],
  options: ToolOptions = {},
): Promise<ToolResult> {
  const result = await runTool(file, args, options);
  if (result.code !== 0 || result.timedOut) throw new Error(describeFailure(result, 'exit 0'));
  return result;
}

/**
 * Runs a tool that is expected to fail: rejects when it exits 0, dies of a signal or times
 * out (a crash or a hang is not a clean failure).
 */
export async function runToolFails(
  file: string,
  args: readonly string[],
  options: ToolOptions = {},
): Promise<ToolResult> {
  const result = await runTool(file, args, options);
  if (result.code === 0 || result.code === null || result.timedOut) {
    throw new Error(describeFailure(result, 'a clean non-zero exit'));
  }
  return result;
}

/** A multi-line description of a run that did not end as expected. */
export function describeFailure(result: ToolResult, expected: string): string {
  const how = result.timedOut
    ? `timed out after ${Math.round(result.elapsedMs)} ms`
    : result.signal
      ? `died of ${result.signal}`
      : `exited ${result.code}`;
  return [
    `${result.command}`,
    `  ${how}, expected ${expected}`,
    `  --- stderr ---`,
    indent(result.stderr),
    `  --- stdout ---`,
    indent(result.stdout),
  ].join('\n');
}

function indent(text: string): string {
  const trimmed = text.trimEnd();
  if (trimmed === '') return '  (empty)';
  const lines = trimmed.split('\n');
  const shown = lines.length > 60 ? [...lines.slice(0, 30), '...', ...lines.slice(-30)] : lines;
  return shown.map((line) => `  ${line}`).join('\n');
}

/** Accumulates a stream's bytes up to OUTPUT_BYTES_MAX; the getter decodes them as UTF-8. */
function collect(stream: NodeJS.ReadableStream | null): () => string {
  const chunks: Buffer[] = [];
  let size = 0;
  stream?.on('data', (chunk: Buffer) => {
    if (size >= OUTPUT_BYTES_MAX) return;
    chunks.push(chunk);
    size += chunk.length;
  });
  return () => Buffer.concat(chunks).toString('utf8');
}
