/**
 * deploy/: what can be checked without installing anything. The systemd units go through
 * systemd's own checkers (`systemd-analyze verify`, `security --offline`), the unit's config
 * through our config loader, and deploy/diffswap-swap.sh through its argument handling and
 * failure messages (the attach steps past the checks need the nbd module, absent here).
 */
import assert from 'node:assert/strict';
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { storeConfigProblems } from '../../src/cli/store-config.js';
import { buildConfig, readConfigFile } from '../../src/config/index.js';
import { freePort, waitForPort } from '../helpers/nbd-server.js';

const DEPLOY_DIR = fileURLToPath(new URL('../../../deploy/', import.meta.url));
const SERVICE = `${DEPLOY_DIR}diffswap.service`;
const SWAP_SERVICE = `${DEPLOY_DIR}diffswap-swap.service`;
const SCRIPT = `${DEPLOY_DIR}diffswap-swap.sh`;
/**
 * systemd's exposure score runs 0 (locked down) to 10, "OK" up to 4.9; ours is 1.4. The
 * --threshold flag takes tenths.
 */
const EXPOSURE_MAX = 2;
/** An NBD device number no kernel creates by default (nbds_max defaults to 16). */
const ABSENT_DEVICE = '/dev/nbd99999';

interface Run {
  status: number | null;
  stdout: string;
  stderr: string;
}

function run(file: string, args: string[], env: NodeJS.ProcessEnv = process.env): Run {
  const result = spawnSync(file, args, { encoding: 'utf8', timeout: 30_000, env });
  if (result.error) throw result.error;
  return { status: result.status, stdout: result.stdout, stderr: result.stderr };
}

function script(args: string[], prefix: string[] = [], env?: NodeJS.ProcessEnv): Run {
  const command = [...prefix, 'bash', SCRIPT, ...args];
  return run(command[0]!, command.slice(1), env);
}

function unitValues(path: string, key: string): string[] {
  return readFileSync(path, 'utf8')
    .split('\n')
    .filter((line) => line.startsWith(`${key}=`))
    .map((line) => line.slice(key.length + 1));
}

describe('deploy: systemd units', () => {
  it('pass systemd-analyze verify', () => {
    const result = run('systemd-analyze', ['verify', SERVICE, SWAP_SERVICE]);
    assert.equal(result.status, 0, result.stderr);
    assert.equal(result.stderr.trim(), '', 'no warnings');
  });

  it(`expose no more than ${EXPOSURE_MAX} on systemd's security scale`, () => {
    const args = ['security', '--offline=yes', `--threshold=${EXPOSURE_MAX * 10}`, SERVICE];
    const result = run('systemd-analyze', args);
    assert.equal(result.status, 0, `${result.stdout.split('\n').slice(-2).join('')}`);
  });

  it('grant only the capabilities host safety needs, with unlimited locked memory', () => {
    assert.deepEqual(unitValues(SERVICE, 'CapabilityBoundingSet'), [
      'CAP_IPC_LOCK CAP_SYS_RESOURCE',
    ]);
    assert.deepEqual(unitValues(SERVICE, 'AmbientCapabilities'), ['CAP_IPC_LOCK CAP_SYS_RESOURCE']);
    assert.deepEqual(unitValues(SERVICE, 'LimitMEMLOCK'), ['infinity']);
    assert.deepEqual(unitValues(SERVICE, 'Restart'), ['on-failure']);
  });

  it('ship a config the server accepts, with host safety on and data in the state dir', () => {
    const file = readConfigFile(`${DEPLOY_DIR}diffswap.yaml`);
    const config = buildConfig(file, {}, {}, storeConfigProblems);
    assert.deepEqual(config.host, { mlock: true, ioFlusher: true, oomScoreAdj: -900 });
    const stateDir = unitValues(SERVICE, 'StateDirectory')[0];
    assert.equal(config.dataDir, `/var/lib/${stateDir}`);
    const stopTimeoutS = Number.parseInt(unitValues(SERVICE, 'TimeoutStopSec')[0] ?? '', 10);
    assert.ok(config.shutdownGraceMs < stopTimeoutS * 1000, 'shutdown grace fits the stop timeout');
    assert.deepEqual(
      config.nbd.listen.map((e) => e.host),
      ['127.0.0.1'],
      'loopback, as IPAddressAllow=localhost',
    );
  });
});

describe('deploy: diffswap-swap.sh', () => {
  let server: ChildProcess;
  let serverPort: number;
  before(async () => {
    // A real NBD server to attach to (nbdkit, so this test does not depend on ours).
    serverPort = await freePort();
    server = spawn(
      'nbdkit',
      ['-f', '--exit-with-parent', '-i', '127.0.0.1', '-p', String(serverPort), 'memory', '64M'],
      { stdio: 'ignore' },
    );
    await waitForPort(serverPort);
  });
  after(() => {
    server.kill('SIGTERM');
  });

  it('prints usage with --help and exits 0', () => {
    const result = script(['--help']);
    assert.equal(result.status, 0);
    assert.match(result.stdout, /Usage: diffswap-swap\.sh start\|attach\|detach\|stop\|status/);
    assert.match(result.stdout, /nbd-client -b 4096 -N EXPORT HOST PORT DEVICE -swap/);
  });

  const usageErrors: Array<[string[], RegExp]> = [
    [[], /missing command/],
    [['mount'], /unknown command 'mount'/],
    [['attach', '--bogus'], /unknown option '--bogus'/],
    [['attach', '--port'], /option --port needs a value/],
    [['attach', '--port', 'abc'], /port must be a number from 1 to 65535, got 'abc'/],
    [['attach', '--port', '0'], /port must be a number from 1 to 65535, got '0'/],
    [['attach', '--port', '65536'], /got '65536'/],
    [['attach', '--device', '/dev/sda'], /device must be \/dev\/nbdN, got '\/dev\/sda'/],
    [['attach', '--export', ''], /export name must not be empty/],
    [['attach', '--export', 'x'.repeat(4097)], /longer than 4096 bytes/],
    [['attach', '--host', ''], /host must not be empty/],
    [['detach', '--priority', '40000'], /priority must be a number from -1 to 32767/],
    [['stop', '--service', 'a b'], /'a b' is not a unit name/],
  ];
  for (const [args, message] of usageErrors) {
    it(`rejects ${JSON.stringify(args).slice(0, 60)} with exit 2 and a clear message`, () => {
      const result = script(args);
      assert.equal(result.status, 2, result.stderr);
      assert.match(result.stderr, message);
      assert.match(result.stderr, /Run 'diffswap-swap\.sh --help' for usage\./);
      assert.equal(result.stdout, '');
    });
  }

  it('refuses to attach when not root', () => {
    const nobody = ['setpriv', '--reuid=65534', '--regid=65534', '--clear-groups'];
    const result = script(['attach'], nobody);
    assert.equal(result.status, 1);
    assert.match(result.stderr, /attach needs root/);
  });

  it('names every missing tool at once', () => {
    // /usr/sbin holds nbd-client, mkswap and swapon; leave it off the PATH.
    const result = script(['attach'], [], { ...process.env, PATH: '/usr/bin:/bin' });
    assert.equal(result.status, 1);
    assert.match(result.stderr, /missing tools: nbd-client mkswap swapon/);
  });

  it('refuses to attach when nothing listens on the port', async () => {
    const port = await freePort();
    const result = script(['attach', '--port', String(port), '--device', ABSENT_DEVICE]);
    assert.equal(result.status, 1);
    assert.match(result.stderr, new RegExp(`nothing listens on 127\\.0\\.0\\.1:${port}`));
  });

  it('explains a missing NBD device (the nbd module)', () => {
    const result = script(['attach', '--port', String(serverPort), '--device', ABSENT_DEVICE]);
    assert.equal(result.status, 1);
    assert.match(result.stderr, /\/dev\/nbd99999 is not a block device: .*nbd module/);
  });

  it('detaches idempotently: nothing attached is nothing to do', () => {
    const result = script(['detach', '--device', ABSENT_DEVICE]);
    assert.equal(result.status, 0, result.stderr);
    assert.match(result.stdout, /not active swap and not connected; nothing to do/);
  });

  it('reports status, including whether the server listens', () => {
    const up = script(['status', '--port', String(serverPort), '--device', ABSENT_DEVICE]);
    assert.equal(up.status, 0, up.stderr);
    assert.match(up.stdout, /connected: no\nswap: {6}no\nserver: {4}listening on 127\.0\.0\.1:/);
    server.kill('SIGTERM');
    return new Promise<void>((resolve) => server.once('exit', () => resolve())).then(() => {
      const down = script(['status', '--port', String(serverPort), '--device', ABSENT_DEVICE]);
      assert.match(down.stdout, /server: {4}not listening/);
    });
  });
});
