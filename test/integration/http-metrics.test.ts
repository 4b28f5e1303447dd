/**
 * /metrics and the history behind the page, driven by real NBD clients: names follow the
 * Prometheus conventions, store gauges and NBD counters move when nbdcopy writes a mixed
 * image and reads it back, a held nbdsh connection shows per export, and refused requests
 * count as recent errors of their export.
 */
import assert from 'node:assert/strict';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import type { ExportSpec } from '../../src/device/types.js';
import { runNbdsh } from '../helpers/clients.js';
import { runToolOk } from '../helpers/exec.js';
import { assertFilesEqual, makeTempDir, testSeed, writeMixedImage } from '../helpers/files.js';
import {
  type HttpStack,
  jsonOf,
  metricSum,
  parseMetrics,
  startHttpStack,
  waitFor,
} from '../helpers/http.js';
import { backendsUnderTest } from '../helpers/nbd-server.js';

const MiB = 1024 * 1024;
const README = fileURLToPath(new URL('../../../README.md', import.meta.url));
const IMAGE_BYTES = 4 * MiB;
const EXPORTS: ExportSpec[] = [
  { name: 'disk', sizeBytes: IMAGE_BYTES },
  { name: 'spare', sizeBytes: 2 * MiB, group: 'other' },
];

/** Metrics a scrape must always carry, with their types. */
const EXPECTED_TYPES: Record<string, string> = {
  diffswap_nbd_requests_total: 'counter',
  diffswap_nbd_payload_bytes_total: 'counter',
  diffswap_nbd_request_duration_seconds: 'histogram',
  diffswap_nbd_rejected_total: 'counter',
  diffswap_nbd_connections: 'gauge',
  diffswap_store_logical_bytes: 'gauge',
  diffswap_store_stored_bytes: 'gauge',
  diffswap_store_disk_bytes: 'gauge',
  diffswap_store_pages: 'gauge',
  diffswap_store_objects: 'gauge',
  diffswap_store_technique_stored_bytes: 'gauge',
  diffswap_store_technique_saved_bytes: 'gauge',
  diffswap_store_reference_pages: 'gauge',
  diffswap_write_buffer_pages: 'gauge',
  diffswap_write_buffer_capacity_pages: 'gauge',
  diffswap_compaction_running: 'gauge',
  diffswap_compaction_garbage_bytes: 'gauge',
  diffswap_compaction_reclaimed_bytes_total: 'counter',
  diffswap_export_logical_bytes: 'gauge',
  diffswap_export_pages: 'gauge',
  diffswap_build_info: 'gauge',
  process_cpu_user_seconds_total: 'counter',
  process_resident_memory_bytes: 'gauge',
  nodejs_eventloop_lag_seconds: 'gauge',
};

async function scrape(stack: HttpStack) {
  const res = await stack.get('/metrics');
  assert.equal(res.status, 200);
  assert.match(res.headers.get('content-type') ?? '', /^text\/plain; version=0\.0\.4/);
  const text = await res.text();
  return { text, samples: parseMetrics(text) };
}

function declaredTypes(text: string): Map<string, string> {
  const types = new Map<string, string>();
  for (const m of text.matchAll(/^# TYPE (\S+) (\S+)$/gm)) types.set(m[1]!, m[2]!);
  return types;
}

for (const backend of backendsUnderTest().filter((b) => b !== 'nbdkit')) {
  describe(`metrics (${backend})`, () => {
    test('names follow the Prometheus conventions and carry help text', async (t) => {
      const stack = await startHttpStack({ backend, exports: EXPORTS });
      t.after(() => stack.close());
      const { text } = await scrape(stack);
      const types = declaredTypes(text);
      for (const [name, type] of Object.entries(EXPECTED_TYPES)) {
        assert.equal(types.get(name), type, `${name} declared as ${type}`);
        assert.match(text, new RegExp(`^# HELP ${name} \\S`, 'm'), `${name} has help`);
      }
      for (const [name, type] of types) {
        if (!name.startsWith('diffswap_')) continue;
        assert.match(name, /^diffswap_[a-z][a-z0-9_]*[a-z0-9]$/, name);
        assert.equal(name.endsWith('_total'), type === 'counter', `${name} (${type}) and _total`);
        assert.doesNotMatch(
          name,
          /_(ms|kb|mb|kib|mib|percent|milliseconds)(_|$)/,
          `${name}: base units`,
        );
      }
    });

    test('every diffswap metric a scrape carries is in the README reference table', async (t) => {
      const stack = await startHttpStack({ backend, exports: EXPORTS });
      t.after(() => stack.close());
      const { text } = await scrape(stack);
      const readme = await readFile(README, 'utf8');
      const documented = new Set(
        [...readme.matchAll(/^\| `(diffswap_[a-z0-9_]+)` \|/gm)].map((m) => m[1] ?? ''),
      );
      const missing = [...declaredTypes(text).keys()].filter(
        (name) => name.startsWith('diffswap_') && !documented.has(name),
      );
      assert.deepEqual(missing, [], 'metrics the README does not list');
    });

    test('counters, gauges and history move when nbdcopy writes and reads', async (t) => {
      const seed = testSeed();
      t.diagnostic(`image seed ${seed} (replay with DIFFSWAP_TEST_SEED=${seed})`);
      const tmp = await makeTempDir();
      t.after(() => tmp.remove());
      const src = join(tmp.path, 'src.img');
      const out = join(tmp.path, 'out.img');
      await writeMixedImage(src, IMAGE_BYTES, seed);
      const stack = await startHttpStack({ backend, exports: EXPORTS });
      t.after(() => stack.close());

      const before = (await scrape(stack)).samples;
      assert.equal(metricSum(before, 'diffswap_store_logical_bytes'), 0);
      assert.equal(metricSum(before, 'diffswap_nbd_requests_total', { command: 'write' }), 0);

      await runToolOk('nbdcopy', ['--flush', src, stack.srv.uri('disk')]);
      await runToolOk('nbdcopy', [stack.srv.uri('disk'), out]);
      await assertFilesEqual(src, out);

      const after = (await scrape(stack)).samples;
      const stats = stack.srv.backend!.stats();
      const written = metricSum(after, 'diffswap_nbd_payload_bytes_total', {
        command: 'write',
        export: 'disk',
      });
      assert.ok(written > 0 && written <= IMAGE_BYTES, `write payload bytes ${written}`);
      // nbdcopy skips what block status reports as holes, so neither copy moves every byte.
      const read = metricSum(after, 'diffswap_nbd_payload_bytes_total', {
        command: 'read',
        export: 'disk',
      });
      assert.ok(read > 0 && read <= IMAGE_BYTES, `read payload bytes ${read}`);
      const writes = metricSum(after, 'diffswap_nbd_requests_total', {
        command: 'write',
        result: 'ok',
      });
      assert.ok(writes > 0);
      assert.equal(
        metricSum(after, 'diffswap_nbd_request_duration_seconds_count', { command: 'write' }),
        writes,
        'every answered write was timed',
      );
      assert.ok(metricSum(after, 'diffswap_nbd_request_duration_seconds_sum') > 0);

      // Store gauges equal the store's own accounting, which the written image moved.
      assert.ok(stats.logicalBytes > 0);
      assert.equal(metricSum(after, 'diffswap_store_logical_bytes'), stats.logicalBytes);
      assert.equal(metricSum(after, 'diffswap_store_stored_bytes'), stats.storedBytes);
      const pagesByTechnique = metricSum(after, 'diffswap_store_pages');
      const techniquePages = Object.values(stats.techniques).reduce((a, x) => a + x.pages, 0);
      assert.equal(pagesByTechnique, techniquePages);
      assert.equal(
        metricSum(after, 'diffswap_export_logical_bytes', { export: 'disk' }),
        stats.exports[0]!.logicalBytes,
      );
      assert.equal(metricSum(after, 'diffswap_export_logical_bytes', { export: 'spare' }), 0);
      if (backend === 'store') {
        // The mixed image repeats one page and holds compressible patterns.
        const dup = metricSum(after, 'diffswap_store_pages', { technique: 'duplicate' });
        const compressed = metricSum(after, 'diffswap_store_pages', { technique: 'compressed' });
        assert.ok(dup > 0, `duplicate pages ${dup}`);
        assert.ok(compressed > 0, `compressed pages ${compressed}`);
        assert.ok(stats.storedBytes < stats.logicalBytes, 'the store saves space');
        assert.ok(metricSum(after, 'diffswap_store_disk_bytes') > 0);
        const encoded = metricSum(after, 'diffswap_store_pages_encoded_total');
        assert.ok(encoded > 0, `pages encoded ${encoded}`);
        assert.equal(metricSum(after, 'diffswap_store_read_errors_total'), 0);
      }

      // The history the charts draw saw the same traffic.
      const history = await waitFor('history with the copy in it', async () => {
        const h = await jsonOf<{ samples: Array<Record<string, number | null>> }>(
          await stack.get('/api/v1/history'),
        );
        const sum = (key: string) => h.samples.reduce((a, s) => a + Number(s[key] ?? 0), 0);
        return sum('readBytesPerS') > 0 && sum('writeBytesPerS') > 0 ? h : undefined;
      });
      const last = history.samples[history.samples.length - 1]!;
      assert.equal(last.logicalBytes, stats.logicalBytes);
      assert.ok(history.samples.some((s) => Number(s.readP99S) > 0));
    });

    test('a held connection shows per export; refused requests are recent errors', async (t) => {
      const stack = await startHttpStack({ backend, exports: EXPORTS });
      t.after(() => stack.close());
      // nbdsh holds one connection to 'spare' until we have looked, then sends a read past
      // the end that libnbd would refuse by itself in strict mode.
      const tmp = await makeTempDir();
      t.after(() => tmp.remove());
      const flag = join(tmp.path, 'go');
      const held = runNbdsh(
        stack.srv.uri('spare'),
        `
import os, time
h = connect()
deadline = time.time() + 20
while not os.path.exists(${JSON.stringify(flag)}) and time.time() < deadline:
    time.sleep(0.05)
h.set_strict_mode(0)
try:
    h.pread(4096, h.get_size())
except nbd.Error as e:
    emit({'errno': e.errno})
h.shutdown()
`,
      );
      const stats = await waitFor('the connection in /api/v1/stats', async () => {
        const s = await jsonOf<{
          connections: { total: number; byExport: Record<string, number> };
        }>(await stack.get('/api/v1/stats'));
        return s.connections.total > 0 ? s : undefined;
      });
      assert.deepEqual(stats.connections.byExport, { spare: 1 });
      const { connections } = await jsonOf<{ connections: Array<Record<string, unknown>> }>(
        await stack.get('/api/v1/connections'),
      );
      assert.equal(connections.length, 1);
      assert.equal(connections[0]!.exportName, 'spare');
      assert.match(String(connections[0]!.remote), /127\.0\.0\.1/);
      const samples = (await scrape(stack)).samples;
      assert.equal(metricSum(samples, 'diffswap_nbd_connections', { export: 'spare' }), 1);

      await writeFile(flag, '');
      await held;
      const spare = await waitFor('a recent error on spare', async () => {
        const e = await jsonOf<{
          recentErrors: { windowCount: number; total: number };
          clients: number;
        }>(await stack.get('/api/v1/exports/spare'));
        return e.recentErrors.windowCount > 0 ? e : undefined;
      });
      assert.equal(spare.recentErrors.total, 1);
      const disk = await jsonOf<{ recentErrors: { total: number } }>(
        await stack.get('/api/v1/exports/disk'),
      );
      assert.equal(disk.recentErrors.total, 0);
    });
  });
}

test('close() unregisters the store gauges so a new listener can reuse the registry', async (t) => {
  const stack = await startHttpStack({ backend: 'memory', exports: EXPORTS });
  t.after(() => stack.srv.close());
  await stack.http.close();
  const registry = stack.srv.metrics!.registry;
  assert.equal(registry.getSingleMetric('diffswap_store_pages'), undefined);
  assert.ok(registry.getSingleMetric('diffswap_nbd_requests_total'), 'NBD instruments stay');
});
