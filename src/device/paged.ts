/**
 * Byte-granular access to a page device, for the NBD layer.
 *
 * Design note. Devices speak whole 4 KiB pages; NBD clients may address any byte. This adapter
 * passes whole pages straight through (a multi-page write is one `writePages` call, so the
 * store can encode it as one batch) and turns partial pages at the edges of a request into a
 * read-modify-write. Every mutation holds a lock on each page it touches, taken in one
 * synchronous step (so two requests can never wait on each other in a cycle): two sub-page
 * writes to one page then run one after the other and neither loses the other's bytes, and a
 * whole-page write cannot slip between the read and the write of someone's read-modify-write.
 * Reads take no lock: a device replaces a page in one step, so a read sees the page before or
 * after a concurrent read-modify-write, never a mix. One adapter must serve every connection
 * of an export, since the locks live here.
 */
import assert from 'node:assert/strict';
import {
  PAGE_SIZE,
  type PageDevice,
  type PageExtent,
  type WriteOptions,
  type ZeroOptions,
} from './types.js';

/** A run of bytes with one allocation state, as BLOCK_STATUS reports it. */
export interface ByteExtent {
  length: number;
  hole: boolean;
  zero: boolean;
}

/** The pages a byte range touches: [first, first + count). */
interface PageSpan {
  first: number;
  count: number;
}

export class PagedDevice {
  readonly device: PageDevice;
  /** Device size in bytes (exact: asserted below 2^53). */
  readonly sizeBytes: number;
  /** Page number -> the latest holder of its lock (absent when the page is free). */
  readonly #locks = new Map<number, LockTicket>();

  constructor(device: PageDevice) {
    this.device = device;
    this.sizeBytes = device.pageCount * PAGE_SIZE;
    assert.ok(Number.isSafeInteger(this.sizeBytes), 'device size must be below 2^53 bytes');
  }

  get writable(): boolean {
    return this.device.writable;
  }

  /** Pages locked right now (for tests and stats). */
  get lockedPageCount(): number {
    return this.#locks.size;
  }

  /**
   * Reads `length` bytes at `offset` into `dst` at `dstOffset`. The range is validated by the
   * caller (inside the device). The caller owns `dst`.
   */
  async read(offset: number, length: number, dst: Buffer, dstOffset: number): Promise<void> {
    this.#assertRange(offset, length);
    if (length === 0) return;
    assert.ok(dstOffset + length <= dst.length, 'read destination too small');
    const span = pageSpan(offset, length);
    if (isAligned(offset, length)) {
      await this.device.readPages(span.first, span.count, dst, dstOffset);
      return;
    }
    const pages = Buffer.allocUnsafe(span.count * PAGE_SIZE);
    await this.device.readPages(span.first, span.count, pages, 0);
    const from = offset - span.first * PAGE_SIZE;
    pages.copy(dst, dstOffset, from, from + length);
  }

  /**
   * Writes `src` at `offset`. `src` is borrowed until the promise settles. Resolves when the
   * device has taken the write (durable too when `options.fua`).
   */
  async write(offset: number, src: Buffer, options: WriteOptions): Promise<void> {
    this.#assertRange(offset, src.length);
    if (src.length === 0) return;
    const span = pageSpan(offset, src.length);
    if (isAligned(offset, src.length)) {
      return this.#locked(span, () => this.device.writePages(span.first, src, options));
    }
    await this.#locked(span, async () => {
      const pages = Buffer.allocUnsafe(span.count * PAGE_SIZE);
      await this.#readEdges(span, offset, src.length, pages);
      src.copy(pages, offset - span.first * PAGE_SIZE);
      await this.device.writePages(span.first, pages, options);
    });
  }

  /**
   * Makes `length` bytes at `offset` read as zeroes. Whole pages go to `zeroPages` (holes when
   * `options.mayTrim`); partial pages at the edges are rewritten with zeroes in place.
   */
  async zero(offset: number, length: number, options: ZeroOptions): Promise<void> {
    this.#assertRange(offset, length);
    for (const [at, bytes] of chunks(offset, length)) await this.#zeroChunk(at, bytes, options);
  }

  /**
   * Discards the whole pages inside the range (they become holes); partial pages at the edges
   * are left as they are, which TRIM allows (the client may not rely on trimmed contents).
   */
  async trim(offset: number, length: number, options: WriteOptions): Promise<void> {
    this.#assertRange(offset, length);
    for (const [at, bytes] of chunks(offset, length)) {
      const whole = wholePages(at, bytes);
      if (whole.count === 0) continue;
      await this.#locked(whole, () =>
        this.device.zeroPages(whole.first, whole.count, { fua: options.fua, mayTrim: true }),
      );
    }
  }

  /** Resolves when every write acknowledged before the call is durable (device contract). */
  flush(): Promise<void> {
    return this.device.flush();
  }

  /**
   * Allocation state of the range as byte extents, in order, clipped to the range and merged
   * where neighbours agree. They may cover less than `length` (the device answers at least
   * one page); they never run past it. With `extentsMax`, at most that many (REQ_ONE: 1).
   */
  async extents(offset: number, length: number, extentsMax?: number): Promise<ByteExtent[]> {
    this.#assertRange(offset, length);
    if (length === 0) return [];
    const span = pageSpan(offset, length);
    const pageExtents = await this.device.extents(span.first, span.count, extentsMax);
    return clipExtents(pageExtents, span.first * PAGE_SIZE, offset, offset + length);
  }

  #zeroChunk(offset: number, length: number, options: ZeroOptions): Promise<void> {
    const span = pageSpan(offset, length);
    return this.#locked(span, () => {
      const work: Promise<void>[] = [];
      const whole = wholePages(offset, length);
      if (whole.count > 0) work.push(this.device.zeroPages(whole.first, whole.count, options));
      const end = offset + length;
      const headPage = span.first;
      if (offset % PAGE_SIZE !== 0 || (span.count === 1 && whole.count === 0)) {
        const headEnd = Math.min(end, (headPage + 1) * PAGE_SIZE);
        work.push(this.#zeroInPage(headPage, offset, headEnd, options));
      }
      const tailPage = span.first + span.count - 1;
      if (end % PAGE_SIZE !== 0 && tailPage !== headPage) {
        work.push(this.#zeroInPage(tailPage, tailPage * PAGE_SIZE, end, options));
      }
      return Promise.all(work).then(() => undefined);
    });
  }

  async #readEdges(span: PageSpan, offset: number, length: number, pages: Buffer) {
    const reads: Promise<void>[] = [];
    const head = offset - span.first * PAGE_SIZE;
    const endInPages = head + length;
    if (head !== 0) reads.push(this.device.readPages(span.first, 1, pages, 0));
    const tailPartial = endInPages % PAGE_SIZE !== 0;
    if (tailPartial && !(span.count === 1 && head !== 0)) {
      const tail = span.first + span.count - 1;
      reads.push(this.device.readPages(tail, 1, pages, (span.count - 1) * PAGE_SIZE));
    }
    await Promise.all(reads);
  }

  /** Rewrites one page with bytes [from, to) (device offsets) zeroed. Lock held by caller. */
  async #zeroInPage(page: number, from: number, to: number, options: WriteOptions) {
    const buf = Buffer.allocUnsafe(PAGE_SIZE);
    await this.device.readPages(page, 1, buf, 0);
    buf.fill(0, from - page * PAGE_SIZE, to - page * PAGE_SIZE);
    await this.device.writePages(page, buf, { fua: options.fua });
  }

  /**
   * Runs `fn` holding the lock of every page in `span`. All locks are taken synchronously in
   * one step (each page remembers its latest holder; a newcomer waits for the previous
   * holders), so there is no lock-order cycle. Without contention this allocates one ticket
   * and no promise beyond `fn`'s own.
   */
  #locked<T>(span: PageSpan, fn: () => Promise<T>): Promise<T> {
    const ticket = new LockTicket();
    // Each holder is waited for once, however many of the span's pages it holds: a large
    // TRIM over pages one other request holds costs one promise, not one a page.
    let holders: Set<LockTicket> | undefined;
    const end = span.first + span.count;
    for (let page = span.first; page < end; page++) {
      const previous = this.#locks.get(page);
      if (previous !== undefined) {
        holders ??= new Set();
        holders.add(previous);
      }
      this.#locks.set(page, ticket);
    }
    const run =
      holders === undefined
        ? fn()
        : Promise.all(Array.from(holders, (holder) => holder.released())).then(fn);
    const unlock = () => {
      for (let page = span.first; page < end; page++) {
        if (this.#locks.get(page) === ticket) this.#locks.delete(page);
      }
      ticket.release();
    };
    return run.then(
      (value) => {
        unlock();
        return value;
      },
      (error: unknown) => {
        unlock();
        throw error;
      },
    );
  }

  #assertRange(offset: number, length: number) {
    assert.ok(Number.isSafeInteger(offset) && offset >= 0, 'offset must be a byte index');
    assert.ok(Number.isSafeInteger(length) && length >= 0, 'length must be a byte count');
    assert.ok(offset + length <= this.sizeBytes, 'range must lie inside the device');
  }
}

/** One lock holder; waiters get a promise only when they actually have to wait. */
class LockTicket {
  #released = false;
  #waiters: Array<() => void> | null = null;

  released(): Promise<void> {
    if (this.#released) return Promise.resolve();
    this.#waiters ??= [];
    const waiters = this.#waiters;
    return new Promise((resolve) => {
      waiters.push(resolve);
    });
  }

  release(): void {
    this.#released = true;
    const waiters = this.#waiters;
    this.#waiters = null;
    if (waiters !== null) for (const wake of waiters) wake();
  }
}

/**
 * Zero and trim requests (up to 4 GiB each) are worked through in pieces of this many bytes:
 * locking a page costs a map entry, and one huge piece would hold the event loop and the
 * device for a long time. Pieces start on multiples of the size, so only the request's own
 * ends are partial pages.
 */
const ZERO_CHUNK_BYTES = 64 * 1024 * 1024;

/** [offset, length] pieces of a range, split at multiples of ZERO_CHUNK_BYTES. */
function chunks(offset: number, length: number): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  const end = offset + length;
  for (let at = offset; at < end; ) {
    const next = Math.min(end, (Math.floor(at / ZERO_CHUNK_BYTES) + 1) * ZERO_CHUNK_BYTES);
    out.push([at, next - at]);
    at = next;
  }
  return out;
}

function isAligned(offset: number, length: number): boolean {
  return offset % PAGE_SIZE === 0 && length % PAGE_SIZE === 0;
}

/** Every page the range touches, partial ones included. */
function pageSpan(offset: number, length: number): PageSpan {
  const first = Math.floor(offset / PAGE_SIZE);
  const last = Math.ceil((offset + length) / PAGE_SIZE);
  return { first, count: last - first };
}

/** Only the pages the range covers completely. */
function wholePages(offset: number, length: number): PageSpan {
  const first = Math.ceil(offset / PAGE_SIZE);
  const last = Math.floor((offset + length) / PAGE_SIZE);
  return { first, count: Math.max(0, last - first) };
}

/**
 * Converts page extents starting at byte `spanStart` into byte extents inside [from, to),
 * merging neighbours with equal flags.
 */
export function clipExtents(
  pageExtents: readonly PageExtent[],
  spanStart: number,
  from: number,
  to: number,
): ByteExtent[] {
  const out: ByteExtent[] = [];
  let at = spanStart;
  for (const extent of pageExtents) {
    assert.ok(extent.pageCount > 0, 'device returned an empty extent');
    const start = Math.max(at, from);
    at += extent.pageCount * PAGE_SIZE;
    const end = Math.min(at, to);
    if (end > start) {
      const last = out[out.length - 1];
      if (last !== undefined && last.hole === extent.hole && last.zero === extent.zero) {
        last.length += end - start;
      } else {
        out.push({ length: end - start, hole: extent.hole, zero: extent.zero });
      }
    }
    if (at >= to) break;
  }
  return out;
}
