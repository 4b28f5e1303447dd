/**
 * The JSON API under /api/v1: routes answer with their schema's fields and the store's real
 * numbers after qemu-io wrote through NBD; bad input gets a JSON error with a stable code;
 * probes, static page files and the listener's limits.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import type { ExportSpec, StoreStats } from '../../src/device/types.js';
import { qemuIo } from '../helpers/clients.js';
import { jsonOf, startHttpStack, waitFor } from '../helpers/http.js';

const MiB = 1024 * 1024;
const EXPORTS: ExportSpec[] = [
  { name: 'vm1', sizeBytes: 16 * MiB, description: 'first guest' },
  { name: 'vm2', sizeBytes: 8 * MiB, group: 'tenant-b' },
];

interface ErrorBody {
  error: { code: string; message: string };
}

describe('HTTP API', () => {
  test('info, exports and stats report the store qemu-io just wrote', async (t) => {
    const stack = await startHttpStack({ backend: 'memory', exports: EXPORTS });
    t.after(() => stack.close());
    await qemuIo(stack.srv.uri('vm1'), ['write -P 0x5a 0 1M', 'write -P 0x11 4M 64k']);

    const info = await jsonOf(await stack.get('/api/v1/info'));
    assert.equal(info.name, 'diffswap');
    assert.equal(info.version, 'test');
    assert.equal(info.backend, 'memory');
    assert.equal(info.exportCount, 2);
    assert.deepEqual(info.capabilities, { compact: false, check: false });
    assert.deepEqual(info.config, { http: { token: '[redacted]' } });
    const nbd = info.nbd as { addresses: Array<{ port?: number }> };
    assert.equal(nbd.addresses[0]?.port, stack.srv.port);

    const expectedPages = (MiB + 64 * 1024) / 4096;
    const { exports } = await jsonOf<{ exports: Array<Record<string, unknown>> }>(
      await stack.get('/api/v1/exports'),
    );
    assert.deepEqual(
      exports.map((e) => [e.name, e.group, e.sizeBytes, e.mappedPages, e.description]),
      [
        ['vm1', 'default', 16 * MiB, expectedPages, 'first guest'],
        ['vm2', 'tenant-b', 8 * MiB, 0, 'diffswap memory export vm2'],
      ],
    );
    const one = await jsonOf(await stack.get('/api/v1/exports/vm1'));
    assert.equal(one.logicalBytes, expectedPages * 4096);
    assert.equal(one.readOnly, false);
    assert.deepEqual(one.recentErrors, { windowS: 300, windowCount: 0, total: 0 });

    const stats = await jsonOf<StoreStats & { savingRatio: number; rates: unknown }>(
      await stack.get('/api/v1/stats'),
    );
    const direct = stack.srv.backend!.stats();
    assert.equal(stats.logicalBytes, direct.logicalBytes);
    assert.equal(stats.storedBytes, direct.storedBytes);
    assert.deepEqual(stats.techniques, direct.techniques);
    assert.equal(stats.techniques.raw.pages, expectedPages);
    assert.equal(stats.savingRatio, 0, 'the memory backend stores pages raw');
  });

  test('unknown export, route, query parameter and bad values answer JSON errors', async (t) => {
    const stack = await startHttpStack({ backend: 'memory', exports: EXPORTS });
    t.after(() => stack.close());
    const cases: Array<[string, RequestInit, number, string]> = [
      ['/api/v1/exports/nope', {}, 404, 'EXPORT_NOT_FOUND'],
      ['/api/v1/nothing', {}, 404, 'NOT_FOUND'],
      ['/api/v1/history?sinceMs=yesterday', {}, 400, 'BAD_REQUEST'],
      ['/api/v1/history?limit=0', {}, 400, 'BAD_REQUEST'],
      ['/api/v1/history?limit=100000', {}, 400, 'BAD_REQUEST'],
      ['/api/v1/history?colour=red', {}, 400, 'BAD_REQUEST'],
      ['/api/v1/stats?colour=red', {}, 400, 'BAD_REQUEST'],
      ['/api/v1/exports/vm1?colour=red', {}, 400, 'BAD_REQUEST'],
      ['/api/v1/stats', { method: 'DELETE' }, 405, 'METHOD_NOT_ALLOWED'],
      ['/api/v1/exports/vm1', { method: 'PUT' }, 405, 'METHOD_NOT_ALLOWED'],
      ['/metrics', { method: 'POST' }, 405, 'METHOD_NOT_ALLOWED'],
      ['/api/v1/compaction?wait=maybe', { method: 'POST' }, 400, 'BAD_REQUEST'],
      ['/api/v1/compaction', { method: 'POST' }, 501, 'NOT_SUPPORTED'],
      ['/api/v1/check?repair=true', { method: 'POST' }, 501, 'NOT_SUPPORTED'],
      [
        '/api/v1/check',
        { method: 'POST', body: 'x'.repeat(64 * 1024), headers: { 'content-type': 'text/plain' } },
        413,
        'PAYLOAD_TOO_LARGE',
      ],
      [
        '/api/v1/check',
        { method: 'POST', body: '{"repair":', headers: { 'content-type': 'application/json' } },
        400,
        'BAD_REQUEST',
      ],
    ];
    for (const [path, init, status, code] of cases) {
      const res = await stack.get(path, init);
      assert.equal(res.headers.get('content-type')?.split(';')[0], 'application/json', path);
      const body = await jsonOf<ErrorBody>(res, status);
      assert.equal(body.error.code, code, `${path}: ${body.error.message}`);
      assert.ok(body.error.message.length > 0);
    }
  });

  test('history: a sample a second, rates of NBD traffic, sinceMs and limit', async (t) => {
    const stack = await startHttpStack({ backend: 'memory', exports: EXPORTS });
    t.after(() => stack.close());
    await qemuIo(stack.srv.uri('vm2'), ['write -P 0x33 0 2M', 'read -P 0x33 0 2M']);

    type Sample = Record<string, number | null> & { tMs: number };
    const history = async (query = '') =>
      jsonOf<{ intervalMs: number; capacity: number; samples: Sample[] }>(
        await stack.get(`/api/v1/history${query}`),
      );
    // The sample covering the second qemu-io ran in shows its bytes.
    const moved = await waitFor('a sample with write and read rates', async () => {
      const h = await history();
      const writes = h.samples.reduce((a, s) => a + Number(s.writeBytesPerS), 0);
      const reads = h.samples.reduce((a, s) => a + Number(s.readBytesPerS), 0);
      return writes > 0 && reads > 0 ? h : undefined;
    });
    assert.equal(moved.intervalMs, 1000);
    assert.equal(moved.capacity, 900);
    const withWrites = moved.samples.find((s) => Number(s.writeBytesPerS) > 0)!;
    assert.ok(Number(withWrites.writeOpsPerS) > 0);
    assert.ok(Number(withWrites.writeP50S) > 0, 'write latency p50 present');
    assert.ok(Number(withWrites.writeP99S) >= Number(withWrites.writeP50S));
    const last = moved.samples[moved.samples.length - 1]!;
    assert.equal(last.logicalBytes, 2 * MiB);

    const all = await waitFor('three samples', async () => {
      const h = await history();
      return h.samples.length >= 3 ? h : undefined;
    });
    const middle = all.samples[1]!.tMs;
    const after = await history(`?sinceMs=${middle}`);
    assert.ok(after.samples.length >= 1);
    assert.ok(after.samples.every((s) => s.tMs > middle));
    assert.equal((await history('?limit=1')).samples.length, 1);
  });

  test('probes: /healthz always, /readyz follows ready()', async (t) => {
    let ready = false;
    const stack = await startHttpStack({ backend: 'memory', exports: EXPORTS, ready: () => ready });
    t.after(() => stack.close());
    assert.deepEqual(await jsonOf(await stack.get('/healthz')), { status: 'ok' });
    assert.deepEqual(await jsonOf(await stack.get('/readyz'), 503), { status: 'starting' });
    ready = true;
    assert.deepEqual(await jsonOf(await stack.get('/readyz')), { status: 'ready' });
  });

  test('serves the page, its script, styles and uPlot with a strict CSP', async (t) => {
    const stack = await startHttpStack({ backend: 'memory', exports: EXPORTS });
    t.after(() => stack.close());
    const page = await stack.get('/');
    assert.equal(page.status, 200);
    assert.match(page.headers.get('content-type') ?? '', /^text\/html/);
    assert.match(page.headers.get('content-security-policy') ?? '', /script-src 'self'/);
    const html = await page.text();
    for (const [path, type] of [
      ['/ui/app.js', 'text/javascript'],
      ['/ui/style.css', 'text/css'],
      ['/ui/vendor/uPlot.iife.min.js', 'text/javascript'],
      ['/ui/vendor/uPlot.min.css', 'text/css'],
      ['/ui/favicon.svg', 'image/svg+xml'],
    ] as const) {
      assert.ok(html.includes(path), `page links ${path}`);
      const res = await stack.get(path);
      assert.equal(res.status, 200, path);
      assert.ok(res.headers.get('content-type')?.startsWith(type), path);
      assert.ok((await res.arrayBuffer()).byteLength > 100, path);
    }
    const traversal = await stack.get('/ui/../package.json');
    assert.notEqual(traversal.status, 200);
  });
});

describe('HTTP API on the page store', () => {
  test('compaction and check run on the store and report their results', async (t) => {
    const stack = await startHttpStack({ backend: 'store', exports: EXPORTS });
    t.after(() => stack.close());
    await qemuIo(stack.srv.uri('vm1'), ['write -P 0x42 0 1M', 'write -P 0x43 0 512k']);
    const info = await jsonOf(await stack.get('/api/v1/info'));
    assert.deepEqual(info.capabilities, { compact: true, check: true });

    const compaction = await jsonOf(
      await stack.get('/api/v1/compaction?wait=true', { method: 'POST' }),
    );
    assert.equal(compaction.running, false);
    assert.equal(compaction.error, null);
    assert.equal(
      typeof (compaction.result as { reclaimedBytes?: unknown }).reclaimedBytes,
      'number',
    );
    const status = await jsonOf(await stack.get('/api/v1/compaction'));
    assert.deepEqual(status.result, compaction.result);

    const check = await jsonOf(await stack.get('/api/v1/check?wait=true', { method: 'POST' }));
    const report = check.result as {
      problems: string[];
      mappingsChecked: number;
      objectsChecked: number;
    };
    assert.deepEqual(report.problems, []);
    assert.ok(report.mappingsChecked > 0, 'check saw the written pages');
    // Progress counts each mapping once and each object twice (decode, then counts).
    const walked = report.mappingsChecked + 2 * report.objectsChecked;
    assert.deepEqual(check.progress, { done: walked, total: walked });
    assert.equal(compaction.progress, null, 'compaction reports no progress');
  });
});
