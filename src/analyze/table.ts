/**
 * An open-addressing hash table from 64-bit keys (two 32-bit words, not both zero) to
 * 32-bit values, in typed arrays: 12 bytes a slot, no object per entry, so analyze can
 * index tens of millions of pages (a JS Map would need about 80 bytes an entry).
 * Linear probing; the table doubles when half full. Keys are already hashes, so their low
 * word is used as the probe start directly.
 */
export class KeyTable {
  private hi: Uint32Array;
  private lo: Uint32Array;
  private values: Uint32Array;
  private mask: number;
  size = 0;

  constructor(capacityLog2 = 12) {
    const capacity = 1 << capacityLog2;
    this.hi = new Uint32Array(capacity);
    this.lo = new Uint32Array(capacity);
    this.values = new Uint32Array(capacity);
    this.mask = capacity - 1;
  }

  /** Slot of the key, or of the empty slot where it would go. */
  private slotOf(hi: number, lo: number): number {
    let slot = (lo ^ Math.imul(hi, 0x9e3779b1)) & this.mask;
    while (this.hi[slot] !== 0 || this.lo[slot] !== 0) {
      if (this.hi[slot] === hi && this.lo[slot] === lo) return slot;
      slot = (slot + 1) & this.mask;
    }
    return slot;
  }

  /** The value stored for the key, or -1. */
  get(hi: number, lo: number): number {
    const [h, l] = normalise(hi, lo);
    const slot = this.slotOf(h, l);
    return this.hi[slot] === 0 && this.lo[slot] === 0 ? -1 : this.values[slot]!;
  }

  /** Stores `value` for the key, replacing any earlier value. */
  set(hi: number, lo: number, value: number): void {
    const [h, l] = normalise(hi, lo);
    let slot = this.slotOf(h, l);
    if (this.hi[slot] === 0 && this.lo[slot] === 0) {
      if ((this.size + 1) * 2 > this.mask + 1) {
        this.grow();
        slot = this.slotOf(h, l);
      }
      this.hi[slot] = h;
      this.lo[slot] = l;
      this.size++;
    }
    this.values[slot] = value;
  }

  private grow(): void {
    const { hi, lo, values } = this;
    const capacity = (this.mask + 1) * 2;
    this.hi = new Uint32Array(capacity);
    this.lo = new Uint32Array(capacity);
    this.values = new Uint32Array(capacity);
    this.mask = capacity - 1;
    for (let i = 0; i < hi.length; i++) {
      if (hi[i] === 0 && lo[i] === 0) continue;
      const slot = this.slotOf(hi[i]!, lo[i]!);
      this.hi[slot] = hi[i]!;
      this.lo[slot] = lo[i]!;
      this.values[slot] = values[i]!;
    }
  }
}

/** The all-zero key marks empty slots; it is moved to (0, 1), a 2^-64 chance collision. */
function normalise(hi: number, lo: number): [number, number] {
  return hi === 0 && lo === 0 ? [0, 1] : [hi >>> 0, lo >>> 0];
}
