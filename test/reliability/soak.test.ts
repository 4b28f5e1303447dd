/**
 * Soak, short for CI: 8 fio connections with crc32c verification over 4 exports for about a
 * three minutes; zero verify errors, server RSS and descriptors flat. The documented run
 * is `node dist/test/tools/soak.js --minutes 30`.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { runSoak, summarizeSoak } from './soak.js';

const CI_MINUTES = 3;

const NAME = '8 fio connections with verify over 4 exports: no verify error, RSS and fds flat';

test(NAME, async (t) => {
  const report = await runSoak(CI_MINUTES);
  t.diagnostic(summarizeSoak(report));
  assert.ok(report.writeIos > 0 && report.readIos > 0, 'fio did no I/O');
  assert.equal(report.verifyErrors, 0);
  assert.deepEqual(report.problems, [], summarizeSoak(report));
});
