/**
 * Test data: temporary directories, seeded random and patterned images, and byte-for-byte
 * comparison of files.
 *
 * Random data comes from a seeded generator so a failing run can be replayed: every image
 * maker takes a seed, and tests print the seed they used.
 */
import { mkdtemp, open, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { runTool } from './exec.js';

/** A fresh directory under the system temp dir, and its removal. */
export async function makeTempDir(
  prefix = 'diffswap-test-',
): Promise<{ path: string; remove(): Promise<void> }> {
  const path = await mkdtemp(join(tmpdir(), prefix));
  return { path, remove: () => rm(path, { recursive: true, force: true }) };
}

/** A seed from the environment (DIFFSWAP_TEST_SEED) or a new random one, to print and replay. */
export function testSeed(): number {
  const fromEnv = process.env.DIFFSWAP_TEST_SEED;
  if (fromEnv !== undefined && fromEnv !== '') return Number(fromEnv) >>> 0;
  return (Math.random() * 2 ** 32) >>> 0;
}

/**
 * A small seeded generator (mulberry32, Tommy Ettinger's public-domain 32-bit mixer): fast and
 * good enough for test data, not for anything that needs real randomness.
 */
export function seededRandom(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  };
}

/** `length` seeded random bytes. */
export function randomBytes(length: number, seed: number): Buffer {
  const next = seededRandom(seed);
  const out = Buffer.allocUnsafe(length);
  let i = 0;
  for (; i + 4 <= length; i += 4) out.writeUInt32LE(next(), i);
  for (; i < length; i++) out[i] = next() & 0xff;
  return out;
}

/** The kinds of region a mixed image is made of. */
export type RegionKind = 'random' | 'zero' | 'repeat' | 'pattern';

export interface ImageRegion {
  offset: number;
  length: number;
  kind: RegionKind;
}

/**
 * Builds an image of `sizeBytes` from regions of random bytes, zeroes, one repeated random
 * page, and a byte pattern, in seeded random order and lengths (from 1 byte to 256 KiB, so
 * region edges fall at odd offsets too). Returns the bytes and the region list.
 */
export function mixedImage(
  sizeBytes: number,
  seed: number,
): { bytes: Buffer; regions: ImageRegion[] } {
  const next = seededRandom(seed);
  const bytes = Buffer.alloc(sizeBytes);
  const regions: ImageRegion[] = [];
  const kinds: RegionKind[] = ['random', 'zero', 'repeat', 'pattern'];
  const repeatedPage = randomBytes(4096, seed ^ 0x5a5a5a5a);
  let offset = 0;
  while (offset < sizeBytes) {
    const kind = kinds[next() % kinds.length] ?? 'random';
    const wanted = next() % 2 === 0 ? (1 + (next() % 64)) * 4096 : 1 + (next() % (256 * 1024));
    const length = Math.min(wanted, sizeBytes - offset);
    fillRegion(bytes.subarray(offset, offset + length), kind, next, repeatedPage);
    regions.push({ offset, length, kind });
    offset += length;
  }
  return { bytes, regions };
}

function fillRegion(dst: Buffer, kind: RegionKind, next: () => number, page: Buffer): void {
  switch (kind) {
    case 'zero':
      return; // the image starts zeroed
    case 'random':
      randomBytes(dst.length, next()).copy(dst);
      return;
    case 'repeat':
      for (let at = 0; at < dst.length; at += page.length) page.copy(dst, at);
      return;
    case 'pattern': {
      const step = 1 + (next() % 7);
      for (let i = 0; i < dst.length; i++) dst[i] = (i * step) & 0xff;
      return;
    }
  }
}

/** Writes a mixed image (see mixedImage) to `path`. */
export async function writeMixedImage(path: string, sizeBytes: number, seed: number) {
  const image = mixedImage(sizeBytes, seed);
  await writeFile(path, image.bytes);
  return image;
}

/**
 * Compares two files byte for byte with `cmp` and, when they differ, rejects with cmp's
 * report (first differing byte) plus the sizes, so the failure says where.
 */
export async function assertFilesEqual(expectedPath: string, actualPath: string): Promise<void> {
  const result = await runTool('cmp', [expectedPath, actualPath]);
  if (result.code === 0) return;
  const [a, b] = await Promise.all([readFile(expectedPath), readFile(actualPath)]);
  throw new Error(
    `files differ: ${expectedPath} (${a.length} bytes) vs ${actualPath} (${b.length} bytes)\n` +
      `cmp: ${(result.stdout + result.stderr).trim()}`,
  );
}

/** Reads `length` bytes at `offset` of a file. */
export async function readRange(path: string, offset: number, length: number): Promise<Buffer> {
  const handle = await open(path, 'r');
  try {
    const out = Buffer.alloc(length);
    const { bytesRead } = await handle.read(out, 0, length, offset);
    return out.subarray(0, bytesRead);
  } finally {
    await handle.close();
  }
}
