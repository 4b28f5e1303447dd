import assert from 'node:assert/strict';
import { mkdtemp, open, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { createLogger, type LogFormat, prettyLine } from '../../src/log/index.js';

describe('log lines', () => {
  it('shows a pino line as time, level, component, message and fields', () => {
    const time = Date.UTC(2026, 11, 4, 8, 20, 13, 978);
    const json = JSON.stringify({
      level: 30,
      time,
      pid: 1,
      hostname: 'h',
      name: 'diffswap',
      component: 'store',
      exports: 1,
      path: '/tmp/data dir',
      msg: 'page store open',
    });
    assert.equal(
      prettyLine(`${json}\n`),
      '08:20:13.978 INFO  store: page store open exports=1 path="/tmp/data dir"\n',
    );
  });

  it('puts an error message in the line and its stack under it', () => {
    const err = {
      type: 'Error',
      message: 'disk full',
      stack: 'Error: disk full\n    at f (a.js:1)',
    };
    const line = prettyLine(JSON.stringify({ level: 50, time: 0, err, msg: 'commit failed' }));
    assert.equal(line, '00:00:00.000 ERROR commit failed err="disk full"\n    at f (a.js:1)\n');
  });

  it('passes through what is not a JSON object', () => {
    assert.equal(prettyLine('not json\n'), 'not json\n');
    assert.equal(prettyLine('42\n'), '42\n');
  });

  it('writes JSON lines to a file unless pretty ones are asked for', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'diffswap-log-'));
    try {
      const lines = async (format: LogFormat) => {
        const path = join(dir, `${format}.log`);
        const file = await open(path, 'w');
        const logger = createLogger({ fd: file.fd, format }).child({ component: 'test' });
        logger.info({ pages: 3 }, 'hello');
        await new Promise<void>((resolve) => logger.flush(() => resolve()));
        await file.close();
        return readFile(path, 'utf8');
      };
      const auto = JSON.parse(await lines('auto')) as Record<string, unknown>;
      assert.equal(auto.msg, 'hello');
      assert.equal(auto.component, 'test');
      assert.match(await lines('pretty'), /^\d\d:\d\d:\d\d\.\d{3} INFO {2}test: hello pages=3\n$/);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
