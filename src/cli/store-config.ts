/**
 * The config file's `store:` section, checked at start-up like the rest of the file: the
 * config module knows nothing of the store's knobs, so serve and check ask the store's own
 * tuning rules here, before anything starts, and list every problem at once.
 */
import { validateStoreKeys } from '../config/index.js';
import { DEFAULT_STORE_TUNING, type StoreTuning, tuningProblems } from '../store/tuning.js';

/** Every unknown key, wrong type and out-of-range value of the `store:` section. */
export function storeConfigProblems(store: Readonly<Record<string, unknown>>): string[] {
  const problems = validateStoreKeys(store, DEFAULT_STORE_TUNING);
  // Values are checked once keys and types are right: a wrong type has one clear message.
  if (problems.length === 0) {
    const tuning = { ...DEFAULT_STORE_TUNING, ...(store as Partial<StoreTuning>) };
    problems.push(...tuningProblems(tuning).map((problem) => `store.${problem}`));
  }
  return problems;
}
