/**
 * Page makers for page-store tests: zero pages, fill-word pages, pages from a small pool
 * (duplicates), near-copies of pool pages (delta candidates) and unique pages, all derived
 * from numbers so a test case replays exactly from its seed.
 */
import { PAGE_SIZE } from '../../src/device/types.js';
import { seededRandom } from './files.js';

export type PageKind = 'zero' | 'fill' | 'pool' | 'similar' | 'unique';
export const PAGE_KINDS: readonly PageKind[] = ['zero', 'fill', 'pool', 'similar', 'unique'];

/** Memory-like page: text-ish runs and small integers, compressible like real memory. */
export function memoryLikePage(seed: number): Buffer {
  const next = seededRandom(seed);
  const page = Buffer.alloc(PAGE_SIZE);
  for (let at = 0; at < PAGE_SIZE; at += 8) {
    const r = next();
    if (r % 4 === 0) page.writeUInt32LE(next() % 1024, at);
    else if (r % 4 === 1) page.write('abcdefgh'.slice(0, 1 + (r % 8)), at, 'latin1');
    else if (r % 4 === 2) page.writeUInt32LE(next(), at);
  }
  return page;
}

/** A page of `kind`; `n` picks which one (pool index, fill word, mutation, seed). */
export function makePage(kind: PageKind, n: number): Buffer {
  switch (kind) {
    case 'zero':
      return Buffer.alloc(PAGE_SIZE);
    case 'fill': {
      const page = Buffer.alloc(PAGE_SIZE);
      for (let at = 0; at < PAGE_SIZE; at += 8) page.writeUInt32LE(0x1000 + (n % 7), at);
      return page;
    }
    case 'pool':
      return memoryLikePage(1_000 + (n % 5));
    case 'similar': {
      const page = memoryLikePage(1_000 + (n % 5));
      // A few scattered small changes, like a page whose counters moved.
      const next = seededRandom(n);
      for (let i = 0; i < 1 + (n % 4); i++) page[next() % PAGE_SIZE] = next() & 0xff;
      return page;
    }
    case 'unique':
      return memoryLikePage(1_000_000 + n);
  }
}

/** Concatenated pages. */
export function pagesOf(pages: Buffer[]): Buffer {
  return Buffer.concat(pages, pages.length * PAGE_SIZE);
}
