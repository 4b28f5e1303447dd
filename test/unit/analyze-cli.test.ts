// `diffswap analyze` as a user runs it (the built CLI): reports, JSON, chart, ELF cores, and
// clear messages with documented exit codes for bad input.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { connect } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { PAGE_SIZE } from '../../src/device/types.js';
import { runTool, runToolOk } from '../helpers/exec.js';
import { makeTempDir, randomBytes } from '../helpers/files.js';

const cli = fileURLToPath(new URL('../../src/cli/main.js', import.meta.url));

function analyze(args: string[]) {
  return runTool(process.execPath, [cli, 'analyze', '--no-progress', '--workers', '1', ...args]);
}

/**
 * A minimal 64-bit little-endian ELF core (System V gABI): the header, a PT_NOTE and two
 * PT_LOAD program headers, then each segment's bytes from `firstOffset` on (a page, as the
 * kernel aligns them; gdb's gcore does not align them at all).
 */
function elfCore(segments: Buffer[], firstOffset = PAGE_SIZE): Buffer {
  const phentsize = 56;
  const phnum = segments.length + 1;
  const header = Buffer.alloc(64);
  header.writeUInt32LE(0x464c457f, 0);
  header[4] = 2; // ELFCLASS64
  header[5] = 1; // ELFDATA2LSB
  header[6] = 1; // EV_CURRENT
  header.writeUInt16LE(4, 16); // ET_CORE
  header.writeUInt16LE(62, 18); // EM_X86_64
  header.writeUInt32LE(1, 20);
  header.writeBigUInt64LE(64n, 32); // e_phoff
  header.writeUInt16LE(64, 52); // e_ehsize
  header.writeUInt16LE(phentsize, 54);
  header.writeUInt16LE(phnum, 56);
  const table = Buffer.alloc(phnum * phentsize);
  table.writeUInt32LE(4, 0); // PT_NOTE, ignored
  let offset = firstOffset;
  segments.forEach((segment, i) => {
    const at = (i + 1) * phentsize;
    table.writeUInt32LE(1, at); // PT_LOAD
    table.writeBigUInt64LE(BigInt(offset), at + 8); // p_offset
    table.writeBigUInt64LE(BigInt(segment.length), at + 32); // p_filesz
    table.writeBigUInt64LE(BigInt(segment.length), at + 40); // p_memsz
    offset += segment.length;
  });
  const headerPage = Buffer.alloc(firstOffset);
  Buffer.concat([header, table]).copy(headerPage);
  return Buffer.concat([headerPage, ...segments]);
}

/** Runs one command on qemu's human monitor and resolves with its output at the next prompt. */
async function hmp(socketPath: string, command: string): Promise<string> {
  let socket: ReturnType<typeof connect> | undefined;
  // qemu creates the socket a moment after it starts: bounded retries.
  for (let attempt = 0; attempt < 100 && !socket; attempt++) {
    const candidate = connect(socketPath);
    try {
      await once(candidate, 'connect');
      socket = candidate;
    } catch {
      candidate.destroy();
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  }
  assert.ok(socket, `qemu monitor ${socketPath} never answered`);
  let text = '';
  socket.on('data', (chunk: Buffer) => {
    text += chunk.toString();
  });
  const closed = once(socket, 'close').then(() => {
    throw new Error(`qemu monitor closed during '${command}': ${text}`);
  });
  closed.catch(() => undefined);
  const prompt = async () => {
    while (!text.endsWith('(qemu) ')) await Promise.race([once(socket, 'data'), closed]);
  };
  try {
    await prompt();
    text = '';
    socket.write(`${command}\n`);
    await prompt();
    return text;
  } finally {
    socket.end();
  }
}

describe('diffswap analyze (CLI)', () => {
  let dir: Awaited<ReturnType<typeof makeTempDir>>;
  before(async () => {
    dir = await makeTempDir('diffswap-analyze-cli-');
  });
  after(async () => dir.remove());

  it('prints the tables and writes JSON and an SVG chart', async () => {
    const image = join(dir.path, 'mixed.img');
    const random = randomBytes(8 * PAGE_SIZE, 3);
    await writeFile(image, Buffer.concat([Buffer.alloc(4 * PAGE_SIZE), random, random]));
    const json = join(dir.path, 'report.json');
    const chart = join(dir.path, 'chart.svg');
    const result = await analyze([image, '--json', json, '--chart', chart, '--sample', '50']);
    assert.equal(result.code, 0, result.stderr);
    assert.match(result.stdout, /zero\s+4\s+20\.0%/);
    assert.match(result.stdout, /duplicate, same file\s+8\s+40\.0%/);
    assert.match(result.stdout, /all combined/);
    assert.match(result.stdout, /Patch algorithms/);
    const report = JSON.parse(await readFile(json, 'utf8'));
    assert.equal(report.pageCount, 20);
    assert.equal(report.classes.uniqueRaw, 8);
    const svg = await readFile(chart, 'utf8');
    assert.match(svg, /^<svg xmlns="http:\/\/www\.w3\.org\/2000\/svg"/);
    assert.ok((svg.match(/<rect /g) ?? []).length > report.techniques.length);
  });

  it('writes a PNG chart through rsvg-convert, and says what is missing without it', async () => {
    const image = join(dir.path, 'png.img');
    await writeFile(image, Buffer.concat([Buffer.alloc(2 * PAGE_SIZE), randomBytes(PAGE_SIZE, 5)]));
    const chart = join(dir.path, 'chart.png');
    const result = await analyze([image, '--exact-only', '--chart', chart]);
    assert.equal(result.code, 0, result.stderr);
    const png = await readFile(chart);
    assert.ok(png.subarray(0, 8).equals(Buffer.from('\x89PNG\r\n\x1a\n', 'latin1')), 'PNG magic');
    // IHDR: width and height, at twice the SVG's size.
    assert.ok(png.readUInt32BE(16) >= 800 && png.readUInt32BE(20) >= 200, 'a chart-sized image');

    const missing = join(dir.path, 'missing.png');
    const noRsvg = await runTool(
      process.execPath,
      [cli, 'analyze', '--no-progress', '--workers', '1', image, '--chart', missing],
      { env: { PATH: '/nonexistent' } },
    );
    assert.equal(noRsvg.code, 1);
    assert.match(noRsvg.stderr, /needs rsvg-convert \(Debian\/Ubuntu package librsvg2-bin\)/);
    assert.equal(noRsvg.stdout, '', 'refused before the analysis');
  });

  it('reads the memory segments of an ELF core file', async () => {
    const core = join(dir.path, 'core');
    const random = randomBytes(3 * PAGE_SIZE, 9);
    await writeFile(core, elfCore([Buffer.alloc(2 * PAGE_SIZE), random]));
    const result = await analyze([core, '--exact-only', '--json', '-']);
    assert.equal(result.code, 0, result.stderr);
    const report = JSON.parse(result.stdout);
    assert.equal(report.files[0].format, 'elf-core');
    assert.equal(report.pageCount, 5, 'the header page is not memory');
    assert.equal(report.classes.zero, 2);
    assert.equal(report.classes.uniqueRaw, 3);
  });

  it('reads segments at unaligned offsets, as gdb gcore writes them', async () => {
    const core = join(dir.path, 'core-unaligned');
    const random = randomBytes(3 * PAGE_SIZE, 11);
    await writeFile(core, elfCore([Buffer.alloc(2 * PAGE_SIZE), random], 0xfc8));
    const result = await analyze([core, '--exact-only', '--json', '-']);
    assert.equal(result.code, 0, result.stderr);
    const report = JSON.parse(result.stdout);
    assert.equal(report.pageCount, 5);
    assert.equal(report.classes.zero, 2);
    assert.equal(report.classes.uniqueRaw, 3);
  });

  it("reads a real core file from gdb's gcore, every page of its load segments", async () => {
    const child = spawn(
      'python3',
      [
        '-c',
        'import time\nd = {i: str(i) * 9 for i in range(100000)}\n' +
          'print("ready", flush=True)\ntime.sleep(60)',
      ],
      { stdio: ['ignore', 'pipe', 'inherit'] },
    );
    try {
      await once(child.stdout!, 'data');
      const prefix = join(dir.path, 'gcore');
      await runToolOk('gcore', ['-o', prefix, String(child.pid)], { timeoutMs: 120_000 });
      const core = `${prefix}.${child.pid}`;
      // readelf, a tool of its own, says how many whole pages the load segments hold.
      const table = (await runToolOk('readelf', ['-lW', core])).stdout;
      let pages = 0;
      for (const line of table.split('\n')) {
        const fields = line.trim().split(/\s+/);
        if (fields[0] === 'LOAD') pages += Math.floor(Number(fields[4]) / PAGE_SIZE);
      }
      assert.ok(pages > 1000, `readelf counted ${pages} pages`);
      const result = await analyze([core, '--exact-only', '--json', '-']);
      assert.equal(result.code, 0, result.stderr);
      const report = JSON.parse(result.stdout);
      assert.equal(report.files[0].format, 'elf-core');
      assert.equal(report.pageCount, pages);
      assert.ok(report.classes.uniqueCompressed > 0, 'a python heap has compressible pages');
    } finally {
      child.kill('SIGKILL');
    }
  });

  it("reads qemu's guest-memory dump as an ELF core and refuses its kdump form", async () => {
    const monitor = join(dir.path, 'qemu.monitor');
    const qemu = spawn(
      'qemu-system-x86_64',
      ['-accel', 'tcg', '-m', '32M', '-nodefaults', '-display', 'none', '-no-reboot'].concat([
        '-monitor',
        `unix:${monitor},server=on,wait=off`,
      ]),
      { stdio: ['ignore', 'ignore', 'inherit'] },
    );
    try {
      const elf = join(dir.path, 'guest.elf');
      const kdump = join(dir.path, 'guest.kdump');
      await hmp(monitor, `dump-guest-memory ${elf}`);
      await hmp(monitor, `dump-guest-memory -z ${kdump}`);
      const table = (await runToolOk('readelf', ['-lW', elf])).stdout;
      let pages = 0;
      for (const line of table.split('\n')) {
        const fields = line.trim().split(/\s+/);
        if (fields[0] === 'LOAD') pages += Math.floor(Number(fields[4]) / PAGE_SIZE);
      }
      assert.ok(pages >= (32 << 20) / PAGE_SIZE, `readelf counted ${pages} pages`);
      const result = await analyze([elf, '--exact-only', '--json', '-']);
      assert.equal(result.code, 0, result.stderr);
      const report = JSON.parse(result.stdout);
      assert.equal(report.files[0].format, 'elf-core');
      assert.equal(report.pageCount, pages);
      const refused = await analyze([kdump, '--exact-only']);
      assert.equal(refused.code, 3, refused.stderr);
      assert.match(refused.stderr, /guest\.kdump: a compressed kdump file.*dump-guest-memory/);
      assert.equal(refused.stdout, '');
    } finally {
      qemu.kill('SIGKILL');
      await once(qemu, 'exit').catch(() => undefined);
    }
  });

  it('refuses images compressed by zstd, xz, gzip and lz4, saying how to decompress', async () => {
    const image = join(dir.path, 'plain.img');
    await writeFile(
      image,
      Buffer.concat([randomBytes(4 * PAGE_SIZE, 5), Buffer.alloc(12 * PAGE_SIZE)]),
    );
    const compressors: Array<[string, string[], string]> = [
      ['zstd', ['-q', '-k', '-f', '-o', `${image}.zst`, image], `${image}.zst`],
      ['xz', ['-k', '-f', image], `${image}.xz`],
      ['gzip', ['-k', '-f', image], `${image}.gz`],
      ['lz4', ['-q', '-f', image, `${image}.lz4`], `${image}.lz4`],
    ];
    for (const [tool, args, out] of compressors) {
      await runToolOk(tool, args);
      const result = await analyze([out, '--exact-only']);
      assert.equal(result.code, 3, `${tool}: ${result.stderr}`);
      assert.match(result.stderr, new RegExp(`${tool}-compressed.*'${tool} -d FILE'`));
    }
    // The same pages uncompressed are read as they are.
    const plain = await analyze([image, '--exact-only', '--json', '-']);
    assert.equal(plain.code, 0, plain.stderr);
    assert.equal(JSON.parse(plain.stdout).pageCount, 16);
  });

  it('reports a tail that is not a whole page and analyzes the rest', async () => {
    const image = join(dir.path, 'tail.img');
    await writeFile(image, Buffer.concat([Buffer.alloc(2 * PAGE_SIZE), Buffer.alloc(100, 1)]));
    const result = await analyze([image, '--exact-only', '--json', '-']);
    assert.equal(result.code, 0, result.stderr);
    assert.match(result.stderr, /tail\.img: size is not a multiple of 4 KiB; the last 100 bytes/);
    const report = JSON.parse(result.stdout);
    assert.equal(report.pageCount, 2);
    assert.equal(report.files[0].tailBytes, 100);
  });

  it('refuses a missing file, a directory, an empty file with exit code 3', async () => {
    const empty = join(dir.path, 'empty.img');
    await writeFile(empty, '');
    const subdir = join(dir.path, 'subdir');
    await mkdir(subdir);
    const small = join(dir.path, 'small.img');
    await writeFile(small, Buffer.alloc(100));
    const cases: Array<[string, RegExp]> = [
      [join(dir.path, 'missing.img'), /missing\.img: no such file/],
      [subdir, /subdir: is a directory/],
      [empty, /empty\.img: empty file/],
      [small, /small\.img: 100 bytes, smaller than one 4 KiB page/],
    ];
    for (const [path, message] of cases) {
      const result = await analyze([path]);
      assert.equal(result.code, 3, `${path}: ${result.stderr}`);
      assert.match(result.stderr, message);
      assert.equal(result.stdout, '');
    }
  });

  it('refuses bad usage with exit code 2 and prints help with 0', async () => {
    for (const args of [[], ['x.img', '--sample', 'many'], ['x.img', '--chart', 'out.gif']]) {
      const result = await analyze(args);
      assert.equal(result.code, 2, `${args.join(' ')}: ${result.stderr}`);
      assert.match(result.stderr, /Usage: diffswap analyze/);
    }
    const help = await analyze(['--help']);
    assert.equal(help.code, 0);
    assert.match(help.stdout, /Exit codes: 0 report written/);
  });
});
