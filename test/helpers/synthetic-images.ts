/**
 * Synthetic memory images with known answers for the `diffswap analyze` tests: so many zero,
 * same-word, duplicate, similar and unique pages, in two files.
 */
import { PAGE_SIZE } from '../../src/device/types.js';
import { randomBytes, seededRandom } from './files.js';

/** What a synthetic image holds, by class. */
export interface KnownCounts {
  zero: number;
  sameWord: number;
  duplicateInFile: number;
  duplicateAcrossFiles: number;
  similar: number;
  uniqueRandom: number;
  uniqueCompressible: number;
}

/** A page of random nibbles: compresses to about half, shares no features with others. */
function compressiblePage(seed: number): Buffer {
  const page = randomBytes(PAGE_SIZE, seed);
  for (let i = 0; i < PAGE_SIZE; i++) page[i] = page[i]! & 0x0f;
  return page;
}

/**
 * `page` with `changes` bytes changed at random places in its first KiB: away from the
 * store's hashed blocks, so the detector finds it by construction (the codec tests cover
 * detection odds for changes anywhere).
 */
function nearCopy(page: Buffer, changes: number, seed: number): Buffer {
  const next = seededRandom(seed);
  const out = Buffer.from(page);
  for (let i = 0; i < changes; i++) {
    const at = next() % 1024;
    out[at] = out[at]! ^ (1 + (next() % 255));
  }
  return out;
}

/**
 * Two images: A holds zero, same-word, unique, in-file duplicate and similar pages; B holds
 * copies of A's unique pages (duplicates across files) and its own unique pages. Pages are
 * shuffled so no class sits in one run.
 */
export function syntheticImages(seed: number): { a: Buffer; b: Buffer; counts: KnownCounts } {
  const next = seededRandom(seed);
  const counts: KnownCounts = {
    zero: 40,
    sameWord: 12,
    duplicateInFile: 30,
    duplicateAcrossFiles: 25,
    similar: 20,
    uniqueRandom: 60,
    uniqueCompressible: 50,
  };
  const uniques = Array.from({ length: counts.uniqueRandom }, (_, i) =>
    randomBytes(PAGE_SIZE, seed * 7 + i),
  );
  const compressible = Array.from({ length: counts.uniqueCompressible }, (_, i) =>
    compressiblePage(seed * 11 + i),
  );
  const a: Buffer[] = [];
  for (let i = 0; i < counts.zero; i++) a.push(Buffer.alloc(PAGE_SIZE));
  for (let i = 0; i < counts.sameWord; i++) {
    const page = Buffer.alloc(PAGE_SIZE);
    const word = BigInt(next()) * 65536n + BigInt(i + 1);
    for (let at = 0; at < PAGE_SIZE; at += 8) page.writeBigUInt64LE(word, at);
    a.push(page);
  }
  // Bases first in A (in order), then the rest shuffled after them: a similar page and a
  // duplicate must come after their original to count as such.
  const firstHalf = uniques.slice(0, 40);
  a.push(...firstHalf, ...compressible.slice(0, 30));
  const later: Buffer[] = [];
  for (let i = 0; i < counts.duplicateInFile; i++) later.push(firstHalf[i % firstHalf.length]!);
  for (let i = 0; i < counts.similar; i++) {
    later.push(nearCopy(firstHalf[20 + (i % 20)]!, 1 + (i % 8), seed + i));
  }
  shuffle(later, next);
  a.push(...later);
  const b: Buffer[] = [...uniques.slice(40), ...compressible.slice(30)];
  for (let i = 0; i < counts.duplicateAcrossFiles; i++) b.push(uniques[i]!);
  shuffle(b, next);
  return { a: Buffer.concat(a), b: Buffer.concat(b), counts };
}

function shuffle<T>(items: T[], next: () => number): void {
  for (let i = items.length - 1; i > 0; i--) {
    const j = next() % (i + 1);
    [items[i], items[j]] = [items[j]!, items[i]!];
  }
}
