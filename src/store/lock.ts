/**
 * One process per store directory: two writers appending to the same segments would
 * corrupt them. Node has no flock(), so the lock is a file holding the owner's pid; a lock
 * whose process is gone (killed, crashed) is stale and taken over.
 */
import { readFileSync, unlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { DeviceError } from '../device/types.js';

const LOCK_FILE = 'LOCK';

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    // EPERM: the process exists but belongs to someone else.
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Takes the lock of `dataDir`; throws DeviceError EINVAL when a live process holds it. */
export function lockStore(dataDir: string): () => void {
  const path = join(dataDir, LOCK_FILE);
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      writeFileSync(path, `${process.pid}\n`, { flag: 'wx' });
      return () => unlockStore(path);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
    }
    const owner = Number.parseInt(readFileSync(path, 'utf8'), 10);
    if (Number.isInteger(owner) && owner > 0 && processAlive(owner)) {
      const who = owner === process.pid ? 'this process' : `process ${owner}`;
      throw new DeviceError('EINVAL', `store ${dataDir} is already open in ${who}`);
    }
    unlinkSync(path);
  }
  throw new DeviceError('EINVAL', `store ${dataDir}: cannot take the lock file ${path}`);
}

function unlockStore(path: string): void {
  try {
    unlinkSync(path);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
  }
}
