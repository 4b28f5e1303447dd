/**
 * Crash loop, bounded for CI: a few rounds of write + FLUSH + FUA from libnbd, SIGKILL at a
 * seeded random moment (some inside a compaction), `diffswap check`, restart and read back.
 * Every durable write must read back byte for byte. The full run is
 * `node dist/test/tools/crash-loop.js --rounds 100`. Replay with DIFFSWAP_TEST_SEED=<seed>.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { runCrashLoop, summarizeCrashLoop } from './crash-loop.js';
import { seedFromEnv } from './support.js';

/** Rounds in CI: about 5 s each on these machines. */
const CI_ROUNDS = 20;

const NAME =
  'every write acknowledged before a completed FLUSH, and every FUA write, survives kill -9';

test(NAME, async (t) => {
  const seed = seedFromEnv();
  t.diagnostic(`seed ${seed}`);
  const report = await runCrashLoop({
    rounds: CI_ROUNDS,
    seed,
    compactionEvery: 2,
    log: (line) => t.diagnostic(line),
  });
  t.diagnostic(summarizeCrashLoop(report));
  assert.equal(report.rounds.length, CI_ROUNDS);
  // The check must have had something to check: durable writes in most rounds.
  assert.ok(report.durableWrites > 0, 'no write was durable before a kill');
  // Every second round aims its kill inside a compaction: some must have landed there.
  assert.ok(report.killsDuringCompaction > 0, summarizeCrashLoop(report));
  assert.equal(report.lostBytes, 0, summarizeCrashLoop(report));
  assert.equal(report.wrongBytes, 0, summarizeCrashLoop(report));
  assert.equal(report.unreadableBytes, 0, summarizeCrashLoop(report));
  assert.deepEqual(report.problems, [], summarizeCrashLoop(report));
});

const NEGATIVE =
  'the loop detects lost writes (negative control: the memory backend keeps nothing)';

test(NEGATIVE, async (t) => {
  const seed = seedFromEnv();
  const report = await runCrashLoop({ rounds: 1, seed, compactionEvery: 0, backend: 'memory' });
  t.diagnostic(summarizeCrashLoop(report));
  const round = report.rounds[0];
  assert.ok(round && round.durableWrites > 0, 'no durable write to lose');
  assert.ok(report.lostBytes > 0, 'writes the memory backend lost went unnoticed');
});
