/**
 * The dashboard in real headless Chromium (Debian's package, driven by playwright-core):
 * over a page store that nbdcopy and qemu-io just filled through NBD, the page shows the
 * store's numbers, every chart draws its series, polling pauses while the tab is hidden,
 * the layout fits a phone, a token passed in the URL fragment works, and the console stays
 * free of errors. Screenshots go to test-artifacts/ (dashboard.png, -dark.png, -phone.png).
 */
import assert from 'node:assert/strict';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { type Browser, chromium, type Page } from 'playwright-core';
import type { ExportSpec, StoreStats } from '../../src/device/types.js';
import { packageRoot } from '../../src/http/ui.js';
import { qemuIo } from '../helpers/clients.js';
import { runToolOk } from '../helpers/exec.js';
import { makeTempDir, testSeed, writeMixedImage } from '../helpers/files.js';
import { type HttpStack, jsonOf, startHttpStack, waitFor } from '../helpers/http.js';

const MiB = 1024 * 1024;
const EXPORTS: ExportSpec[] = [
  { name: 'web-1', sizeBytes: 16 * MiB, description: 'web guest swap' },
  { name: 'web-2', sizeBytes: 16 * MiB, description: 'web guest swap' },
  { name: 'db', sizeBytes: 8 * MiB, group: 'tenant-b', description: 'database guest memory' },
];
const CHART_IDS = [
  'chart-techniques',
  'chart-capacity',
  'chart-throughput',
  'chart-latency',
  'chart-ops',
  'chart-buffer',
];
const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--no-first-run',
  '--disable-quic',
];
/** Rounds of reads and writes before the page loads (about a second each). */
const TRAFFIC_ROUNDS = 8;
/** Upper bound for the page to catch up with the store (two polls plus slack). */
const PAGE_SETTLE_MS = 15_000;

interface PageWatch {
  problems: string[];
  apiRequests: number;
}

/** Records console errors, page exceptions and failed responses of one page. */
function watch(page: Page, allowed: RegExp[] = []): PageWatch {
  const w: PageWatch = { problems: [], apiRequests: 0 };
  const note = (text: string) => {
    if (!allowed.some((re) => re.test(text))) w.problems.push(text);
  };
  page.on('console', (m) => {
    if (m.type() === 'error' || m.type() === 'warning') note(`console ${m.type()}: ${m.text()}`);
  });
  page.on('pageerror', (e) => note(`page error: ${e.message}`));
  page.on('requestfailed', (r) => note(`request failed: ${r.url()} ${r.failure()?.errorText}`));
  page.on('response', (r) => {
    if (r.status() >= 400) note(`HTTP ${r.status()} for ${r.url()}`);
  });
  page.on('request', (r) => {
    if (r.url().includes('/api/v1/')) w.apiRequests++;
  });
  return w;
}

/*
 * The browser globals the page functions below use, typed here because the project's
 * tsconfig has no DOM library (the rest of the code is Node only).
 */
interface PageElement {
  textContent: string | null;
  children: ArrayLike<PageElement>;
  firstChild: PageElement | null;
}
interface PageCanvas {
  width: number;
  height: number;
  getContext(kind: '2d'): {
    getImageData(x: number, y: number, w: number, h: number): { data: Uint8ClampedArray };
  } | null;
}
declare const document: {
  getElementById(id: string): PageElement | null;
  querySelector(selector: string): PageCanvas | null;
  querySelectorAll(selector: string): ArrayLike<PageElement> & Iterable<PageElement>;
  documentElement: { scrollWidth: number };
  dispatchEvent(event: Event): boolean;
};
declare const window: { innerWidth: number };

const count = (n: number) => n.toLocaleString('en-US');
const pct = (ratio: number) => `${(ratio * 100).toFixed(ratio >= 0.995 ? 0 : 1)}%`;

/** Coloured (not grey) pixels on a chart's canvas: series, not just axes and grid. */
function colouredPixels(page: Page, id: string): Promise<number> {
  return page.evaluate((chartId) => {
    const canvas = document.querySelector(`#${chartId} canvas`);
    const ctx = canvas?.getContext('2d');
    if (!canvas || !ctx || canvas.width === 0) return -1;
    const { data } = ctx.getImageData(0, 0, canvas.width, canvas.height);
    let n = 0;
    for (let i = 0; i < data.length; i += 4) {
      const r = data[i]!;
      const g = data[i + 1]!;
      const b = data[i + 2]!;
      if (data[i + 3]! > 128 && Math.max(r, g, b) - Math.min(r, g, b) > 40) n++;
    }
    return n;
  }, id);
}

describe('dashboard in Chromium', () => {
  let browser: Browser;
  let stack: HttpStack;
  let tmp: { path: string; remove(): Promise<void> } | undefined;
  const artifacts = join(packageRoot(), 'test-artifacts');

  before(async () => {
    browser = await chromium.launch({ executablePath: '/usr/bin/chromium', args: CHROMIUM_ARGS });
    await mkdir(artifacts, { recursive: true });
    const seed = testSeed();
    console.log(`# image seed ${seed} (replay with DIFFSWAP_TEST_SEED=${seed})`);
    tmp = await makeTempDir();
    const image = join(tmp.path, 'mixed.img');
    await writeMixedImage(image, 12 * MiB, seed);
    stack = await startHttpStack({ backend: 'store', exports: EXPORTS });

    // Two guests with the same image (cross-export duplicates), one with patterned pages.
    await runToolOk('nbdcopy', ['--flush', image, stack.srv.uri('web-1')]);
    await runToolOk('nbdcopy', ['--flush', image, stack.srv.uri('web-2')]);
    await qemuIo(stack.srv.uri('db'), ['write -P 0x6b 0 2M', 'write -P 0x00 2M 1M', 'flush']);
    await runToolOk('nbdcopy', [stack.srv.uri('web-1'), join(tmp.path, 'back.img')]);
    // A few seconds of mixed traffic, so the rate and latency charts have a history to draw.
    for (let round = 0; round < TRAFFIC_ROUNDS; round++) {
      const at = `${round * 256}k`;
      await qemuIo(stack.srv.uri('db'), [`write -P ${round + 1} ${at} 256k`, 'read 0 2M']);
      await runToolOk('nbdcopy', [stack.srv.uri('web-2'), join(tmp.path, 'back.img')]);
      await new Promise((r) => setTimeout(r, 400));
    }
  });
  after(async () => {
    await browser?.close();
    await stack?.close();
    await tmp?.remove();
  });

  test('shows the numbers of a store just filled, with every chart drawn', async (t) => {
    // Readers keep running while the page is up, so the live figures show traffic; reads do
    // not change the store's accounting the page is compared with.
    let reading = true;
    const readers = (async () => {
      while (reading) await runToolOk('nbdcopy', [stack.srv.uri('web-1'), 'null:']);
    })();
    t.after(async () => {
      reading = false;
      await readers;
    });
    const page = await browser.newPage({ viewport: { width: 1440, height: 900 } });
    const w = watch(page);
    await page.goto(stack.base + '/');
    await page.waitForSelector('#status[data-state="live"]', { timeout: PAGE_SETTLE_MS });

    // The page shows what the store reports (retried while the store's encoder settles).
    await waitFor(
      'the page to match /api/v1/stats',
      async () => {
        const stats = await jsonOf<StoreStats & { savingRatio: number }>(
          await stack.get('/api/v1/stats'),
        );
        const shown = await page.evaluate(() => {
          const cells = (sel: string) =>
            [...document.querySelectorAll(sel)].map((td) => td.textContent?.trim() ?? '');
          return {
            saving: document.getElementById('kpi-saving')?.textContent ?? '',
            techniquePages: [...document.querySelectorAll('#technique-table tbody tr')].map(
              (tr) => tr.children[1]?.textContent ?? '',
            ),
            exportNames: cells('#export-table tbody td.name').map((s) => s.split('\n')[0]),
            mapped: [...document.querySelectorAll('#export-table tbody tr')].map(
              (tr) => tr.children[3]?.textContent ?? '',
            ),
          };
        });
        const expected = {
          saving: pct(stats.savingRatio),
          techniquePages: (['zero', 'duplicate', 'delta', 'compressed', 'raw'] as const).map((k) =>
            count(stats.techniques[k].pages),
          ),
          mapped: stats.exports.map((e) => count(e.mappedPages)),
        };
        const same =
          shown.saving === expected.saving &&
          JSON.stringify(shown.techniquePages) === JSON.stringify(expected.techniquePages) &&
          JSON.stringify(shown.mapped) === JSON.stringify(expected.mapped);
        if (!same) t.diagnostic(`page ${JSON.stringify(shown)} api ${JSON.stringify(expected)}`);
        return same ? stats : undefined;
      },
      PAGE_SETTLE_MS,
    ).then((stats) => {
      assert.ok(stats.logicalBytes > 0);
      assert.ok(stats.savingRatio > 0.3, `saving ${stats.savingRatio}`);
      assert.ok(stats.techniques.duplicate.pages > 0);
    });
    const names = await page.$$eval('#export-table tbody td.name', (tds) =>
      tds.map((td) => td.firstChild?.textContent),
    );
    assert.deepEqual(names, ['web-1', 'web-2', 'db']);

    for (const id of CHART_IDS) {
      const pixels = await colouredPixels(page, id);
      assert.ok(pixels > 150, `${id}: ${pixels} coloured pixels`);
    }
    await page.waitForFunction(
      () => document.getElementById('kpi-read')?.textContent !== '0 B/s',
      undefined,
      { timeout: PAGE_SETTLE_MS },
    );
    await page.screenshot({ path: join(artifacts, 'dashboard.png'), fullPage: true });

    // Switching the system to dark rebuilds the charts in the dark palette.
    await page.emulateMedia({ colorScheme: 'dark' });
    await page.waitForTimeout(2500); // one poll, so the rebuilt charts hold data again
    for (const id of CHART_IDS) {
      const pixels = await colouredPixels(page, id);
      assert.ok(pixels > 150, `${id} (dark): ${pixels} coloured pixels`);
    }
    await page.screenshot({ path: join(artifacts, 'dashboard-dark.png'), fullPage: true });
    assert.deepEqual(w.problems, []);
    await page.close();
  });

  test('polling pauses while the tab is hidden and resumes when shown', async () => {
    const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
    const w = watch(page);
    await page.goto(stack.base + '/');
    await page.waitForSelector('#status[data-state="live"]', { timeout: PAGE_SETTLE_MS });
    const setHidden = (hidden: boolean) =>
      page.evaluate((h) => {
        Object.defineProperty(document, 'hidden', { configurable: true, get: () => h });
        Object.defineProperty(document, 'visibilityState', {
          configurable: true,
          get: () => (h ? 'hidden' : 'visible'),
        });
        document.dispatchEvent(new Event('visibilitychange'));
      }, hidden);
    await setHidden(true);
    await page.waitForSelector('#status[data-state="paused"]');
    await page.waitForTimeout(500); // a poll already in flight may finish
    const before = w.apiRequests;
    await page.waitForTimeout(5000); // more than two poll intervals
    assert.equal(w.apiRequests, before, 'no API requests while hidden');
    await setHidden(false);
    await page.waitForSelector('#status[data-state="live"]', { timeout: PAGE_SETTLE_MS });
    assert.ok(w.apiRequests > before, 'polling resumed');
    assert.deepEqual(w.problems, []);
    await page.close();
  });

  test('the compact button starts a compaction on the store', async () => {
    const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
    const w = watch(page);
    await page.goto(stack.base + '/');
    await page.waitForSelector('#compact-button:not([hidden])', { timeout: PAGE_SETTLE_MS });
    await page.click('#compact-button');
    await page.waitForFunction(
      () => document.getElementById('compact-note')?.textContent === 'compaction started',
    );
    const job = await waitFor('the compaction to finish', async () => {
      const status = await jsonOf<{ startedAtMs: number | null; finishedAtMs: number | null }>(
        await stack.get('/api/v1/compaction'),
      );
      return status.finishedAtMs !== null ? status : undefined;
    });
    assert.ok(job.startedAtMs !== null);
    assert.deepEqual(w.problems, []);
    await page.close();
  });

  test('fits a phone screen without sideways scrolling', async () => {
    const page = await browser.newPage({
      viewport: { width: 390, height: 844 },
      deviceScaleFactor: 2,
      isMobile: true,
      hasTouch: true,
    });
    const w = watch(page);
    await page.goto(stack.base + '/');
    await page.waitForSelector('#status[data-state="live"]', { timeout: PAGE_SETTLE_MS });
    const widths = await page.evaluate(() => ({
      scroll: document.documentElement.scrollWidth,
      inner: window.innerWidth,
    }));
    assert.ok(widths.scroll <= widths.inner, `page ${widths.scroll} px wide on ${widths.inner}`);
    assert.ok((await colouredPixels(page, 'chart-techniques')) > 50);
    await page.screenshot({ path: join(artifacts, 'dashboard-phone.png'), fullPage: false });
    assert.deepEqual(w.problems, []);
    await page.close();
  });

  test('takes a token from the URL fragment, or asks for one', async (t) => {
    const token = 'browser-test-token-0123456789';
    const guarded = await startHttpStack({ backend: 'memory', token });
    t.after(() => guarded.close());

    const page = await browser.newPage();
    const w = watch(page);
    await page.goto(`${guarded.base}/#token=${token}`);
    await page.waitForSelector('#status[data-state="live"]', { timeout: PAGE_SETTLE_MS });
    assert.equal(new URL(page.url()).hash, '', 'the token left the address bar');
    assert.deepEqual(w.problems, []);
    await page.close();

    // Without it, the first poll gets 401 (which Chromium logs) and the page asks.
    const asked = await browser.newPage();
    const w2 = watch(asked, [/401/]);
    await asked.goto(`${guarded.base}/`);
    await asked.waitForSelector('#token-dialog[open]', { timeout: PAGE_SETTLE_MS });
    await asked.fill('#token-input', token);
    await asked.click('#token-form button[type="submit"]');
    await asked.waitForSelector('#status[data-state="live"]', { timeout: PAGE_SETTLE_MS });
    assert.deepEqual(w2.problems, []);
    await asked.close();
  });
});
