/**
 * The page store's metadata in LMDB: the only module that imports `lmdb`.
 *
 * Design note. One LMDB environment under `<dataDir>/index` with named databases:
 * - `pages`: (export id, page number) -> mapping (fill word or object id), binary 9 bytes.
 * - `objects`: object id -> binary object record (records.ts).
 * - `content`: group id + hash prefix -> object id (dedup candidates; bytes are compared on
 *   a hit, so a prefix is enough and keeps the index small).
 * - `similar`: 32-bit hash of (group, feature slot, feature) -> newest object id with that
 *   feature. Integer keys (4 bytes, not an 8-byte number) keep this, the largest index with
 *   several entries per stored page, small; a hash shared by two groups only costs a missed
 *   candidate, since the store checks a candidate's group before it uses it.
 * - `segments`: segment id -> { sizeBytes, liveBytes } of committed payload files.
 * - `exports`: export name -> { id, pageCount, groupId }.
 * - `meta`: 'state' -> counters and accounting, rewritten by every commit.
 * Reads are synchronous (memory-mapped, microseconds). All writes of one store batch go
 * through `commit()` as one transaction, so the committed state is always a consistent
 * whole; the store serialises commits and keeps uncommitted changes in its own overlay.
 */
import { statSync } from 'node:fs';
import { constants as osConstants } from 'node:os';
import { join } from 'node:path';
import { type Database, open, type RootDatabase } from 'lmdb';
import {
  decodeMapping,
  decodeObject,
  encodeMapping,
  encodeObject,
  type Mapping,
  type ObjectRecord,
} from './records.js';

export * from './records.js';

/** Numbers of bits of a page number in a page-map key; exports up to 16 TiB. */
const PAGE_KEY_BITS = 2 ** 32;

/** Page-map key of (export id, page number); a safe integer while export ids < 2^21. */
export function pageKey(exportId: number, page: number): number {
  return exportId * PAGE_KEY_BITS + page;
}

/** Export id of a page-map key. */
export function exportIdOfKey(key: number): number {
  return Math.floor(key / PAGE_KEY_BITS);
}

/**
 * Similarity-index key of (group id, feature slot, feature value): a 32-bit mix of the three
 * (the finalizer of MurmurHash3, Appleby), so keys spread evenly over the integer key space.
 */
export function similarKey(groupId: number, slot: number, feature: number): number {
  let h = Math.imul(groupId + 1, 0x9e3779b1) ^ Math.imul(slot + 1, 0x85ebca77) ^ feature;
  h = Math.imul(h ^ (h >>> 16), 0x85ebca6b);
  h = Math.imul(h ^ (h >>> 13), 0xc2b2ae35);
  return (h ^ (h >>> 16)) >>> 0;
}

export interface SegmentRecord {
  /** Bytes of committed records in the file; anything past it is a torn tail. */
  sizeBytes: number;
  /** Bytes of records whose object is still alive (header + payload). */
  liveBytes: number;
}

export interface ExportRecord {
  id: number;
  pageCount: number;
  groupId: number;
}

/** Everything one store batch changes; null values delete. Applied in one transaction. */
export interface IndexChanges {
  mappings: Map<number, Mapping | null>;
  objects: Map<number, ObjectRecord | null>;
  /** Keyed by the content key in hex, for the overlay's lookups. */
  content: Map<string, { key: Buffer; objectId: number | null }>;
  similar: Map<number, number | null>;
  segments: Map<number, SegmentRecord | null>;
  exports: Map<string, ExportRecord>;
  state: unknown;
}

export function emptyChanges(): IndexChanges {
  return {
    mappings: new Map(),
    objects: new Map(),
    content: new Map(),
    similar: new Map(),
    segments: new Map(),
    exports: new Map(),
    state: undefined,
  };
}

/** The page store's LMDB environment. */
export class IndexDb {
  readonly #root: RootDatabase;
  readonly #pages: Database<Buffer, number>;
  readonly #objects: Database<Buffer, number>;
  readonly #content: Database<number, Buffer>;
  readonly #similar: Database<number, number>;
  readonly #segments: Database<SegmentRecord, number>;
  readonly #exports: Database<ExportRecord, string>;
  readonly #meta: Database<unknown, string>;
  readonly #path: string;

  constructor(path: string) {
    this.#path = path;
    this.#root = open({
      path,
      maxDbs: 8,
      // Payloads are compressed already and records are small fixed layouts: LZ4 here
      // would cost CPU for nothing.
      compression: false,
      // Durability comes from the commit itself: a commit promise resolves only when the
      // transaction is on disk, which FLUSH relies on. Overlapping sync would resolve
      // earlier and need a second wait; batches are large, so one sync each is cheap.
      overlappingSync: false,
      noSync: false,
      // The store caches what it needs (decoded pages); an object cache here would only
      // duplicate records and grow with the store.
      cache: false,
    });
    const binary = { encoding: 'binary' as const };
    this.#pages = this.#root.openDB<Buffer, number>({ name: 'pages', ...binary });
    this.#objects = this.#root.openDB<Buffer, number>({ name: 'objects', ...binary });
    // Object ids as values: ordered-binary numbers skip msgpack on the hottest puts.
    this.#content = this.#root.openDB<number, Buffer>({
      name: 'content',
      keyEncoding: 'binary',
      encoding: 'ordered-binary',
    });
    this.#similar = this.#root.openDB<number, number>({
      name: 'similar',
      keyEncoding: 'uint32',
      encoding: 'ordered-binary',
    });
    this.#segments = this.#root.openDB<SegmentRecord, number>({ name: 'segments' });
    this.#exports = this.#root.openDB<ExportRecord, string>({ name: 'exports' });
    this.#meta = this.#root.openDB<unknown, string>({ name: 'meta' });
  }

  getMapping(key: number): Mapping | undefined {
    const raw = this.#pages.getBinaryFast(key);
    return raw ? decodeMapping(raw) : undefined;
  }

  /** Committed mappings with keys in [startKey, endKey), in key order. */
  *mappingsInRange(startKey: number, endKey: number): Generator<[number, Mapping]> {
    for (const { key, value } of this.#pages.getRange({ start: startKey, end: endKey })) {
      yield [key, decodeMapping(value)];
    }
  }

  getObject(id: number): ObjectRecord | undefined {
    const raw = this.#objects.getBinaryFast(id);
    return raw ? decodeObject(raw) : undefined;
  }

  /** Entries in the page map and object table, from LMDB's own statistics (no walk). */
  counts(): { mappings: number; objects: number } {
    const entries = (db: Database<Buffer, number>) =>
      (db.getStats() as { entryCount?: number }).entryCount ?? 0;
    return { mappings: entries(this.#pages), objects: entries(this.#objects) };
  }

  *allObjects(): Generator<[number, ObjectRecord]> {
    for (const { key, value } of this.#objects.getRange({})) yield [key, decodeObject(value)];
  }

  *allMappings(): Generator<[number, Mapping]> {
    for (const { key, value } of this.#pages.getRange({})) yield [key, decodeMapping(value)];
  }

  getContent(key: Buffer): number | undefined {
    return this.#content.get(key);
  }

  getSimilar(key: number): number | undefined {
    return this.#similar.get(key);
  }

  getState(): unknown {
    return this.#meta.get('state');
  }

  exportRecords(): Map<string, ExportRecord> {
    const out = new Map<string, ExportRecord>();
    for (const { key, value } of this.#exports.getRange({})) out.set(key, value);
    return out;
  }

  segmentRecords(): Map<number, SegmentRecord> {
    const out = new Map<number, SegmentRecord>();
    for (const { key, value } of this.#segments.getRange({})) out.set(key, value);
    return out;
  }

  /**
   * Applies `changes` in one durable transaction; resolves once it is on disk. A failed
   * commit rejects with the cause lmdb-js keeps behind `commitError` (its errno in `code`,
   * e.g. 'ENOSPC' on a full disk), so callers can tell a full disk from a fault.
   */
  async commit(changes: IndexChanges): Promise<void> {
    try {
      await this.#root.transaction(() => this.#apply(changes));
    } catch (error) {
      const inner = (error as { commitError?: Promise<unknown> }).commitError;
      if (!inner) throw error;
      const cause = await inner.then(
        () => error,
        (reason: unknown) => reason,
      );
      throw indexError(cause);
    }
  }

  #apply(changes: IndexChanges): void {
    for (const [key, mapping] of changes.mappings) {
      if (mapping) this.#pages.put(key, encodeMapping(mapping));
      else this.#pages.remove(key);
    }
    for (const [id, record] of changes.objects) {
      if (record) this.#objects.put(id, encodeObject(record));
      else this.#objects.remove(id);
    }
    for (const { key, objectId } of changes.content.values()) {
      if (objectId !== null) this.#content.put(key, objectId);
      else this.#content.remove(key);
    }
    for (const [key, objectId] of changes.similar) {
      if (objectId !== null) this.#similar.put(key, objectId);
      else this.#similar.remove(key);
    }
    for (const [id, segment] of changes.segments) {
      if (segment) this.#segments.put(id, segment);
      else this.#segments.remove(id);
    }
    for (const [name, record] of changes.exports) this.#exports.put(name, record);
    if (changes.state !== undefined) this.#meta.put('state', changes.state);
  }

  /** Bytes of the LMDB files on disk (one stat; callers cache it). */
  fileBytes(): number {
    let total = 0;
    for (const name of ['data.mdb', 'lock.mdb']) {
      try {
        total += statSync(join(this.#path, name)).size;
      } catch {
        // A missing lock file (other platforms) counts as nothing.
      }
    }
    return total;
  }

  async close(): Promise<void> {
    await this.#root.close();
  }
}

/** lmdb-js reports errno as a number in `code`; name it as Node does ('ENOSPC'). */
function indexError(cause: unknown): Error {
  const error = cause instanceof Error ? cause : new Error(String(cause));
  const code = (error as { code?: unknown }).code;
  const named = typeof code === 'number' ? errnoName(code) : undefined;
  if (named) Object.assign(error, { code: named, errno: -(code as number) });
  return error;
}

function errnoName(errno: number): string | undefined {
  for (const [name, value] of Object.entries(osConstants.errno)) {
    if (value === errno) return name;
  }
  return undefined;
}

/**
 * lmdb-js leaves one internal promise of each failed commit rejected with nobody to handle
 * it (the commit's own caller gets the error through `commit()` above). True for those, so
 * a process-wide handler can let them pass and still treat every other one as fatal.
 */
export function isStrayCommitRejection(reason: unknown): boolean {
  return (
    reason instanceof Error &&
    reason.message.startsWith('Commit failed (see commitError') &&
    'commitError' in reason
  );
}

/** Opens (creating when absent) the index under `path`, a directory. */
export function openIndex(path: string): IndexDb {
  return new IndexDb(path);
}
