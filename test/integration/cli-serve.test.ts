/**
 * `diffswap serve` and `diffswap stats` as a user runs them: a listener that cannot bind ends
 * the server with a clear message (a half-started server would keep a supervisor from
 * restarting it), and `stats` prints a running server's accounting and host safety.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { runTool } from '../helpers/exec.js';
import { CLI_PATH, startServerProcess } from '../helpers/server-process.js';

/** A serve that cannot start must end well inside this. */
const EXIT_TIMEOUT_MS = 30_000;

function occupy(): Promise<{ server: Server; port: number }> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      if (address === null || typeof address === 'string') return reject(new Error('no port'));
      resolve({ server, port: address.port });
    });
  });
}

function serve(args: string[], env: Record<string, string> = {}) {
  const dataDir = mkdtempSync(join(tmpdir(), 'diffswap-cli-'));
  const result = runTool(
    process.execPath,
    [CLI_PATH, 'serve', '--data', dataDir, '--export', 'swap:64MiB', ...args],
    { timeoutMs: EXIT_TIMEOUT_MS, env: { DIFFSWAP_LOG_FORMAT: 'json', ...env } },
  );
  return result.finally(() => rmSync(dataDir, { recursive: true, force: true }));
}

describe('diffswap serve start-up failures', () => {
  test('an HTTP address off loopback without a token is a config error (exit 2)', async () => {
    const result = await serve(['--listen', '127.0.0.1:0', '--http', '0.0.0.0:0']);
    assert.equal(result.timedOut, false, 'serve must exit, not keep serving NBD');
    assert.equal(result.code, 2, result.stderr);
    assert.match(result.stderr, /http: .*without a token.*DIFFSWAP_HTTP_TOKEN/);
  });

  test('an NBD port in use ends the server with exit 1', async (t) => {
    const busy = await occupy();
    t.after(() => busy.server.close());
    const result = await serve(['--listen', `127.0.0.1:${busy.port}`, '--http', '127.0.0.1:0']);
    assert.equal(result.timedOut, false, 'serve must exit');
    assert.equal(result.code, 1, result.stderr);
    assert.match(result.stderr, /cannot listen: .*EADDRINUSE/);
  });

  test('an HTTP port in use ends the server with exit 1, NBD closed', async (t) => {
    const busy = await occupy();
    t.after(() => busy.server.close());
    const result = await serve(['--listen', '127.0.0.1:0', '--http', `127.0.0.1:${busy.port}`]);
    assert.equal(result.timedOut, false, 'serve must exit, not keep serving NBD');
    assert.equal(result.code, 1, result.stderr);
    assert.match(result.stderr, /cannot listen: .*EADDRINUSE/);
  });
});

describe('diffswap stats', () => {
  test('prints the accounting and the host safety of a running server', async (t) => {
    const server = await startServerProcess({ exports: ['swap:64MiB'] });
    t.after(() => server.stop());
    const write = await runTool('qemu-io', [
      '-f',
      'raw',
      '-c',
      'write -P 0x5a 0 1M',
      '-c',
      'write -z 1M 1M',
      '-c',
      'flush',
      server.uri('swap'),
    ]);
    assert.equal(write.code, 0, write.stderr);
    const http = `127.0.0.1:${server.httpPort}`;

    const table = await runTool(process.execPath, [CLI_PATH, 'stats', '--http', http]);
    assert.equal(table.code, 0, table.stderr);
    assert.match(table.stdout, /^logical\s+1(\.0)? MiB/m);
    // A repeated byte is a same-word page: counted with zero pages, no object.
    assert.match(table.stdout, /^zero\s+256\s+0\s/m);
    assert.match(table.stdout, /^swap\s+64(\.0)? MiB\s+256\s/m);
    assert.match(table.stdout, /^mlock\s+off/m);
    assert.match(table.stdout, /^io flusher\s+off/m);

    const json = await runTool(process.execPath, [CLI_PATH, 'stats', '--http', http, '--json']);
    assert.equal(json.code, 0, json.stderr);
    const parsed = JSON.parse(json.stdout) as {
      logicalBytes: number;
      hostSafety: { mlock: { requested: boolean; inEffect: boolean } };
    };
    assert.equal(parsed.logicalBytes, 1024 * 1024);
    assert.deepEqual(
      { requested: parsed.hostSafety.mlock.requested, inEffect: parsed.hostSafety.mlock.inEffect },
      { requested: false, inEffect: false },
    );

    const metrics = await (await fetch(server.httpUrl('/metrics'))).text();
    assert.match(
      metrics,
      /^diffswap_host_safety_in_effect\{measure="mlock",requested="false"\} 0$/m,
    );
    assert.match(metrics, /^diffswap_host_locked_bytes \d+$/m);
  });

  test('says so and exits 1 when no server answers', async (t) => {
    const busy = await occupy();
    const port = busy.port;
    await new Promise<void>((resolve) => busy.server.close(() => resolve()));
    t.diagnostic(`port ${port} closed`);
    const result = await runTool(process.execPath, [
      CLI_PATH,
      'stats',
      '--http',
      `127.0.0.1:${port}`,
    ]);
    assert.equal(result.code, 1);
    assert.match(result.stderr, /no server answers at .*start one with `diffswap serve`/);
  });
});
