/**
 * A bounded LRU cache of decoded pages by object id: reference pages of deltas (a delta
 * read decodes its base first) and targets of dedup byte checks. Objects never change, so
 * an entry is valid until its object dies; the store evicts dead ids.
 */
export class PageCache {
  readonly #capacityPages: number;
  /** Insertion order is recency order: the first entry is the least recently used. */
  readonly #pages = new Map<number, Buffer>();
  hits = 0;
  misses = 0;

  constructor(capacityPages: number) {
    this.#capacityPages = capacityPages;
  }

  get(objectId: number): Buffer | undefined {
    const page = this.#pages.get(objectId);
    if (page === undefined) {
      this.misses++;
      return undefined;
    }
    this.hits++;
    this.#pages.delete(objectId);
    this.#pages.set(objectId, page);
    return page;
  }

  /** Keeps `page` (owned by the cache from now on; callers must not change it). */
  set(objectId: number, page: Buffer): void {
    this.#pages.delete(objectId);
    this.#pages.set(objectId, page);
    while (this.#pages.size > this.#capacityPages) {
      const oldest = this.#pages.keys().next();
      if (oldest.done) break;
      this.#pages.delete(oldest.value);
    }
  }

  delete(objectId: number): void {
    this.#pages.delete(objectId);
  }

  clear(): void {
    this.#pages.clear();
  }

  get size(): number {
    return this.#pages.size;
  }
}
