/**
 * Page-store accounting and the behaviours it reports: exact counts per technique, dedup
 * within a sharing group only, each technique switched off per export, forced hash
 * collisions, and export creation / growth / shrink refusal across reopen.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { pino } from 'pino';
import { type ExportSpec, PAGE_SIZE, type TechniqueSwitches } from '../../src/device/types.js';
import { openPageStore, setContentHashForTests } from '../../src/store/index.js';
import { makeTempDir } from '../helpers/files.js';
import { makePage, pagesOf } from '../helpers/store-pages.js';

let tmp: { path: string; remove(): Promise<void> };
let dirCount = 0;
before(async () => {
  tmp = await makeTempDir('diffswap-store-acct-');
});
after(async () => {
  await tmp.remove();
});
const freshDir = () => `${tmp.path}/s${dirCount++}`;
const MiB = 1024 * 1024;

/** 3 zero, 2 equal fill-word, a pool page, 2 copies of it, 1 near-copy, 2 unique pages. */
function knownMix(): Buffer {
  return pagesOf([
    makePage('zero', 0),
    makePage('zero', 0),
    makePage('zero', 0),
    makePage('fill', 1),
    makePage('fill', 1),
    makePage('pool', 0),
    makePage('pool', 0),
    makePage('pool', 0),
    makePage('similar', 5),
    makePage('unique', 1),
    makePage('unique', 2),
  ]);
}
const MIX_PAGES = 11;

async function readAll(
  store: Awaited<ReturnType<typeof openPageStore>>,
  name: string,
  pages: number,
) {
  const device = store.device(name);
  assert.ok(device);
  const out = Buffer.alloc(pages * PAGE_SIZE);
  await device.readPages(0, pages, out, 0);
  return out;
}

test('counts zero, duplicate, delta and compressed pages exactly, across restart', async () => {
  const dir = freshDir();
  const exports = [{ name: 'a', sizeBytes: 16 * MiB }];
  let store = await openPageStore({ dataDir: dir, exports });
  await store.device('a')?.writePages(0, knownMix(), { fua: false });
  await store.device('a')?.flush();
  const check = (stats: ReturnType<typeof store.stats>) => {
    const t = stats.techniques;
    assert.deepEqual(
      [t.zero.pages, t.duplicate.pages, t.delta.pages, t.compressed.pages, t.raw.pages],
      [5, 2, 1, 3, 0],
    );
    assert.deepEqual([t.duplicate.objects, t.delta.objects, t.compressed.objects], [1, 1, 3]);
    assert.equal(t.zero.storedBytes, 0);
    assert.equal(t.zero.savedBytes, 5 * PAGE_SIZE);
    assert.equal(t.duplicate.savedBytes, 2 * PAGE_SIZE);
    assert.ok(t.delta.storedBytes > 0 && t.delta.storedBytes < t.compressed.storedBytes / 3);
    assert.equal(stats.storedBytes, t.delta.storedBytes + t.compressed.storedBytes);
    assert.equal(stats.logicalBytes, MIX_PAGES * PAGE_SIZE);
    assert.equal(stats.exports[0]?.mappedPages, MIX_PAGES);
    assert.deepEqual(
      [stats.referencePages, stats.referenceFanInTotal, stats.referenceFanInMax],
      [1, 1, 1],
    );
  };
  check(store.stats());
  await store.close();
  store = await openPageStore({ dataDir: dir, exports });
  check(store.stats());
  assert.ok((await readAll(store, 'a', MIX_PAGES)).equals(knownMix()));

  // Overwrite every copy of the pool page: its object stays as the delta's base only.
  const device = store.device('a');
  assert.ok(device);
  await device.writePages(5, pagesOf([0, 1, 2].map((n) => makePage('unique', 10 + n))), {
    fua: false,
  });
  await device.flush();
  const t = store.stats().techniques;
  assert.deepEqual([t.duplicate.pages, t.delta.pages, t.compressed.pages], [0, 1, 5]);
  // The base object lives on for the delta: 5 mapped compressed objects plus the base.
  assert.deepEqual([t.duplicate.objects, t.compressed.objects], [0, 6]);
  assert.equal(store.stats().referencePages, 1);
  await device.zeroPages(8, 1, { fua: false, mayTrim: true });
  await device.flush();
  const after = store.stats();
  assert.deepEqual([after.techniques.delta.objects, after.techniques.compressed.objects], [0, 5]);
  assert.equal(after.referencePages, 0);
  assert.deepEqual((await store.check({ repair: false })).problems, []);
  await store.close();
});

test('dedups across exports of one group, never across groups', async () => {
  const exports: ExportSpec[] = [
    { name: 'a', sizeBytes: MiB, group: 'vm' },
    { name: 'b', sizeBytes: MiB, group: 'vm' },
    { name: 'c', sizeBytes: MiB, group: 'other' },
  ];
  const store = await openPageStore({ dataDir: freshDir(), exports });
  const page = makePage('unique', 77);
  await store.device('a')?.writePages(3, page, { fua: false });
  await store.device('a')?.flush();
  await store.device('b')?.writePages(9, page, { fua: false });
  await store.device('c')?.writePages(9, page, { fua: false });
  await store.device('c')?.flush();
  const [a, b, c] = store.stats().exports;
  assert.equal(a?.techniques.compressed.pages, 1);
  assert.equal(a?.techniques.duplicate.objects, 1, 'a owns the shared object');
  assert.equal(b?.techniques.duplicate.pages, 1);
  assert.equal(b?.storedBytes, 0);
  assert.equal(c?.techniques.duplicate.pages, 0);
  assert.equal(c?.techniques.compressed.pages, 1);
  // Dropping a's page keeps b's copy readable.
  await store.device('a')?.zeroPages(3, 1, { fua: true, mayTrim: true });
  const got = Buffer.alloc(PAGE_SIZE);
  await store.device('b')?.readPages(9, 1, got, 0);
  assert.ok(got.equals(page));
  assert.deepEqual((await store.check({ repair: false })).problems, []);
  await store.close();
});

test('switching a technique off per export changes its accounting', async () => {
  const off = (name: keyof TechniqueSwitches): ExportSpec => ({
    name: `no-${name}`,
    sizeBytes: MiB,
    group: name,
    techniques: { [name]: false },
  });
  const exports: ExportSpec[] = [
    { name: 'all', sizeBytes: MiB, group: 'all' },
    off('zero'),
    off('dedup'),
    off('delta'),
    off('compress'),
  ];
  const store = await openPageStore({ dataDir: freshDir(), exports });
  for (const spec of exports)
    await store.device(spec.name)?.writePages(0, knownMix(), { fua: false });
  await store.device('all')?.flush();
  const byName = new Map(store.stats().exports.map((e) => [e.name, e]));
  const all = byName.get('all');
  assert.ok(all);
  for (const spec of exports) {
    const stats = byName.get(spec.name);
    assert.equal(stats?.mappedPages, MIX_PAGES, `${spec.name} maps every page`);
    assert.ok((await readAll(store, spec.name, MIX_PAGES)).equals(knownMix()), spec.name);
  }
  const t = (name: string) => {
    const stats = byName.get(name);
    assert.ok(stats);
    return stats.techniques;
  };
  assert.equal(t('no-zero').zero.pages, 0);
  assert.ok((byName.get('no-zero')?.storedBytes ?? 0) > all.storedBytes);
  assert.equal(t('no-dedup').duplicate.pages, 0);
  assert.ok((byName.get('no-dedup')?.storedBytes ?? 0) > all.storedBytes);
  assert.equal(t('no-delta').delta.pages, 0);
  assert.equal(t('no-delta').compressed.pages, t('all').compressed.pages + 1);
  assert.equal(t('no-compress').compressed.pages, 0);
  assert.equal(t('no-compress').raw.pages, 3);
  assert.equal(t('no-compress').delta.pages, 1, 'a delta still beats a raw page');
  assert.ok((byName.get('no-compress')?.storedBytes ?? 0) > all.storedBytes);
  assert.deepEqual((await store.check({ repair: false })).problems, []);
  await store.close();
});

test('a forced hash collision never reads back the other page', async () => {
  const dir = freshDir();
  const exports = [{ name: 'a', sizeBytes: MiB }];
  const forced = Buffer.alloc(32, 0xab);
  setContentHashForTests(() => Buffer.from(forced));
  try {
    let store = await openPageStore({ dataDir: dir, exports });
    const p1 = makePage('unique', 1);
    const p2 = makePage('unique', 2);
    const p3 = makePage('pool', 3);
    const device = store.device('a');
    assert.ok(device);
    // Same batch, then later batches against the committed index.
    await device.writePages(0, pagesOf([p1, p2, p1]), { fua: false });
    await device.flush();
    await device.writePages(3, pagesOf([p2, p3, p1]), { fua: false });
    await device.flush();
    const want = pagesOf([p1, p2, p1, p2, p3, p1]);
    assert.ok((await readAll(store, 'a', 6)).equals(want));
    assert.ok(store.counters.collisions >= 3, `collisions seen: ${store.counters.collisions}`);
    assert.equal(store.stats().techniques.duplicate.pages, 2, 'only true copies of p1 dedup');
    await store.close();
    store = await openPageStore({ dataDir: dir, exports });
    assert.ok((await readAll(store, 'a', 6)).equals(want));
    assert.deepEqual((await store.check({ repair: false })).problems, []);
    await store.close();
  } finally {
    setContentHashForTests(null);
  }
});

test('creates new exports, grows one keeping data, refuses to shrink', async () => {
  const dir = freshDir();
  let store = await openPageStore({ dataDir: dir, exports: [{ name: 'a', sizeBytes: MiB }] });
  const page = makePage('unique', 5);
  await store.device('a')?.writePages(255, page, { fua: true });
  await store.close();
  store = await openPageStore({
    dataDir: dir,
    exports: [
      { name: 'a', sizeBytes: 2 * MiB },
      { name: 'new', sizeBytes: MiB },
    ],
  });
  assert.deepEqual(store.exportNames(), ['a', 'new']);
  assert.equal(store.device('a')?.pageCount, 512);
  assert.ok((await readAll(store, 'a', 256)).subarray(255 * PAGE_SIZE).equals(page));
  await store.close();
  await assert.rejects(
    openPageStore({ dataDir: dir, exports: [{ name: 'a', sizeBytes: MiB }] }),
    (error: Error & { code?: string }) =>
      error.code === 'EINVAL' && /export a: shrinking/.test(error.message),
  );
  // A refused open leaves the store intact.
  store = await openPageStore({ dataDir: dir, exports: [{ name: 'a', sizeBytes: 2 * MiB }] });
  assert.ok((await readAll(store, 'a', 256)).subarray(255 * PAGE_SIZE).equals(page));
  await store.close();
});

test('refuses writes to a read-only export and calls after close', async () => {
  const store = await openPageStore({
    dataDir: freshDir(),
    exports: [{ name: 'ro', sizeBytes: MiB, readOnly: true }],
  });
  const device = store.device('ro');
  assert.ok(device);
  assert.equal(device.writable, false);
  await assert.rejects(device.writePages(0, makePage('unique', 1), { fua: false }), {
    code: 'EPERM',
  });
  await store.close();
  await assert.rejects(device.readPages(0, 1, Buffer.alloc(PAGE_SIZE), 0), { code: 'ESHUTDOWN' });
  await assert.rejects(device.flush(), { code: 'ESHUTDOWN' });
});

test('refuses a second open of a directory that is open', async () => {
  const dir = freshDir();
  const exports = [{ name: 'a', sizeBytes: MiB }];
  const store = await openPageStore({ dataDir: dir, exports });
  await assert.rejects(openPageStore({ dataDir: dir, exports }), {
    code: 'EINVAL',
    message: /already open in this process/,
  });
  await store.close();
  const again = await openPageStore({ dataDir: dir, exports });
  await again.close();
});

test('a shared object whose first page is gone still counts one page of its kind', async () => {
  const dir = freshDir();
  const exports: ExportSpec[] = [
    { name: 'a', sizeBytes: MiB, group: 'vm' },
    { name: 'b', sizeBytes: MiB, group: 'vm' },
  ];
  let store = await openPageStore({ dataDir: dir, exports });
  const page = makePage('unique', 4242);
  const a = store.device('a');
  const b = store.device('b');
  assert.ok(a && b);
  await a.writePages(0, page, { fua: false });
  await a.flush();
  await a.writePages(1, page, { fua: false });
  await b.writePages(1, page, { fua: false });
  await b.flush();
  // The page that stored the object goes; two duplicates of it stay (one in each export).
  await a.writePages(0, Buffer.alloc(PAGE_SIZE), { fua: true });
  const counts = () => {
    const t = store.stats().techniques;
    return {
      compressed: [t.compressed.pages, t.compressed.objects],
      duplicate: t.duplicate.pages,
      savedOk: t.compressed.savedBytes > 0 && t.duplicate.savedBytes === t.duplicate.pages * 4096,
    };
  };
  assert.deepEqual(counts(), { compressed: [1, 1], duplicate: 1, savedOk: true });
  await store.close();
  store = await openPageStore({ dataDir: dir, exports });
  assert.deepEqual(counts(), { compressed: [1, 1], duplicate: 1, savedOk: true }, 'restart');
  // One duplicate left: it is the object's page now.
  await store.device('b')?.zeroPages(1, 1, { fua: true, mayTrim: true });
  assert.deepEqual(counts(), { compressed: [1, 1], duplicate: 0, savedOk: true });
  // And none: the object dies.
  await store.device('a')?.zeroPages(1, 1, { fua: true, mayTrim: true });
  const t = store.stats().techniques;
  assert.deepEqual([t.compressed.pages, t.compressed.objects, t.duplicate.pages], [0, 0, 0]);
  assert.deepEqual((await store.check({ repair: false })).problems, []);
  await store.close();
});

test('keeps the pages of an export the configuration no longer lists, and warns', async () => {
  const dir = freshDir();
  const both = [
    { name: 'a', sizeBytes: MiB },
    { name: 'b', sizeBytes: MiB },
  ];
  let store = await openPageStore({ dataDir: dir, exports: both });
  const pages = pagesOf([makePage('unique', 21), makePage('unique', 22), makePage('fill', 3)]);
  await store.device('b')?.writePages(10, pages, { fua: true });
  await store.close();

  const lines: Record<string, unknown>[] = [];
  const logger = pino({ level: 'info' }, { write: (line: string) => lines.push(JSON.parse(line)) });
  store = await openPageStore({ dataDir: dir, exports: [both[0]!], logger });
  assert.deepEqual(store.exportNames(), ['a']);
  await store.close();
  const warning = lines.find((line) => line.export === 'b');
  assert.ok(warning, `no warning about export b in ${JSON.stringify(lines)}`);
  assert.equal(warning.level, 40);
  assert.equal(warning.mappedPages, 3);
  assert.match(String(warning.msg), /export b is on disk but not configured.*discard 0 1048576/);
  assert.ok(!lines.some((line) => line.export === 'a'), 'a listed export is not warned about');

  // Listed again, it serves the same bytes.
  store = await openPageStore({ dataDir: dir, exports: both });
  const back = Buffer.alloc(3 * PAGE_SIZE);
  await store.device('b')?.readPages(10, 3, back, 0);
  assert.ok(back.equals(pages));
  await store.close();
});
