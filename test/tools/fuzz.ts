/**
 * The long protocol-fuzzing run: `node dist/test/tools/fuzz.js --frames 1000000 [--seed N]
 * [--concurrency 8] [--backend store|memory] [--no-huge]`. Starts `diffswap serve`, runs
 * hostile sessions against it beside a well-behaved libnbd client, prints progress and a
 * summary, and exits 1 when any check failed (the same checks as fuzz.test.ts).
 */
import { parseArgs } from 'node:util';
import { campaignProblems } from '../reliability/fuzz-checks.js';
import { runFuzzCampaign, summarize } from '../reliability/fuzz-harness.js';
import { seedFromEnv } from '../reliability/support.js';

const { values } = parseArgs({
  options: {
    frames: { type: 'string', default: '1000000' },
    seed: { type: 'string' },
    concurrency: { type: 'string', default: '8' },
    backend: { type: 'string', default: 'store' },
    'no-huge': { type: 'boolean', default: false },
  },
});
const seed = values.seed === undefined ? seedFromEnv() : Number(values.seed) >>> 0;
const backend = values.backend === 'memory' ? 'memory' : 'store';
console.log(`fuzz: seed ${seed}, ${values.frames} frames, backend ${backend}`);
const report = await runFuzzCampaign({
  seed,
  framesTarget: Number(values.frames),
  concurrency: Number(values.concurrency),
  hugePayloads: !values['no-huge'],
  backend,
  log: (line) => console.log(line),
});
console.log(summarize(report));
const problems = campaignProblems(report);
for (const problem of problems) console.log(`FAIL: ${problem}`);
process.exitCode = problems.length === 0 ? 0 : 1;
