/**
 * Model-based test of the page store: seeded random sequences of write, overwrite, trim,
 * zero, flush, restart and compaction over two exports of one sharing group, compared with
 * a plain in-memory model after every step. Replay a failure with DIFFSWAP_TEST_SEED=<seed>
 * (fast-check also prints the seed and path of the shrunk counterexample).
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { PAGE_SIZE } from '../../src/device/types.js';
import { openPageStore, type PageStore, type StoreTuning } from '../../src/store/index.js';
import { makeTempDir, testSeed } from '../helpers/files.js';
import { makePage, PAGE_KINDS, type PageKind } from '../helpers/store-pages.js';

const EXPORT_PAGES = 48;
const EXPORTS = [
  { name: 'a', sizeBytes: EXPORT_PAGES * PAGE_SIZE },
  { name: 'b', sizeBytes: EXPORT_PAGES * PAGE_SIZE },
];
/** Tiny limits so a short run crosses batches, segments, backpressure and cache eviction. */
const TUNING: Partial<StoreTuning> = {
  writeBufferPages: 12,
  batchPagesMax: 5,
  commitIntervalMs: 1,
  encodeSlicePages: 3,
  referenceCachePages: 2,
  segmentBytesMax: 16 * 1024,
  compactStepBytes: 6 * 1024,
  rangeOpStepPages: 3,
  rangeOpsMax: 2,
};

type Command =
  | { op: 'write'; exp: number; first: number; pages: { kind: PageKind; n: number }[] }
  | { op: 'burst'; exp: number; first: number; kinds: PageKind[]; n: number }
  | { op: 'trim' | 'zero'; exp: number; first: number; count: number }
  | { op: 'flush' | 'restart' | 'compact' };

const pageArb = fc.record({ kind: fc.constantFrom(...PAGE_KINDS), n: fc.nat(50) });
const expArb = fc.nat(1);
const firstArb = fc.nat(EXPORT_PAGES - 1);
const commandArb: fc.Arbitrary<Command> = fc.oneof(
  {
    weight: 6,
    arbitrary: fc.record({
      op: fc.constant('write' as const),
      exp: expArb,
      first: firstArb,
      pages: fc.array(pageArb, { minLength: 1, maxLength: 6 }),
    }),
  },
  {
    weight: 2,
    arbitrary: fc.record({
      op: fc.constant('burst' as const),
      exp: expArb,
      first: firstArb,
      kinds: fc.array(fc.constantFrom(...PAGE_KINDS), { minLength: 2, maxLength: 8 }),
      n: fc.nat(50),
    }),
  },
  {
    weight: 2,
    arbitrary: fc.record({
      op: fc.constantFrom('trim' as const, 'zero' as const),
      exp: expArb,
      first: firstArb,
      count: fc.integer({ min: 1, max: 20 }),
    }),
  },
  {
    weight: 1,
    arbitrary: fc.record({
      op: fc.constantFrom('flush' as const, 'restart' as const, 'compact' as const),
    }),
  },
);

class Model {
  readonly pages = [new Map<number, Buffer>(), new Map<number, Buffer>()];

  write(exp: number, first: number, page: Buffer) {
    if (first < EXPORT_PAGES) this.pages[exp]?.set(first, page);
  }

  unmap(exp: number, first: number, count: number) {
    for (let p = first; p < Math.min(first + count, EXPORT_PAGES); p++) this.pages[exp]?.delete(p);
  }

  expected(exp: number): Buffer {
    const out = Buffer.alloc(EXPORT_PAGES * PAGE_SIZE);
    for (const [p, page] of this.pages[exp] ?? []) page.copy(out, p * PAGE_SIZE);
    return out;
  }
}

async function run(commands: Command[], dir: string): Promise<void> {
  let store: PageStore = await openPageStore({ dataDir: dir, exports: EXPORTS, tuning: TUNING });
  const model = new Model();
  const device = (exp: number) => {
    const found = store.device(EXPORTS[exp]?.name ?? '');
    assert.ok(found);
    return found;
  };
  try {
    for (const [step, command] of commands.entries()) {
      await apply(
        command,
        model,
        device,
        async () => {
          await store.close();
          store = await openPageStore({ dataDir: dir, exports: EXPORTS, tuning: TUNING });
        },
        () => store,
      );
      for (const exp of [0, 1]) {
        const got = Buffer.alloc(EXPORT_PAGES * PAGE_SIZE);
        await device(exp).readPages(0, EXPORT_PAGES, got, 0);
        const want = model.expected(exp);
        if (!got.equals(want)) {
          const page = firstDifferentPage(got, want);
          assert.fail(`step ${step} (${command.op}): export ${exp} page ${page} differs`);
        }
        await checkExtents(device(exp), want, step);
      }
      if (command.op !== 'write' && command.op !== 'burst') {
        await device(0).flush();
        const stats = store.stats();
        for (const exp of [0, 1]) {
          assert.equal(
            stats.exports[exp]?.mappedPages,
            model.pages[exp]?.size,
            `step ${step}: mapped`,
          );
        }
      }
    }
    const report = await store.check({ repair: false });
    assert.deepEqual(report.problems, []);
  } finally {
    await store.close();
  }
}

async function apply(
  command: Command,
  model: Model,
  device: (exp: number) => import('../../src/device/types.js').PageDevice,
  restart: () => Promise<void>,
  store: () => PageStore,
): Promise<void> {
  switch (command.op) {
    case 'write': {
      const count = Math.min(command.pages.length, EXPORT_PAGES - command.first);
      const pages = command.pages.slice(0, count).map(({ kind, n }) => makePage(kind, n));
      await device(command.exp).writePages(command.first, Buffer.concat(pages), { fua: false });
      pages.forEach((page, i) => {
        model.write(command.exp, command.first + i, page);
      });
      return;
    }
    case 'burst': {
      // Writes issued without waiting, to distinct pages, like a client's queue depth.
      const writes: Promise<void>[] = [];
      command.kinds.forEach((kind, i) => {
        const p = (command.first + i * 5) % EXPORT_PAGES;
        if (command.kinds.slice(0, i).some((_, j) => (command.first + j * 5) % EXPORT_PAGES === p))
          return;
        const page = makePage(kind, command.n + i);
        writes.push(device(command.exp).writePages(p, page, { fua: i % 3 === 0 }));
        model.write(command.exp, p, page);
      });
      await Promise.all(writes);
      return;
    }
    case 'trim':
    case 'zero': {
      const count = Math.min(command.count, EXPORT_PAGES - command.first);
      await device(command.exp).zeroPages(command.first, count, {
        fua: false,
        mayTrim: command.op === 'trim',
      });
      model.unmap(command.exp, command.first, count);
      return;
    }
    case 'flush':
      await device(0).flush();
      return;
    case 'restart':
      await restart();
      return;
    case 'compact':
      await store().compact();
      return;
  }
}

async function checkExtents(
  device: import('../../src/device/types.js').PageDevice,
  want: Buffer,
  step: number,
): Promise<void> {
  const extents = await device.extents(0, EXPORT_PAGES);
  let page = 0;
  for (const extent of extents) {
    if (extent.zero) {
      const bytes = want.subarray(page * PAGE_SIZE, (page + extent.pageCount) * PAGE_SIZE);
      assert.ok(
        bytes.every((b) => b === 0),
        `step ${step}: extent at ${page} claims zeroes`,
      );
    }
    page += extent.pageCount;
  }
  assert.equal(page, EXPORT_PAGES, `step ${step}: extents cover the device`);
}

function firstDifferentPage(a: Buffer, b: Buffer): number {
  for (let p = 0; p * PAGE_SIZE < a.length; p++) {
    const range = [p * PAGE_SIZE, (p + 1) * PAGE_SIZE] as const;
    if (!a.subarray(...range).equals(b.subarray(...range))) return p;
  }
  return -1;
}

test('random operation sequences read back like an in-memory model', async () => {
  const seed = testSeed();
  const tmp = await makeTempDir('diffswap-store-model-');
  let runIndex = 0;
  try {
    await fc.assert(
      fc.asyncProperty(fc.array(commandArb, { minLength: 1, maxLength: 30 }), async (commands) => {
        await run(commands, `${tmp.path}/run-${runIndex++}`);
      }),
      {
        seed,
        numRuns: 40,
        endOnFailure: process.env.DIFFSWAP_TEST_NO_SHRINK === '1',
        // Shrinking replays whole store sessions; bound it so a failure reports in time.
        interruptAfterTimeLimit: 120_000,
        markInterruptAsFailure: true,
        verbose: 1,
      },
    );
  } catch (error) {
    console.error(`store model test failed; replay with DIFFSWAP_TEST_SEED=${seed}`);
    console.error('cause:', (error as Error).cause);
    throw error;
  } finally {
    await tmp.remove();
  }
});
