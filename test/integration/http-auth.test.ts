/**
 * Who may use the HTTP listener: loopback without a token; anywhere else only with one;
 * with a token set, every data route and every write route wants it (constant-time check),
 * while probes and the page's static files stay open.
 */
import assert from 'node:assert/strict';
import { request } from 'node:http';
import { describe, test } from 'node:test';
import { MemoryBackend } from '../../src/device/memory.js';
import { bindRefusal, isLoopbackHost, TokenCheck } from '../../src/http/auth.js';
import { startHttpServer } from '../../src/http/index.js';
import { silentLogger } from '../../src/log/index.js';
import { Metrics } from '../../src/metrics/index.js';
import { jsonOf, startHttpStack } from '../helpers/http.js';

const TOKEN = 'c0ffee-7d1f-4b8e-9a55-e0f1d2c3b4a5';

describe('HTTP auth', () => {
  test('tells loopback hosts from others', () => {
    for (const host of ['127.0.0.1', '127.0.0.2', '127.255.0.9', '::1', '[::1]', 'localhost']) {
      assert.equal(isLoopbackHost(host), true, host);
    }
    for (const host of [
      '0.0.0.0',
      '::',
      '10.0.0.1',
      '192.168.1.5',
      'example.org',
      '::ffff:10.1.1.1',
    ]) {
      assert.equal(isLoopbackHost(host), false, host);
    }
    assert.equal(isLoopbackHost('::ffff:127.0.0.1'), true);
  });

  test('refuses to start off loopback without a token, or with a short token', async () => {
    assert.match(bindRefusal('0.0.0.0', undefined) ?? '', /without a token.*DIFFSWAP_HTTP_TOKEN/);
    assert.match(bindRefusal('::', undefined) ?? '', /without a token/);
    assert.match(bindRefusal('127.0.0.1', 'short') ?? '', /shorter than 16/);
    assert.equal(bindRefusal('0.0.0.0', TOKEN), null);
    assert.equal(bindRefusal('127.0.0.1', undefined), null);

    const metrics = new Metrics();
    const base = {
      port: 0,
      backend: new MemoryBackend([{ name: 'a', sizeBytes: 1 << 20 }]),
      metrics,
      logger: silentLogger(),
      nbd: null,
      info: { version: 'test', startedAtMs: Date.now() },
    };
    await assert.rejects(startHttpServer({ ...base, host: '0.0.0.0' }), /without a token/);
    await assert.rejects(startHttpServer({ ...base, host: '10.1.2.3' }), /without a token/);
    // A refusal registers nothing: a later start on the same registry works.
    const ok = await startHttpServer({ ...base, host: '127.0.0.1' });
    await ok.close();
    assert.equal(metrics.registry.getSingleMetric('diffswap_store_logical_bytes'), undefined);
  });

  test('compares bearer tokens exactly', () => {
    const check = new TokenCheck(TOKEN);
    assert.equal(check.matches(`Bearer ${TOKEN}`), true);
    assert.equal(check.matches(`bearer ${TOKEN}`), true);
    assert.equal(check.matches(undefined), false);
    assert.equal(check.matches(TOKEN), false);
    assert.equal(check.matches(`Bearer ${TOKEN}x`), false);
    assert.equal(check.matches(`Bearer ${TOKEN.slice(0, -1)}`), false);
    assert.equal(check.matches(`Basic ${TOKEN}`), false);
    assert.equal(check.matches('Bearer '), false);
  });

  test('with a token: data and write routes want it, probes and page files do not', async (t) => {
    const stack = await startHttpStack({ backend: 'store', token: TOKEN });
    t.after(() => stack.close());
    const url = (path: string) => stack.base + path;
    const wrong = { authorization: 'Bearer not-the-token-at-all-000' };

    for (const path of ['/api/v1/stats', '/api/v1/info', '/api/v1/history', '/metrics']) {
      for (const headers of [{}, wrong]) {
        const res = await fetch(url(path), { headers });
        const body = await jsonOf<{ error: { code: string } }>(res, 401);
        assert.equal(body.error.code, 'UNAUTHORIZED', path);
        assert.match(res.headers.get('www-authenticate') ?? '', /^Bearer/);
      }
      assert.equal((await stack.get(path)).status, 200, `${path} with the token`);
    }
    for (const path of ['/api/v1/compaction', '/api/v1/check']) {
      const res = await fetch(url(path), { method: 'POST' });
      assert.equal(
        (await jsonOf<{ error: { code: string } }>(res, 401)).error.code,
        'UNAUTHORIZED',
      );
      const started = await stack.get(`${path}?wait=true`, { method: 'POST' });
      assert.equal(started.status, 200, `${path} with the token`);
    }
    for (const path of ['/healthz', '/readyz', '/', '/ui/app.js']) {
      assert.equal((await fetch(url(path))).status, 200, path);
    }
    // A token in the query string is not a way in (it would end up in logs).
    const viaQuery = await fetch(url(`/api/v1/stats?token=${TOKEN}`));
    assert.equal(viaQuery.status, 401);
    // The router decodes the path: spelled with percent escapes it is still the same route,
    // and still wants the token; so do paths that match no route.
    for (const path of ['/%61pi/v1/stats', '/api/v1/%73tats', '/%6detrics', '/no/such/path']) {
      const res = await fetch(url(path));
      assert.equal(
        (await jsonOf<{ error: { code: string } }>(res, 401)).error.code,
        'UNAUTHORIZED',
      );
    }
    const encodedWrite = await fetch(url('/%61pi/v1/compaction?wait=true'), { method: 'POST' });
    assert.equal(encodedWrite.status, 401, 'an encoded write route');
    assert.equal((await stack.get('/%61pi/v1/stats')).status, 200, 'encoded, with the token');
  });

  test('write routes refuse cross-site browsers and rebound host names', async (t) => {
    const stack = await startHttpStack({ backend: 'store' });
    t.after(() => stack.close());
    const port = stack.http.address.port;
    const post = (path: string, headers: Record<string, string>) =>
      new Promise<{ status: number; code: string }>((resolve, reject) => {
        const req = request({ host: '127.0.0.1', port, path, method: 'POST', headers }, (res) => {
          let text = '';
          res.on('data', (chunk) => {
            text += chunk;
          });
          res.on('end', () => {
            const body = text ? (JSON.parse(text) as { error?: { code: string } }) : {};
            resolve({ status: res.statusCode ?? 0, code: body.error?.code ?? '' });
          });
        });
        req.on('error', reject);
        req.end();
      });
    const self = `127.0.0.1:${port}`;
    const refused = [
      { host: self, origin: 'http://evil.example' },
      { host: self, origin: `http://127.0.0.1:${port + 1}` },
      { host: `rebound.example:${port}` },
      { host: `rebound.example:${port}`, origin: `http://rebound.example:${port}` },
    ];
    for (const headers of refused) {
      const res = await post('/api/v1/check?wait=true', headers);
      assert.deepEqual(res, { status: 403, code: 'FORBIDDEN' }, JSON.stringify(headers));
    }
    // The page itself (same origin) and scripts (no Origin) may write.
    for (const headers of [{ host: self, origin: `http://${self}` }, { host: self }]) {
      const res = await post('/api/v1/check?wait=true', headers);
      assert.equal(res.status, 200, JSON.stringify(headers));
    }
    // Reads stay open to any Host: they change nothing.
    const read = await fetch(`${stack.base}/api/v1/info`, {
      headers: { origin: 'http://x.example' },
    });
    assert.equal(read.status, 200);
  });
});
