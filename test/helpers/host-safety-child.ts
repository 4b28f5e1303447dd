/**
 * Child process for the host-safety tests: host safety changes the whole process (locked
 * memory, task flags, OOM score), so each case runs in a fresh process, often under another
 * user or rlimit. Prints one JSON line on stdout.
 *
 * Usage:
 *   node host-safety-child.js apply OPTIONS_JSON [CHURN_MS]   (OPTIONS: HostSafetyOptions)
 *     applyHostSafety, then (optionally) compiles and drops JIT code for CHURN_MS, the load
 *     that makes V8 free code pages; prints the report.
 *   node host-safety-child.js raw-mlock FLAGS [CHURN_MS]
 *     the bare native mlockAll(FLAGS), without the madvise redirection; prints {"errno": N}.
 */

import { silentLogger } from '../../src/log/index.js';
import { nativeAddon } from '../../src/native/addon.js';
import { applyHostSafety, refreshHostSafety } from '../../src/native/host.js';

/** Compiles short-lived functions so V8 allocates and frees code-space pages. */
function churnJitCode(durationMs: number): number {
  const endMs = Date.now() + durationMs;
  let compiled = 0;
  while (Date.now() < endMs) {
    let batch: Array<(x: number) => number> = [];
    for (let i = 0; i < 2000; i++) {
      const f = new Function(
        'x',
        `let s = 0; for (let k = 0; k < x; k++) s += k * ${compiled + i}; return s;`,
      );
      for (let r = 0; r < 3; r++) f(2000);
      batch.push(f as (x: number) => number);
    }
    compiled += batch.length;
    batch = [];
    (globalThis as { gc?: () => void }).gc?.();
  }
  return compiled;
}

const [mode, arg, churnArg] = process.argv.slice(2);
const churnMs = Number(churnArg ?? 0);
if (mode === 'apply' && arg) {
  const report = applyHostSafety(JSON.parse(arg), silentLogger());
  const compiledCount = churnMs > 0 ? churnJitCode(churnMs) : 0;
  console.log(JSON.stringify({ report: refreshHostSafety(report), compiledCount }));
} else if (mode === 'raw-mlock' && arg) {
  const addon = nativeAddon() as { mlockAll(flags: number): number } | null;
  if (!addon) throw new Error('native addon not built');
  const errno = addon.mlockAll(Number(arg));
  console.log(JSON.stringify({ errno }));
  if (churnMs > 0) churnJitCode(churnMs);
} else {
  console.error('usage: host-safety-child.js apply OPTIONS_JSON [CHURN_MS] | raw-mlock FLAGS');
  process.exit(2);
}
