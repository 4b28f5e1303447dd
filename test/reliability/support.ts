/**
 * Small pieces shared by the reliability tests and the long-run tools: where the Python
 * (libnbd) scripts live, how to start them, the server's Prometheus counters, and the
 * server's own error log lines.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';

/** Scripts stay in the source tree (tsc does not copy them): resolve from dist/test/... */
export function scriptPath(name: string): string {
  return fileURLToPath(new URL(`../../../test/reliability/${name}`, import.meta.url));
}

/**
 * Debian installs the libnbd Python module for the system interpreter only; a python3 from
 * pyenv or a venv earlier on PATH cannot import it (the same fix as test/helpers/clients.ts).
 */
export const SYSTEM_PYTHON = '/usr/bin/python3';

/** Starts a libnbd script with piped stdio; the caller owns the process. */
export function startPython(script: string, args: string[]): ChildProcess {
  return spawn(SYSTEM_PYTHON, ['-u', scriptPath(script), ...args], {
    stdio: ['pipe', 'pipe', 'pipe'],
    env: { ...process.env, PATH: `/usr/bin:${process.env.PATH ?? ''}` },
  });
}

/** One sample of a Prometheus text exposition: name, labels, value. */
export interface PromSample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

/** Parses the Prometheus text format (the subset prom-client writes). */
export function parsePrometheus(text: string): PromSample[] {
  const out: PromSample[] = [];
  const line = /^([a-zA-Z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)$/;
  for (const row of text.split('\n')) {
    if (row.startsWith('#') || row.trim() === '') continue;
    const match = line.exec(row);
    if (!match) continue;
    const labels: Record<string, string> = {};
    for (const pair of (match[2] ?? '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) {
      labels[pair[1] ?? ''] = pair[2] ?? '';
    }
    out.push({ name: match[1] ?? '', labels, value: Number(match[3]) });
  }
  return out;
}

/** GET /metrics of a server process and parse it. */
export async function fetchMetrics(url: string): Promise<PromSample[]> {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`GET ${url}: ${response.status}`);
  return parsePrometheus(await response.text());
}

/** Sum of a counter's samples grouped by one label. */
export function sumBy(samples: PromSample[], name: string, label: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const s of samples) {
    if (s.name !== name) continue;
    const key = s.labels[label] ?? '';
    out.set(key, (out.get(key) ?? 0) + s.value);
  }
  return out;
}

/** Log entries at pino level error (50) or fatal (60): server faults. */
export function serverFaults(logs: Record<string, unknown>[]): Record<string, unknown>[] {
  return logs.filter((entry) => typeof entry.level === 'number' && entry.level >= 50);
}

/** Resolves after `ms`. */
export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Seed from DIFFSWAP_TEST_SEED or a fresh one; printed by every caller so runs replay. */
export function seedFromEnv(): number {
  const fromEnv = process.env.DIFFSWAP_TEST_SEED;
  if (fromEnv !== undefined && fromEnv !== '') return Number(fromEnv) >>> 0;
  return (Math.random() * 2 ** 32) >>> 0;
}
