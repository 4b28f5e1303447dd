/**
 * A one-line progress bar on standard error for long CLI work (analyze, check), drawn only
 * when `enabled` (the callers pass whether standard error is a terminal).
 */

/** Redraws at most this often: a terminal write per step would cost more than the step. */
const PROGRESS_INTERVAL_MS = 100;
const BAR_WIDTH = 30;

/** Text after the percentage: what is done of what, given the elapsed milliseconds. */
export type ProgressDetail = (done: number, total: number, elapsedMs: number) => string;

export function progressBar(label: string, enabled: boolean, detail: ProgressDetail) {
  const startedMs = Date.now();
  let lastMs = 0;
  let drawn = false;
  return {
    /** Redraws the bar; at most every PROGRESS_INTERVAL_MS, and always when done = total. */
    update(done: number, total: number) {
      const nowMs = Date.now();
      if (!enabled || (nowMs - lastMs < PROGRESS_INTERVAL_MS && done < total)) return;
      lastMs = nowMs;
      const share = total > 0 ? Math.min(1, done / total) : 1;
      const filled = Math.round(share * BAR_WIDTH);
      process.stderr.write(
        `\r${label} [${'#'.repeat(filled)}${' '.repeat(BAR_WIDTH - filled)}] ` +
          `${(share * 100).toFixed(0)}% ${detail(done, total, nowMs - startedMs)}`,
      );
      drawn = true;
    },
    /** Replaces the bar with a status line (kept until the next update or done). */
    note(message: string) {
      if (!enabled) return;
      process.stderr.write(`\r\x1b[K${label}: ${message}`);
      drawn = true;
    },
    /** Replaces the bar with a last line. */
    done(message: string) {
      if (!enabled) return;
      process.stderr.write(`${drawn ? '\r\x1b[K' : ''}${message}\n`);
    },
    /** Erases the bar, leaving the line empty for what is printed next. */
    clear() {
      if (enabled && drawn) process.stderr.write('\r\x1b[K');
    },
  };
}
