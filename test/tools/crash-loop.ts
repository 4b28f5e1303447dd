/**
 * The long crash loop: `node dist/test/tools/crash-loop.js --rounds 100 [--seed N]
 * [--compaction-every 3] [--check-with-compaction]`. Each round writes through libnbd,
 * SIGKILLs the server at a seeded random moment (every n-th round inside a compaction), runs
 * `diffswap check`, restarts and verifies every durable write byte for byte. Exits 1 on any
 * lost, wrong or unreadable byte or other problem; the data dir of a failed round is kept.
 */
import { parseArgs } from 'node:util';
import { runCrashLoop, summarizeCrashLoop } from '../reliability/crash-loop.js';
import { seedFromEnv } from '../reliability/support.js';

const { values } = parseArgs({
  options: {
    rounds: { type: 'string', default: '100' },
    seed: { type: 'string' },
    'compaction-every': { type: 'string', default: '3' },
    'check-with-compaction': { type: 'boolean', default: false },
  },
});
const seed = values.seed === undefined ? seedFromEnv() : Number(values.seed) >>> 0;
console.log(`crash loop: seed ${seed}, ${values.rounds} rounds`);
const report = await runCrashLoop({
  rounds: Number(values.rounds),
  seed,
  compactionEvery: Number(values['compaction-every']),
  checkWithCompaction: values['check-with-compaction'],
  log: (line) => console.log(line),
});
console.log(summarizeCrashLoop(report));
process.exitCode = report.problems.length === 0 ? 0 : 1;
