/**
 * The block-device contract between the NBD layer (above) and the devices that hold the
 * bytes (below): the in-memory baseline and the page store.
 *
 * Design note. Devices are page-granular: every call names whole 4 KiB pages, so the page
 * store never sees a partial page, and a request for many pages is one call (one batch for
 * the store's encoder). Byte-granular access, with read-modify-write of partial pages, lives
 * in one adapter (`paged.ts`) that the NBD layer uses. All calls are asynchronous; a device
 * may acknowledge a write before it is durable unless `fua` is set, and `flush()` resolves
 * only when every write that resolved before the flush began is durable.
 */

/** Bytes in one page: the unit of dedup, delta and compression. */
export const PAGE_SIZE = 4096;
/** log2(PAGE_SIZE), for shifts on page numbers. */
export const PAGE_SHIFT = 12;

/** The error kinds a device may raise; the NBD layer maps each to one NBD errno. */
export type DeviceErrorCode =
  | 'EIO' // stored data unreadable or damaged
  | 'ENOSPC' // no room to store the write
  | 'EINVAL' // a request the device cannot take (programmer or client error)
  | 'EPERM' // write to a read-only device
  | 'EOVERFLOW' // a request larger than the device allows in one call
  | 'ESHUTDOWN' // the device is closing
  | 'ENOTSUP'; // an operation this device does not offer (e.g. fast zero)

/** An operating error of a device, with a stable code and a message for the client. */
export class DeviceError extends Error {
  readonly code: DeviceErrorCode;

  constructor(code: DeviceErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'DeviceError';
    this.code = code;
  }
}

/** A run of pages with the same allocation state, as BLOCK_STATUS reports it. */
export interface PageExtent {
  pageCount: number;
  /** No storage is allocated for these pages (never written, trimmed, or zero pages). */
  hole: boolean;
  /** These pages read as zeroes. */
  zero: boolean;
}

export interface WriteOptions {
  /** Force Unit Access: resolve only when this write is durable. */
  fua: boolean;
}

export interface ZeroOptions extends WriteOptions {
  /**
   * Trim-style zeroing is allowed (the pages may become holes). False for WRITE_ZEROES with
   * NO_HOLE: the device must keep storage allocated (a page store may still store nothing,
   * since reads return zeroes either way; only block status differs).
   */
  mayTrim: boolean;
}

/**
 * One export's storage. Page numbers are validated by the caller: `firstPage + pageCount`
 * never exceeds `pageCount` of the device, and counts are positive.
 */
export interface PageDevice {
  /** The export's name, for logs and stats. */
  readonly name: string;
  /** Size of the device in pages. */
  readonly pageCount: number;
  /** False when writes must be refused with EPERM. */
  readonly writable: boolean;

  /**
   * Reads `count` pages starting at `firstPage` into `dst` at `dstOffset`
   * (`count * PAGE_SIZE` bytes). The caller owns `dst`. Pages never written read as zeroes.
   */
  readPages(firstPage: number, count: number, dst: Buffer, dstOffset: number): Promise<void>;

  /**
   * Writes whole pages from `src` (length a multiple of PAGE_SIZE). `src` is borrowed until
   * the promise settles; the device copies what it keeps. The latest write to a page wins.
   */
  writePages(firstPage: number, src: Buffer, options: WriteOptions): Promise<void>;

  /** Makes pages read as zeroes (TRIM when `mayTrim` and the caller asked to trim). */
  zeroPages(firstPage: number, count: number, options: ZeroOptions): Promise<void>;

  /** Resolves when every write that resolved before this call is durable. */
  flush(): Promise<void>;

  /**
   * Allocation state of a range, as consecutive extents from `firstPage` covering at least
   * one page (and at most `count`). At most `extentsMax` extents (default unbounded): a device
   * stops looking where the next one would begin, so a one-extent question costs one extent.
   */
  extents(firstPage: number, count: number, extentsMax?: number): Promise<PageExtent[]>;
}

/** Which storage techniques an export uses; all on by default. */
export interface TechniqueSwitches {
  /** Zero pages and pages of one repeated 64-bit word cost no payload. */
  zero: boolean;
  /** Identical pages are stored once (within the export's sharing group). */
  dedup: boolean;
  /** Pages similar to a stored page are stored as a delta against it. */
  delta: boolean;
  /** Other pages are compressed (raw when compression does not pay). */
  compress: boolean;
}

/** One export as configured: the same shape for every backend. */
export interface ExportSpec {
  name: string;
  /** A multiple of PAGE_SIZE. */
  sizeBytes: number;
  description?: string;
  readOnly?: boolean;
  /** Sharing group for dedup; exports in one group share identical pages. Default 'default'. */
  group?: string;
  techniques?: Partial<TechniqueSwitches>;
}

/** Page counts and bytes per storage technique; all sizes are payload bytes unless named. */
export interface TechniqueStats {
  /** Logical pages (page-map entries) stored by this technique. */
  pages: number;
  /** Distinct stored objects of this technique. */
  objects: number;
  /** Payload bytes these objects take. */
  storedBytes: number;
  /** Bytes saved against storing each logical page raw: pages * PAGE_SIZE - storedBytes. */
  savedBytes: number;
}

export type TechniqueName = 'zero' | 'duplicate' | 'delta' | 'compressed' | 'raw';

/** Accounting for one export (or a whole store when summed). */
export interface ExportStats {
  name: string;
  sizeBytes: number;
  /** Sharing group for dedup; pages dedup only within a group. */
  group: string;
  mappedPages: number;
  logicalBytes: number;
  storedBytes: number;
  techniques: Record<TechniqueName, TechniqueStats>;
}

/** Store-wide accounting, read by `diffswap stats`, the HTTP API and the metrics. */
export interface StoreStats {
  kind: 'memory' | 'pagestore';
  logicalBytes: number;
  /** Payload bytes of live objects. */
  storedBytes: number;
  /** Bytes on disk: segments plus index files (0 for memory). */
  diskBytes: number;
  /** Bytes of index/metadata (LMDB) on disk. */
  indexBytes: number;
  techniques: Record<TechniqueName, TechniqueStats>;
  /** Objects that at least one delta uses as its base. */
  referencePages: number;
  /** Deltas leaning on reference pages: total, and the most on one reference. */
  referenceFanInTotal: number;
  referenceFanInMax: number;
  writeBuffer: { pages: number; capacityPages: number };
  compaction: {
    running: boolean;
    segments: number;
    garbageBytes: number;
    reclaimedBytesTotal: number;
    lastRunAtMs: number | null;
  };
  exports: ExportStats[];
}

/** The set of exports a server serves, and the accounting across them. */
export interface Backend {
  readonly kind: StoreStats['kind'];
  /** Device for an export name, or undefined when no such export exists. */
  device(name: string): PageDevice | undefined;
  /** Export names, in configuration order. */
  exportNames(): string[];
  /** Description shown to clients for an export (NBD_INFO_DESCRIPTION). */
  description(name: string): string;
  stats(): StoreStats;
  /** Flushes every export and releases files; further calls fail with ESHUTDOWN. */
  close(): Promise<void>;
}

/** Stats with every technique empty; a base for backends that do not use one. */
export function emptyTechniques(): Record<TechniqueName, TechniqueStats> {
  const empty = (): TechniqueStats => ({ pages: 0, objects: 0, storedBytes: 0, savedBytes: 0 });
  return {
    zero: empty(),
    duplicate: empty(),
    delta: empty(),
    compressed: empty(),
    raw: empty(),
  };
}
