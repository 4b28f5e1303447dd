/**
 * Per-technique accounting, kept incrementally so `stats()` never scans.
 *
 * Design note. Counters are indexed by MappingTag (zero, duplicate, delta, compressed, raw):
 * - pages[tag]: the export's page-map entries by how each page was stored when written.
 *   A page that reused an existing object counts as duplicate in its export for as long as
 *   it is mapped, even if the page that first stored the object is gone: it records what
 *   paid at write (the store-wide totals correct for that, see orphans).
 * - objects[tag], storedBytes[tag] for delta/compressed/raw: live objects and their payload
 *   bytes, charged to the export that created the object (its owner).
 * - objects[duplicate]: owned objects with two or more page-map entries (shared objects).
 * - orphans[tag] for delta/compressed/raw: owned live objects whose page-map entries are all
 *   duplicates (the page that first stored the object was overwritten or trimmed, or a base
 *   kept for its deltas was found again by dedup). Store-wide, one of those duplicates is the
 *   object's own page: the totals move it back, so every live mapped object counts one page
 *   for its kind and a technique's saved bytes never go negative. Per export the pages stay
 *   as written, since the duplicates may sit in another export of the group.
 * Every counter is updated in the same step that changes the index, and persisted in the
 * same commit, so after a restart they are exact without a scan.
 */
import assert from 'node:assert/strict';
import {
  type ExportStats,
  emptyTechniques,
  PAGE_SIZE,
  type TechniqueName,
  type TechniqueStats,
} from '../device/types.js';
import { MappingTag, type MappingTagValue } from '../index/index.js';

/** Technique name of each MappingTag value, in tag order. */
export const TAG_TECHNIQUES: readonly TechniqueName[] = [
  'zero',
  'duplicate',
  'delta',
  'compressed',
  'raw',
];
const TAG_COUNT = TAG_TECHNIQUES.length;

export interface ExportCounters {
  pages: number[];
  objects: number[];
  storedBytes: number[];
  orphans: number[];
}

export function emptyCounters(): ExportCounters {
  return {
    pages: new Array<number>(TAG_COUNT).fill(0),
    objects: new Array<number>(TAG_COUNT).fill(0),
    storedBytes: new Array<number>(TAG_COUNT).fill(0),
    orphans: new Array<number>(TAG_COUNT).fill(0),
  };
}

/** Counters as persisted, completed: stores written before `orphans` existed have none. */
export function loadCounters(saved: Partial<ExportCounters>): ExportCounters {
  const empty = emptyCounters();
  return {
    pages: saved.pages ?? empty.pages,
    objects: saved.objects ?? empty.objects,
    storedBytes: saved.storedBytes ?? empty.storedBytes,
    orphans: saved.orphans ?? empty.orphans,
  };
}

/**
 * Store-wide techniques from the exports' sums and every owner's orphans (see the note):
 * each orphaned object takes one page from duplicate back to its own kind.
 */
export function withOrphans(
  techniques: Record<TechniqueName, TechniqueStats>,
  owners: Iterable<ExportCounters>,
): Record<TechniqueName, TechniqueStats> {
  const duplicate = techniques.duplicate;
  for (const counters of owners) {
    TAG_TECHNIQUES.forEach((name, tag) => {
      const orphans = counters.orphans[tag] ?? 0;
      if (orphans === 0) return;
      const kind = techniques[name];
      kind.pages += orphans;
      kind.savedBytes += orphans * PAGE_SIZE;
      duplicate.pages -= orphans;
      duplicate.savedBytes -= orphans * PAGE_SIZE;
    });
  }
  assert.ok(duplicate.pages >= 0, 'more orphaned objects than duplicate pages');
  return techniques;
}

/** Adds `delta` to a counter; a count never goes below zero (a bookkeeping bug if it did). */
export function bump(counts: number[], tag: MappingTagValue, delta: number): void {
  const next = (counts[tag] ?? 0) + delta;
  assert.ok(next >= 0, `accounting went negative for ${TAG_TECHNIQUES[tag]}`);
  counts[tag] = next;
}

/**
 * Objects per fan-in (number of deltas based on them), so the maximum fan-in survives
 * decrements without a scan. Sized by the largest fan-in, not by the store.
 */
export class FanInHistogram {
  readonly #objects = new Map<number, number>();
  #total = 0;

  static fromEntries(entries: [number, number][]): FanInHistogram {
    const histogram = new FanInHistogram();
    for (const [fanIn, count] of entries) {
      histogram.#objects.set(fanIn, count);
      histogram.#total += fanIn * count;
    }
    return histogram;
  }

  /** Records one object's fan-in changing from `from` to `to`. */
  move(from: number, to: number): void {
    if (from > 0) {
      const count = this.#objects.get(from) ?? 0;
      assert.ok(count > 0, `fan-in histogram has no object at ${from}`);
      if (count === 1) this.#objects.delete(from);
      else this.#objects.set(from, count - 1);
    }
    if (to > 0) this.#objects.set(to, (this.#objects.get(to) ?? 0) + 1);
    this.#total += to - from;
  }

  referencePages(): number {
    let sum = 0;
    for (const count of this.#objects.values()) sum += count;
    return sum;
  }

  total(): number {
    return this.#total;
  }

  max(): number {
    let max = 0;
    for (const fanIn of this.#objects.keys()) if (fanIn > max) max = fanIn;
    return max;
  }

  entries(): [number, number][] {
    return [...this.#objects];
  }
}

/** TechniqueStats of one export's counters. */
export function techniqueStats(counters: ExportCounters): Record<TechniqueName, TechniqueStats> {
  const out = emptyTechniques();
  TAG_TECHNIQUES.forEach((name, tag) => {
    const pages = counters.pages[tag] ?? 0;
    const storedBytes = counters.storedBytes[tag] ?? 0;
    out[name] = {
      pages,
      objects: tag === MappingTag.uniform ? 0 : (counters.objects[tag] ?? 0),
      storedBytes,
      savedBytes: pages * PAGE_SIZE - storedBytes,
    };
  });
  return out;
}

/** One export's stats from its counters. */
export function exportStats(
  name: string,
  sizeBytes: number,
  group: string,
  counters: ExportCounters,
): ExportStats {
  const mappedPages = counters.pages.reduce((a, b) => a + b, 0);
  const storedBytes = counters.storedBytes.reduce((a, b) => a + b, 0);
  return {
    name,
    sizeBytes,
    group,
    mappedPages,
    logicalBytes: mappedPages * PAGE_SIZE,
    storedBytes,
    techniques: techniqueStats(counters),
  };
}

/** Sum of techniques over exports. */
export function sumTechniques(exports: ExportStats[]): Record<TechniqueName, TechniqueStats> {
  const total = emptyTechniques();
  for (const stats of exports) {
    for (const name of TAG_TECHNIQUES) {
      const from = stats.techniques[name];
      const into = total[name];
      into.pages += from.pages;
      into.objects += from.objects;
      into.storedBytes += from.storedBytes;
      into.savedBytes += from.savedBytes;
    }
  }
  return total;
}
