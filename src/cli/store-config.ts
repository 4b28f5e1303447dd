/**
 * The config file's `store:` section, checked at start-up like the rest of the file: the
 * config module knows nothing of the store's knobs, so serve and check ask the store's own
 * tuning rules here, before anything starts, and list every problem at once.
 */
import { validateStoreKeys } from '../config/index.js';
import { formatSize } from '../config/size.js';
import type { ExportSpec } from '../device/types.js';
import { PAGE_SIZE } from '../device/types.js';
import {
  DEFAULT_STORE_TUNING,
  EXPORT_PAGES_MAX,
  type StoreTuning,
  tuningProblems,
} from '../store/tuning.js';

/**
 * Every unknown key, wrong type and out-of-range value of the `store:` section, and every
 * export larger than the store can hold.
 */
export function storeConfigProblems(
  store: Readonly<Record<string, unknown>>,
  exports: readonly ExportSpec[] = [],
): string[] {
  const problems = validateStoreKeys(store, DEFAULT_STORE_TUNING);
  // Values are checked once keys and types are right: a wrong type has one clear message.
  if (problems.length === 0) {
    const tuning = { ...DEFAULT_STORE_TUNING, ...(store as Partial<StoreTuning>) };
    problems.push(...tuningProblems(tuning).map((problem) => `store.${problem}`));
  }
  for (const spec of exports) {
    if (spec.sizeBytes > EXPORT_PAGES_MAX * PAGE_SIZE) {
      problems.push(
        `exports '${spec.name}': size ${formatSize(spec.sizeBytes)} is past the page ` +
          "store's limit of 16 TiB an export; write 16TiB or less",
      );
    }
  }
  return problems;
}
