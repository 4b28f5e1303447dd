/**
 * Reply buffers carved out of large slabs. A READ reply (header + data) is just over 4 KiB,
 * above what Node's own Buffer pool serves, so each one was a separate ArrayBuffer for the
 * garbage collector to track; carving them from 256 KiB slabs cuts that some sixtyfold.
 * A slab is never reused: it is freed by the collector once every reply cut from it has been
 * written and dropped. Each connection has its own (allocated at its first READ), so a slow
 * reader holds at most the slabs its own replies sit in, never its neighbours' replies.
 */

/**
 * Bytes per slab. Large enough to amortise the allocation (some 60 page replies), small
 * enough that a thousand reading connections hold a bounded amount.
 */
const SLAB_BYTES = 256 * 1024;
/** Larger requests get their own buffer: they would waste most of a slab. */
const SLAB_ALLOCATION_BYTES_MAX = 64 * 1024;
/** Slices start on 8-byte boundaries, as Node's pool does. */
const ALIGN_BYTES = 8;

export class ReplySlab {
  #slab: Buffer | null = null;
  #used = 0;

  /** An uninitialised buffer of `length` bytes, owned by the caller. */
  allocate(length: number): Buffer {
    if (length > SLAB_ALLOCATION_BYTES_MAX) return Buffer.allocUnsafeSlow(length);
    let slab = this.#slab;
    if (slab === null || this.#used + length > SLAB_BYTES) {
      slab = Buffer.allocUnsafeSlow(SLAB_BYTES);
      this.#slab = slab;
      this.#used = 0;
    }
    const out = slab.subarray(this.#used, this.#used + length);
    this.#used += (length + ALIGN_BYTES - 1) & ~(ALIGN_BYTES - 1);
    return out;
  }
}
