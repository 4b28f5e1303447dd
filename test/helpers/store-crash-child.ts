/**
 * Child process of the page-store crash test: opens the store in argv[2] and writes,
 * trims and flushes in a loop until it is killed. It reports on stdout, one line each:
 *   `ready`, `W <page> <version>` before a write is issued, `T <page> <count>` before a
 *   trim, `F` after a flush resolved, `D <page> <version>` after a FUA write resolved.
 * A write logged before an `F` line (or confirmed by `D`) must survive SIGKILL.
 * Usage: node store-crash-child.js <dataDir> <seed> <round>
 */
import { writeSync } from 'node:fs';
import { PAGE_SIZE } from '../../src/device/types.js';
import { openPageStore } from '../../src/store/index.js';
import { seededRandom } from './files.js';
import { CRASH_EXPORT_PAGES, CRASH_TUNING, crashPageContent } from './store-crash-pages.js';

const [dataDir, seedText, roundText] = process.argv.slice(2);
if (!dataDir || !seedText || !roundText) throw new Error('usage: <dataDir> <seed> <round>');
const next = seededRandom(Number(seedText));
const round = Number(roundText);
// Synchronous writes: a line is out before the next step starts, even if killed right after.
const say = (line: string) => writeSync(1, `${line}\n`);

const store = await openPageStore({
  dataDir,
  exports: [{ name: 'crash', sizeBytes: CRASH_EXPORT_PAGES * PAGE_SIZE }],
  tuning: CRASH_TUNING,
});
const device = store.device('crash');
if (!device) throw new Error('no export');
say('ready');
let version = round * 1_000_000;
for (let iteration = 0; ; iteration++) {
  const writes: Promise<void>[] = [];
  const used = new Set<number>();
  const count = 1 + (next() % 12);
  for (let i = 0; i < count; i++) {
    const page = next() % CRASH_EXPORT_PAGES;
    if (used.has(page)) continue;
    used.add(page);
    version++;
    const fua = next() % 10 === 0;
    const v = version;
    say(`W ${page} ${v}`);
    writes.push(
      device.writePages(page, crashPageContent(page, v), { fua }).then(() => {
        if (fua) say(`D ${page} ${v}`);
      }),
    );
  }
  if (next() % 8 === 0) {
    const page = next() % CRASH_EXPORT_PAGES;
    const trimCount = 1 + (next() % 8);
    if (![...used].some((p) => p >= page && p < page + trimCount)) {
      const n = Math.min(trimCount, CRASH_EXPORT_PAGES - page);
      say(`T ${page} ${n}`);
      writes.push(device.zeroPages(page, n, { fua: false, mayTrim: true }));
    }
  }
  await Promise.all(writes);
  if (next() % 3 === 0) {
    await device.flush();
    say('F');
  }
  if (iteration % 40 === 39) void store.compact().catch(() => {});
}
