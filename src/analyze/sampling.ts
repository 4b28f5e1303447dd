/**
 * Seeded randomness and reservoir sampling for the costly comparisons of `diffswap analyze`:
 * the same image and seed always give the same sample, so two runs can be compared.
 */

/** mulberry32 (Tommy Ettinger, public domain): a small seeded generator, floats in [0, 1). */
export function seededUniform(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
  };
}

/**
 * A uniform sample of at most `capacity` items from a stream of unknown length (Vitter's
 * Algorithm R): memory stays at `capacity` items whatever the image size.
 */
export class Reservoir<T> {
  readonly items: T[] = [];
  seen = 0;
  private readonly random: () => number;

  constructor(
    readonly capacity: number,
    seed: number,
  ) {
    this.random = seededUniform(seed);
  }

  /** Offers the next stream item; `make` runs only when the item is kept. */
  offer(make: () => T): void {
    this.seen++;
    if (this.items.length < this.capacity) {
      this.items.push(make());
      return;
    }
    const slot = Math.floor(this.random() * this.seen);
    if (slot < this.capacity) this.items[slot] = make();
  }
}
