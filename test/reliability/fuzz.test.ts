/**
 * Protocol fuzzing, bounded for CI: tens of thousands of hostile frames against a real
 * `diffswap serve` (page store backend), with a libnbd client beside them that must keep
 * being served. The long run is `node dist/test/tools/fuzz.js --frames 1000000`.
 * Replay a failure with DIFFSWAP_TEST_SEED=<seed printed below>.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { campaignProblems } from './fuzz-checks.js';
import { runFuzzCampaign, summarize } from './fuzz-harness.js';
import { seedFromEnv } from './support.js';

/** Frames sent in CI: enough for every kind of session many times over, in about a minute. */
const CI_FRAMES = 100_000;

const NAME =
  'hostile NBD streams never crash the server, are refused and counted, and spare a healthy client';

test(NAME, async (t) => {
  const seed = seedFromEnv();
  t.diagnostic(`seed ${seed}`);
  const report = await runFuzzCampaign({
    seed,
    framesTarget: CI_FRAMES,
    concurrency: 6,
    hugePayloads: false,
    backend: 'store',
  });
  t.diagnostic(summarize(report));
  assert.ok(report.totals.frames >= CI_FRAMES, `only ${report.totals.frames} frames sent`);
  assert.ok(report.totals.bytesVerified > 0, 'no read was checked against the model');
  assert.ok(report.totals.refusedByReason.size >= 10, 'too few kinds of refusal exercised');
  assert.deepEqual(campaignProblems(report), [], summarize(report));
});
