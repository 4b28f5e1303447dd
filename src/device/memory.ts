/**
 * The in-memory baseline device: a sparse map of raw pages, nothing persisted. It is the
 * reference the page store is benchmarked against (the same job as `nbdkit memory`), and a
 * device for protocol tests that should not depend on the store.
 */
import {
  type Backend,
  DeviceError,
  type ExportSpec,
  emptyTechniques,
  PAGE_SIZE,
  type PageDevice,
  type PageExtent,
  type StoreStats,
  type WriteOptions,
  type ZeroOptions,
} from './types.js';

export class MemoryPageDevice implements PageDevice {
  readonly name: string;
  readonly pageCount: number;
  readonly writable: boolean;
  /** Page number -> page bytes; absent pages read as zeroes. */
  readonly #pages = new Map<number, Buffer>();

  constructor(name: string, pageCount: number, writable = true) {
    this.name = name;
    this.pageCount = pageCount;
    this.writable = writable;
  }

  get mappedPages(): number {
    return this.#pages.size;
  }

  async readPages(firstPage: number, count: number, dst: Buffer, dstOffset: number) {
    for (let i = 0; i < count; i++) {
      const at = dstOffset + i * PAGE_SIZE;
      const page = this.#pages.get(firstPage + i);
      if (page) page.copy(dst, at);
      else dst.fill(0, at, at + PAGE_SIZE);
    }
  }

  async writePages(firstPage: number, src: Buffer, _options: WriteOptions) {
    this.#assertWritable();
    const count = src.length / PAGE_SIZE;
    for (let i = 0; i < count; i++) {
      // Overwrite a mapped page in place: a fresh 4 KiB buffer per write was most of the
      // NBD write path's allocation and GC time. Reads copy out, so nobody sees it change.
      let page = this.#pages.get(firstPage + i);
      if (page === undefined) {
        page = Buffer.allocUnsafeSlow(PAGE_SIZE);
        this.#pages.set(firstPage + i, page);
      }
      src.copy(page, 0, i * PAGE_SIZE, (i + 1) * PAGE_SIZE);
    }
  }

  async zeroPages(firstPage: number, count: number, _options: ZeroOptions) {
    this.#assertWritable();
    for (let i = 0; i < count; i++) this.#pages.delete(firstPage + i);
  }

  async flush() {}

  async extents(
    firstPage: number,
    count: number,
    extentsMax = Number.POSITIVE_INFINITY,
  ): Promise<PageExtent[]> {
    const out: PageExtent[] = [];
    for (let i = 0; i < count; i++) {
      const hole = !this.#pages.has(firstPage + i);
      const last = out[out.length - 1];
      if (last && last.hole === hole) last.pageCount++;
      else if (out.length >= extentsMax) break;
      else out.push({ pageCount: 1, hole, zero: hole });
    }
    return out;
  }

  #assertWritable() {
    if (!this.writable) throw new DeviceError('EPERM', `export ${this.name} is read-only`);
  }
}

/** A backend of memory devices, one per export, for benchmarks and protocol tests. */
export class MemoryBackend implements Backend {
  readonly kind = 'memory' as const;
  readonly #devices = new Map<string, MemoryPageDevice>();
  readonly #specs = new Map<string, ExportSpec>();

  constructor(exports: ExportSpec[]) {
    for (const spec of exports) {
      if (spec.sizeBytes % PAGE_SIZE !== 0) {
        throw new DeviceError('EINVAL', `export ${spec.name}: size must be a multiple of 4 KiB`);
      }
      const device = new MemoryPageDevice(spec.name, spec.sizeBytes / PAGE_SIZE, !spec.readOnly);
      this.#devices.set(spec.name, device);
      this.#specs.set(spec.name, spec);
    }
  }

  device(name: string) {
    return this.#devices.get(name);
  }

  exportNames() {
    return [...this.#devices.keys()];
  }

  description(name: string) {
    return this.#specs.get(name)?.description ?? `diffswap memory export ${name}`;
  }

  stats(): StoreStats {
    const totals = emptyTechniques();
    const exports = [...this.#devices.values()].map((device) => {
      const spec = this.#specs.get(device.name);
      const techniques = emptyTechniques();
      const bytes = device.mappedPages * PAGE_SIZE;
      techniques.raw = {
        pages: device.mappedPages,
        objects: device.mappedPages,
        storedBytes: bytes,
        savedBytes: 0,
      };
      totals.raw.pages += device.mappedPages;
      totals.raw.objects += device.mappedPages;
      totals.raw.storedBytes += bytes;
      return {
        name: device.name,
        sizeBytes: device.pageCount * PAGE_SIZE,
        group: spec?.group ?? 'default',
        mappedPages: device.mappedPages,
        logicalBytes: bytes,
        storedBytes: bytes,
        techniques,
      };
    });
    const logical = totals.raw.storedBytes;
    return {
      kind: 'memory',
      logicalBytes: logical,
      storedBytes: logical,
      diskBytes: 0,
      indexBytes: 0,
      techniques: totals,
      referencePages: 0,
      referenceFanInTotal: 0,
      referenceFanInMax: 0,
      writeBuffer: { pages: 0, capacityPages: 0 },
      compaction: {
        running: false,
        segments: 0,
        garbageBytes: 0,
        reclaimedBytesTotal: 0,
        lastRunAtMs: null,
      },
      exports,
    };
  }

  async close() {}
}
