/**
 * Reply buffers carved out of large slabs. A READ reply (header + data) is just over 4 KiB,
 * above what Node's own Buffer pool serves, so each one was a separate ArrayBuffer for the
 * garbage collector to track; carving them from 1 MiB slabs cuts that by a few hundred times.
 * A slab is never reused: it is freed by the collector once every reply cut from it has been
 * written and dropped, so a slow reader can hold at most the slabs its own replies sit in.
 */

/** Bytes per slab. Large enough to amortise the allocation, small enough to free soon. */
const SLAB_BYTES = 1024 * 1024;
/** Larger requests get their own buffer: they would waste most of a slab. */
const SLAB_ALLOCATION_BYTES_MAX = 64 * 1024;
/** Slices start on 8-byte boundaries, as Node's pool does. */
const ALIGN_BYTES = 8;

export class ReplySlab {
  #slab: Buffer = Buffer.allocUnsafeSlow(SLAB_BYTES);
  #used = 0;

  /** An uninitialised buffer of `length` bytes, owned by the caller. */
  allocate(length: number): Buffer {
    if (length > SLAB_ALLOCATION_BYTES_MAX) return Buffer.allocUnsafeSlow(length);
    if (this.#used + length > SLAB_BYTES) {
      this.#slab = Buffer.allocUnsafeSlow(SLAB_BYTES);
      this.#used = 0;
    }
    const out = this.#slab.subarray(this.#used, this.#used + length);
    this.#used += (length + ALIGN_BYTES - 1) & ~(ALIGN_BYTES - 1);
    return out;
  }
}
