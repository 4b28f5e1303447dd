/**
 * nbdcopy (libnbd) against diffswap: a mixed random image copied in and back out, with one
 * and with several connections, through TCP and a Unix socket, and export to export; every
 * copy compared byte for byte with cmp.
 */
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import type { ExportSpec } from '../../src/device/types.js';
import { qemuIo } from '../helpers/clients.js';
import { runToolOk } from '../helpers/exec.js';
import { assertFilesEqual, makeTempDir, testSeed, writeMixedImage } from '../helpers/files.js';
import { backendsUnderTest, connectionsAccepted, withTestServer } from '../helpers/nbd-server.js';

const MiB = 1024 * 1024;
const IMAGE_BYTES = 8 * MiB;
const EXPORTS: ExportSpec[] = [
  { name: 'a', sizeBytes: IMAGE_BYTES },
  { name: 'b', sizeBytes: IMAGE_BYTES },
];

for (const backend of backendsUnderTest()) {
  describe(`nbdcopy (${backend})`, () => {
    test('a mixed image copied in and out is byte-identical (1 and 4 connections)', async (t) => {
      const seed = testSeed();
      t.diagnostic(`image seed ${seed} (replay with DIFFSWAP_TEST_SEED=${seed})`);
      const tmp = await makeTempDir();
      t.after(() => tmp.remove());
      const src = join(tmp.path, 'src.img');
      await writeMixedImage(src, IMAGE_BYTES, seed);

      await withTestServer({ backend, exports: EXPORTS }, async (srv) => {
        for (const connections of [1, 4]) {
          // Garbage first, so a copy that skipped any region (zeroes included) shows in cmp.
          await qemuIo(srv.uri('a'), [`write -P 0xee 0 ${IMAGE_BYTES}`]);
          const before = await connectionsAccepted(srv);
          const out = join(tmp.path, `out-${connections}.img`);
          // nbdcopy opens no more connections than threads, which default to the core count.
          const parallel = [`--connections=${connections}`, `--threads=${connections}`];
          const flags = [...parallel, '--flush'];
          await runToolOk('nbdcopy', [...flags, src, srv.uri('a')]);
          await runToolOk('nbdcopy', [...parallel, srv.uri('a'), out]);
          await assertFilesEqual(src, out);
          const after = await connectionsAccepted(srv);
          if (before !== undefined && after !== undefined) {
            assert.ok(after - before >= 2 * connections, `${after - before} connections`);
          }
        }
      });
    });

    test('copies over a Unix socket and from export to export', async (t) => {
      if (backend === 'nbdkit') return t.skip('nbdkit reference: one content, TCP only');
      const seed = testSeed();
      t.diagnostic(`image seed ${seed} (replay with DIFFSWAP_TEST_SEED=${seed})`);
      const tmp = await makeTempDir();
      t.after(() => tmp.remove());
      const src = join(tmp.path, 'src.img');
      const out = join(tmp.path, 'out.img');
      const zeroes = join(tmp.path, 'zero.img');
      await writeMixedImage(src, IMAGE_BYTES, seed);
      await writeFile(zeroes, Buffer.alloc(IMAGE_BYTES));

      await withTestServer({ backend, exports: EXPORTS, unixSocket: true }, async (srv) => {
        await runToolOk('nbdcopy', [src, srv.unixUri('a')]);
        await runToolOk('nbdcopy', [srv.uri('a'), srv.unixUri('b')]);
        await runToolOk('nbdcopy', [srv.unixUri('b'), out]);
        await assertFilesEqual(src, out);
        // Copying zeroes over 'a' leaves 'b' untouched: exports are separate devices.
        await runToolOk('nbdcopy', [zeroes, srv.uri('a')]);
        await runToolOk('nbdcopy', [srv.uri('a'), out]);
        await assertFilesEqual(zeroes, out);
        await runToolOk('nbdcopy', [srv.uri('b'), out]);
        await assertFilesEqual(src, out);
      });
    });
  });
}
