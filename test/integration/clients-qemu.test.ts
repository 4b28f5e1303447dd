/**
 * qemu-io and qemu-img against diffswap: patterned writes and reads at aligned, unaligned and
 * last-sector offsets (checked against a byte model through a second client), requests past
 * the end, and a mixed random image converted in and out, compared byte for byte.
 */
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { qemuIo } from '../helpers/clients.js';
import { runToolFails, runToolOk } from '../helpers/exec.js';
import { assertFilesEqual, makeTempDir, testSeed, writeMixedImage } from '../helpers/files.js';
import { backendsUnderTest, requestCounts, withTestServer } from '../helpers/nbd-server.js';

const KiB = 1024;
const MiB = 1024 * KiB;

/** One patterned write: `length` bytes of `pattern` at `offset`. */
interface PatternWrite {
  offset: number;
  length: number;
  pattern: number;
}

/**
 * Writes that cover the awkward cases: whole pages, a 512-byte sector inside a page, odd
 * offsets and lengths, a write spanning three pages with both ends unaligned, overlapping
 * rewrites, and the last sector and last byte of the export.
 */
function awkwardWrites(sizeBytes: number): PatternWrite[] {
  return [
    { offset: 0, length: 4 * KiB, pattern: 0x11 },
    { offset: 512, length: 512, pattern: 0x22 },
    { offset: 4097, length: 3, pattern: 0x33 },
    { offset: 12 * KiB + 7, length: 1, pattern: 0x34 },
    { offset: MiB - 100, length: 8292, pattern: 0x66 },
    { offset: MiB + 1000, length: 3000, pattern: 0x77 }, // overwrites part of the 0x66 run
    { offset: 2 * MiB, length: 256 * KiB, pattern: 0x88 },
    { offset: 2 * MiB + 4 * KiB + 511, length: 4 * KiB + 2, pattern: 0x99 },
    { offset: sizeBytes - 512, length: 512, pattern: 0x44 },
    { offset: sizeBytes - 1, length: 1, pattern: 0x55 },
  ];
}

function nonZeroPageCount(bytes: Buffer): number {
  let count = 0;
  for (let at = 0; at < bytes.length; at += 4096) {
    if (bytes.subarray(at, at + 4096).some((b) => b !== 0)) count++;
  }
  return count;
}

function applyToModel(model: Buffer, writes: PatternWrite[]) {
  for (const w of writes) model.fill(w.pattern, w.offset, w.offset + w.length);
}

/**
 * qemu-io read commands checking every byte run of the model around the writes: each
 * maximal run of one byte value inside the windows touched, plus a margin of 8 KiB.
 */
function readChecks(model: Buffer, writes: PatternWrite[]): string[] {
  const commands: string[] = [];
  const windows = writes.map((w) => [
    Math.max(0, w.offset - 8 * KiB),
    Math.min(model.length, w.offset + w.length + 8 * KiB),
  ]);
  for (const [start, end] of mergeWindows(windows as Array<[number, number]>)) {
    let runStart = start;
    for (let i = start + 1; i <= end; i++) {
      if (i === end || model[i] !== model[runStart]) {
        commands.push(
          `read -P 0x${(model[runStart] ?? 0).toString(16)} ${runStart} ${i - runStart}`,
        );
        runStart = i;
      }
    }
  }
  return commands;
}

function mergeWindows(windows: Array<[number, number]>): Array<[number, number]> {
  const sorted = [...windows].sort((a, b) => a[0] - b[0]);
  const out: Array<[number, number]> = [];
  for (const [start, end] of sorted) {
    const last = out[out.length - 1];
    if (last && start <= last[1]) last[1] = Math.max(last[1], end);
    else out.push([start, end]);
  }
  return out;
}

for (const backend of backendsUnderTest()) {
  describe(`qemu-io and qemu-img (${backend})`, () => {
    test('patterned writes at aligned, unaligned and last-sector offsets read back', async () => {
      await withTestServer({ backend }, async (srv) => {
        const sizeBytes = srv.exports[0]?.sizeBytes ?? 0;
        const writes = awkwardWrites(sizeBytes);
        const model = Buffer.alloc(sizeBytes);
        applyToModel(model, writes);

        const writeCommands = writes.map(
          (w) => `write -P 0x${w.pattern.toString(16)} ${w.offset} ${w.length}`,
        );
        await qemuIo(srv.uri(), [...writeCommands, 'flush']);
        // A second connection reads the runs back, so nothing is served from a client cache.
        await qemuIo(srv.uri(), readChecks(model, writes));

        // And a third client copies the whole export: every byte must match the model.
        const tmp = await makeTempDir();
        try {
          const out = join(tmp.path, 'out.img');
          await runToolOk('nbdcopy', [srv.uri(), out]);
          assert.ok((await readFile(out)).equals(model), 'export differs from the byte model');
        } finally {
          await tmp.remove();
        }
      });
    });

    test('pipelined aio writes and reads complete with the right data', async () => {
      await withTestServer({ backend }, async (srv) => {
        const writes: string[] = [];
        const reads: string[] = [];
        for (let i = 0; i < 32; i++) {
          const offset = i * 64 * KiB + (i % 3) * 512;
          const pattern = (0x20 + i).toString(16);
          writes.push(`aio_write -P 0x${pattern} ${offset} ${16 * KiB + i}`);
          reads.push(`aio_read -P 0x${pattern} ${offset} ${16 * KiB + i}`);
        }
        await qemuIo(srv.uri(), [...writes, 'aio_flush', ...reads, 'aio_flush']);
        const counts = await requestCounts(srv, srv.exports[0]?.name ?? '');
        if (counts) assert.equal(counts.failed, 0, JSON.stringify(counts.byCommand));
      });
    });

    test('writes and reads past the end fail cleanly and the server keeps serving', async () => {
      await withTestServer({ backend }, async (srv) => {
        const sizeBytes = srv.exports[0]?.sizeBytes ?? 0;
        await qemuIo(srv.uri(), [`write -P 0xab ${sizeBytes - 4096} 4096`]);
        const cases = [
          `write -P 0xcd ${sizeBytes - 512} 1024`,
          `write -P 0xcd ${sizeBytes} 512`,
          `read ${sizeBytes - 4096} 8192`,
          `read ${sizeBytes + 4096} 4096`,
        ];
        for (const command of cases) {
          const failed = await runToolFails('qemu-io', ['-f', 'raw', srv.uri(), '-c', command]);
          assert.match(failed.stdout + failed.stderr, /failed|error/i, command);
        }
        // The data at the end is intact and new clients are still served.
        await qemuIo(srv.uri(), [`read -P 0xab ${sizeBytes - 4096} 4096`]);
        await qemuIo(srv.uri(), ['write -P 0x01 0 4k', 'read -P 0x01 0 4k']);
      });
    });

    test('qemu-img convert of a mixed random image in and out is byte-identical', async (t) => {
      const seed = testSeed();
      t.diagnostic(`image seed ${seed} (replay with DIFFSWAP_TEST_SEED=${seed})`);
      const sizeBytes = 6 * MiB;
      const exports = [{ name: 'img', sizeBytes }];
      const tmp = await makeTempDir();
      t.after(() => tmp.remove());
      const src = join(tmp.path, 'src.img');
      const out = join(tmp.path, 'out.img');
      const image = await writeMixedImage(src, sizeBytes, seed);
      assert.ok(new Set(image.regions.map((r) => r.kind)).size >= 3, 'image lacks variety');

      await withTestServer({ backend, exports }, async (srv) => {
        // Fill the export with garbage first, so zero regions must really be written as zero.
        await qemuIo(srv.uri(), [`write -P 0xee 0 ${sizeBytes}`]);
        await runToolOk('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', src, srv.uri()]);
        await runToolOk('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', srv.uri(), out]);
        await assertFilesEqual(src, out);
        const compare = await runToolOk('qemu-img', [
          'compare',
          '-f',
          'raw',
          '-F',
          'raw',
          src,
          srv.uri(),
        ]);
        assert.match(compare.stdout, /identical/i);
        // The device's own accounting saw the data: every page holding a non-zero byte is
        // mapped (zero pages may or may not be), and nothing beyond the export.
        const stats = srv.backend?.stats().exports.find((e) => e.name === 'img');
        if (srv.backend) {
          assert.ok(stats, 'no stats for export img');
          const nonZero = nonZeroPageCount(image.bytes);
          assert.ok(stats.mappedPages >= nonZero, `${stats.mappedPages} < ${nonZero} pages`);
          assert.ok(stats.mappedPages <= sizeBytes / 4096);
        }
      });
    });
  });
}
