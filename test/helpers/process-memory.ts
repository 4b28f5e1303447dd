/**
 * Real memory pages for tests and benchmarks: starts a short-lived process with a clean
 * environment and reads its readable mappings through /proc/PID/maps and /proc/PID/mem
 * (allowed for a parent on its child, or for root). Synthetic pages miss what real heaps
 * look like (pointers, headers, half-filled arenas); these do not.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { once } from 'node:events';
import { closeSync, openSync, readFileSync, readSync } from 'node:fs';

const PAGE_SIZE = 4096;

/** One readable mapping of a process. */
export interface Mapping {
  start: number;
  end: number;
  /** The maps file's path column: '' for anonymous memory, '[heap]', a file path... */
  path: string;
}

/** The readable, private mappings of `pid`; `anonOnly` keeps what swap would see. */
export function readableMappings(pid: number, anonOnly: boolean): Mapping[] {
  const maps = readFileSync(`/proc/${pid}/maps`, 'utf8');
  const out: Mapping[] = [];
  for (const line of maps.split('\n')) {
    const fields = line.trim().split(/\s+/);
    const [range, perms] = fields;
    if (range === undefined || perms === undefined || !perms.startsWith('r')) continue;
    const path = fields.slice(5).join(' ');
    if (path === '[vvar]' || path === '[vsyscall]' || path === '[vdso]') continue;
    const anonymous = path === '' || path === '[heap]' || path === '[stack]';
    if (anonOnly && !anonymous) continue;
    const [start, end] = range.split('-').map((hex) => Number.parseInt(hex, 16));
    if (start === undefined || end === undefined) continue;
    out.push({ start, end, path });
  }
  return out;
}

/**
 * Reads up to `bytesMax` bytes of `pid`'s readable mappings, page by page; unreadable
 * pages are skipped. Returns whole pages only.
 */
export function readProcessPages(pid: number, options: { anonOnly: boolean; bytesMax: number }) {
  const chunks: Buffer[] = [];
  let total = 0;
  const fd = openSync(`/proc/${pid}/mem`, 'r');
  try {
    for (const mapping of readableMappings(pid, options.anonOnly)) {
      for (let at = mapping.start; at < mapping.end && total < options.bytesMax; ) {
        const length = Math.min(mapping.end - at, options.bytesMax - total, 1 << 20);
        const chunk = Buffer.alloc(length);
        let got = 0;
        try {
          got = readSync(fd, chunk, 0, length, at);
        } catch {
          got = 0; // guard pages and the like: skip this chunk
        }
        const whole = got - (got % PAGE_SIZE);
        if (whole > 0) {
          chunks.push(chunk.subarray(0, whole));
          total += whole;
        }
        at += length;
      }
    }
  } finally {
    closeSync(fd);
  }
  return Buffer.concat(chunks, total);
}

/** A node child that builds a realistic heap (objects, strings, arrays) and then waits. */
const HEAP_SCRIPT = `
const keep = [];
for (let i = 0; i < 20000; i++) {
  keep.push({ id: i, name: 'user-' + i, tags: ['a' + (i % 7), 'b' + (i % 13)], score: i * 1.5 });
}
keep.push(JSON.stringify(keep.slice(0, 2000)));
keep.push(new Float64Array(20000).map((_, i) => Math.sin(i)));
process.stdout.write('ready\\n');
setInterval(() => keep.length, 1000);
`;

/** Starts the heap child; resolves once its heap is built. Kill it with `child.kill()`. */
export async function startHeapChild(): Promise<ChildProcess & { pid: number }> {
  const child = spawn(process.execPath, ['-e', HEAP_SCRIPT], {
    env: { PATH: process.env.PATH ?? '/usr/bin:/bin' },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const [data] = (await once(child.stdout!, 'data')) as [Buffer];
  if (!data.toString().includes('ready') || child.pid === undefined) {
    child.kill('SIGKILL');
    throw new Error('heap child did not start');
  }
  return child as ChildProcess & { pid: number };
}

/** Up to `bytesMax` bytes of real memory pages from a fresh node child. */
export async function realMemoryPages(bytesMax: number, anonOnly = false): Promise<Buffer> {
  const child = await startHeapChild();
  try {
    return readProcessPages(child.pid, { anonOnly, bytesMax });
  } finally {
    child.kill('SIGKILL');
    await once(child, 'exit').catch(() => undefined);
  }
}
