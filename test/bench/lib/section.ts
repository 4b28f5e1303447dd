/**
 * The contract between `npm run bench` (test/bench/main.ts) and its sections.
 *
 * A section is a module in test/bench/sections/ exporting `section: BenchSection`. main.ts
 * finds every compiled section, runs all of them (or those named on the command line) one
 * after another, and writes what each records to one JSON file under bench-results/.
 * Sections print their own tables; figures for the JSON go through `ctx.record`.
 */

export interface BenchContext {
  /** Repository root (where package.json is). */
  rootDir: string;
  /** A scratch directory for this section, removed after it runs. */
  tmpDir: string;
  /** True with `--quick`: shorter runs for a smoke check of the benchmark itself. */
  quick: boolean;
  /** Prints a line to the terminal (stdout), as part of the report. */
  log(line?: string): void;
  /** Stores a figure (any JSON value) under `key` in this section's part of the JSON report. */
  record(key: string, value: unknown): void;
}

export interface BenchSection {
  /** Short name used on the command line and as the JSON key, e.g. `protocol`. */
  name: string;
  /** One line for `--list` and the report header. */
  description: string;
  run(ctx: BenchContext): Promise<void>;
}
