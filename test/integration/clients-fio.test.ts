/**
 * fio's nbd engine (libnbd) against diffswap: several jobs at once, each on its own connection
 * (multi-conn), 4 KiB random writes at queue depth 8 with crc32c verification, then a second
 * run that only reads back and verifies what the first wrote. Sizes are bounded so the test
 * measures nothing; throughput belongs to `npm run bench`.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { runFio } from '../helpers/clients.js';
import { runTool, runToolOk } from '../helpers/exec.js';
import { makeTempDir } from '../helpers/files.js';
import {
  backendsUnderTest,
  connectionsAccepted,
  requestCounts,
  withTestServer,
} from '../helpers/nbd-server.js';

const MiB = 1024 * 1024;
const JOB_COUNT = 4;
const JOB_BYTES = 8 * MiB;
const BLOCK_BYTES = 4096;

/** One fio job definition; `verify_only` turns the same job into a read-back pass. */
function jobArgs(uri: string, extra: string[] = []): string[] {
  return [
    '--name=verify4k',
    '--ioengine=nbd',
    `--uri=${uri}`,
    '--rw=randwrite',
    `--bs=${BLOCK_BYTES}`,
    `--size=${JOB_BYTES}`,
    `--offset_increment=${JOB_BYTES}`, // job n owns [n * 8 MiB, (n + 1) * 8 MiB)
    `--numjobs=${JOB_COUNT}`,
    '--iodepth=8',
    '--verify=crc32c',
    '--verify_fatal=1',
    '--randrepeat=1',
    '--runtime=60',
    ...extra,
  ];
}

for (const backend of backendsUnderTest()) {
  describe(`fio nbd engine (${backend})`, () => {
    test('4 KiB random writes from 4 jobs verify, and verify again on re-read', async (t) => {
      // fio writes verify state files into its working directory: keep them out of the tree.
      const tmp = await makeTempDir();
      t.after(() => tmp.remove());
      const cwd = tmp.path;
      await withTestServer({ backend }, async (srv) => {
        const conn0 = await connectionsAccepted(srv);
        const { jobs } = await runFio(jobArgs(srv.uri()), { timeoutMs: 120_000, cwd });
        assert.equal(jobs.length, JOB_COUNT);
        for (const job of jobs) {
          assert.equal(job.error, 0);
          assert.equal(job.write.ioBytes, JOB_BYTES, 'every block written once');
          assert.equal(job.read.ioBytes, JOB_BYTES, 'every block read back for verify');
        }
        const conn1 = await connectionsAccepted(srv);
        if (conn0 !== undefined && conn1 !== undefined) {
          assert.ok(conn1 - conn0 >= JOB_COUNT, `only ${conn1 - conn0} connections`);
        }
        const written = await requestCounts(srv, 'disk');

        // A second run on new connections reads and checks every block, writing nothing.
        const verify = await runFio(jobArgs(srv.uri(), ['--verify_only=1']), {
          timeoutMs: 120_000,
          cwd,
        });
        for (const job of verify.jobs) {
          assert.equal(job.error, 0);
          assert.equal(job.read.ioBytes, JOB_BYTES);
        }
        const verified = await requestCounts(srv, 'disk');
        if (written && verified) {
          assert.equal(verified.failed, 0, JSON.stringify(verified.byCommand));
          const writes = (c: Record<string, number>) =>
            Object.entries(c)
              .filter(([k]) => /^write$/i.test(k))
              .reduce((s, [, n]) => s + n, 0);
          assert.ok(writes(written.byCommand) >= (JOB_COUNT * JOB_BYTES) / BLOCK_BYTES);
          assert.equal(writes(verified.byCommand), writes(written.byCommand), 'verify wrote');
        }
      });
    });

    test('the verify pass catches a block changed behind fio', async (t) => {
      // Proves the read-back pass above can fail: one byte changed by another client must
      // make fio's verification fail.
      const tmp = await makeTempDir();
      t.after(() => tmp.remove());
      const cwd = tmp.path;
      await withTestServer({ backend }, async (srv) => {
        const args = jobArgs(srv.uri()).map((a) => (a.startsWith('--numjobs') ? '--numjobs=1' : a));
        await runFio(args, { timeoutMs: 120_000, cwd });
        await runToolOk('qemu-io', ['-f', 'raw', srv.uri(), '-c', 'write -P 0x00 12345 1']);
        const verify = await runTool('fio', [...args, '--verify_only=1'], {
          timeoutMs: 120_000,
          cwd,
        });
        assert.notEqual(verify.code, 0, 'fio verification passed over a corrupted block');
        assert.match(verify.stdout + verify.stderr, /verify failed|bad magic|crc32c/i);
      });
    });
  });
}
