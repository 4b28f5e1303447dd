/**
 * The page store: a Backend of page devices whose pages are fill words, shared objects,
 * deltas or compressed payloads, persisted in LMDB (src/index) and segment files.
 *
 * Design note (see also DESIGN.md, write path / read path / crash rules).
 * - Write: `writePages` copies pages into the write-back buffer (latest write to a page
 *   wins, in place) and resolves at once; the buffer is capped, writers wait when it is
 *   full. Trims/zeroes become range operations that drop older buffered pages in their
 *   range and unmap committed pages in bounded steps; zeroed pages become holes.
 * - One writer loop owns every change: it takes a batch from the buffer, encodes it in
 *   slices (yielding to the event loop between slices so sockets keep flowing), applies the
 *   decisions to an in-memory overlay of the index (all reference increments before any
 *   decrement, so an object reused by the batch cannot die in it), appends payloads to the
 *   active segment, fdatasyncs, then commits the overlay as one LMDB transaction. Range
 *   operations, compaction steps and check() run in the same loop, so none races a batch.
 * - Read: buffer, then pending range operations, then the batch being committed, then
 *   the committed index. A delta's base is decoded through a bounded LRU cache.
 * - Durability: every buffered page and range operation carries the sequence number of
 *   the oldest write it stands for; FLUSH waits until everything at or below its number is
 *   committed. A crash loses only uncommitted work; segment tails past the committed sizes
 *   are cut at open, which needs no scan.
 * - Dedup compares bytes on every content-index hit, so a hash collision (crafted or
 *   forced by the test hook) stores the page separately instead of aliasing it.
 * - The similarity index keeps the newest object per feature; entries of dead objects are
 *   not deleted at death (eight index operations per overwritten page) but dropped when a
 *   lookup meets them, or overwritten. Object ids are never reused, so they cannot mislead.
 * - One tier: zero check, hash, dedup, sketch, zstd and the delta attempt all run at
 *   ingest. Measured on this (heavily shared) machine, swapping zstd for lz4 or turning
 *   deltas off changed ingest by under 20%: per-page cost is spread over hashing, index
 *   operations, copies and compression, so a cheap first tier would not pay for the second
 *   pass and its extra segment writes. Batch N+1 is encoded while batch N commits; only
 *   applying a batch waits for the commit before it. A CPU profile of random writes: zstd
 *   10%, SHA-256 6%, lmdb-js taking the index writes 13%, GC 9% (per-page Buffers), the rest
 *   index lookups, copies and bookkeeping. TODO(store): fewer index writes per page and
 *   reused page buffers are what is left to take; both touch the crash rules.
 */
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import {
  type Backend,
  DeviceError,
  type ExportSpec,
  PAGE_SIZE,
  type PageDevice,
  type PageExtent,
  type StoreStats,
  type TechniqueSwitches,
  type WriteOptions,
  type ZeroOptions,
} from '../device/types.js';
import {
  CONTENT_KEY_BYTES,
  type ExportRecord,
  emptyChanges,
  exportIdOfKey,
  type IndexChanges,
  type IndexDb,
  type Mapping,
  MappingTag,
  type MappingTagValue,
  type ObjectRecord,
  openIndex,
  pageKey,
  type SegmentRecord,
  similarKey,
} from '../index/index.js';
import { type Logger, silentLogger } from '../log/index.js';
import {
  bump,
  type ExportCounters,
  emptyCounters,
  exportStats,
  FanInHistogram,
  loadCounters,
  sumTechniques,
  withOrphans,
} from './accounting.js';
import { PageCache } from './cache.js';
import {
  codecById,
  compressorOf,
  contentHash,
  FEATURE_COUNT,
  fillPage,
  type PageCodec,
  scanPages,
  sketchOptionsOf,
  sketchPages,
  zstdDeltaCodec,
} from './codecs.js';
import { lockStore } from './lock.js';
import { SpaceReserve } from './reserve.js';
import { recordBytes, SegmentFiles } from './segments.js';
import { EXPORT_PAGES_MAX, resolveTuning, type StoreTuning } from './tuning.js';

/** Largest export id: page-map keys are export id * 2^32 + page, kept a safe integer. */
const EXPORT_ID_MAX = 2 ** 20;
/** Pages a read decodes before it yields, so one huge read cannot starve other clients. */
const READ_YIELD_PAGES = 256;
/** Pages of a BLOCK_STATUS answer examined page by page (a reply may cover less). */
const EXTENTS_WINDOW_PAGES = 65_536;
/** How long a cached index file size is trusted by stats(). */
const INDEX_SIZE_TTL_MS = 1_000;
/**
 * Format version of the store (state record, object records, index keys). 2: object records
 * without feature slots, similarity keys hashed to 32 bits.
 */
const STATE_VERSION = 2;
const RAW_CODEC_ID = 0;

export interface PageStoreOptions {
  dataDir: string;
  exports: ExportSpec[];
  logger?: Logger;
  tuning?: Partial<StoreTuning>;
}

export interface CompactionReport {
  /** Segments rewritten and deleted. */
  segmentsCompacted: number;
  /** Live records copied into the active segment. */
  objectsMoved: number;
  /** Segment bytes before and after. */
  segmentBytesBefore: number;
  segmentBytesAfter: number;
  reclaimedBytes: number;
  /** Dead bytes given back to the filesystem in place (hole punching), within segments. */
  punchedBytes: number;
  durationMs: number;
}

export interface CheckReport {
  objectsChecked: number;
  mappingsChecked: number;
  /** One line per problem found; empty when the store is consistent. */
  problems: string[];
  /** Pages whose bytes cannot be rebuilt (a read answers EIO), at most DAMAGED_LIST_MAX. */
  damaged: DamagedPage[];
  /** All damaged pages, also those past the listed ones. */
  damagedTotal: number;
  /** Problems fixed by `repair` (reference counts, segment live bytes, orphans). */
  repaired: number;
  /**
   * Problems still there: all of them without `repair`; with it, the ones no repair can fix
   * (objects that do not decode, mappings naming missing objects).
   */
  unrepaired: number;
}

export interface CheckOptions {
  repair: boolean;
  /** Called every few thousand steps of the walk, and once at its end (done = total). */
  onProgress?: (progress: CheckProgress) => void;
}

/** How far a check has come: steps walked of those expected (mappings, objects twice). */
export interface CheckProgress {
  done: number;
  total: number;
}

/** Steps of a check between two yields to the event loop (a few milliseconds of work). */
const CHECK_SLICE = 1024;

/** A page that reads as EIO, named the way an operator finds it: export and byte offset. */
export interface DamagedPage {
  export: string;
  offsetBytes: number;
  objectId: number;
  problem: string;
}

/** Damaged pages listed in one check report; a wrecked store would list millions. */
const DAMAGED_LIST_MAX = 10_000;

/** What a page of a batch became. */
type Outcome =
  | { tag: typeof MappingTag.uniform; word: bigint }
  | { tag: typeof MappingTag.duplicate; objectId: number }
  | { tag: MappingTagValue; object: NewObject };

interface NewObject {
  id: number;
  codec: number;
  payload: Buffer;
  baseId: number;
  groupId: number;
  ownerId: number;
  features: number[];
  contentKey: Buffer | null;
  /** The page itself (a view into the batch buffer), for in-batch dedup and deltas. */
  page: Buffer;
}

/** What a batch learned while encoding, consulted before the committed index. */
interface BatchLocal {
  /** Content key (hex) -> new object of this batch. */
  content: Map<string, NewObject>;
  /** Similarity key -> newest new object of this batch with that feature. */
  similar: Map<number, NewObject>;
  /** Similarity keys found naming dead objects, to delete with this batch's commit. */
  staleSimilar: Map<number, number>;
}

interface ExportState {
  id: number;
  name: string;
  groupId: number;
  groupName: string;
  pageCount: number;
  writable: boolean;
  description: string;
  techniques: TechniqueSwitches;
  device: StorePageDevice;
}

interface BufferedPage {
  /** Sequence number of the oldest unflushed write this entry stands for. */
  seq: number;
  /** Sequence number of the write whose bytes it holds (the latest); orders it with trims. */
  writtenSeq: number;
  page: Buffer;
  exportState: ExportState;
  pageNumber: number;
}

interface RangeOp {
  /** Lowest sequence number it stands for (itself or the buffered writes it dropped). */
  seq: number;
  /** Its own sequence number: writes numbered below it are older and lose to it. */
  issuedSeq: number;
  startKey: number;
  endKey: number;
  /** Next key to unmap; the op is done when it reaches endKey. */
  cursorKey: number;
}

interface PersistedState {
  version: number;
  nextObjectId: number;
  nextSegmentId: number;
  nextExportId: number;
  nextGroupId: number;
  activeSegmentId: number;
  groups: Record<string, number>;
  counters: Record<string, ExportCounters>;
  fanIn: [number, number][];
  reclaimedBytesTotal: number;
  lastCompactionAtMs: number | null;
}

interface BatchContext {
  changes: IndexChanges;
  /** Mappings replaced by this batch, released after every new reference is added. */
  released: { exportId: number; mapping: Mapping }[];
  /** Objects that died, evicted from the cache once committed. */
  deadIds: number[];
}

interface CompactionJob {
  /** A segment, or PLAN_EXPLICIT / PLAN_RECLAIM: plan the jobs of that kind first. */
  segmentId: number;
  /** 'copy' moves live records out; 'reclaim' punches dead runs out in place. */
  mode: 'copy' | 'reclaim';
  cursor: number;
  /** Reclaim: a run of dead records reaching the end of the last step, carried on. */
  run: DeadRun | null;
  /** Record bytes copied out so far; the net gain is the segment size minus these. */
  movedBytes: number;
}

interface DeadRun {
  start: number;
  end: number;
  /** Holds a dead record not yet reclaimed (a lone filler needs no new one). */
  fresh: boolean;
}

/** Job placeholders that plan an explicit compaction, or an in-place reclaim. */
const PLAN_EXPLICIT = -1;
const PLAN_RECLAIM = -2;
/** Dead runs shorter than this are left alone: they cannot hold a whole block to punch. */
const RECLAIM_RUN_MIN_BYTES = 2 * 4096;
/** While the disk is full, how often buffered pages are tried again. */
const NO_SPACE_RETRY_MS = 1000;

function isNoSpace(error: unknown): boolean {
  if (error instanceof DeviceError) return error.code === 'ENOSPC';
  const e = error as { code?: unknown; errno?: unknown; message?: unknown };
  return (
    e.code === 'ENOSPC' ||
    e.errno === -28 ||
    e.errno === 28 ||
    (typeof e.message === 'string' && /ENOSPC|No space left/i.test(e.message))
  );
}

function copyJob(segmentId: number): CompactionJob {
  return { segmentId, mode: 'copy', cursor: 0, run: null, movedBytes: 0 };
}

/** A committed object a read will decode: where its page goes in the read's buffer. */
interface PendingRead {
  id: number;
  record: ObjectRecord;
  at: number;
}

interface FlushWaiter {
  target: number;
  resolve: () => void;
  reject: (error: Error) => void;
}

function initialState(): PersistedState {
  return {
    version: STATE_VERSION,
    nextObjectId: 1,
    nextSegmentId: 2,
    nextExportId: 1,
    nextGroupId: 1,
    activeSegmentId: 1,
    groups: {},
    counters: {},
    fanIn: [],
    reclaimedBytesTotal: 0,
    lastCompactionAtMs: null,
  };
}

function resolveTechniques(spec: ExportSpec): TechniqueSwitches {
  return { zero: true, dedup: true, delta: true, compress: true, ...spec.techniques };
}

/** Accounting bucket of an object by its codec. */
function objectTag(codec: PageCodec | number): MappingTagValue {
  const id = typeof codec === 'number' ? codec : codec.id;
  if (id === RAW_CODEC_ID) return MappingTag.raw;
  return codecById(id).delta ? MappingTag.delta : MappingTag.compressed;
}

function contentKeyOf(groupId: number, hash: Buffer): Buffer {
  const key = Buffer.allocUnsafe(CONTENT_KEY_BYTES);
  key.writeUInt32LE(groupId, 0);
  hash.copy(key, 4, 0, CONTENT_KEY_BYTES - 4);
  return key;
}

const yieldToEventLoop = () => new Promise<void>((resolve) => setImmediate(resolve));

/** One export of the store, as the NBD layer sees it. */
export class StorePageDevice implements PageDevice {
  readonly name: string;
  readonly pageCount: number;
  readonly writable: boolean;
  readonly #store: PageStoreImpl;
  readonly #exp: ExportState;

  constructor(store: PageStoreImpl, exp: ExportState) {
    this.name = exp.name;
    this.pageCount = exp.pageCount;
    this.writable = exp.writable;
    this.#store = store;
    this.#exp = exp;
  }

  readPages(firstPage: number, count: number, dst: Buffer, dstOffset: number) {
    return this.#store.readPages(this.#exp, firstPage, count, dst, dstOffset);
  }

  async writePages(firstPage: number, src: Buffer, options: WriteOptions) {
    this.#assertWritable();
    return this.#store.writePages(this.#exp, firstPage, src, options);
  }

  async zeroPages(firstPage: number, count: number, options: ZeroOptions) {
    this.#assertWritable();
    return this.#store.zeroPages(this.#exp, firstPage, count, options);
  }

  flush() {
    return this.#store.flush();
  }

  extents(firstPage: number, count: number, extentsMax = Number.POSITIVE_INFINITY) {
    return this.#store.extents(this.#exp, firstPage, count, extentsMax);
  }

  #assertWritable() {
    if (!this.writable) throw new DeviceError('EPERM', `export ${this.name} is read-only`);
  }
}

export class PageStoreImpl implements Backend {
  readonly kind = 'pagestore' as const;
  readonly #tuning: StoreTuning;
  readonly #log: Logger;
  readonly #index: IndexDb;
  readonly #files: SegmentFiles;
  #state: PersistedState;
  readonly #segments: Map<number, SegmentRecord>;
  readonly #exports = new Map<string, ExportState>();
  readonly #counters = new Map<number, ExportCounters>();
  #fanIn: FanInHistogram;
  readonly #cache: PageCache;
  readonly #compressor: PageCodec;
  readonly #reserve: SpaceReserve;
  /** When the reserve may next be written again (it is tried at most once a second). */
  #reserveRetryAtMs = 0;

  /** Write-back buffer: page key -> newest bytes; Map order is sequence order. */
  readonly #buffer = new Map<number, BufferedPage>();
  readonly #rangeOps: RangeOp[] = [];
  /** Pages of the batch being committed: key -> bytes. */
  #inflight = new Map<number, Buffer>();
  #inflightMinSeq = Number.POSITIVE_INFINITY;
  /** The batch being encoded, as buffered entries (see #committing.batch). */
  #inflightBatch: BufferedPage[] = [];
  /**
   * Set while the data filesystem is full: buffered pages stay in memory (and readable)
   * and are tried again every NO_SPACE_RETRY_MS or once space is freed; new writes and
   * flushes answer ENOSPC meanwhile. `pending` is a failed commit not yet rolled back.
   */
  #noSpace: { error: DeviceError; retryAtMs: number } | null = null;
  #noSpacePending: Error | null = null;
  /**
   * The previous batch while its commit runs (pipelined with the next batch's encoding):
   * its pages for reads, its lowest sequence number for FLUSH, its changes so the next
   * batch does not pick an object it killed, and the commit itself.
   */
  #committing: {
    /** Its buffered pages, to put back if the commit finds the disk full. */
    batch: BufferedPage[];
    pages: Map<number, Buffer>;
    minSeq: number;
    changes: IndexChanges;
    /** Its new objects, with their pages: the next batch dedups and deltas against them. */
    local: BatchLocal;
    done: Promise<void>;
  } | null = null;
  #seq = 0;
  #bufferSinceMs = 0;
  readonly #flushWaiters: FlushWaiter[] = [];
  readonly #spaceWaiters: (() => void)[] = [];
  #wake: (() => void) | null = null;

  #compactionJobs: CompactionJob[] = [];
  #compactionRunning = false;
  #explicitCompaction: {
    ratio: number;
    report: CompactionReport;
    startedMs: number;
    resolve: (report: CompactionReport) => void;
    reject: (error: Error) => void;
  } | null = null;
  #batchesSinceCompaction = 0;
  /** Work that must not interleave with batches or compaction steps (check()). */
  readonly #exclusive: (() => Promise<void>)[] = [];

  #failed: Error | null = null;
  #closing = false;
  #closed = false;
  #writerDone: Promise<void> = Promise.resolve();
  #indexBytes = 0;
  readonly #unlock: () => void;
  #indexBytesAtMs = 0;
  /** Failures counted instead of logged per request. */
  readonly counters = {
    readErrors: 0,
    collisions: 0,
    batches: 0,
    pagesEncoded: 0,
    /** Delta encodings tried against a base, and those kept (smaller than alone). */
    deltaAttempts: 0,
    deltasKept: 0,
    /** Commits that found the disk full and were rolled back. */
    noSpaceRollbacks: 0,
    /** Dead segment bytes given back to the filesystem in place. */
    punchedBytes: 0,
  };

  constructor(options: PageStoreOptions) {
    this.#tuning = resolveTuning(options.tuning);
    this.#log = (options.logger ?? silentLogger()).child({ component: 'store' });
    mkdirSync(options.dataDir, { recursive: true });
    this.#unlock = lockStore(options.dataDir);
    try {
      this.#index = openIndex(join(options.dataDir, 'index'));
      this.#state = (this.#index.getState() as PersistedState | undefined) ?? initialState();
      this.#segments = this.#index.segmentRecords();
      this.#fanIn = FanInHistogram.fromEntries(this.#state.fanIn);
      const dir = join(options.dataDir, 'segments');
      this.#files = new SegmentFiles(dir, this.#tuning.openSegmentsMax);
    } catch (error) {
      // Nothing else holds the directory yet: release it for the next attempt.
      this.#unlock();
      throw error;
    }
    for (const [id, counters] of Object.entries(this.#state.counters)) {
      this.#counters.set(Number(id), loadCounters(counters));
    }
    this.#cache = new PageCache(this.#tuning.referenceCachePages);
    this.#compressor = compressorOf(this.#tuning);
    this.#reserve = new SpaceReserve(options.dataDir, this.#tuning.reserveBytes);
  }

  /** Second half of opening: reconcile files and exports, then start the writer. */
  async start(specs: ExportSpec[]): Promise<void> {
    if (this.#state.version !== STATE_VERSION) {
      throw new DeviceError(
        'EINVAL',
        `store format ${this.#state.version} is not supported (this diffswap reads format ` +
          `${STATE_VERSION}); copy the exports out with an older diffswap, or use a new --data`,
      );
    }
    const changes = emptyChanges();
    if (!this.#segments.has(this.#state.activeSegmentId)) {
      const record = { sizeBytes: 0, liveBytes: 0 };
      this.#segments.set(this.#state.activeSegmentId, record);
      changes.segments.set(this.#state.activeSegmentId, record);
    }
    const deleted = this.#files.reconcile(this.#segments);
    if (deleted.length > 0) this.#log.info({ segments: deleted }, 'deleted uncommitted segments');
    this.#reconcileExports(specs, changes);
    changes.state = this.#snapshotState();
    await this.#index.commit(changes);
    if (!this.#reserve.ensure()) {
      this.#log.warn(
        { reserveBytes: this.#reserve.bytes, freeBytes: this.#reserve.freeBytes() },
        'no room for the space reserve: page writes wait for free space',
      );
    }
    this.#writerDone = this.#writerLoop().catch((error: Error) => this.#fail(error));
    this.#log.info({ exports: specs.length, segments: this.#segments.size }, 'page store open');
  }

  #reconcileExports(specs: ExportSpec[], changes: IndexChanges): void {
    const records = this.#index.exportRecords();
    for (const spec of specs) {
      if (this.#exports.has(spec.name)) {
        throw new DeviceError('EINVAL', `export ${spec.name} is listed twice`);
      }
      if (spec.sizeBytes <= 0 || spec.sizeBytes % PAGE_SIZE !== 0) {
        throw new DeviceError(
          'EINVAL',
          `export ${spec.name}: size must be a positive multiple of 4 KiB`,
        );
      }
      const pageCount = spec.sizeBytes / PAGE_SIZE;
      if (pageCount > EXPORT_PAGES_MAX) {
        throw new DeviceError('EINVAL', `export ${spec.name}: larger than 16 TiB`);
      }
      const groupName = spec.group ?? 'default';
      const groupId = this.#groupId(groupName);
      let record = records.get(spec.name);
      if (record && pageCount < record.pageCount) {
        throw new DeviceError(
          'EINVAL',
          `export ${spec.name}: shrinking from ${record.pageCount * PAGE_SIZE} to ` +
            `${spec.sizeBytes} bytes is refused (pages past the end would be lost); ` +
            'keep the size or create a new export',
        );
      }
      if (!record) {
        const id = this.#state.nextExportId++;
        if (id >= EXPORT_ID_MAX) throw new DeviceError('ENOSPC', 'too many exports');
        record = { id, pageCount, groupId };
      }
      if (record.pageCount !== pageCount || record.groupId !== groupId || !records.has(spec.name)) {
        record = { ...record, pageCount, groupId };
        changes.exports.set(spec.name, record);
      }
      if (!this.#counters.has(record.id)) this.#counters.set(record.id, emptyCounters());
      const state: ExportState = {
        id: record.id,
        name: spec.name,
        groupId,
        groupName,
        pageCount,
        writable: !spec.readOnly,
        description: spec.description ?? `diffswap page store export ${spec.name}`,
        techniques: resolveTechniques(spec),
        device: undefined as unknown as StorePageDevice,
      };
      state.device = new StorePageDevice(this, state);
      this.#exports.set(spec.name, state);
    }
    this.#warnUnlisted(records, specs);
  }

  /**
   * An export on disk that the configuration no longer lists keeps its pages (a typo or a
   * dropped line must not destroy a VM's swap), but is not served: say so, and how to free
   * the space.
   */
  #warnUnlisted(records: Map<string, ExportRecord>, specs: ExportSpec[]): void {
    const listed = new Set(specs.map((spec) => spec.name));
    for (const [name, record] of records) {
      if (listed.has(name)) continue;
      const counters = this.#counters.get(record.id);
      const mappedPages = counters ? counters.pages.reduce((sum, n) => sum + n, 0) : 0;
      if (mappedPages === 0) continue;
      const sizeBytes = record.pageCount * PAGE_SIZE;
      this.#log.warn(
        { export: name, mappedPages, sizeBytes },
        `export ${name} is on disk but not configured: its ${mappedPages} pages are kept, not ` +
          'served; list it again to serve them, or to free their space list it, discard it ' +
          `whole (qemu-io -f raw -c 'discard 0 ${sizeBytes}' nbd://HOST:PORT/${name}) and ` +
          'remove it again',
      );
    }
  }

  #groupId(name: string): number {
    const known = this.#state.groups[name];
    if (known !== undefined) return known;
    const id = this.#state.nextGroupId++;
    this.#state.groups[name] = id;
    return id;
  }

  // ---------------------------------------------------------------- Backend

  device(name: string): PageDevice | undefined {
    return this.#exports.get(name)?.device;
  }

  exportNames(): string[] {
    return [...this.#exports.keys()];
  }

  description(name: string): string {
    return this.#exports.get(name)?.description ?? `diffswap page store export ${name}`;
  }

  stats(): StoreStats {
    const exports = [...this.#exports.values()].map((state) =>
      exportStats(
        state.name,
        state.pageCount * PAGE_SIZE,
        state.groupName,
        this.#counters.get(state.id) ?? emptyCounters(),
      ),
    );
    // Exports on disk but not configured still hold stored bytes: count them in totals.
    const configured = new Set([...this.#exports.values()].map((state) => state.id));
    const all = [...exports];
    for (const [id, counters] of this.#counters) {
      if (!configured.has(id)) all.push(exportStats(`#${id}`, 0, '', counters));
    }
    let segmentBytes = 0;
    let liveBytes = 0;
    for (const record of this.#segments.values()) {
      segmentBytes += record.sizeBytes;
      liveBytes += record.liveBytes;
    }
    const indexBytes = this.#indexFileBytes();
    const techniques = withOrphans(sumTechniques(all), this.#counters.values());
    return {
      kind: 'pagestore',
      logicalBytes: all.reduce((sum, e) => sum + e.logicalBytes, 0),
      storedBytes: all.reduce((sum, e) => sum + e.storedBytes, 0),
      diskBytes: segmentBytes + indexBytes,
      indexBytes,
      techniques,
      referencePages: this.#fanIn.referencePages(),
      referenceFanInTotal: this.#fanIn.total(),
      referenceFanInMax: this.#fanIn.max(),
      writeBuffer: { pages: this.#buffer.size, capacityPages: this.#tuning.writeBufferPages },
      compaction: {
        running: this.#compactionRunning,
        segments: this.#segments.size,
        garbageBytes: segmentBytes - liveBytes,
        reclaimedBytesTotal: this.#state.reclaimedBytesTotal,
        lastRunAtMs: this.#state.lastCompactionAtMs,
      },
      exports,
    };
  }

  #indexFileBytes(): number {
    const now = Date.now();
    if (now - this.#indexBytesAtMs > INDEX_SIZE_TTL_MS) {
      this.#indexBytes = this.#index.fileBytes();
      this.#indexBytesAtMs = now;
    }
    return this.#indexBytes;
  }

  /** Bytes of segment files (committed), for tests and benchmarks. */
  segmentBytes(): number {
    let total = 0;
    for (const record of this.#segments.values()) total += record.sizeBytes;
    return total;
  }

  async close(): Promise<void> {
    if (this.#closing) {
      await this.#writerDone;
      return;
    }
    this.#closing = true;
    this.#kick();
    await this.#writerDone;
    // An explicit compaction cut short by close reports what it did.
    this.#finishExplicitCompaction();
    this.#closed = true;
    this.#files.close();
    await this.#index.close();
    this.#unlock();
    this.#log.info('page store closed');
  }

  // ---------------------------------------------------------------- write side

  #assertUsable(): void {
    if (this.#failed) {
      throw new DeviceError('EIO', `page store failed: ${this.#failed.message}`);
    }
    if (this.#closing) throw new DeviceError('ESHUTDOWN', 'page store is closing');
  }

  /** While the disk is full and pages wait for room, new writes are refused at once. */
  #assertSpace(): void {
    if (this.#noSpace && this.#buffer.size > 0) throw this.#noSpace.error;
  }

  /** Contract as PageDevice.writePages; the range is validated by the caller. */
  async writePages(exp: ExportState, firstPage: number, src: Buffer, options: WriteOptions) {
    this.#assertUsable();
    this.#assertSpace();
    assert.equal(src.length % PAGE_SIZE, 0, 'writes are whole pages');
    const count = src.length / PAGE_SIZE;
    await this.#waitForSpace(count);
    this.#assertUsable();
    if (this.#buffer.size === 0) this.#bufferSinceMs = Date.now();
    for (let i = 0; i < count; i++) {
      const key = pageKey(exp.id, firstPage + i);
      const at = i * PAGE_SIZE;
      const entry = this.#buffer.get(key);
      if (entry) {
        // Latest write wins in place; the entry keeps its older sequence number so a FLUSH
        // issued in between still waits for it, and takes a new one for its bytes.
        src.copy(entry.page, 0, at, at + PAGE_SIZE);
        entry.writtenSeq = ++this.#seq;
        continue;
      }
      const page = Buffer.allocUnsafe(PAGE_SIZE);
      src.copy(page, 0, at, at + PAGE_SIZE);
      const seq = ++this.#seq;
      this.#buffer.set(key, {
        seq,
        writtenSeq: seq,
        page,
        exportState: exp,
        pageNumber: firstPage + i,
      });
    }
    if (this.#buffer.size >= this.#tuning.batchPagesMax) this.#kick();
    if (options.fua) await this.#flushTo(this.#seq);
  }

  async #waitForSpace(count: number): Promise<void> {
    const cap = this.#tuning.writeBufferPages;
    while (this.#buffer.size > 0 && this.#buffer.size + count > cap) {
      this.#kick();
      await new Promise<void>((resolve) => this.#spaceWaiters.push(resolve));
      this.#assertUsable();
    }
  }

  /** Contract as PageDevice.zeroPages. Zeroed pages become holes (see ZeroOptions). */
  async zeroPages(exp: ExportState, firstPage: number, count: number, options: ZeroOptions) {
    this.#assertUsable();
    while (this.#rangeOps.length >= this.#tuning.rangeOpsMax) {
      this.#kick();
      await new Promise<void>((resolve) => this.#spaceWaiters.push(resolve));
      this.#assertUsable();
    }
    const startKey = pageKey(exp.id, firstPage);
    const endKey = startKey + count;
    const seq = ++this.#seq;
    let minSeq = seq;
    const drop = (key: number) => {
      const entry = this.#buffer.get(key);
      if (!entry) return;
      minSeq = Math.min(minSeq, entry.seq);
      this.#buffer.delete(key);
    };
    if (count <= this.#buffer.size) {
      for (let key = startKey; key < endKey; key++) drop(key);
    } else {
      for (const key of [...this.#buffer.keys()]) if (key >= startKey && key < endKey) drop(key);
    }
    this.#rangeOps.push({ seq: minSeq, issuedSeq: seq, startKey, endKey, cursorKey: startKey });
    this.#kick();
    if (options.fua) await this.#flushTo(seq);
  }

  /** Resolves once every write that resolved before the call is committed. */
  async flush(): Promise<void> {
    this.#assertUsable();
    await this.#flushTo(this.#seq);
  }

  #flushTo(target: number): Promise<void> {
    if (this.#durableSeq() >= target) return Promise.resolve();
    return new Promise<void>((resolve, reject) => {
      this.#flushWaiters.push({ target, resolve, reject });
      this.#kick();
    });
  }

  /** Highest sequence number at or below which everything is committed. */
  #durableSeq(): number {
    let min = this.#seq + 1;
    const first = this.#buffer.values().next();
    if (!first.done) min = Math.min(min, first.value.seq);
    for (const op of this.#rangeOps) min = Math.min(min, op.seq);
    min = Math.min(min, this.#inflightMinSeq);
    if (this.#committing) min = Math.min(min, this.#committing.minSeq);
    return min - 1;
  }

  #settleFlushWaiters(): void {
    if (this.#flushWaiters.length === 0) return;
    const durable = this.#durableSeq();
    for (let i = this.#flushWaiters.length - 1; i >= 0; i--) {
      const waiter = this.#flushWaiters[i];
      if (waiter && waiter.target <= durable) {
        this.#flushWaiters.splice(i, 1);
        waiter.resolve();
      }
    }
  }

  #kick(): void {
    const wake = this.#wake;
    this.#wake = null;
    wake?.();
  }

  #sleep(timeoutMs: number | null): Promise<void> {
    return new Promise<void>((resolve) => {
      const timer = timeoutMs === null ? null : setTimeout(() => this.#kick(), timeoutMs);
      this.#wake = () => {
        if (timer) clearTimeout(timer);
        resolve();
      };
    });
  }

  #fail(error: Error): void {
    this.#failed = error;
    this.#log.error({ err: error }, 'page store failed; every further request gets EIO');
    for (const waiter of this.#flushWaiters.splice(0)) {
      waiter.reject(new DeviceError('EIO', `page store failed: ${error.message}`));
    }
    for (const resolve of this.#spaceWaiters.splice(0)) resolve();
    if (this.#explicitCompaction) {
      this.#explicitCompaction.reject(error);
      this.#explicitCompaction = null;
    }
  }

  // ---------------------------------------------------------------- writer loop

  async #writerLoop(): Promise<void> {
    for (;;) {
      if (this.#failed) return;
      // A pipelined commit that found the disk full is rolled back before anything else.
      if (this.#noSpacePending) this.#rollBackNoSpace(this.#noSpacePending, false);
      const work = this.#nextWork();
      // Everything but the next page batch needs the previous batch committed first.
      if (work !== 'pages' && work !== 'wait' && work !== 'idle') {
        await this.#settleCommit();
        if (this.#failed) return;
        if (this.#noSpacePending) continue;
      }
      try {
        if (work === 'exclusive') await this.#exclusive.shift()?.();
        else if (work === 'range') await this.#runRangeStep();
        else if (work === 'pages') await this.#runPageBatch();
        else if (work === 'compact') await this.#runCompactionStep();
      } catch (error) {
        if (isNoSpace(error)) {
          const committing = this.#committing;
          if (committing) await committing.done;
          this.#rollBackNoSpace(this.#noSpacePending ?? (error as Error), work === 'compact');
        } else if (work === 'compact') {
          // A damaged segment must not stop the store: reads of its live records answer
          // EIO on their own, and check() reports them.
          this.#log.error({ err: error }, 'compaction step failed; compaction stopped');
          this.#abandonCompaction(error as Error);
        } else throw error;
        continue;
      }
      if (work === 'wait') {
        const waitedMs = Date.now() - this.#bufferSinceMs;
        const dueMs = this.#noSpace
          ? this.#noSpace.retryAtMs - Date.now()
          : this.#tuning.commitIntervalMs - waitedMs;
        await this.#sleep(Math.max(0, dueMs));
      } else if (work === 'done') return;
      else if (work === 'idle') await this.#sleep(null);
    }
  }

  #nextWork(): 'exclusive' | 'range' | 'pages' | 'compact' | 'wait' | 'idle' | 'done' {
    if (this.#exclusive.length > 0) return 'exclusive';
    if (this.#rangeOps.length > 0) return 'range';
    const buffered = this.#buffer.size;
    if (this.#noSpace && buffered === 0) {
      this.#noSpace = null;
      this.#log.info('no pages wait for disk space any more; writes accepted');
    }
    // While the disk is full, buffered pages wait for their retry time, and for compaction
    // (which frees the space they need) to finish first.
    const held =
      this.#noSpace !== null &&
      (Date.now() < this.#noSpace.retryAtMs || this.#compactionJobs.length > 0);
    if (buffered > 0 && !held) {
      const urgent =
        buffered >= this.#tuning.batchPagesMax ||
        this.#flushWaiters.length > 0 ||
        this.#spaceWaiters.length > 0 ||
        this.#closing ||
        Date.now() - this.#bufferSinceMs >= this.#tuning.commitIntervalMs;
      if (urgent) return 'pages';
    }
    if (this.#closing) return 'done';
    const mayCompact = buffered === 0 || held || this.#batchesSinceCompaction >= 4;
    if (mayCompact && this.#hasCompactionWork()) return 'compact';
    return buffered > 0 ? 'wait' : 'idle';
  }

  #takeBatch(): BufferedPage[] {
    const batch: BufferedPage[] = [];
    const inflight = new Map<number, Buffer>();
    let minSeq = Number.POSITIVE_INFINITY;
    for (const [key, entry] of this.#buffer) {
      if (batch.length >= this.#tuning.batchPagesMax) break;
      batch.push(entry);
      inflight.set(key, entry.page);
      minSeq = Math.min(minSeq, entry.seq);
    }
    for (const key of inflight.keys()) this.#buffer.delete(key);
    this.#inflight = inflight;
    this.#inflightBatch = batch;
    this.#inflightMinSeq = minSeq;
    this.#bufferSinceMs = Date.now();
    for (const resolve of this.#spaceWaiters.splice(0)) resolve();
    return batch;
  }

  async #runPageBatch(): Promise<void> {
    const batch = this.#takeBatch();
    const { outcomes, local } = await this.#encodeBatch(batch);
    // Phase 2 reads the committed index as the truth: the previous batch must be in it.
    // If that commit found the disk full, this batch goes back to the buffer with it.
    await this.#settleCommit();
    if (this.#failed || this.#inflightBatch !== batch) return;
    if (!this.#reserve.allows(payloadBytes(outcomes))) {
      // The reserve is released and this batch would eat into the room kept for TRIMs and
      // compaction: the disk counts as full (the batch goes back to the buffer).
      throw new DeviceError('ENOSPC', 'free space is below the reserve kept for freeing space');
    }
    const ctx: BatchContext = { changes: emptyChanges(), released: [], deadIds: [] };
    batch.forEach((entry, i) => {
      const outcome = outcomes[i];
      assert.ok(outcome, 'every page has an outcome');
      this.#applyPage(ctx, entry, outcome);
    });
    this.#releaseAll(ctx);
    for (const [key, deadId] of local.staleSimilar) {
      // Only if the entry still names the dead object and this batch did not replace it.
      if (ctx.changes.similar.has(key) || this.#index.getSimilar(key) !== deadId) continue;
      ctx.changes.similar.set(key, null);
    }
    const committing = {
      batch,
      pages: this.#inflight,
      minSeq: this.#inflightMinSeq,
      changes: ctx.changes,
      local,
      done: Promise.resolve(),
    };
    this.#inflight = new Map();
    this.#inflightBatch = [];
    this.#inflightMinSeq = Number.POSITIVE_INFINITY;
    committing.done = this.#commit(ctx).then(
      () => {
        if (this.#committing === committing) this.#committing = null;
        if (this.#noSpace) {
          this.#noSpace = null;
          this.#log.info('disk space available again; writes accepted');
        }
        this.#restoreReserve();
        this.counters.batches++;
        this.counters.pagesEncoded += batch.length;
        this.#batchesSinceCompaction++;
        this.#settleFlushWaiters();
        this.#kick();
      },
      (error: Error) => {
        if (!isNoSpace(error)) return this.#fail(error);
        // Rolled back by the writer loop, which may be asleep: wake it.
        this.#noSpacePending = error;
        this.#kick();
      },
    );
    this.#committing = committing;
  }

  /**
   * Waits for the previous batch's commit, if one is running; rolls back to the committed
   * state if that commit found the disk full.
   */
  async #settleCommit(): Promise<void> {
    const committing = this.#committing;
    if (committing) await committing.done;
    const pending = this.#noSpacePending;
    if (pending) this.#rollBackNoSpace(pending, false);
  }

  /**
   * The disk is full: forget every uncommitted change (the in-memory state is reloaded from
   * the index, segment tails cut back), put the pages of the failed batch and of the batch
   * being encoded back into the buffer under their old sequence numbers, answer waiting
   * flushes with ENOSPC, release the space reserve for TRIMs and compaction, and try again
   * later. Acknowledged writes stay in memory, readable. Compaction in progress goes on (its
   * steps commit on their own) unless its own step is what failed.
   */
  #rollBackNoSpace(cause: Error, compactionFailed: boolean): void {
    this.#noSpacePending = null;
    this.counters.noSpaceRollbacks++;
    const lost = [...(this.#committing?.batch ?? []), ...this.#inflightBatch];
    this.#committing = null;
    this.#inflight = new Map();
    this.#inflightBatch = [];
    this.#inflightMinSeq = Number.POSITIVE_INFINITY;
    this.#restoreToBuffer(lost);
    this.#reloadCommitted();
    for (const op of this.#rangeOps) op.cursorKey = op.startKey;
    const error = new DeviceError(
      'ENOSPC',
      `no space left on the data filesystem (${cause.message}); free space, or TRIM and compact`,
    );
    if (compactionFailed) this.#abandonCompaction(error);
    for (const waiter of this.#flushWaiters.splice(0)) waiter.reject(error);
    for (const resolve of this.#spaceWaiters.splice(0)) resolve();
    const released = this.#reserve.release();
    if (!this.#noSpace) {
      this.#log.warn(
        {
          bufferedPages: this.#buffer.size,
          reserveReleasedBytes: released ? this.#reserve.bytes : 0,
        },
        'data filesystem full: writes answer ENOSPC until space is freed',
      );
    }
    this.#noSpace = { error, retryAtMs: Date.now() + NO_SPACE_RETRY_MS };
  }

  /**
   * Puts rolled-back pages back in the buffer. They are older than every buffered page, so
   * they go first; where the buffer holds a newer write of a page, its bytes win and it
   * takes the older sequence number (a FLUSH issued in between still waits for it). A page
   * that a pending TRIM or WRITE_ZEROES issued after its write covers is not restored: that
   * operation was acknowledged after it and must win (it stands for the page's sequence
   * number instead). Buffered pages need no such check: a range operation drops the pages
   * buffered when it is issued, so any buffered page in its range was written after it.
   */
  #restoreToBuffer(lost: BufferedPage[]): void {
    const merged = new Map<number, BufferedPage>();
    for (const entry of lost.sort((a, b) => a.seq - b.seq)) {
      const key = pageKey(entry.exportState.id, entry.pageNumber);
      const newerOp = this.#rangeOps.find(
        (op) => op.issuedSeq > entry.writtenSeq && key >= op.startKey && key < op.endKey,
      );
      if (newerOp) {
        newerOp.seq = Math.min(newerOp.seq, entry.seq);
        continue;
      }
      const older = merged.get(key);
      merged.set(key, older ? { ...entry, seq: older.seq } : entry);
    }
    for (const [key, entry] of this.#buffer) {
      const older = merged.get(key);
      merged.set(key, older ? { ...entry, seq: Math.min(older.seq, entry.seq) } : entry);
    }
    this.#buffer.clear();
    for (const [key, entry] of merged) this.#buffer.set(key, entry);
  }

  /** Reloads the in-memory state from the committed index and cuts the files back to it. */
  #reloadCommitted(): void {
    this.#files.discardStaged();
    this.#state = (this.#index.getState() as PersistedState | undefined) ?? initialState();
    this.#segments.clear();
    for (const [id, record] of this.#index.segmentRecords()) this.#segments.set(id, record);
    this.#files.reconcile(this.#segments);
    this.#counters.clear();
    for (const [id, counters] of Object.entries(this.#state.counters)) {
      this.#counters.set(Number(id), loadCounters(counters));
    }
    for (const exp of this.#exports.values()) {
      if (!this.#counters.has(exp.id)) this.#counters.set(exp.id, emptyCounters());
    }
    this.#fanIn = FanInHistogram.fromEntries(this.#state.fanIn);
    // Ids of objects that were never committed will be handed out again.
    this.#cache.clear();
  }

  /**
   * While the disk is full, a trim that freed objects retries the buffered pages soon and
   * reclaims the dead bytes in place (copying compaction would need room first).
   */
  #afterSpaceFreed(): void {
    if (!this.#noSpace) return;
    this.#noSpace.retryAtMs = Math.min(this.#noSpace.retryAtMs, Date.now() + 50);
    if (this.#compactionJobs.length === 0 && !this.#explicitCompaction) {
      this.#compactionJobs.push({ ...copyJob(PLAN_RECLAIM), mode: 'reclaim' });
    }
  }

  /** Writes the space reserve again once there is room (tried at most once a second). */
  #restoreReserve(): void {
    if (this.#reserve.held || Date.now() < this.#reserveRetryAtMs) return;
    this.#reserveRetryAtMs = Date.now() + NO_SPACE_RETRY_MS;
    if (this.#reserve.restoreIfRoom()) {
      this.#log.info({ reserveBytes: this.#reserve.bytes }, 'space reserve restored');
    }
  }

  /** Drops compaction work in progress (its steps are replanned from committed state). */
  #abandonCompaction(error: Error): void {
    this.#compactionJobs = [];
    this.#compactionRunning = false;
    if (this.#explicitCompaction) {
      this.#explicitCompaction.reject(error);
      this.#explicitCompaction = null;
    }
  }

  /**
   * True when committed object `id` may be used by the batch being encoded: the previous
   * batch, still committing, may have killed it (its changes say null).
   */
  #usableCommitted(id: number): boolean {
    return this.#committing?.changes.objects.get(id) !== null;
  }

  async #commit(ctx: BatchContext): Promise<void> {
    ctx.changes.state = this.#snapshotState();
    try {
      await this.#files.writeStaged();
    } catch (error) {
      this.#files.discardStaged();
      throw error;
    }
    await this.#index.commit(ctx.changes);
    for (const id of ctx.deadIds) this.#cache.delete(id);
  }

  /** A copy of the state to persist: the commit serialises it later, asynchronously. */
  #snapshotState(): PersistedState {
    const counters: Record<string, ExportCounters> = {};
    for (const [id, value] of this.#counters) {
      counters[String(id)] = {
        pages: [...value.pages],
        objects: [...value.objects],
        storedBytes: [...value.storedBytes],
        orphans: [...value.orphans],
      };
    }
    this.#state.counters = counters;
    this.#state.fanIn = this.#fanIn.entries();
    return { ...this.#state, groups: { ...this.#state.groups } };
  }

  // ---------------------------------------------------------------- encoding (phase 1)

  async #encodeBatch(batch: BufferedPage[]): Promise<{ outcomes: Outcome[]; local: BatchLocal }> {
    const count = batch.length;
    const src = Buffer.allocUnsafe(count * PAGE_SIZE);
    batch.forEach((entry, i) => {
      entry.page.copy(src, i * PAGE_SIZE);
    });
    const words = new BigUint64Array(count);
    const uniform = new Uint8Array(count);
    scanPages(src, count, words, uniform);
    const features = new Uint32Array(count * FEATURE_COUNT);
    if (batch.some((entry) => entry.exportState.techniques.delta)) {
      sketchPages(src, count, features, sketchOptionsOf(this.#tuning));
    }
    const local: BatchLocal = { content: new Map(), similar: new Map(), staleSimilar: new Map() };
    const outcomes: Outcome[] = [];
    for (let i = 0; i < count; i++) {
      if (i > 0 && i % this.#tuning.encodeSlicePages === 0) await yieldToEventLoop();
      const entry = batch[i];
      assert.ok(entry);
      const exp = entry.exportState;
      if (exp.techniques.zero && uniform[i] === 1) {
        outcomes.push({ tag: MappingTag.uniform, word: words[i] ?? 0n });
        continue;
      }
      const pageFeatures = exp.techniques.delta
        ? Array.from(features.subarray(i * FEATURE_COUNT, (i + 1) * FEATURE_COUNT))
        : [0, 0, 0, 0];
      outcomes.push(this.#encodePage(exp, src, i * PAGE_SIZE, pageFeatures, local));
    }
    return { outcomes, local };
  }

  #encodePage(
    exp: ExportState,
    src: Buffer,
    offset: number,
    features: number[],
    local: BatchLocal,
  ): Outcome {
    const page = src.subarray(offset, offset + PAGE_SIZE);
    let contentKey: Buffer | null = null;
    if (exp.techniques.dedup) {
      const key = contentKeyOf(exp.groupId, contentHash(src, offset));
      const hex = key.toString('hex');
      const fresh = local.content.get(hex) ?? this.#committing?.local.content.get(hex);
      let existing = fresh ? fresh.id : this.#index.getContent(key);
      if (existing !== undefined && !fresh && !this.#usableCommitted(existing)) {
        existing = undefined;
      }
      if (existing !== undefined) {
        const same = fresh ? fresh.page.equals(page) : this.#sameBytes(existing, page);
        if (same) return { tag: MappingTag.duplicate, objectId: existing };
        this.counters.collisions++;
      } else {
        contentKey = key;
      }
    }
    const object = this.#newObject(exp, page, features, contentKey, local);
    if (contentKey) local.content.set(contentKey.toString('hex'), object);
    if (object.baseId === 0 && exp.techniques.delta) {
      features.forEach((feature, slot) => {
        if (feature !== 0) local.similar.set(similarKey(exp.groupId, slot, feature), object);
      });
    } else {
      object.features = [0, 0, 0, 0];
    }
    return { tag: objectTag(object.codec), object };
  }

  /** Encodes one page alone and, when a base is found, as a delta; keeps the smaller. */
  #newObject(
    exp: ExportState,
    page: Buffer,
    features: number[],
    contentKey: Buffer | null,
    local: BatchLocal,
  ): NewObject {
    let codec = RAW_CODEC_ID;
    let payload = page;
    if (exp.techniques.compress) {
      const compressed = this.#compressor.encode(page, 0, null, PAGE_SIZE);
      if (compressed) {
        codec = this.#compressor.id;
        payload = compressed;
      }
    }
    let baseId = 0;
    if (exp.techniques.delta) {
      const base = this.#findBase(exp.groupId, features, local.similar, local.staleSimilar);
      const delta = base ? zstdDeltaCodec.encode(page, 0, base.page, payload.length) : null;
      if (base) this.counters.deltaAttempts++;
      if (base && delta) {
        this.counters.deltasKept++;
        codec = zstdDeltaCodec.id;
        payload = delta;
        baseId = base.id;
      }
    }
    return {
      id: this.#state.nextObjectId++,
      codec,
      payload,
      baseId,
      groupId: exp.groupId,
      ownerId: exp.id,
      features,
      contentKey,
      page,
    };
  }

  /** The candidate sharing most features with the page, with its decoded bytes. */
  #findBase(
    groupId: number,
    features: number[],
    similar: Map<number, NewObject>,
    staleSimilar: Map<number, number>,
  ): { id: number; page: Buffer } | null {
    type Vote = { count: number; fresh: NewObject | null; record: ObjectRecord | null };
    const votes = new Map<number, Vote>();
    features.forEach((feature, slot) => {
      if (feature === 0) return;
      const key = similarKey(groupId, slot, feature);
      const fresh = similar.get(key) ?? this.#committing?.local.similar.get(key) ?? null;
      const id = fresh ? fresh.id : this.#index.getSimilar(key);
      if (id === undefined) return;
      let vote = votes.get(id);
      if (!vote) {
        const record = fresh ? null : (this.#index.getObject(id) ?? null);
        // Keys are hashes: another group's object may answer; it is never a base here.
        if ((fresh?.groupId ?? record?.groupId ?? groupId) !== groupId) return;
        if (!fresh && record && !this.#usableCommitted(id)) return;
        if (!fresh && record?.baseId !== 0) {
          // The entry names a dead object (see #kill): drop it with this batch.
          staleSimilar.set(key, id);
          return;
        }
        vote = { count: 0, fresh, record };
        votes.set(id, vote);
      }
      vote.count++;
    });
    let best: ({ id: number } & Vote) | null = null;
    for (const [id, vote] of votes) {
      if (!best || vote.count > best.count || (vote.count === best.count && id > best.id)) {
        best = { id, ...vote };
      }
    }
    if (!best) return null;
    if (best.fresh) return { id: best.id, page: best.fresh.page };
    if (!best.record) return null;
    try {
      return { id: best.id, page: this.#referencePage(best.id, best.record) };
    } catch {
      this.counters.readErrors++;
      return null;
    }
  }

  /** True when committed object `id` decodes to exactly `page`. */
  #sameBytes(id: number, page: Buffer): boolean {
    const record = this.#index.getObject(id);
    if (!record) return false;
    try {
      return this.#referencePage(id, record).equals(page);
    } catch {
      // A damaged object is never a dedup target: store the page anew.
      this.counters.readErrors++;
      return false;
    }
  }

  // ---------------------------------------------------------------- applying (phase 2)

  #applyPage(ctx: BatchContext, entry: BufferedPage, outcome: Outcome): void {
    const exp = entry.exportState;
    const key = pageKey(exp.id, entry.pageNumber);
    const old = this.#mappingIn(ctx.changes, key);
    if (old) ctx.released.push({ exportId: exp.id, mapping: old });
    let mapping: Mapping;
    if (outcome.tag === MappingTag.uniform && 'word' in outcome) {
      mapping = { tag: MappingTag.uniform, word: outcome.word, objectId: 0 };
    } else if ('objectId' in outcome) {
      this.#addMapRef(ctx, outcome.objectId, false);
      mapping = { tag: MappingTag.duplicate, word: 0n, objectId: outcome.objectId };
    } else {
      assert.ok('object' in outcome);
      this.#createObject(ctx, outcome.object);
      this.#addMapRef(ctx, outcome.object.id, true);
      mapping = { tag: outcome.tag, word: 0n, objectId: outcome.object.id };
    }
    ctx.changes.mappings.set(key, mapping);
    bump(this.#countersOf(exp.id).pages, mapping.tag, 1);
  }

  #countersOf(exportId: number): ExportCounters {
    let counters = this.#counters.get(exportId);
    if (!counters) {
      counters = emptyCounters();
      this.#counters.set(exportId, counters);
    }
    return counters;
  }

  #mappingIn(changes: IndexChanges, key: number): Mapping | undefined {
    if (changes.mappings.has(key)) return changes.mappings.get(key) ?? undefined;
    return this.#index.getMapping(key);
  }

  /** The working copy of a live object, loaded into the batch's overlay. */
  #objectIn(changes: IndexChanges, id: number): ObjectRecord {
    const staged = changes.objects.get(id);
    if (staged) return staged;
    assert.ok(staged !== null, `object ${id} used after it died in the same batch`);
    const record = this.#index.getObject(id);
    assert.ok(record, `object ${id} is referenced but missing`);
    changes.objects.set(id, record);
    return record;
  }

  #createObject(ctx: BatchContext, object: NewObject): void {
    const location = this.#appendRecord(ctx.changes, object.id, object.codec, object.payload);
    const record: ObjectRecord = {
      codec: object.codec,
      baseId: object.baseId,
      groupId: object.groupId,
      ownerId: object.ownerId,
      mapCount: 0,
      deltaCount: 0,
      segmentId: location.segmentId,
      offset: location.offset,
      length: object.payload.length,
      contentKey: object.contentKey,
    };
    ctx.changes.objects.set(object.id, record);
    const tag = objectTag(object.codec);
    const owner = this.#countersOf(object.ownerId);
    bump(owner.objects, tag, 1);
    bump(owner.storedBytes, tag, object.payload.length);
    if (object.contentKey) {
      ctx.changes.content.set(object.contentKey.toString('hex'), {
        key: object.contentKey,
        objectId: object.id,
      });
    }
    object.features.forEach((feature, slot) => {
      if (feature !== 0) {
        ctx.changes.similar.set(similarKey(object.groupId, slot, feature), object.id);
      }
    });
    if (object.baseId !== 0) {
      const base = this.#objectIn(ctx.changes, object.baseId);
      assert.equal(base.baseId, 0, 'a delta base is never a delta');
      this.#fanIn.move(base.deltaCount, base.deltaCount + 1);
      base.deltaCount++;
    }
  }

  #appendRecord(changes: IndexChanges, objectId: number, codec: number, payload: Buffer) {
    const bytes = recordBytes(payload.length);
    let segmentId = this.#state.activeSegmentId;
    let segment = this.#segments.get(segmentId);
    assert.ok(segment, 'the active segment has a record');
    if (segment.sizeBytes > 0 && segment.sizeBytes + bytes > this.#tuning.segmentBytesMax) {
      segmentId = this.#rotateSegment(changes);
      segment = this.#segments.get(segmentId);
      assert.ok(segment);
    }
    const offset = segment.sizeBytes;
    this.#files.stage(segmentId, offset, objectId, codec, payload);
    segment.sizeBytes += bytes;
    segment.liveBytes += bytes;
    changes.segments.set(segmentId, segment);
    return { segmentId, offset };
  }

  /** Seals the active segment and starts a new one (created now, committed with the batch). */
  #rotateSegment(changes: IndexChanges): number {
    const segmentId = this.#state.nextSegmentId++;
    const segment = { sizeBytes: 0, liveBytes: 0 };
    this.#segments.set(segmentId, segment);
    changes.segments.set(segmentId, segment);
    this.#files.create(segmentId);
    this.#state.activeSegmentId = segmentId;
    return segmentId;
  }

  /** One more page-map entry on `id`: its own first page (`primary`) or a duplicate. */
  #addMapRef(ctx: BatchContext, id: number, primary: boolean): void {
    const record = this.#objectIn(ctx.changes, id);
    record.mapCount++;
    const owner = this.#countersOf(record.ownerId);
    if (record.mapCount === 2) bump(owner.objects, MappingTag.duplicate, 1);
    // A base kept only for its deltas, found again by dedup: no page of its own (accounting).
    if (record.mapCount === 1 && !primary) bump(owner.orphans, objectTag(record.codec), 1);
  }

  /**
   * Releases the replaced mappings: after every increment of the batch, so an object the
   * batch reuses cannot die in between.
   */
  #releaseAll(ctx: BatchContext): void {
    for (const { exportId, mapping: old } of ctx.released) {
      bump(this.#countersOf(exportId).pages, old.tag, -1);
      if (old.tag === MappingTag.uniform) continue;
      const record = this.#objectIn(ctx.changes, old.objectId);
      assert.ok(record.mapCount > 0, 'page-map reference count below zero');
      record.mapCount--;
      const owner = this.#countersOf(record.ownerId);
      if (record.mapCount === 1) bump(owner.objects, MappingTag.duplicate, -1);
      // Orphans (accounting.ts): the object's own page went and duplicates remain, or the
      // last duplicate of an orphaned object went.
      const kind = objectTag(record.codec);
      if (old.tag !== MappingTag.duplicate && record.mapCount > 0) bump(owner.orphans, kind, 1);
      if (old.tag === MappingTag.duplicate && record.mapCount === 0) bump(owner.orphans, kind, -1);
      if (record.mapCount === 0 && record.deltaCount === 0) this.#kill(ctx, old.objectId, record);
    }
  }

  #kill(ctx: BatchContext, id: number, record: ObjectRecord): void {
    const changes = ctx.changes;
    changes.objects.set(id, null);
    ctx.deadIds.push(id);
    if (record.contentKey) {
      const hex = record.contentKey.toString('hex');
      const staged = changes.content.get(hex);
      const current = staged ? staged.objectId : this.#index.getContent(record.contentKey);
      if (current === id) changes.content.set(hex, { key: record.contentKey, objectId: null });
    }
    // Similarity entries naming this object stay behind: ids are never reused, so a lookup
    // recognises a dead candidate and drops the entry, and a newer object with the same
    // feature overwrites it. Deleting them here would cost eight index operations per death.
    const segment = this.#segments.get(record.segmentId);
    assert.ok(segment, `segment ${record.segmentId} of object ${id} is missing`);
    segment.liveBytes -= recordBytes(record.length);
    assert.ok(segment.liveBytes >= 0, 'segment live bytes below zero');
    changes.segments.set(record.segmentId, segment);
    const tag = objectTag(record.codec);
    const owner = this.#countersOf(record.ownerId);
    bump(owner.objects, tag, -1);
    bump(owner.storedBytes, tag, -record.length);
    if (record.baseId !== 0) {
      const base = this.#objectIn(changes, record.baseId);
      assert.ok(base.deltaCount > 0, 'delta reference count below zero');
      this.#fanIn.move(base.deltaCount, base.deltaCount - 1);
      base.deltaCount--;
      if (base.deltaCount === 0 && base.mapCount === 0) this.#kill(ctx, record.baseId, base);
    }
  }

  // ---------------------------------------------------------------- trims

  async #runRangeStep(): Promise<void> {
    const op = this.#rangeOps[0];
    assert.ok(op);
    const ctx: BatchContext = { changes: emptyChanges(), released: [], deadIds: [] };
    let unmapped = 0;
    let done = true;
    for (const [key, mapping] of this.#index.mappingsInRange(op.cursorKey, op.endKey)) {
      if (unmapped >= this.#tuning.rangeOpStepPages) {
        op.cursorKey = key;
        done = false;
        break;
      }
      ctx.changes.mappings.set(key, null);
      ctx.released.push({ exportId: exportIdOfKey(key), mapping });
      unmapped++;
    }
    this.#releaseAll(ctx);
    if (unmapped > 0) {
      await this.#commit(ctx);
      if (this.#noSpace) this.#afterSpaceFreed();
    }
    if (done) this.#rangeOps.shift();
    for (const resolve of this.#spaceWaiters.splice(0)) resolve();
    this.#settleFlushWaiters();
  }

  // ---------------------------------------------------------------- reads

  /** Contract as PageDevice.readPages; the range is validated by the caller. */
  /**
   * Contract as PageDevice.readPages. Pages whose records lie back to back in a segment (a
   * swap cluster written together) are read with one read call; the run is read before each
   * yield, since compaction may move records once other work gets in.
   */
  async readPages(exp: ExportState, firstPage: number, count: number, dst: Buffer, at: number) {
    this.#assertReadable();
    const run: PendingRead[] = [];
    for (let i = 0; i < count; i++) {
      if (i > 0 && i % READ_YIELD_PAGES === 0) {
        this.#readRun(run, dst);
        await yieldToEventLoop();
        this.#assertReadable();
      }
      const out = at + i * PAGE_SIZE;
      const id = this.#readPage(pageKey(exp.id, firstPage + i), dst, out);
      if (id === 0) continue;
      const record = this.#index.getObject(id);
      if (!record) {
        this.#readRun(run, dst);
        this.counters.readErrors++;
        throw new DeviceError('EIO', `page refers to missing object ${id}`);
      }
      const last = run.at(-1);
      const next = last ? last.record.offset + recordBytes(last.record.length) : -1;
      if (last && (last.record.segmentId !== record.segmentId || next !== record.offset)) {
        this.#readRun(run, dst);
      }
      run.push({ id, record, at: out });
    }
    this.#readRun(run, dst);
  }

  /** Reads and decodes a run of back-to-back records into `dst`, then empties the run. */
  #readRun(run: PendingRead[], dst: Buffer): void {
    const first = run[0];
    if (!first) return;
    try {
      const records = run.map((r) => ({ length: r.record.length, objectId: r.id }));
      const { segmentId, offset } = first.record;
      const payloads = this.#files.readPayloads(segmentId, offset, records);
      for (const [i, r] of run.entries()) {
        this.#decodePayload(r.id, r.record, payloads[i]!, dst, r.at);
      }
    } catch (error) {
      this.counters.readErrors++;
      if (error instanceof DeviceError) throw error;
      throw new DeviceError('EIO', `object ${first.id}: ${(error as Error).message}`, {
        cause: error,
      });
    } finally {
      run.length = 0;
    }
  }

  #assertReadable(): void {
    if (this.#closed) throw new DeviceError('ESHUTDOWN', 'page store is closed');
    if (this.#failed) throw new DeviceError('EIO', `page store failed: ${this.#failed.message}`);
  }

  /**
   * Fills the page at `at` from the buffer, a pending trim, the batch being committed, or a
   * fill word; returns 0 then, or the id of the committed object the caller must decode.
   */
  #readPage(key: number, dst: Buffer, at: number): number {
    const buffered = this.#buffer.get(key);
    if (buffered) {
      buffered.page.copy(dst, at);
      return 0;
    }
    if (this.#inRangeOp(key)) {
      dst.fill(0, at, at + PAGE_SIZE);
      return 0;
    }
    const inflight = this.#inflight.get(key) ?? this.#committing?.pages.get(key);
    if (inflight) {
      inflight.copy(dst, at);
      return 0;
    }
    const mapping = this.#index.getMapping(key);
    if (!mapping) dst.fill(0, at, at + PAGE_SIZE);
    else if (mapping.tag === MappingTag.uniform) fillPage(mapping.word, dst, at);
    else return mapping.objectId;
    return 0;
  }

  #inRangeOp(key: number): boolean {
    for (const op of this.#rangeOps) if (key >= op.startKey && key < op.endKey) return true;
    return false;
  }

  #decodeInto(id: number, record: ObjectRecord, dst: Buffer, at: number): void {
    const payload = this.#files.readPayload(record.segmentId, record.offset, record.length, id);
    this.#decodePayload(id, record, payload, dst, at);
  }

  /** Decodes a verified payload of object `id` into `dst` (a delta through its base). */
  #decodePayload(id: number, record: ObjectRecord, payload: Buffer, dst: Buffer, at: number) {
    const codec = codecById(record.codec);
    let base: Buffer | null = null;
    if (codec.delta) {
      const baseRecord = this.#index.getObject(record.baseId);
      if (!baseRecord) throw new DeviceError('EIO', `delta ${id} lost its base ${record.baseId}`);
      base = this.#referencePage(record.baseId, baseRecord);
    }
    codec.decode(payload, base, dst, at);
  }

  /** Decoded bytes of a committed non-delta object, through the reference cache. */
  #referencePage(id: number, record: ObjectRecord): Buffer {
    const cached = this.#cache.get(id);
    if (cached) return cached;
    const page = Buffer.allocUnsafe(PAGE_SIZE);
    this.#decodeInto(id, record, page, 0);
    this.#cache.set(id, page);
    return page;
  }

  /** Contract as PageDevice.extents. Zero-filled and unmapped pages are holes. */
  async extents(
    exp: ExportState,
    firstPage: number,
    count: number,
    extentsMax: number,
  ): Promise<PageExtent[]> {
    this.#assertReadable();
    const startKey = pageKey(exp.id, firstPage);
    const out: PageExtent[] = [];
    /** Adds `pages` pages; false when they would start an extent past `extentsMax`. */
    const push = (hole: boolean, pages: number): boolean => {
      const last = out[out.length - 1];
      if (last && last.hole === hole) last.pageCount += pages;
      else if (out.length >= extentsMax) return false;
      else out.push({ pageCount: pages, hole, zero: hole });
      return true;
    };
    // Committed mappings in key order, read lazily: a reply that stops early (REQ_ONE, the
    // extent limit) reads no further. qemu asks for one extent at a time, so this matters.
    const committed = this.#index.mappingsInRange(startKey, startKey + count);
    try {
      if (this.#noPendingFor(exp)) {
        this.#committedExtents(committed, startKey, count, push);
      } else {
        this.#pendingExtents(committed, startKey, count, push);
      }
    } finally {
      committed.return(undefined);
    }
    return out;
  }

  /**
   * Extents from the committed index alone: one step per mapped page, a hole between two
   * mapped pages in one step. Stops after EXTENTS_WINDOW_PAGES mapped pages.
   */
  #committedExtents(
    committed: Generator<[number, Mapping]>,
    startKey: number,
    count: number,
    push: (hole: boolean, pages: number) => boolean,
  ): void {
    let at = startKey;
    let seen = 0;
    for (let next = committed.next(); !next.done; next = committed.next()) {
      const [key, mapping] = next.value;
      if (key > at && !push(true, key - at)) return;
      if (!push(isHoleMapping(mapping), 1)) return;
      at = key + 1;
      if (++seen >= EXTENTS_WINDOW_PAGES) return;
    }
    if (at < startKey + count) push(true, startKey + count - at);
  }

  /** Extents while writes or range operations are pending: page by page, one window. */
  #pendingExtents(
    committed: Generator<[number, Mapping]>,
    startKey: number,
    count: number,
    push: (hole: boolean, pages: number) => boolean,
  ): void {
    const window = Math.min(count, EXTENTS_WINDOW_PAGES);
    let next = committed.next();
    for (let i = 0; i < window; i++) {
      const key = startKey + i;
      while (!next.done && next.value[0] < key) next = committed.next();
      const mapping = !next.done && next.value[0] === key ? next.value[1] : undefined;
      if (!push(this.#isHole(key, mapping), 1)) return;
    }
  }

  #noPendingFor(exp: ExportState): boolean {
    const lo = pageKey(exp.id, 0);
    const hi = pageKey(exp.id + 1, 0);
    const inRange = (key: number) => key >= lo && key < hi;
    for (const key of this.#inflight.keys()) if (inRange(key)) return false;
    for (const key of this.#committing?.pages.keys() ?? []) if (inRange(key)) return false;
    for (const op of this.#rangeOps) if (inRange(op.startKey)) return false;
    for (const entry of this.#buffer.values()) if (entry.exportState === exp) return false;
    return true;
  }

  #isHole(key: number, mapping: Mapping | undefined): boolean {
    const buffered = this.#buffer.get(key)?.page ?? null;
    if (buffered) return isZeroPage(buffered);
    if (this.#inRangeOp(key)) return true;
    const inflight = this.#inflight.get(key) ?? this.#committing?.pages.get(key);
    if (inflight) return isZeroPage(inflight);
    return mapping === undefined || isHoleMapping(mapping);
  }

  // ---------------------------------------------------------------- compaction

  #hasCompactionWork(): boolean {
    if (this.#compactionJobs.length > 0) return true;
    if (this.#explicitCompaction) return false;
    const ratio = this.#tuning.compactLiveRatioMin;
    for (const [id, segment] of this.#segments) {
      if (id === this.#state.activeSegmentId || segment.sizeBytes === 0) continue;
      if (segment.liveBytes < segment.sizeBytes * ratio) {
        this.#compactionJobs.push(copyJob(id));
        return true;
      }
    }
    return false;
  }

  /**
   * Compacts now: seals the active segment when it holds garbage, then rewrites every
   * segment whose live share is under `compactExplicitLiveRatioMin`. Runs in the writer
   * loop between batches, so I/O continues meanwhile.
   */
  compact(): Promise<CompactionReport> {
    this.#assertUsable();
    if (this.#explicitCompaction) {
      return Promise.reject(new DeviceError('EINVAL', 'a compaction is already running'));
    }
    return new Promise<CompactionReport>((resolve, reject) => {
      const before = this.segmentBytes();
      this.#explicitCompaction = {
        ratio: this.#tuning.compactExplicitLiveRatioMin,
        report: {
          segmentsCompacted: 0,
          objectsMoved: 0,
          segmentBytesBefore: before,
          segmentBytesAfter: before,
          reclaimedBytes: 0,
          punchedBytes: 0,
          durationMs: 0,
        },
        startedMs: Date.now(),
        resolve,
        reject,
      };
      this.#compactionJobs = [copyJob(PLAN_EXPLICIT)];
      this.#kick();
    });
  }

  async #runCompactionStep(): Promise<void> {
    const job = this.#compactionJobs[0];
    assert.ok(job);
    this.#compactionRunning = true;
    this.#batchesSinceCompaction = 0;
    if (job.segmentId === PLAN_EXPLICIT || job.segmentId === PLAN_RECLAIM) {
      await this.#planCompaction(job.segmentId === PLAN_EXPLICIT);
      return;
    }
    const segment = this.#segments.get(job.segmentId);
    assert.ok(segment, 'compaction job for a missing segment');
    if (job.mode === 'reclaim') {
      this.#reclaimStep(job, segment);
      return;
    }
    const ctx: BatchContext = { changes: emptyChanges(), released: [], deadIds: [] };
    const scan = this.#files.scan(
      job.segmentId,
      job.cursor,
      segment.sizeBytes,
      this.#tuning.compactStepBytes,
    );
    let moved = 0;
    for (const found of scan.records) {
      const record = this.#index.getObject(found.objectId);
      if (!record || record.segmentId !== job.segmentId || record.offset !== found.offset) {
        continue;
      }
      const location = this.#appendRecord(ctx.changes, found.objectId, found.codec, found.payload);
      segment.liveBytes -= recordBytes(found.payload.length);
      job.movedBytes += recordBytes(found.payload.length);
      record.segmentId = location.segmentId;
      record.offset = location.offset;
      ctx.changes.objects.set(found.objectId, record);
      moved++;
    }
    job.cursor = scan.nextOffset;
    const finished = job.cursor >= segment.sizeBytes;
    if (finished) {
      assert.equal(segment.liveBytes, 0, `segment ${job.segmentId} still has live bytes`);
      ctx.changes.segments.set(job.segmentId, null);
      this.#segments.delete(job.segmentId);
      this.#state.reclaimedBytesTotal += segment.sizeBytes - job.movedBytes;
      this.#state.lastCompactionAtMs = Date.now();
    } else {
      ctx.changes.segments.set(job.segmentId, segment);
    }
    await this.#commit(ctx);
    if (finished) {
      this.#files.remove(job.segmentId);
      this.#compactionJobs.shift();
    }
    this.#noteCompaction(moved, finished);
  }

  #noteCompaction(moved: number, finished: boolean): void {
    const explicit = this.#explicitCompaction;
    if (explicit) {
      explicit.report.objectsMoved += moved;
      if (finished) explicit.report.segmentsCompacted++;
    }
    if (this.#compactionJobs.length > 0) return;
    this.#compactionRunning = false;
    if (explicit) this.#finishExplicitCompaction();
  }

  /**
   * Plans a compaction: seals the active segment when it holds garbage, then queues an
   * in-place reclaim of every segment with dead bytes (most garbage first: it needs no free
   * space and frees the most), and, for an explicit compaction, a copy of every segment whose
   * live share is under the explicit threshold (it needs room for the live records, which
   * the reclaim has just made).
   */
  async #planCompaction(explicitRun: boolean): Promise<void> {
    const explicit = this.#explicitCompaction;
    assert.ok(explicit || !explicitRun);
    this.#compactionJobs.shift();
    const active = this.#segments.get(this.#state.activeSegmentId);
    if (active && active.sizeBytes > active.liveBytes) {
      const ctx: BatchContext = { changes: emptyChanges(), released: [], deadIds: [] };
      this.#rotateSegment(ctx.changes);
      await this.#commit(ctx);
    }
    const sealed = [...this.#segments].filter(
      ([id, segment]) => id !== this.#state.activeSegmentId && segment.sizeBytes > 0,
    );
    const garbage = (segment: SegmentRecord) => segment.sizeBytes - segment.liveBytes;
    const withGarbage = sealed.filter(([, segment]) => garbage(segment) >= RECLAIM_RUN_MIN_BYTES);
    withGarbage.sort(([, a], [, b]) => garbage(b) - garbage(a));
    for (const [id] of withGarbage) this.#compactionJobs.push({ ...copyJob(id), mode: 'reclaim' });
    if (explicit && explicitRun) {
      for (const [id, segment] of sealed) {
        if (segment.liveBytes < segment.sizeBytes * explicit.ratio) {
          this.#compactionJobs.push(copyJob(id));
        }
      }
    }
    this.#noteCompaction(0, false);
  }

  /**
   * One step of an in-place reclaim: finds the runs of dead records in the next
   * `compactStepBytes` of the segment and punches them out (see segments.ts). Nothing in
   * the index changes, so there is nothing to commit.
   */
  #reclaimStep(job: CompactionJob, segment: SegmentRecord): void {
    const scan = this.#files.scan(
      job.segmentId,
      job.cursor,
      segment.sizeBytes,
      this.#tuning.compactStepBytes,
    );
    const runs: DeadRun[] = [];
    let run = job.run;
    for (const found of scan.records) {
      const record = found.objectId === 0 ? undefined : this.#index.getObject(found.objectId);
      const live = record?.segmentId === job.segmentId && record.offset === found.offset;
      const end = found.offset + found.bytes;
      if (live) {
        if (run) runs.push(run);
        run = null;
      } else if (run) {
        run.end = end;
        run.fresh ||= found.objectId !== 0;
      } else {
        run = { start: found.offset, end, fresh: found.objectId !== 0 };
      }
    }
    job.cursor = scan.nextOffset;
    const finished = job.cursor >= segment.sizeBytes;
    if (run && finished) runs.push(run);
    job.run = finished ? null : run;
    const worth = runs.filter((r) => r.fresh && r.end - r.start >= RECLAIM_RUN_MIN_BYTES);
    const punched = this.#files.reclaim(job.segmentId, worth);
    if (punched === null) {
      // The filesystem (or a build without the native addon) cannot punch holes: skip
      // every reclaim job; copying compaction still works where there is room.
      this.#compactionJobs = this.#compactionJobs.filter((j) => j.mode !== 'reclaim');
    } else {
      this.counters.punchedBytes += punched;
      if (this.#explicitCompaction) this.#explicitCompaction.report.punchedBytes += punched;
      if (finished) this.#compactionJobs.shift();
    }
    this.#noteCompaction(0, false);
  }

  #finishExplicitCompaction(): void {
    const explicit = this.#explicitCompaction;
    if (!explicit) return;
    this.#explicitCompaction = null;
    this.#compactionRunning = false;
    const report = explicit.report;
    report.segmentBytesAfter = this.segmentBytes();
    report.reclaimedBytes = Math.max(0, report.segmentBytesBefore - report.segmentBytesAfter);
    report.durationMs = Date.now() - explicit.startedMs;
    explicit.resolve(report);
  }

  // ---------------------------------------------------------------- check

  /**
   * Verifies the committed store: every object's record is intact and decodes, reference
   * counts match the page map and deltas, segment live bytes match their objects. Waits for
   * buffered writes first. `repair` sets reference counts and segment live bytes to the
   * recount and deletes objects nothing refers to (as a dead object is deleted: its base's
   * delta count and the accounting follow); it leaves damaged pages mapped, so they keep
   * answering EIO rather than read as zeros (an operator decides: TRIM them, or restore the
   * guest). Per-technique accounting is not recounted.
   */
  async check(options: CheckOptions): Promise<CheckReport> {
    await this.flush();
    return this.#runExclusive(() => this.#checkNow(options.repair, options.onProgress));
  }

  /** Runs `fn` in the writer loop, between two batches or compaction steps. */
  #runExclusive<T>(fn: () => Promise<T> | T): Promise<T> {
    this.#assertUsable();
    return new Promise<T>((resolve, reject) => {
      this.#exclusive.push(async () => {
        try {
          resolve(await fn());
        } catch (error) {
          reject(error);
        }
      });
      this.#kick();
    });
  }

  /**
   * The walk runs in the writer loop, so no commit changes the index under it; every
   * CHECK_SLICE steps it yields, so reads (and writes into the buffer) go on being served
   * while a large store is checked on a live server.
   */
  async #checkNow(repair: boolean, onProgress?: (p: CheckProgress) => void): Promise<CheckReport> {
    const problems: string[] = [];
    const ctx: BatchContext = { changes: emptyChanges(), released: [], deadIds: [] };
    let repaired = 0;
    const mapRefs = new Map<number, number>();
    let mappingsChecked = 0;
    const totals = this.#index.counts();
    // Steps: each mapping once, each object twice (decode, then its counts).
    const progress = { done: 0, total: totals.mappings + 2 * totals.objects };
    // Called at a slice boundary only, so the walk awaits nothing per record.
    const pause = async () => {
      onProgress?.({ done: progress.done, total: Math.max(progress.total, progress.done) });
      await yieldToEventLoop();
      this.#assertUsable();
    };
    for (const [, mapping] of this.#index.allMappings()) {
      mappingsChecked++;
      if (++progress.done % CHECK_SLICE === 0) await pause();
      if (mapping.tag === MappingTag.uniform) continue;
      mapRefs.set(mapping.objectId, (mapRefs.get(mapping.objectId) ?? 0) + 1);
    }
    const deltaRefs = new Map<number, number>();
    const liveBySegment = new Map<number, number>();
    let objectsChecked = 0;
    const page = Buffer.allocUnsafe(PAGE_SIZE);
    const broken = new Map<number, string>();
    for (const [id, record] of this.#index.allObjects()) {
      objectsChecked++;
      if (++progress.done % CHECK_SLICE === 0) await pause();
      if (record.baseId !== 0)
        deltaRefs.set(record.baseId, (deltaRefs.get(record.baseId) ?? 0) + 1);
      liveBySegment.set(
        record.segmentId,
        (liveBySegment.get(record.segmentId) ?? 0) + recordBytes(record.length),
      );
      try {
        this.#decodeInto(id, record, page, 0);
      } catch (error) {
        problems.push(`object ${id}: ${(error as Error).message}`);
        broken.set(id, (error as Error).message);
      }
    }
    const unreferenced: number[] = [];
    const objectsByFanIn = new Map<number, number>();
    let unrepairable = broken.size;
    for (const [id, record] of this.#index.allObjects()) {
      if (++progress.done % CHECK_SLICE === 0) await pause();
      const maps = mapRefs.get(id) ?? 0;
      const deltas = deltaRefs.get(id) ?? 0;
      if (deltas > 0) objectsByFanIn.set(deltas, (objectsByFanIn.get(deltas) ?? 0) + 1);
      if (record.mapCount !== maps)
        problems.push(`object ${id}: mapCount ${record.mapCount} != ${maps}`);
      if (record.deltaCount !== deltas) {
        problems.push(`object ${id}: deltaCount ${record.deltaCount} != ${deltas}`);
      }
      mapRefs.delete(id);
      if (maps === 0 && deltas === 0) {
        problems.push(`object ${id}: unreferenced but alive`);
        unreferenced.push(id);
      } else if (repair && (record.mapCount !== maps || record.deltaCount !== deltas)) {
        const staged = this.#objectIn(ctx.changes, id);
        staged.mapCount = maps;
        staged.deltaCount = deltas;
        repaired++;
      }
    }
    for (const id of mapRefs.keys()) {
      problems.push(`page map refers to missing object ${id}`);
      broken.set(id, 'object record missing');
      unrepairable++;
    }
    for (const [id, segment] of this.#segments) {
      const live = liveBySegment.get(id) ?? 0;
      if (segment.liveBytes !== live) {
        problems.push(`segment ${id}: liveBytes ${segment.liveBytes} != ${live}`);
        if (repair) {
          segment.liveBytes = live;
          ctx.changes.segments.set(id, segment);
          repaired++;
        }
      }
    }
    if (repair) {
      // The fan-in histogram is derived from the delta counts just set.
      this.#fanIn = FanInHistogram.fromEntries([...objectsByFanIn]);
      // Killed as a dead object is: its content entry, segment bytes, accounting, and its
      // base's delta count go with it (a base left with nothing follows it). Counts and live
      // bytes were set to the recount above, which still included these objects.
      for (const id of unreferenced) {
        const record = ctx.changes.objects.get(id);
        if (record === null) continue; // already gone as the base of another
        const alive = this.#objectIn(ctx.changes, id);
        alive.mapCount = 0;
        alive.deltaCount = 0;
        this.#kill(ctx, id, alive);
        repaired++;
      }
    }
    onProgress?.({ done: progress.done, total: progress.done });
    if (repaired > 0) await this.#commit(ctx);
    const { damaged, damagedTotal } = this.#damagedPages(broken);
    const unrepaired = repair ? unrepairable : problems.length;
    return {
      objectsChecked,
      mappingsChecked,
      problems,
      damaged,
      damagedTotal,
      repaired,
      unrepaired,
    };
  }

  /** The pages mapped to broken objects, by export name and byte offset. */
  #damagedPages(broken: Map<number, string>): { damaged: DamagedPage[]; damagedTotal: number } {
    const damaged: DamagedPage[] = [];
    let damagedTotal = 0;
    if (broken.size === 0) return { damaged, damagedTotal };
    const names = new Map<number, string>();
    for (const [name, record] of this.#index.exportRecords()) names.set(record.id, name);
    for (const [key, mapping] of this.#index.allMappings()) {
      const problem = mapping.tag === MappingTag.uniform ? undefined : broken.get(mapping.objectId);
      if (problem === undefined) continue;
      damagedTotal++;
      if (damaged.length >= DAMAGED_LIST_MAX) continue;
      const exportId = exportIdOfKey(key);
      damaged.push({
        export: names.get(exportId) ?? `#${exportId}`,
        offsetBytes: (key - pageKey(exportId, 0)) * PAGE_SIZE,
        objectId: mapping.objectId,
        problem,
      });
    }
    return { damaged, damagedTotal };
  }
}

/** True for a committed mapping that reads as zeroes with no data: a hole. */
function isHoleMapping(mapping: Mapping): boolean {
  return mapping.tag === MappingTag.uniform && mapping.word === 0n;
}

function isZeroPage(page: Buffer): boolean {
  // Compare with itself shifted by 8 bytes (periodic) and check the first word.
  return page.readBigUInt64LE(0) === 0n && page.compare(page, 8, PAGE_SIZE, 0, PAGE_SIZE - 8) === 0;
}

/** Payload bytes a batch's new objects append (record headers included). */
function payloadBytes(outcomes: Outcome[]): number {
  let bytes = 0;
  for (const outcome of outcomes) {
    if ('object' in outcome) bytes += recordBytes(outcome.object.payload.length);
  }
  return bytes;
}
