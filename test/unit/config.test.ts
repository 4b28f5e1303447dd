import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { storeConfigProblems } from '../../src/cli/store-config.js';
import {
  buildConfig,
  ConfigError,
  loadConfig,
  parseDuration,
  parseEndpoint,
  readConfigFile,
  validateStoreKeys,
} from '../../src/config/index.js';
import { formatSize, parseSize } from '../../src/config/size.js';

const EXAMPLE = fileURLToPath(new URL('../../../config/diffswap.example.yaml', import.meta.url));

function writeConfig(text: string): string {
  const path = join(mkdtempSync(join(tmpdir(), 'diffswap-config-')), 'c.yaml');
  writeFileSync(path, text);
  return path;
}

function problemsOf(fn: () => unknown): string[] {
  try {
    fn();
  } catch (error) {
    assert.ok(error instanceof ConfigError, `expected ConfigError, got ${error}`);
    return error.problems;
  }
  assert.fail('expected a ConfigError');
}

describe('sizes', () => {
  it('parses binary and SI units and bare bytes', () => {
    assert.equal(parseSize('512MiB'), 512 * 1024 ** 2);
    assert.equal(parseSize('8GiB'), 8 * 1024 ** 3);
    assert.equal(parseSize('1.5GiB'), 1.5 * 1024 ** 3);
    assert.equal(parseSize('4096'), 4096);
    assert.equal(parseSize('1GB'), 1e9);
    assert.equal(parseSize(65536), 65536);
  });
  it('rejects what is not a size', () => {
    for (const bad of ['', 'big', '12XB', '-1', '1.5', 1.5, -4]) assert.equal(parseSize(bad), null);
  });
  it('formats sizes for people', () => {
    assert.equal(formatSize(4096), '4 KiB');
    assert.equal(formatSize(1536 * 1024 ** 2), '1.50 GiB');
    assert.equal(formatSize(12), '12 B');
  });
});

describe('config', () => {
  it('the example file is valid and matches the defaults', () => {
    const config = buildConfig(readConfigFile(EXAMPLE), {}, {}, storeConfigProblems);
    const defaults = buildConfig({});
    assert.deepEqual(config.nbd, defaults.nbd);
    assert.deepEqual(config.http, defaults.http);
    assert.equal(config.backend, 'store');
    assert.equal(config.exports[0]?.name, 'swap');
    assert.equal(config.exports[0]?.sizeBytes, 8 * 1024 ** 3);
    assert.ok(Object.isFrozen(config) && Object.isFrozen(config.exports));
  });

  it('defaults to loopback, ./data and one export named swap', () => {
    const config = buildConfig({}, {}, {});
    assert.deepEqual(config.nbd.listen, [{ host: '127.0.0.1', port: 10809 }]);
    assert.deepEqual(config.http.listen, { host: '127.0.0.1', port: 8080 });
    assert.match(config.dataDir, /\/data$/);
    assert.deepEqual(
      config.exports.map((e) => e.name),
      ['swap'],
    );
  });

  it('flags override the file', () => {
    const config = buildConfig(
      { data: '/a', nbd: { listen: '127.0.0.1:1' }, exports: [{ name: 'x', size: '1GiB' }] },
      { data: '/b', listen: ['[::1]:2'], exports: ['y:2GiB', 'z:4096'], http: 'off' },
      {},
    );
    assert.equal(config.dataDir, '/b');
    assert.deepEqual(config.nbd.listen, [{ host: '::1', port: 2 }]);
    assert.deepEqual(
      config.exports.map((e) => [e.name, e.sizeBytes]),
      [
        ['y', 2 * 1024 ** 3],
        ['z', 4096],
      ],
    );
    assert.equal(config.http.listen, null);
  });

  it('lists every problem at once, each with a hint', () => {
    const problems = problemsOf(() =>
      buildConfig(
        {
          nbd: { listen: ['nowhere'] },
          exports: [
            { name: 'a', size: 'huge' },
            { name: 'b', size: '1000' },
            { name: 'a', size: '1GiB' },
          ],
        },
        {},
        {},
      ),
    );
    assert.equal(problems.length, 4, problems.join('\n'));
    assert.ok(problems.some((p) => p.includes('nbd.listen') && p.includes('HOST:PORT')));
    assert.ok(problems.some((p) => p.includes('exports[0].size') && p.includes('8GiB')));
    assert.ok(
      problems.some((p) => p.includes('exports[1].size') && p.includes('multiple of 4 KiB')),
    );
    assert.ok(problems.some((p) => p.includes("'a' is listed twice")));
  });

  it('rejects unknown keys and suggests the near one', () => {
    const path = writeConfig('data: /x\nnbd:\n  lisen: "127.0.0.1:1"\nexprots: []\n');
    const problems = problemsOf(() => readConfigFile(path));
    assert.ok(
      problems.some((p) => p.includes("'nbd.lisen'") && p.includes("'listen'")),
      problems.join('\n'),
    );
    assert.ok(problems.some((p) => p.includes("'exprots'") && p.includes("'exports'")));
  });

  it('rejects wrong types and malformed YAML with the file name', () => {
    const typed = writeConfig('backend: disk\nhost:\n  oomScoreAdj: 5000\n');
    const problems = problemsOf(() => readConfigFile(typed));
    assert.equal(problems.length, 2, problems.join('\n'));
    assert.ok(problems.every((p) => p.startsWith(typed)));
    const broken = writeConfig('data: [unclosed\n');
    assert.match(problemsOf(() => readConfigFile(broken))[0] ?? '', /not valid YAML/);
    assert.match(problemsOf(() => readConfigFile('/nonexistent/c.yaml'))[0] ?? '', /cannot read/);
  });

  it('lists the schema problems and the value problems of a file together', () => {
    const path = writeConfig(
      [
        'nbd:',
        '  lisen: "127.0.0.1:1"',
        '  listen: "127.0.0.1:99999"',
        'backend: disk',
        'exports:',
        '  - { name: swap, size: 12XB }',
        'store:',
        '  compressionLevel: 40',
      ].join('\n'),
    );
    const problems = problemsOf(() => loadConfig(path, {}, {}, storeConfigProblems));
    const expected = [
      /'nbd\.lisen'.*'listen'/,
      /backend/,
      /nbd\.listen.*99999/,
      /12XB/,
      /compressionLevel/,
    ];
    for (const pattern of expected) {
      assert.ok(
        problems.some((p) => pattern.test(p)),
        `${pattern} in:\n${problems.join('\n')}`,
      );
    }
    assert.equal(problems.length, expected.length, problems.join('\n'));
  });

  it('takes the HTTP token from the environment over the file', () => {
    const config = buildConfig({ http: { token: 'file' } }, {}, { DIFFSWAP_HTTP_TOKEN: 'env' });
    assert.equal(config.http.token, 'env');
  });

  it('checks store tuning keys against the store defaults', () => {
    const defaults = { compressionLevel: 3, writeBufferBytes: 1024 };
    assert.deepEqual(validateStoreKeys({ compressionLevel: 5 }, defaults), []);
    const problems = validateStoreKeys({ compresionLevel: 5, writeBufferBytes: 'x' }, defaults);
    assert.equal(problems.length, 2);
    assert.match(problems[0] ?? '', /did you mean 'compressionLevel'/);
    const sized = buildConfig({ store: { writeBufferBytes: '64MiB' } }, {}, {});
    assert.equal(sized.store.writeBufferBytes, 64 * 1024 ** 2);
  });

  it('refuses a store export past 16 TiB at start-up; the memory backend takes it', () => {
    const exports = [
      { name: 'huge', size: '100TiB' },
      { name: 'edge', size: '16TiB' },
    ];
    const problems = problemsOf(() => buildConfig({ exports }, {}, {}, storeConfigProblems));
    assert.equal(problems.length, 1, problems.join('\n'));
    assert.match(problems[0] ?? '', /exports 'huge': size 100 TiB is past .* 16 TiB/);
    const memory = buildConfig({ exports, backend: 'memory' }, {}, {}, storeConfigProblems);
    assert.equal(memory.exports[0]?.sizeBytes, 100 * 1024 ** 4);
  });

  it('parses endpoints and durations', () => {
    assert.deepEqual(parseEndpoint('[::1]:10809'), { host: '::1', port: 10809 });
    assert.deepEqual(parseEndpoint(':9'), { host: '127.0.0.1', port: 9 });
    assert.equal(parseEndpoint('127.0.0.1:70000'), null);
    assert.equal(parseEndpoint('[nope]:1'), null);
    assert.equal(parseDuration('5s'), 5000);
    assert.equal(parseDuration('250ms'), 250);
    assert.equal(parseDuration('soon'), null);
  });
});

describe('TLS and access settings', () => {
  it('lists every TLS and access problem at once, each with a hint', () => {
    const problems = problemsOf(() =>
      buildConfig({
        nbd: { tls: { mode: 'required', cert: '/nonexistent/cert.pem' }, socketMode: '999' },
        exports: [
          { name: 'a', size: '1MiB', allow: ['10.0.0.0/33', 'example.com'] },
          { name: 'b', size: '1MiB', allow: [] },
        ],
      }),
    );
    const text = problems.join('\n');
    assert.match(text, /nbd\.tls\.cert: cannot read \/nonexistent\/cert\.pem/);
    assert.match(text, /nbd\.tls: mode required needs cert and key/);
    assert.match(text, /nbd\.socketMode: '999' is not a file mode/);
    assert.match(text, /exports\[0\]\.allow: '10\.0\.0\.0\/33': the prefix length must be 0 to 32/);
    assert.match(text, /exports\[0\]\.allow: 'example\.com' is not an address/);
    assert.match(text, /exports\[1\]\.allow: an empty list lets nobody in/);
    assert.equal(problems.length, 6);
  });

  it('refuses requireTls while TLS is off, and unknown TLS keys by name', () => {
    const problems = problemsOf(() =>
      buildConfig({ exports: [{ name: 'a', size: '1MiB', requireTls: true }] }),
    );
    assert.deepEqual(problems, ['exports[0].requireTls: needs nbd.tls.mode optional or required']);
    const typo = problemsOf(() => readConfigFile(writeConfig('nbd:\n  tls:\n    certs: x\n')));
    assert.match(typo.join('\n'), /unknown key 'nbd\.tls\.certs': did you mean 'cert'\?/);
  });

  it('takes valid TLS files, an octal socket mode and allow rules', () => {
    const dir = mkdtempSync(join(tmpdir(), 'diffswap-tls-config-'));
    const cert = join(dir, 'cert.pem');
    const key = join(dir, 'key.pem');
    writeFileSync(cert, 'x');
    writeFileSync(key, 'x');
    const config = buildConfig({
      nbd: { tls: { mode: 'optional', cert, key }, socket: join(dir, 's'), socketMode: '0660' },
      exports: [
        { name: 'a', size: '1MiB', allow: ['unix', '::1', '192.0.2.0/24'], requireTls: true },
      ],
    });
    assert.deepEqual(config.nbd.tls, {
      mode: 'optional',
      certFile: cert,
      keyFile: key,
      caFile: null,
    });
    assert.equal(config.nbd.socketMode, 0o660);
    assert.deepEqual(config.exportAccess.a, {
      allow: ['unix', '::1', '192.0.2.0/24'],
      requireTls: true,
    });
    assert.deepEqual(buildConfig({}).exportAccess, { swap: { allow: null, requireTls: false } });
  });
});
