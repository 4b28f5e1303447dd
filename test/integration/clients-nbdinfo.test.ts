/**
 * nbdinfo (libnbd) against diffswap: what the handshake advertises (size, flags, block sizes,
 * names, descriptions) and the export list, over TCP and a Unix socket, on every backend.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import type { ExportSpec } from '../../src/device/types.js';
import { type NbdinfoExport, nbdinfo, qemuIo } from '../helpers/clients.js';
import { runToolFails } from '../helpers/exec.js';
import {
  backendsUnderTest,
  connectionsAccepted,
  startTestServer,
  withTestServer,
} from '../helpers/nbd-server.js';

const MiB = 1024 * 1024;
const MAX_BLOCK_BYTES = 32 * MiB;

const SEVERAL_EXPORTS: ExportSpec[] = [
  { name: 'alpha', sizeBytes: 8 * MiB, description: 'first export' },
  { name: 'beta', sizeBytes: 16 * MiB + 4096, description: 'second export, odd size' },
  { name: 'gamma', sizeBytes: 4096, description: 'one page' },
];

/** The flags and sizes every writable diffswap export must advertise. */
function assertWritableExport(e: NbdinfoExport, spec: ExportSpec) {
  assert.equal(e['export-name'], spec.name);
  assert.equal(e['export-size'], spec.sizeBytes);
  assert.equal(e.is_read_only, false);
  for (const flag of [
    'can_flush',
    'can_fua',
    'can_trim',
    'can_zero',
    'can_fast_zero',
    'can_cache',
    'can_df',
    'can_multi_conn',
  ] as const) {
    assert.equal(e[flag], true, `${spec.name}: ${flag}`);
  }
  assert.ok(
    e.block_size_minimum === 1 || e.block_size_minimum === 512,
    `minimum block size ${e.block_size_minimum}`,
  );
  assert.equal(e.block_size_preferred, 4096);
  assert.equal(e.block_size_maximum, MAX_BLOCK_BYTES);
}

for (const backend of backendsUnderTest()) {
  describe(`nbdinfo (${backend})`, () => {
    test('--json reports size, flags, block sizes, name and description', async () => {
      await withTestServer({ backend }, async (srv) => {
        const report = await nbdinfo(srv.uri());
        assert.equal(report.protocol, 'newstyle-fixed');
        assert.equal(report.TLS, false);
        assert.equal(report.structured, true);
        assert.equal(report.exports.length, 1);
        const [e] = report.exports;
        const [spec] = srv.exports;
        assert.ok(e && spec);
        assertWritableExport(e, spec);
        assert.equal(e.description, spec.description);
        assert.deepEqual(e.contexts, ['base:allocation']);
      });
    });

    test('--list shows every export with its own size and description', async () => {
      await withTestServer({ backend, exports: SEVERAL_EXPORTS }, async (srv) => {
        const report = await nbdinfo(srv.uri(), true);
        const names = report.exports.map((e) => e['export-name']);
        assert.deepEqual(
          names,
          SEVERAL_EXPORTS.map((s) => s.name),
        );
        if (!srv.independentExports) return; // nbdkit reference: one size for all names
        for (const [i, spec] of SEVERAL_EXPORTS.entries()) {
          const e = report.exports[i];
          assert.ok(e);
          assertWritableExport(e, spec);
          assert.equal(e.description, spec.description);
        }
      });
    });

    test('a read-only export is advertised read-only and refuses writes', async (t) => {
      const exports: ExportSpec[] = [
        { name: 'rw', sizeBytes: MiB },
        { name: 'ro', sizeBytes: MiB, readOnly: true },
      ];
      if (backend === 'nbdkit') return t.skip('nbdkit reference has no per-export read-only');
      await withTestServer({ backend, exports }, async (srv) => {
        const report = await nbdinfo(srv.uri('ro'));
        assert.equal(report.exports[0]?.is_read_only, true);
        const failed = await runToolFails('qemu-io', [
          '-f',
          'raw',
          srv.uri('ro'),
          '-c',
          'write -P 0x5a 0 4k',
        ]);
        assert.match(failed.stdout + failed.stderr, /read-only|permission|write failed/i);
        assert.equal((await nbdinfo(srv.uri('rw'))).exports[0]?.is_read_only, false);
      });
    });

    test('the same export is reachable over IPv4, IPv6 and a Unix socket', async (t) => {
      if (backend === 'nbdkit') return t.skip('nbdkit reference serves 127.0.0.1 only');
      const srv = await startTestServer({
        backend,
        exports: SEVERAL_EXPORTS,
        unixSocket: true,
        ipv6: true,
      });
      t.after(() => srv.close());
      const viaTcp = await nbdinfo(srv.uri('beta'));
      assert.equal(viaTcp.exports[0]?.['export-size'], SEVERAL_EXPORTS[1]?.sizeBytes);
      for (const uri of [srv.unixUri('beta'), srv.ipv6Uri('beta')]) {
        const other = await nbdinfo(uri);
        assert.deepEqual(
          { ...other.exports[0], uri: undefined },
          { ...viaTcp.exports[0], uri: undefined },
          uri,
        );
      }
      // Data written through one listener reads back through the others.
      await qemuIo(srv.ipv6Uri('beta'), ['write -P 0x6a 4096 65536']);
      await qemuIo(srv.unixUri('beta'), ['read -P 0x6a 4096 65536', 'read -P 0 0 4096']);
      await qemuIo(srv.uri('beta'), ['read -P 0x6a 4096 65536']);
      const list = await nbdinfo(srv.unixUri(''), true);
      assert.equal(list.exports.length, SEVERAL_EXPORTS.length);
    });

    test('an unknown export name fails cleanly and the server keeps serving', async () => {
      await withTestServer({ backend }, async (srv) => {
        const before = await connectionsAccepted(srv);
        const failed = await runToolFails('nbdinfo', [srv.uri('no-such-export')]);
        assert.match(failed.stderr, /export|unknown|not found|server replied/i);
        const report = await nbdinfo(srv.uri());
        assert.equal(report.exports[0]?.['export-size'], srv.exports[0]?.sizeBytes);
        const after = await connectionsAccepted(srv);
        if (before !== undefined && after !== undefined) assert.ok(after >= before + 2);
      });
    });
  });
}
