// The byte-range adapter against a plain Buffer model: random operations (seeded), in sequence
// and concurrently, on a device that answers in random order.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { MemoryPageDevice } from '../../src/device/memory.js';
import { clipExtents, PagedDevice } from '../../src/device/paged.js';
import {
  PAGE_SIZE,
  type PageDevice,
  type PageExtent,
  type WriteOptions,
  type ZeroOptions,
} from '../../src/device/types.js';

const PAGE_COUNT = 8;
const SIZE = PAGE_COUNT * PAGE_SIZE;
const SEED = 0x5eed;

/** A memory device whose calls settle after a random number of event-loop turns. */
class ShuffledDevice implements PageDevice {
  readonly inner: MemoryPageDevice;
  readonly name = 'shuffled';
  readonly pageCount = PAGE_COUNT;
  readonly writable = true;
  #rng: () => number;
  calls: { write: number; zero: number } = { write: 0, zero: 0 };

  constructor(rng: () => number) {
    this.inner = new MemoryPageDevice('shuffled', PAGE_COUNT);
    this.#rng = rng;
  }

  async #delay() {
    const turns = Math.floor(this.#rng() * 3);
    for (let i = 0; i < turns; i++) await new Promise((resolve) => setImmediate(resolve));
  }

  async readPages(first: number, count: number, dst: Buffer, at: number) {
    await this.#delay();
    await this.inner.readPages(first, count, dst, at);
    await this.#delay();
  }

  async writePages(first: number, src: Buffer, options: WriteOptions) {
    this.calls.write++;
    await this.#delay();
    await this.inner.writePages(first, src, options);
  }

  async zeroPages(first: number, count: number, options: ZeroOptions) {
    this.calls.zero++;
    await this.#delay();
    await this.inner.zeroPages(first, count, options);
  }

  flush() {
    return this.inner.flush();
  }

  extents(first: number, count: number): Promise<PageExtent[]> {
    return this.inner.extents(first, count);
  }
}

function mulberry32(seed: number): () => number {
  let a = seed;
  return () => {
    a = (a + 0x6d2b79f5) | 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

type Op =
  | { kind: 'write'; offset: number; length: number; fill: number }
  | { kind: 'zero'; offset: number; length: number; mayTrim: boolean }
  | { kind: 'trim'; offset: number; length: number }
  | { kind: 'read'; offset: number; length: number };

/** Ranges biased towards page edges and sub-page sizes, where bugs live. */
const rangeArb = fc
  .tuple(
    fc.integer({ min: 0, max: PAGE_COUNT - 1 }),
    fc.oneof(fc.constantFrom(0, 1, 511, 512, 4095), fc.integer({ min: 0, max: PAGE_SIZE - 1 })),
    fc.oneof(fc.constantFrom(1, 512, 4096, 4097, 8192), fc.integer({ min: 0, max: 3 * PAGE_SIZE })),
  )
  .map(([page, within, length]) => {
    const offset = page * PAGE_SIZE + within;
    return { offset, length: Math.min(length, SIZE - offset) };
  });

const opArb: fc.Arbitrary<Op> = fc.oneof(
  fc
    .tuple(rangeArb, fc.integer({ min: 1, max: 255 }))
    .map(([r, fill]) => ({ kind: 'write' as const, ...r, fill })),
  fc
    .tuple(rangeArb, fc.boolean())
    .map(([r, mayTrim]) => ({ kind: 'zero' as const, ...r, mayTrim })),
  rangeArb.map((r) => ({ kind: 'trim' as const, ...r })),
  rangeArb.map((r) => ({ kind: 'read' as const, ...r })),
);

/** Applies an op to the model; trims zero only the whole pages inside the range. */
function applyToModel(model: Buffer, op: Op) {
  const end = op.offset + op.length;
  if (op.kind === 'write') model.fill(op.fill, op.offset, end);
  else if (op.kind === 'zero') model.fill(0, op.offset, end);
  else if (op.kind === 'trim') {
    const from = Math.ceil(op.offset / PAGE_SIZE) * PAGE_SIZE;
    const to = Math.floor(end / PAGE_SIZE) * PAGE_SIZE;
    if (to > from) model.fill(0, from, to);
  }
}

async function applyToDevice(paged: PagedDevice, op: Op): Promise<Buffer | null> {
  switch (op.kind) {
    case 'write':
      await paged.write(op.offset, Buffer.alloc(op.length, op.fill), { fua: false });
      return null;
    case 'zero':
      await paged.zero(op.offset, op.length, { fua: false, mayTrim: op.mayTrim });
      return null;
    case 'trim':
      await paged.trim(op.offset, op.length, { fua: false });
      return null;
    case 'read': {
      const dst = Buffer.alloc(op.length + 3, 0xee);
      await paged.read(op.offset, op.length, dst, 3);
      assert.equal(dst[0], 0xee, 'read wrote before its destination offset');
      return dst.subarray(3);
    }
  }
}

async function wholeDevice(paged: PagedDevice): Promise<Buffer> {
  const out = Buffer.alloc(SIZE);
  await paged.read(0, SIZE, out, 0);
  return out;
}

describe('PagedDevice', () => {
  it('matches a byte-array model under random sequential operations', async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(opArb, { minLength: 1, maxLength: 40 }), async (ops) => {
        const paged = new PagedDevice(new MemoryPageDevice('m', PAGE_COUNT));
        const model = Buffer.alloc(SIZE);
        for (const op of ops) {
          const got = await applyToDevice(paged, op);
          if (got !== null) assert.deepEqual(got, model.subarray(op.offset, op.offset + op.length));
          applyToModel(model, op);
        }
        assert.deepEqual(await wholeDevice(paged), model);
        assert.equal(paged.lockedPageCount, 0);
      }),
      { seed: SEED, numRuns: 300 },
    );
  });

  it('never loses a concurrent sub-page write to a shared page', async () => {
    // Disjoint byte ranges that share pages, all in flight at once on a device that answers
    // in random order: any lost update shows up as a byte the model has and the device lacks.
    const disjointWrites = fc
      .uniqueArray(fc.integer({ min: 0, max: SIZE / 256 - 1 }), { minLength: 2, maxLength: 48 })
      .map((slots) =>
        slots.map((slot, i) => ({
          kind: 'write' as const,
          offset: slot * 256,
          length: 256,
          fill: (i % 254) + 1,
        })),
      );
    await fc.assert(
      fc.asyncProperty(disjointWrites, fc.integer(), async (writes, seed) => {
        const paged = new PagedDevice(new ShuffledDevice(mulberry32(seed)));
        const model = Buffer.alloc(SIZE);
        await Promise.all(writes.map((op) => applyToDevice(paged, op)));
        for (const op of writes) applyToModel(model, op);
        assert.deepEqual(await wholeDevice(paged), model);
        assert.equal(paged.lockedPageCount, 0);
      }),
      { seed: SEED, numRuns: 200 },
    );
  });

  it('keeps concurrent mixed operations on disjoint ranges equal to the model', async () => {
    const ops = fc.array(opArb, { minLength: 2, maxLength: 16 }).map((list) => disjoint(list));
    await fc.assert(
      fc.asyncProperty(ops, fc.integer(), async (list, seed) => {
        const paged = new PagedDevice(new ShuffledDevice(mulberry32(seed)));
        const model = Buffer.alloc(SIZE);
        // Trims of partial pages leave bytes alone, but a concurrent zero on the same page is
        // a different range, so disjoint ranges still commute.
        await Promise.all(list.map((op) => applyToDevice(paged, op)));
        for (const op of list) applyToModel(model, op);
        assert.deepEqual(await wholeDevice(paged), model);
      }),
      { seed: SEED, numRuns: 200 },
    );
  });

  it('reads see a sub-page write to a page either wholly before or wholly after', async () => {
    const device = new ShuffledDevice(mulberry32(7));
    const paged = new PagedDevice(device);
    await paged.write(0, Buffer.alloc(PAGE_SIZE, 1), { fua: false });
    const reads: Promise<Buffer>[] = [];
    const writes: Promise<void>[] = [];
    for (let i = 0; i < 50; i++) {
      writes.push(paged.write(100, Buffer.alloc(200, 2), { fua: false }));
      const dst = Buffer.alloc(PAGE_SIZE);
      reads.push(paged.read(0, PAGE_SIZE, dst, 0).then(() => dst));
    }
    await Promise.all(writes);
    for (const page of await Promise.all(reads)) {
      const mid = page[150];
      assert.ok(mid === 1 || mid === 2);
      assert.equal(page[0], 1);
      assert.equal(page[4000], 1);
      assert.ok(
        page.subarray(100, 300).every((b) => b === mid),
        'torn sub-page write',
      );
    }
  });

  it('passes an aligned multi-page write to the device as one call', async () => {
    const device = new ShuffledDevice(mulberry32(1));
    const paged = new PagedDevice(device);
    await paged.write(PAGE_SIZE, Buffer.alloc(4 * PAGE_SIZE, 9), { fua: true });
    assert.equal(device.calls.write, 1);
    await paged.write(PAGE_SIZE + 1, Buffer.alloc(4 * PAGE_SIZE, 9), { fua: false });
    assert.equal(device.calls.write, 2, 'an unaligned multi-page write is also one call');
  });

  it('zeroes whole pages in one call and trims only whole pages', async () => {
    const device = new ShuffledDevice(mulberry32(2));
    const paged = new PagedDevice(device);
    await paged.write(0, Buffer.alloc(SIZE, 5), { fua: false });
    await paged.trim(100, 3 * PAGE_SIZE, { fua: false });
    assert.equal(device.calls.zero, 1);
    const all = await wholeDevice(paged);
    assert.equal(all[99], 5);
    assert.equal(all[100], 5, 'partial head page of a trim is untouched');
    assert.equal(all[PAGE_SIZE], 0);
    assert.equal(all[3 * PAGE_SIZE - 1], 0);
    assert.equal(all[3 * PAGE_SIZE + 100], 5, 'partial tail page of a trim is untouched');
    await paged.trim(10, 100, { fua: false });
    assert.equal(device.calls.zero, 1, 'a trim inside one page does nothing');
  });

  it('zeroes and trims huge ranges in 64 MiB pieces without losing the edges', async () => {
    const MiB = 1024 * 1024;
    const pages = (160 * MiB) / PAGE_SIZE;
    const inner = new MemoryPageDevice('big', pages);
    let zeroCalls = 0;
    const counting: PageDevice = {
      name: 'big',
      pageCount: pages,
      writable: true,
      readPages: (...a) => inner.readPages(...a),
      writePages: (...a) => inner.writePages(...a),
      zeroPages: (...a) => {
        zeroCalls++;
        assert.ok(a[1] <= (64 * MiB) / PAGE_SIZE, 'no piece over 64 MiB');
        return inner.zeroPages(...a);
      },
      flush: () => inner.flush(),
      extents: (...a) => inner.extents(...a),
    };
    const paged = new PagedDevice(counting);
    const from = 60 * MiB;
    const to = 140 * MiB;
    await paged.write(from, Buffer.alloc(to - from, 1), { fua: false });
    // Zero [from + 10, to - 10): crosses the 64 and 128 MiB piece boundaries.
    await paged.zero(from + 10, to - from - 20, { fua: false, mayTrim: true });
    assert.equal(zeroCalls, 3);
    const probe = async (at: number) => {
      const b = Buffer.alloc(1);
      await paged.read(at, 1, b, 0);
      return b[0];
    };
    assert.deepEqual(
      await Promise.all(
        [from + 9, from + 10, 64 * MiB, 128 * MiB - 1, to - 11, to - 10].map(probe),
      ),
      [1, 0, 0, 0, 0, 1],
    );
    await paged.write(0, Buffer.alloc(160 * MiB, 2), { fua: false });
    zeroCalls = 0;
    await paged.trim(1, 160 * MiB - 1, { fua: false });
    assert.equal(zeroCalls, 3);
    assert.deepEqual(await Promise.all([0, 4095, 4096, 160 * MiB - 1].map(probe)), [2, 2, 0, 0]);
    assert.equal(paged.lockedPageCount, 0);
  });

  it('reports extents clipped to the byte range and merged', async () => {
    const paged = new PagedDevice(new MemoryPageDevice('m', PAGE_COUNT));
    await paged.write(PAGE_SIZE, Buffer.alloc(2 * PAGE_SIZE, 1), { fua: false });
    const extents = await paged.extents(100, 4 * PAGE_SIZE);
    assert.deepEqual(extents, [
      { length: PAGE_SIZE - 100, hole: true, zero: true },
      { length: 2 * PAGE_SIZE, hole: false, zero: false },
      { length: PAGE_SIZE + 100, hole: true, zero: true },
    ]);
    const total = extents.reduce((sum, e) => sum + e.length, 0);
    assert.equal(total, 4 * PAGE_SIZE);
    assert.deepEqual(await paged.extents(SIZE - 1, 1), [{ length: 1, hole: true, zero: true }]);
    assert.deepEqual(await paged.extents(0, 0), []);
  });

  it('clipExtents never runs past the range and merges equal neighbours', () => {
    fc.assert(
      fc.property(
        fc.array(fc.tuple(fc.integer({ min: 1, max: 4 }), fc.boolean()), { minLength: 1 }),
        fc.integer({ min: 0, max: PAGE_SIZE - 1 }),
        fc.integer({ min: 1, max: 8 * PAGE_SIZE }),
        (raw, from, length) => {
          const pageExtents = raw.map(([pageCount, hole]) => ({ pageCount, hole, zero: hole }));
          const spanBytes = pageExtents.reduce((s, e) => s + e.pageCount * PAGE_SIZE, 0);
          const to = Math.min(from + length, spanBytes);
          const out = clipExtents(pageExtents, 0, from, from + length);
          const total = out.reduce((s, e) => s + e.length, 0);
          assert.equal(total, Math.max(0, to - from));
          for (let i = 1; i < out.length; i++) assert.notEqual(out[i]!.hole, out[i - 1]!.hole);
        },
      ),
      { seed: SEED, numRuns: 500 },
    );
  });

  it('rejects ranges outside the device as programmer errors', async () => {
    const paged = new PagedDevice(new MemoryPageDevice('m', PAGE_COUNT));
    await assert.rejects(paged.read(SIZE - 1, 2, Buffer.alloc(2), 0), assert.AssertionError);
    await assert.rejects(paged.write(SIZE, Buffer.alloc(1), { fua: false }));
    await assert.rejects(paged.zero(-1, 1, { fua: false, mayTrim: true }));
  });
});

/** Drops ops whose byte range overlaps an earlier op, so the rest may run concurrently. */
function disjoint(ops: Op[]): Op[] {
  const taken: Array<[number, number]> = [];
  const out: Op[] = [];
  for (const op of ops) {
    if (op.length === 0) continue;
    // A trim touches whole pages only, but reserve its full range; reads must not see a
    // concurrent write's bytes either, so they reserve theirs too.
    const end = op.offset + op.length;
    if (taken.some(([a, b]) => op.offset < b && a < end)) continue;
    taken.push([op.offset, end]);
    out.push(op);
  }
  return out;
}
