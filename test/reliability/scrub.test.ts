/**
 * Scrub: damage a stopped store on purpose and see it reported, never served.
 *
 * Pages of seeded random bytes (unique, incompressible: one object each) are written through
 * libnbd. With the server stopped, the test damages (1) payload bytes inside a segment file,
 * under one known page, (2) the offset field of another page's object record in LMDB
 * (rewritten through LMDB itself, so the tree stays valid, as a bit flip inside a value would
 * leave it), and (3) a few bytes at a seeded spot of another segment file, blind. Then:
 * `diffswap check` must name every damaged page by export and byte offset; after a restart a
 * read of each damaged page must answer EIO and every other page must read back exactly.
 *
 * The test reaches into the store's layout (src/index, segments) only to aim the damage.
 */
import assert from 'node:assert/strict';
import { mkdtemp, open as openFile, readdir, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { open as openLmdb } from 'lmdb';
import { decodeMapping, decodeObject, MappingTag, pageKey } from '../../src/index/index.js';
import { openPageStore } from '../../src/store/index.js';
import { RECORD_HEADER_BYTES } from '../../src/store/segments.js';
import { runTool } from '../helpers/exec.js';
import { CLI_PATH, startServerProcess } from '../helpers/server-process.js';
import { makePage, pagesOf } from '../helpers/store-pages.js';
import { SYSTEM_PYTHON, scriptPath } from './support.js';

const PAGE_BYTES = 4096;
const EXPORT = 'scrub';
const PAGE_COUNT = 512;
const SEED = 11;
/** Pages damaged on purpose, each in a different way. */
const SEGMENT_DAMAGED_PAGE = 200;
const RECORD_DAMAGED_PAGE = 100;
const NBD_EIO = 5;

interface PageRead {
  page: number;
  kind: 'match' | 'mismatch' | 'err';
  errno: number;
}

async function readAllPages(uri: string): Promise<PageRead[]> {
  const args = [scriptPath('chunk-io.py'), uri, 'verify', String(SEED), '0', String(PAGE_COUNT)];
  const result = await runTool(SYSTEM_PYTHON, [...args, String(PAGE_BYTES)], {
    timeoutMs: 120_000,
  });
  return result.stdout
    .split('\n')
    .filter((l) => l !== '')
    .map((line) => {
      const [kind, page, errno] = line.split(' ');
      return { page: Number(page), kind: kind as PageRead['kind'], errno: Number(errno ?? 0) };
    });
}

/** Where a page's object lives, read from the stopped store's LMDB. */
function locate(dataDir: string, page: number) {
  const root = openLmdb({ path: join(dataDir, 'index'), maxDbs: 8, compression: false });
  try {
    const exportsDb = root.openDB<{ id: number }, string>({ name: 'exports' });
    const pages = root.openDB<Buffer, number>({ name: 'pages', encoding: 'binary' });
    const objects = root.openDB<Buffer, number>({ name: 'objects', encoding: 'binary' });
    const exportId = exportsDb.get(EXPORT)?.id;
    assert.ok(exportId !== undefined, 'export record');
    const raw = pages.getBinary(pageKey(exportId, page));
    assert.ok(raw, `page ${page} is mapped`);
    const mapping = decodeMapping(raw);
    assert.notEqual(mapping.tag, MappingTag.uniform, 'random page stored as an object');
    const record = objects.getBinary(mapping.objectId);
    assert.ok(record, 'object record');
    return { objectId: mapping.objectId, ...decodeObject(record) };
  } finally {
    root.close();
  }
}

/** Object record fields (src/index/records.ts): byte offset and width. */
const RECORD_OFFSET_FIELD = { at: 28, bytes: 6 };
const RECORD_MAP_COUNT_FIELD = { at: 16, bytes: 4 };

/** Adds one to a field of one object record, rewritten through LMDB. */
async function damageRecord(
  dataDir: string,
  objectId: number,
  field: { at: number; bytes: number },
) {
  const root = openLmdb({ path: join(dataDir, 'index'), maxDbs: 8, compression: false });
  try {
    const objects = root.openDB<Buffer, number>({ name: 'objects', encoding: 'binary' });
    const record = Buffer.from(objects.getBinary(objectId) ?? Buffer.alloc(0));
    record.writeUIntLE(record.readUIntLE(field.at, field.bytes) + 1, field.at, field.bytes);
    await objects.put(objectId, record);
  } finally {
    await root.close();
  }
}

async function flipBytes(path: string, at: number, count: number) {
  const handle = await openFile(path, 'r+');
  try {
    const bytes = Buffer.alloc(count);
    await handle.read(bytes, 0, count, at);
    for (let i = 0; i < count; i++) bytes[i] = (bytes[i] ?? 0) ^ 0x5a;
    await handle.write(bytes, 0, count, at);
  } finally {
    await handle.close();
  }
}

function segmentPath(dataDir: string, segmentId: number): string {
  return join(dataDir, 'segments', `seg-${String(segmentId).padStart(10, '0')}.dat`);
}

describe('scrub', () => {
  let dir = '';
  let dataDir = '';
  const damaged = new Set<number>();
  let blindSegment = '';

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'diffswap-scrub-'));
    dataDir = join(dir, 'data');
    const server = await startServerProcess({
      dataDir,
      exports: [`${EXPORT}:${PAGE_COUNT * PAGE_BYTES}`],
    });
    try {
      const args = [scriptPath('chunk-io.py'), server.uri(EXPORT), 'write', String(SEED), '0'];
      const write = await runTool(
        SYSTEM_PYTHON,
        [...args, String(PAGE_COUNT), String(PAGE_BYTES)],
        {
          timeoutMs: 120_000,
        },
      );
      assert.equal(write.stdout.trim().split('\n').length, PAGE_COUNT, write.stdout + write.stderr);
    } finally {
      assert.equal(await server.stop(), 0);
    }
  });

  after(async () => {
    if (dir !== '') await rm(dir, { recursive: true, force: true });
  });

  test('damage is aimed at two known pages and one blind spot', async () => {
    const inSegment = locate(dataDir, SEGMENT_DAMAGED_PAGE);
    await flipBytes(
      segmentPath(dataDir, inSegment.segmentId),
      inSegment.offset + RECORD_HEADER_BYTES + 7,
      3,
    );
    damaged.add(SEGMENT_DAMAGED_PAGE);

    const inRecord = locate(dataDir, RECORD_DAMAGED_PAGE);
    await damageRecord(dataDir, inRecord.objectId, RECORD_OFFSET_FIELD);
    damaged.add(RECORD_DAMAGED_PAGE);

    // Blind: the middle of the largest segment file; which page it hits is not known here.
    const names = (await readdir(join(dataDir, 'segments'))).filter((n) => n.endsWith('.dat'));
    const sizes = await Promise.all(
      names.map(async (n) => (await stat(join(dataDir, 'segments', n))).size),
    );
    const largest = sizes.indexOf(Math.max(...sizes));
    blindSegment = join(dataDir, 'segments', names[largest] ?? '');
    await flipBytes(blindSegment, Math.floor((sizes[largest] ?? 0) / 2), 2);
  });

  test('a read of a damaged page answers EIO, never wrong bytes; the rest read back', async () => {
    const server = await startServerProcess({
      dataDir,
      exports: [`${EXPORT}:${PAGE_COUNT * PAGE_BYTES}`],
    });
    let reads: PageRead[];
    try {
      reads = await readAllPages(server.uri(EXPORT));
    } finally {
      await server.stop();
    }
    assert.equal(reads.length, PAGE_COUNT);
    const wrong = reads.filter((r) => r.kind === 'mismatch').map((r) => r.page);
    assert.deepEqual(wrong, [], 'pages served with wrong bytes');
    for (const page of damaged) {
      assert.deepEqual(reads[page], { page, kind: 'err', errno: NBD_EIO }, `page ${page}`);
    }
    const failed = reads.filter((r) => r.kind === 'err');
    // The blind damage hits at most a couple of pages (a record straddling the spot).
    assert.ok(failed.length <= damaged.size + 2, `${failed.length} pages fail`);
    for (const r of failed) {
      assert.equal(r.errno, NBD_EIO);
      damaged.add(r.page);
    }
  });

  test('diffswap check reports each damaged page by export and offset', async () => {
    const result = await runTool(
      process.execPath,
      [CLI_PATH, 'check', '--data', dataDir, '--json'],
      {
        timeoutMs: 120_000,
      },
    );
    const text = result.stdout;
    assert.notEqual(result.code, 0, `check must fail on a damaged store:\n${text}`);
    const report = JSON.parse(text.slice(text.indexOf('{'))) as {
      problems?: unknown[];
      damaged?: unknown[];
    };
    const entries = [...(report.problems ?? []), ...(report.damaged ?? [])].map((e) =>
      JSON.stringify(e),
    );
    for (const page of damaged) {
      const offset = String(page * PAGE_BYTES);
      const named = entries.some((e) => e.includes(EXPORT) && e.includes(offset));
      assert.ok(
        named,
        `page ${page} (offset ${offset}) not reported by export and offset:\n${text}`,
      );
    }
  });

  test('without --json, check prints the same damage for a person to read', async () => {
    const result = await runTool(process.execPath, [CLI_PATH, 'check', '--data', dataDir], {
      timeoutMs: 120_000,
    });
    const text = result.stdout;
    assert.equal(result.code, 1, result.stderr);
    assert.match(text, /^store damaged: \d+ objects and \d+ mappings checked/);
    assert.ok(!text.trimStart().startsWith('{'), `a person's report is not JSON:\n${text}`);
    const rows = text.split('\n').filter((line) => line.startsWith(`  ${EXPORT} `));
    for (const page of damaged) {
      const offset = String(page * PAGE_BYTES);
      assert.ok(
        rows.some((row) => row.split(/\s+/).includes(offset)),
        `page ${page} (offset ${offset}) not in the damaged-pages table:\n${text}`,
      );
    }
  });
});

describe('check of a reference count', () => {
  test('a count off by one is reported and fails the check', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'diffswap-refcount-'));
    const exports = [{ name: EXPORT, sizeBytes: PAGE_COUNT * PAGE_BYTES }];
    try {
      const store = await openPageStore({ dataDir: dir, exports });
      const page = Buffer.alloc(PAGE_BYTES);
      for (let i = 0; i < PAGE_BYTES; i += 4) page.writeUInt32LE((i * 2654435761) >>> 0, i);
      await store.device(EXPORT)?.writePages(7, page, { fua: true });
      await store.close();
      await damageRecord(dir, locate(dir, 7).objectId, RECORD_MAP_COUNT_FIELD);
      const check = await runTool(process.execPath, [CLI_PATH, 'check', '--data', dir], {
        timeoutMs: 120_000,
      });
      assert.match(check.stdout, /mapCount/, check.stdout);
      assert.notEqual(check.code, 0, `check passed a wrong reference count:\n${check.stdout}`);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe('check on a store with compaction work pending', () => {
  test('reports no damage where there is none', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'diffswap-checkrace-'));
    // Small segments that compact early and in small steps: opening finds work at once.
    const tuning = {
      segmentBytesMax: 64 * 1024,
      compactLiveRatioMin: 0.99,
      compactStepBytes: 4096,
    };
    const exports = [{ name: 'race', sizeBytes: 4 * 1024 * 1024 }];
    try {
      const quiet = { ...tuning, compactLiveRatioMin: 0 };
      let store = await openPageStore({ dataDir: dir, exports, tuning: quiet });
      const device = store.device('race');
      assert.ok(device);
      for (let round = 0; round < 4; round++) {
        const pages = Buffer.alloc(256 * PAGE_BYTES);
        for (let i = 0; i < pages.length; i += 4)
          pages.writeUInt32LE((i * 2654435761 + round) >>> 0, i);
        await device.writePages(0, pages, { fua: false });
        await device.flush();
      }
      await store.close();
      store = await openPageStore({ dataDir: dir, exports, tuning });
      try {
        const report = await store.check({ repair: false });
        assert.deepEqual(report.problems, []);
      } finally {
        await store.close();
      }
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe('check --repair', () => {
  test('fixes wrong counts and orphans as the store would, then checks clean', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'diffswap-repair-'));
    const exports = [{ name: EXPORT, sizeBytes: 16 * PAGE_BYTES }];
    const base = makePage('pool', 0);
    const near = makePage('similar', 5); // a near-copy of pool page 0: a delta on it
    const unique = makePage('unique', 1);
    try {
      let store = await openPageStore({ dataDir: dir, exports });
      const device = store.device(EXPORT);
      assert.ok(device);
      await device.writePages(0, base, { fua: false });
      await device.flush();
      await device.writePages(1, pagesOf([near, unique, unique]), { fua: false });
      await device.flush();
      const before = store.stats();
      assert.equal(before.techniques.delta.objects, 1, 'page 1 is a delta on page 0');
      await store.close();

      // Damage: page 1's mapping vanishes (its delta is left with no reference, its base
      // with a delta count it should lose), and the unique page's object counts one map
      // reference too many.
      const deltaObject = locate(dir, 1).objectId;
      const uniqueObject = locate(dir, 2).objectId;
      const root = openLmdb({ path: join(dir, 'index'), maxDbs: 8, compression: false });
      try {
        const exportsDb = root.openDB<{ id: number }, string>({ name: 'exports' });
        const pages = root.openDB<Buffer, number>({ name: 'pages', encoding: 'binary' });
        const exportId = exportsDb.get(EXPORT)?.id;
        assert.ok(exportId !== undefined);
        await pages.remove(pageKey(exportId, 1));
      } finally {
        await root.close();
      }
      await damageRecord(dir, uniqueObject, RECORD_MAP_COUNT_FIELD);

      const cli = (args: string[]) =>
        runTool(process.execPath, [CLI_PATH, 'check', '--data', dir, '--json', ...args], {
          timeoutMs: 60_000,
        });
      const found = await cli([]);
      assert.equal(found.code, 1, found.stderr);
      const problems = (JSON.parse(found.stdout) as { problems: string[] }).problems;
      const expected = [
        `object ${deltaObject}: unreferenced but alive`,
        `object ${uniqueObject}: mapCount 3 != 2`,
      ];
      for (const line of expected) assert.ok(problems.includes(line), problems.join('\n'));

      const repaired = await cli(['--repair']);
      assert.equal(repaired.code, 0, repaired.stdout + repaired.stderr);
      const report = JSON.parse(repaired.stdout) as { repaired: number; unrepaired: number };
      assert.ok(report.repaired >= 2, repaired.stdout);
      assert.equal(report.unrepaired, 0);

      const again = await cli([]);
      assert.equal(again.code, 0, again.stdout);
      assert.deepEqual((JSON.parse(again.stdout) as { problems: string[] }).problems, []);

      store = await openPageStore({ dataDir: dir, exports });
      try {
        const after = store.stats();
        assert.equal(after.techniques.delta.objects, 0, 'the orphan delta is gone');
        assert.equal(after.referencePages, 0, 'its base no longer counts as a reference');
        const out = Buffer.alloc(4 * PAGE_BYTES);
        await store.device(EXPORT)?.readPages(0, 4, out, 0);
        assert.ok(out.equals(pagesOf([base, Buffer.alloc(PAGE_BYTES), unique, unique])));
      } finally {
        await store.close();
      }
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe('check of a folder without a store', () => {
  test('says there is nothing to check, fails, and creates nothing', async () => {
    const parent = await mkdtemp(join(tmpdir(), 'diffswap-nostore-'));
    const dir = join(parent, 'typo');
    try {
      const check = await runTool(process.execPath, [CLI_PATH, 'check', '--data', dir], {
        timeoutMs: 60_000,
      });
      assert.equal(check.code, 1, check.stderr);
      assert.match(check.stderr, /no page store in .*typo/);
      assert.deepEqual(await readdir(parent), []);
    } finally {
      await rm(parent, { recursive: true, force: true });
    }
  });
});
