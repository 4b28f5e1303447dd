/**
 * The page store's public surface: `openPageStore` and the types the CLI, the NBD server,
 * the HTTP API and the benchmarks use. Implementation in store.ts; design notes there and
 * in segments.ts, accounting.ts and src/index/index.ts.
 */

import type { Backend } from '../device/types.js';
import type { CheckOptions, CheckReport, CompactionReport } from './store.js';
import { PageStoreImpl, type PageStoreOptions } from './store.js';

export { isStrayCommitRejection } from '../index/index.js';
export { setContentHashForTests } from './codecs.js';
export type {
  CheckOptions,
  CheckProgress,
  CheckReport,
  CompactionReport,
  DamagedPage,
  PageStoreOptions,
} from './store.js';
export { DEFAULT_STORE_TUNING, type StoreTuning } from './tuning.js';

export interface PageStore extends Backend {
  /** Compacts now (see PageStoreImpl.compact); background compaction also runs by itself. */
  compact(): Promise<CompactionReport>;
  /**
   * Verifies the committed store and lists damaged pages; `repair` fixes counts and deletes
   * orphans (see PageStoreImpl.check). Serves I/O between slices of the walk.
   */
  check(options: CheckOptions): Promise<CheckReport>;
  /** Bytes of segment files, committed. */
  segmentBytes(): number;
  /** Counters of failures and work done, for metrics. */
  readonly counters: Readonly<
    Record<
      'readErrors' | 'collisions' | 'batches' | 'pagesEncoded' | 'deltaAttempts' | 'deltasKept',
      number
    >
  >;
}

/**
 * Opens the store in `options.dataDir` (created when absent) with the given exports:
 * exports absent on disk are created, a grown export keeps its data, a shrunk one is
 * refused with DeviceError EINVAL. Resolves when the store serves requests; reopening the
 * same directory returns the same data. Close it with `close()`.
 */
export async function openPageStore(options: PageStoreOptions): Promise<PageStore> {
  const store = new PageStoreImpl(options);
  try {
    await store.start(options.exports);
  } catch (error) {
    await store.close().catch(() => {});
    throw error;
  }
  return store;
}
