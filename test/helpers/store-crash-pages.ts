/** Shared by the crash test and its child: page contents by (page, version), and tuning. */
import { PAGE_SIZE } from '../../src/device/types.js';
import type { StoreTuning } from '../../src/store/index.js';
import { makePage } from './store-pages.js';

export const CRASH_EXPORT_PAGES = 256;

/** Small segments and batches so kills land in rotation, commits and compaction. */
export const CRASH_TUNING: Partial<StoreTuning> = {
  segmentBytesMax: 64 * 1024,
  batchPagesMax: 32,
  commitIntervalMs: 2,
  compactStepBytes: 32 * 1024,
  compactLiveRatioMin: 0.5,
};

/** Content of `page` at `version`: a mix of zero, fill, shared, similar and unique pages. */
export function crashPageContent(page: number, version: number): Buffer {
  switch (version % 5) {
    case 0:
      return Buffer.alloc(PAGE_SIZE);
    case 1:
      return makePage('pool', version);
    case 2:
      return makePage('similar', version);
    case 3:
      return makePage('fill', version);
    default:
      return makePage('unique', page * 10_000_000 + version);
  }
}
