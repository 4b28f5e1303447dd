/**
 * deploy/: the Prometheus scrape config points at the path the server serves, and every
 * metric the Grafana dashboard queries is one a running server (page store, after nbdcopy
 * wrote through NBD) actually exports, so the dashboard cannot drift from the code.
 */
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { parse } from 'yaml';
import { packageRoot } from '../../src/http/ui.js';
import { runToolOk } from '../helpers/exec.js';
import { makeTempDir, testSeed, writeMixedImage } from '../helpers/files.js';
import { startHttpStack } from '../helpers/http.js';

const MiB = 1024 * 1024;
const deploy = join(packageRoot(), 'deploy');

/** Suffixes Prometheus adds to histogram and counter series. */
function baseName(series: string): string {
  return series.replace(/_(bucket|sum|count)$/, '');
}

test('prometheus.yml scrapes /metrics of the default listener', async () => {
  const config = parse(await readFile(join(deploy, 'prometheus.yml'), 'utf8')) as {
    scrape_configs: Array<{
      job_name: string;
      metrics_path: string;
      static_configs: Array<{ targets: string[] }>;
    }>;
  };
  const job = config.scrape_configs.find((j) => j.job_name === 'diffswap');
  assert.ok(job, 'a diffswap job');
  assert.equal(job.metrics_path, '/metrics');
  assert.deepEqual(job.static_configs[0]?.targets, ['127.0.0.1:8080']);
});

test('every metric the Grafana dashboard queries is exported by the server', async (t) => {
  const dashboard = JSON.parse(await readFile(join(deploy, 'grafana-dashboard.json'), 'utf8')) as {
    panels: Array<{ title: string; targets?: Array<{ expr: string }> }>;
  };
  const queried = new Map<string, string>();
  for (const panel of dashboard.panels) {
    for (const target of panel.targets ?? []) {
      for (const m of target.expr.matchAll(/\b((?:diffswap|process|nodejs)_[a-z0-9_]+)/g)) {
        queried.set(baseName(m[1]!), panel.title);
      }
    }
  }
  assert.ok(queried.size >= 20, `${queried.size} metrics queried`);

  const tmp = await makeTempDir();
  t.after(() => tmp.remove());
  const image = join(tmp.path, 'image');
  await writeMixedImage(image, 2 * MiB, testSeed());
  const stack = await startHttpStack({ backend: 'store' });
  t.after(() => stack.close());
  await runToolOk('nbdcopy', ['--flush', image, stack.srv.uri()]);
  const text = await (await stack.get('/metrics')).text();
  const exported = new Set([...text.matchAll(/^# TYPE (\S+) /gm)].map((m) => m[1]!));
  for (const [name, panel] of queried) {
    assert.ok(
      exported.has(name),
      `panel "${panel}" queries ${name}, which the server does not export`,
    );
  }
});
