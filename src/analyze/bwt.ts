/**
 * The Burrows-Wheeler transform (Burrows and Wheeler, "A block-sorting lossless data
 * compression algorithm", 1994) followed by move-to-front (Bentley, Sleator, Tarjan and Wei,
 * 1986), for `diffswap analyze` to measure whether they help zstd on memory pages. Rotations
 * are sorted by prefix doubling with counting sorts (the cyclic form of Manber and Myers'
 * suffix array construction, 1993): O(n log n) for one 4 KiB page.
 *
 * Output layout: 2-byte little-endian primary index, then the MTF ranks of the last column.
 */
const ALPHABET = 256;
/** Bytes of the primary index in front of the transformed block. */
export const BWT_HEADER_BYTES = 2;

/** Sorted order of the cyclic rotations of `src` (indices of their first bytes). */
function sortRotations(src: Uint8Array): Int32Array {
  const n = src.length;
  const order = new Int32Array(n);
  let classes = new Int32Array(n);
  const count = new Int32Array(Math.max(ALPHABET, n));
  for (let i = 0; i < n; i++) count[src[i]!]!++;
  for (let c = 1; c < ALPHABET; c++) count[c]! += count[c - 1]!;
  for (let i = n - 1; i >= 0; i--) order[--count[src[i]!]!] = i;
  let classCount = 1;
  classes[order[0]!] = 0;
  for (let i = 1; i < n; i++) {
    if (src[order[i]!] !== src[order[i - 1]!]) classCount++;
    classes[order[i]!] = classCount - 1;
  }
  const shifted = new Int32Array(n);
  let nextClasses = new Int32Array(n);
  for (let h = 1; h < n && classCount < n; h *= 2) {
    // Rotations sorted by their first h bytes; sort by 2h using the class of i + h.
    for (let i = 0; i < n; i++) {
      const start = order[i]! - h;
      shifted[i] = start < 0 ? start + n : start;
    }
    count.fill(0, 0, classCount);
    for (let i = 0; i < n; i++) count[classes[shifted[i]!]!]!++;
    for (let c = 1; c < classCount; c++) count[c]! += count[c - 1]!;
    for (let i = n - 1; i >= 0; i--) order[--count[classes[shifted[i]!]!]!] = shifted[i]!;
    nextClasses[order[0]!] = 0;
    classCount = 1;
    for (let i = 1; i < n; i++) {
      const a = order[i]!;
      const b = order[i - 1]!;
      const aNext = a + h < n ? a + h : a + h - n;
      const bNext = b + h < n ? b + h : b + h - n;
      if (classes[a] !== classes[b] || classes[aNext] !== classes[bNext]) {
        classCount++;
      }
      nextClasses[a] = classCount - 1;
    }
    [classes, nextClasses] = [nextClasses, classes];
  }
  return order;
}

/** The rank of `byte` in `list`, which then moves it to the front: one pass. */
function moveToFront(list: Uint8Array, byte: number): number {
  let previous = list[0]!;
  if (previous === byte) return 0;
  let rank = 1;
  for (;;) {
    const current = list[rank]!;
    list[rank] = previous;
    if (current === byte) break;
    previous = current;
    rank++;
  }
  list[0] = byte;
  return rank;
}

/** BWT then MTF of `src` (at most 65,535 bytes): a new buffer of src.length + 2 bytes. */
export function bwtMtfForward(src: Uint8Array): Buffer {
  const n = src.length;
  const out = Buffer.allocUnsafe(BWT_HEADER_BYTES + n);
  const order = sortRotations(src);
  const list = new Uint8Array(ALPHABET);
  for (let c = 0; c < ALPHABET; c++) list[c] = c;
  let primary = 0;
  for (let i = 0; i < n; i++) {
    const start = order[i]!;
    if (start === 0) primary = i;
    out[BWT_HEADER_BYTES + i] = moveToFront(list, src[start === 0 ? n - 1 : start - 1]!);
  }
  out.writeUInt16LE(primary, 0);
  return out;
}

/** Inverse of `bwtMtfForward`; throws on a damaged primary index. */
export function bwtMtfInverse(block: Uint8Array): Buffer {
  const n = block.length - BWT_HEADER_BYTES;
  const primary = block[0]! | (block[1]! << 8);
  if (n <= 0 || primary >= n) throw new RangeError('damaged BWT block');
  const last = new Uint8Array(n);
  const list = new Uint8Array(ALPHABET);
  for (let c = 0; c < ALPHABET; c++) list[c] = c;
  for (let i = 0; i < n; i++) {
    const rank = block[BWT_HEADER_BYTES + i]!;
    const byte = list[rank]!;
    for (let j = rank; j > 0; j--) list[j] = list[j - 1]!;
    list[0] = byte;
    last[i] = byte;
  }
  // LF mapping: row i's last byte starts row lf[i]; walking it from the primary row
  // yields the page backwards.
  const before = new Int32Array(ALPHABET);
  for (let i = 0; i < n; i++) before[last[i]!]!++;
  let sum = 0;
  for (let c = 0; c < ALPHABET; c++) {
    const countOfC = before[c]!;
    before[c] = sum;
    sum += countOfC;
  }
  const lf = new Int32Array(n);
  for (let i = 0; i < n; i++) lf[i] = before[last[i]!]!++;
  const out = Buffer.allocUnsafe(n);
  let row = primary;
  for (let k = n - 1; k >= 0; k--) {
    out[k] = last[row]!;
    row = lf[row]!;
  }
  return out;
}
