/**
 * Memory images for the savings benchmarks, made fresh on this machine each run:
 *
 * - `processes.img`: the readable memory of three processes started with a clean
 *   environment, read from /proc/PID/mem: node with a heap of objects, python3 with a dict of
 *   strings, and gcc's cc1 compiling a generated C file (stopped mid-compile with SIGSTOP so
 *   its memory holds the compiler's working data, then read).
 * - `guest-idle.img`, `guest-busy.img`: the RAM of the test guest (Debian kernel, busybox
 *   initramfs, test/e2e/guest) under qemu, one just booted, one after memfill ran over twice
 *   its RAM with a local swap file. qemu runs with -no-shutdown, so the guest's poweroff
 *   pauses it with its RAM intact, and the monitor's `pmemsave` writes that RAM out.
 *
 * Both kinds are what the page store sees in use: swapped-out process pages, and the memory
 * of VMs running the same kernel (which is where cross-VM duplicates come from).
 */
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { once } from 'node:events';
import { writeFile } from 'node:fs/promises';
import net from 'node:net';
import { join } from 'node:path';
import { buildGuest, qemuAccel } from '../../helpers/guest.js';
import { readProcessPages, startHeapChild } from '../../helpers/process-memory.js';

export interface MemoryImage {
  /** Short name for tables: `processes`, `guest-idle`, ... */
  name: string;
  path: string;
  bytes: number;
}

const CLEAN_ENV = { PATH: process.env.PATH ?? '/usr/bin:/bin' };
/** The guest's RAM, as in the e2e test. */
const GUEST_MEMORY_MIB = 128;
/** Bounds every qemu run here (TCG on a loaded machine is slow). */
const GUEST_TIMEOUT_MS = 10 * 60_000;
/** How long cc1 compiles before its memory is read. */
const COMPILE_MS = 4_000;

const PYTHON_SCRIPT = [
  'import time',
  'd = {"key-%d" % i: ["v" * (i % 17), i, i * 0.5, str(i)] for i in range(250000)}',
  'print("ready", flush=True)',
  'time.sleep(600)',
].join('\n');

/** Reads a process's readable memory (up to `bytesMax`), then kills it. */
async function readAndKill(child: ChildProcess, bytesMax: number): Promise<Buffer> {
  try {
    return readProcessPages(child.pid!, { anonOnly: false, bytesMax });
  } finally {
    child.kill('SIGKILL');
    await once(child, 'exit').catch(() => undefined);
  }
}

async function pythonMemory(bytesMax: number): Promise<Buffer> {
  const child = spawn('python3', ['-c', PYTHON_SCRIPT], {
    env: CLEAN_ENV,
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  await once(child.stdout!, 'data');
  return readAndKill(child, bytesMax);
}

/** A C file that keeps cc1 -O2 busy for tens of seconds (its size makes the heap grow). */
function generatedSource(): string {
  const lines: string[] = [];
  for (let f = 0; f < 4000; f++) {
    lines.push(`int f${f}(int x, int y) { int s = ${f}; for (int i = 0; i < x; i++) {`);
    lines.push('  switch ((i ^ y) % 7) {');
    for (let c = 0; c < 7; c++)
      lines.push(`  case ${c}: s += i * ${c + f} + (y >> ${c % 5}); break;`);
    lines.push('} } return s; }');
  }
  return lines.join('\n');
}

async function compilerMemory(dir: string, bytesMax: number): Promise<Buffer> {
  const source = join(dir, 'big.c');
  await writeFile(source, generatedSource());
  const cc1 = execFileSync('gcc', ['-print-prog-name=cc1'], { encoding: 'utf8' }).trim();
  const child = spawn(cc1, ['-quiet', '-O2', source, '-o', '/dev/null'], {
    env: CLEAN_ENV,
    stdio: 'ignore',
  });
  await new Promise((r) => setTimeout(r, COMPILE_MS));
  if (child.exitCode !== null) throw new Error('cc1 finished before its memory was read');
  child.kill('SIGSTOP');
  return readAndKill(child, bytesMax);
}

/** Three processes' memory, `perProcessBytes` at most each, as one image. */
export async function processImage(dir: string, perProcessBytes: number): Promise<MemoryImage> {
  const heap = await startHeapChild();
  const parts = [
    await readAndKill(heap, perProcessBytes),
    await pythonMemory(perProcessBytes),
    await compilerMemory(dir, perProcessBytes),
  ];
  const image = Buffer.concat(parts);
  const path = join(dir, 'processes.img');
  await writeFile(path, image);
  return { name: 'processes', path, bytes: image.length };
}

/** Sends one monitor command and waits for the next prompt. */
async function monitorCommand(socketPath: string, command: string): Promise<string> {
  const socket = net.connect(socketPath);
  let text = '';
  socket.on('data', (chunk: Buffer) => {
    text += chunk.toString();
  });
  const prompt = async () => {
    while (!text.endsWith('(qemu) ')) await once(socket, 'data');
  };
  await prompt();
  text = '';
  socket.write(`${command}\n`);
  await prompt();
  socket.end();
  return text;
}

/**
 * Boots the test guest; `fillMiB` > 0 runs memfill with a swap file. When the guest powers
 * off, qemu pauses (-no-shutdown) and its RAM is saved to `path`.
 */
async function guestRam(dir: string, name: string, fillMiB: number): Promise<MemoryImage> {
  const image = buildGuest();
  const swap = join(dir, `${name}-swap.raw`);
  execFileSync('truncate', ['-s', `${4 * GUEST_MEMORY_MIB}M`, swap]);
  const monitor = join(dir, `${name}.monitor`);
  const path = join(dir, `${name}.img`);
  const qemu = spawn(
    'qemu-system-x86_64',
    [
      ...['-accel', qemuAccel(), '-m', `${GUEST_MEMORY_MIB}M`, '-smp', '1', '-no-shutdown'],
      ...['-display', 'none', '-serial', 'stdio', '-monitor', `unix:${monitor},server,nowait`],
      ...['-kernel', image.kernelPath, '-initrd', image.initrdPath],
      ...['-append', `console=ttyS0 panic=-1 quiet memfill_mib=${fillMiB}`],
      ...['-drive', `file=${swap},format=raw,if=virtio`],
    ],
    { stdio: ['ignore', 'pipe', 'inherit'] },
  );
  const timer = setTimeout(() => qemu.kill('SIGKILL'), GUEST_TIMEOUT_MS);
  try {
    let consoleText = '';
    let done = false;
    qemu.stdout!.on('data', (chunk: Buffer) => {
      consoleText = (consoleText + chunk.toString()).slice(-4096);
      if (/DIFFSWAP-GUEST-(DONE|RESULT FAIL)/.test(consoleText)) done = true;
    });
    while (!done) {
      if (qemu.exitCode !== null) throw new Error(`guest exited early: ${consoleText}`);
      await new Promise((r) => setTimeout(r, 200));
    }
    // Wait until poweroff has paused the VM, then save all of its RAM.
    for (;;) {
      const status = await monitorCommand(monitor, 'info status');
      if (/paused|shutdown/.test(status)) break;
      await new Promise((r) => setTimeout(r, 200));
    }
    await monitorCommand(monitor, `pmemsave 0 ${GUEST_MEMORY_MIB * 2 ** 20} "${path}"`);
  } finally {
    clearTimeout(timer);
    qemu.kill('SIGKILL');
    await once(qemu, 'exit').catch(() => undefined);
  }
  return { name, path, bytes: GUEST_MEMORY_MIB * 2 ** 20 };
}

/** Two guests' RAM: one idle after boot, one after a memory-heavy run. */
export async function guestImages(dir: string): Promise<MemoryImage[]> {
  return [
    await guestRam(dir, 'guest-idle', 0),
    await guestRam(dir, 'guest-busy', 2 * GUEST_MEMORY_MIB),
  ];
}
