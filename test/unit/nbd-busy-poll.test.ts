/**
 * The busy-poll window: after idle() the event loop keeps running (it spends CPU) for about
 * the window, then sleeps again; a window of 0 never spins. Judged by the process's CPU time
 * over a wait, with wide margins: a loaded machine can only make a spin use less CPU than its
 * window, never more, and an idle loop uses next to none.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { BusyPoll } from '../../src/nbd/busy-poll.js';

/** CPU milliseconds this process uses while `wait` runs. */
async function cpuMsDuring(wait: () => Promise<unknown>): Promise<number> {
  const before = process.cpuUsage();
  await wait();
  const used = process.cpuUsage(before);
  return (used.user + used.system) / 1000;
}

const WINDOW_MS = 60;

describe('busy poll', () => {
  it('keeps the loop running for its window after idle(), then lets it sleep', async () => {
    const poll = new BusyPoll(WINDOW_MS * 1000);
    assert.equal(poll.enabled, true);
    const spinning = await cpuMsDuring(async () => {
      poll.idle();
      await sleep(2 * WINDOW_MS);
    });
    assert.ok(spinning >= WINDOW_MS / 3, `spun for ${spinning} ms of CPU`);
    const after = await cpuMsDuring(() => sleep(2 * WINDOW_MS));
    assert.ok(after < WINDOW_MS / 3, `still spinning after the window: ${after} ms of CPU`);
  });

  it('idle() during the window extends it', async () => {
    const poll = new BusyPoll(WINDOW_MS * 1000);
    const used = await cpuMsDuring(async () => {
      // Four calls half a window apart: the spin runs through all of them, some 2.5 windows.
      for (let i = 0; i < 4; i++) {
        poll.idle();
        await sleep(WINDOW_MS / 2);
      }
    });
    assert.ok(used >= WINDOW_MS * 0.8, `the window was not extended: ${used} ms of CPU`);
    await sleep(2 * WINDOW_MS);
  });

  it('a window of 0 never spins', async () => {
    const poll = new BusyPoll(0);
    assert.equal(poll.enabled, false);
    const used = await cpuMsDuring(async () => {
      poll.idle();
      await sleep(2 * WINDOW_MS);
    });
    assert.ok(used < WINDOW_MS / 3, `${used} ms of CPU with the poll off`);
  });
});
