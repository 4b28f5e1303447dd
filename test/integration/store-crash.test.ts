/**
 * Crash safety of the page store: a child process writes, trims and flushes in a loop and
 * is killed with SIGKILL at a random moment; after reopening, every write acknowledged
 * before a completed flush (or acknowledged as FUA) reads back exactly, and pages written
 * later hold either their durable content or one of the later writes. Several rounds on
 * the same store, so recovery also runs on recovered state. Replay with DIFFSWAP_TEST_SEED;
 * DIFFSWAP_KEEP_TMP=1 keeps the store directory for inspection.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { PAGE_SIZE } from '../../src/device/types.js';
import { openPageStore } from '../../src/store/index.js';
import { makeTempDir, seededRandom, testSeed } from '../helpers/files.js';
import {
  CRASH_EXPORT_PAGES,
  CRASH_TUNING,
  crashPageContent,
} from '../helpers/store-crash-pages.js';

const CHILD = fileURLToPath(new URL('../helpers/store-crash-child.js', import.meta.url));
const ROUNDS = 6;
/** Longest wait for the child's `ready` line; opening a store takes milliseconds. */
const READY_TIMEOUT_MS = 20_000;

interface PageHistory {
  /** Content that must survive, or be replaced by one of `later`. */
  durable: Buffer;
  later: Buffer[];
}

class CrashModel {
  readonly pages = new Map<number, PageHistory>();
  flushes = 0;
  writes = 0;

  constructor() {
    for (let p = 0; p < CRASH_EXPORT_PAGES; p++) {
      this.pages.set(p, { durable: Buffer.alloc(PAGE_SIZE), later: [] });
    }
  }

  #page(p: number): PageHistory {
    const page = this.pages.get(p);
    assert.ok(page, `child reported page ${p}`);
    return page;
  }

  line(text: string): void {
    const [kind, a, b] = text.split(' ');
    if (kind === 'W') {
      this.writes++;
      this.#page(Number(a)).later.push(crashPageContent(Number(a), Number(b)));
    } else if (kind === 'T') {
      for (let p = Number(a); p < Number(a) + Number(b); p++) {
        this.#page(p).later.push(Buffer.alloc(PAGE_SIZE));
      }
    } else if (kind === 'D') {
      const page = this.#page(Number(a));
      page.durable = crashPageContent(Number(a), Number(b));
      page.later = [];
    } else if (kind === 'F') {
      this.flushes++;
      for (const page of this.pages.values()) {
        const last = page.later[page.later.length - 1];
        if (last) page.durable = last;
        page.later = [];
      }
    }
  }
}

async function runChild(dir: string, seed: number, round: number, model: CrashModel) {
  const child = spawn(process.execPath, [CHILD, dir, String(seed), String(round)], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  let rest = '';
  let ready: () => void = () => {};
  const readyPromise = new Promise<void>((resolve) => {
    ready = resolve;
  });
  child.stdout.setEncoding('utf8');
  child.stdout.on('data', (chunk: string) => {
    const lines = (rest + chunk).split('\n');
    rest = lines.pop() ?? '';
    for (const line of lines) {
      if (line === 'ready') ready();
      else model.line(line);
    }
  });
  const exited = once(child, 'exit');
  const timeout = sleep(READY_TIMEOUT_MS).then(() => {
    throw new Error('child did not become ready');
  });
  await Promise.race([readyPromise, timeout]);
  const random = seededRandom(seed);
  await sleep(150 + (random() % 1_000));
  child.kill('SIGKILL');
  const [code, signal] = await exited;
  // Lines the child wrote before dying may still sit in the pipe: 'exit' can come first.
  if (!child.stdout.readableEnded) await once(child.stdout, 'end');
  if (rest) model.line(rest);
  assert.equal(signal, 'SIGKILL', `child ended by itself (code ${code})`);
}

test('writes acknowledged before a completed flush survive SIGKILL', async () => {
  const seed = testSeed();
  const tmp = await makeTempDir('diffswap-store-crash-');
  const model = new CrashModel();
  try {
    for (let round = 0; round < ROUNDS; round++) {
      await runChild(tmp.path, seed + round, round, model);
      const store = await openPageStore({
        dataDir: tmp.path,
        exports: [{ name: 'crash', sizeBytes: CRASH_EXPORT_PAGES * PAGE_SIZE }],
        tuning: CRASH_TUNING,
      });
      const device = store.device('crash');
      assert.ok(device);
      const got = Buffer.alloc(CRASH_EXPORT_PAGES * PAGE_SIZE);
      await device.readPages(0, CRASH_EXPORT_PAGES, got, 0);
      for (const [p, history] of model.pages) {
        const page = got.subarray(p * PAGE_SIZE, (p + 1) * PAGE_SIZE);
        const ok = page.equals(history.durable) || history.later.some((c) => page.equals(c));
        assert.ok(ok, `seed ${seed} round ${round}: page ${p} lost a flushed write`);
        history.durable = Buffer.from(page);
        history.later = [];
      }
      const problems = (await store.check({ repair: false })).problems;
      assert.deepEqual(problems, [], `seed ${seed} round ${round}`);
      await store.close();
    }
    assert.ok(model.flushes > ROUNDS, `flushes completed: ${model.flushes}`);
    assert.ok(model.writes > 100, `writes issued: ${model.writes}`);
  } catch (error) {
    console.error(`store crash test failed; replay with DIFFSWAP_TEST_SEED=${seed}`);
    throw error;
  } finally {
    if (process.env.DIFFSWAP_KEEP_TMP !== '1') await tmp.remove();
    else console.error(`kept ${tmp.path}`);
  }
});
