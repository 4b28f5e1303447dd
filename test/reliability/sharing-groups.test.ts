/**
 * The dedup boundary between sharing groups, seen from outside: a `diffswap serve` with four
 * exports, a1 and a2 in group A, b1 and b2 in group B, written through libnbd.
 *
 * - The same 64 unique pages written to a1 and a2 are stored once (a2 adds no object); the
 *   same pages written to b1 are stored again (a new object each).
 * - Nothing the API or /metrics shows about b1 depends on whether group A holds b1's pages:
 *   b1 (pages group A holds) and b2 (pages nobody holds) look the same in every store figure,
 *   and a1's figures do not move when b1 writes a1's pages.
 *
 * Timing: the content index is keyed by group (src/index/records.ts CONTENT_KEY_BYTES starts
 * with the group id), so a write in B never finds A's object and does the same work as a write
 * of pages nobody holds; this test shows the outcome (a new object), not a timing measurement.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { runToolOk } from '../helpers/exec.js';
import { type ServerProcess, startServerProcess } from '../helpers/server-process.js';
import { fetchMetrics, SYSTEM_PYTHON, scriptPath, sleep } from './support.js';

const PAGE_BYTES = 4096;
const PAGES = 64;
const EXPORT_BYTES = 4 * 1024 * 1024;
/** Content seeds: X is written to a1, a2 and b1; Y (held by nobody else) to b2. */
const SEED_X = 21;
const SEED_Y = 22;

interface TechniqueFigures {
  pages: number;
  objects: number;
  storedBytes: number;
}
interface ExportFigures {
  name: string;
  group: string;
  mappedPages: number;
  storedBytes: number;
  techniques: Record<string, TechniqueFigures>;
}

/**
 * Distinct stored objects an export owns. The `duplicate` row counts objects that are shared
 * (each is also counted under its own technique), so it is left out of the sum.
 */
function objectsOf(e: ExportFigures): number {
  return Object.entries(e.techniques)
    .filter(([name]) => name !== 'duplicate')
    .reduce((sum, [, t]) => sum + t.objects, 0);
}

/** An export's view without its name and live counters that differ by timing. */
function comparable(view: Record<string, unknown>): Record<string, unknown> {
  const { name: _name, recentErrors: _recent, clients: _clients, description: _d, ...rest } = view;
  return rest;
}

describe('sharing groups', () => {
  let dir = '';
  let server: ServerProcess | null = null;

  const write = async (exportName: string, seed: number) => {
    const args = [scriptPath('chunk-io.py'), server!.uri(exportName), 'write', String(seed), '0'];
    const result = await runToolOk(SYSTEM_PYTHON, [...args, String(PAGES), String(PAGE_BYTES)]);
    assert.equal(result.stdout.trim().split('\n').length, PAGES, result.stdout);
  };

  /** Stats once they stopped moving (the HTTP layer caches them for a moment). */
  const exportsNow = async (): Promise<Map<string, Record<string, unknown>>> => {
    let previous = '';
    for (let attempt = 0; attempt < 40; attempt++) {
      const response = await fetch(server!.httpUrl('/api/v1/exports'));
      const body = (await response.json()) as { exports: Record<string, unknown>[] };
      const text = JSON.stringify(body.exports.map(comparable));
      if (text === previous) return new Map(body.exports.map((e) => [String(e.name), e]));
      previous = text;
      await sleep(300);
    }
    throw new Error('export stats never settled');
  };

  const figures = (views: Map<string, Record<string, unknown>>, name: string): ExportFigures => {
    const view = views.get(name);
    assert.ok(view, `export ${name} in /api/v1/exports`);
    return view as unknown as ExportFigures;
  };

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'diffswap-groups-'));
    const config = join(dir, 'diffswap.yaml');
    const exports = [
      ['a1', 'A'],
      ['a2', 'A'],
      ['b1', 'B'],
      ['b2', 'B'],
    ].map(([name, group]) => `  - { name: ${name}, size: ${EXPORT_BYTES}, group: ${group} }`);
    await writeFile(config, ['exports:', ...exports, ''].join('\n'));
    server = await startServerProcess({
      dataDir: join(dir, 'data'),
      exports: [],
      args: ['--config', config],
    });
  });

  after(async () => {
    await server?.kill();
    if (dir !== '') await rm(dir, { recursive: true, force: true });
  });

  test('pages group A holds are stored again in group B, and B cannot tell', async () => {
    await write('a1', SEED_X);
    const before = await exportsNow();
    assert.equal(objectsOf(figures(before, 'a1')), PAGES, 'a1 stores each unique page once');

    await write('b1', SEED_X);
    await write('b2', SEED_Y);
    const after = await exportsNow();
    const b1 = figures(after, 'b1');
    const b2 = figures(after, 'b2');
    assert.equal(b1.group, 'B');
    assert.equal(objectsOf(b1), PAGES, 'b1 stores its own copy of pages group A holds');
    assert.equal(b1.techniques.duplicate?.pages ?? 0, 0, 'no page of b1 is a duplicate');
    // b1's pages exist in group A, b2's nowhere: every figure must be the same.
    assert.deepEqual(comparable(after.get('b1') ?? {}), comparable(after.get('b2') ?? {}));
    assert.deepEqual(b1.techniques, b2.techniques);
    // a1's figures do not move when another group writes a1's pages.
    assert.deepEqual(comparable(after.get('a1') ?? {}), comparable(before.get('a1') ?? {}));
  });

  test('within group A the same pages are stored once', async () => {
    const before = await exportsNow();
    await write('a2', SEED_X);
    const after = await exportsNow();
    const groupObjects = (views: Map<string, Record<string, unknown>>) =>
      objectsOf(figures(views, 'a1')) + objectsOf(figures(views, 'a2'));
    assert.equal(groupObjects(after), groupObjects(before), 'a2 added objects');
    assert.equal(groupObjects(after), PAGES);
    assert.equal(figures(after, 'a2').mappedPages, PAGES);
    const duplicates =
      (figures(after, 'a1').techniques.duplicate?.pages ?? 0) +
      (figures(after, 'a2').techniques.duplicate?.pages ?? 0);
    assert.ok(duplicates >= PAGES, `only ${duplicates} pages counted as duplicates`);
    const stored = figures(after, 'a1').storedBytes + figures(after, 'a2').storedBytes;
    assert.ok(stored <= figures(after, 'b1').storedBytes * 1.01, 'group A stores X once');
  });

  test('/metrics shows b1 and b2 alike', async () => {
    await sleep(500);
    const samples = await fetchMetrics(server!.httpUrl('/metrics'));
    // Store figures only: the NBD request counters and latencies differ by timing, not content.
    const of = (name: string) =>
      samples
        .filter((s) => s.labels.export === name && !s.name.startsWith('diffswap_nbd_'))
        .map((s) => `${s.name}{${JSON.stringify({ ...s.labels, export: '' })}} ${s.value}`)
        .sort();
    assert.ok(of('b1').length > 0, 'no per-export store metrics');
    assert.deepEqual(of('b1'), of('b2'));
  });
});
