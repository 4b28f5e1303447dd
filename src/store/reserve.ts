/**
 * Space kept back on the data filesystem, so that a full disk can still be emptied.
 *
 * Design note. Freeing space costs space first: a TRIM commits an LMDB transaction (copy on
 * write: new index pages before old ones are freed), and a copying compaction writes live
 * records before it deletes a segment. On a filesystem that page data filled to the last
 * block, neither could run, and the store would stay full for ever. So the store holds a
 * reserve file of real, allocated blocks (`reserve` in the data directory). When a commit
 * finds the disk full, the store deletes the file: TRIMs and compaction then have that room.
 * While the reserve is released, page batches commit only if the free space left after them
 * would still cover it, so the store's own writes never eat the room meant for freeing
 * space. Once the free space covers the reserve twice, the file is written again.
 *
 * The file's bytes are zeros written out (not fallocate: Node has none, and a sparse file
 * would reserve nothing). A crash while it is released leaves it missing; the next start
 * writes it again where the room is there.
 */
import {
  closeSync,
  fsyncSync,
  openSync,
  rmSync,
  statfsSync,
  statSync,
  truncateSync,
  writeSync,
} from 'node:fs';
import { join } from 'node:path';

/** Name of the reserve file in the data directory. */
export const RESERVE_FILE = 'reserve';
/** The reserve never takes more than this share of the filesystem (small test disks). */
const RESERVE_FS_SHARE_MAX = 0.1;
/** Bytes written per call while filling the reserve. */
const FILL_CHUNK_BYTES = 1024 * 1024;

export class SpaceReserve {
  readonly #dir: string;
  readonly #path: string;
  /** Bytes the reserve holds when in place (the configured size, capped by the disk). */
  readonly bytes: number;
  #held = false;

  /** `wantedBytes`: the configured reserve; 0 turns the mechanism off. */
  constructor(dir: string, wantedBytes: number) {
    this.#dir = dir;
    this.#path = join(dir, RESERVE_FILE);
    const fsBytes = filesystemBytes(dir);
    const bytes = Math.min(wantedBytes, fsBytes * RESERVE_FS_SHARE_MAX);
    this.bytes = Math.floor(bytes / FILL_CHUNK_BYTES) * FILL_CHUNK_BYTES;
  }

  /** True while the reserve file holds its blocks (or when there is no reserve at all). */
  get held(): boolean {
    return this.#held || this.bytes === 0;
  }

  /** Bytes free for an unprivileged writer on the data filesystem. */
  freeBytes(): number {
    try {
      const s = statfsSync(this.#dir);
      return s.bavail * s.bsize;
    } catch {
      return Number.POSITIVE_INFINITY;
    }
  }

  /**
   * Writes the reserve file out to its full size, if it is not already; true when it is in
   * place. On ENOSPC (or any error) the partial file is removed again and false returned.
   */
  ensure(): boolean {
    if (this.bytes === 0) return true;
    if (this.#held) return true;
    const existing = statSync(this.#path, { throwIfNoEntry: false });
    if (existing && existing.size === this.bytes && existing.blocks * 512 >= this.bytes) {
      this.#held = true;
      return true;
    }
    let fd: number | null = null;
    try {
      fd = openSync(this.#path, 'w');
      const zeros = Buffer.alloc(FILL_CHUNK_BYTES);
      for (let at = 0; at < this.bytes; at += zeros.length) {
        writeSync(fd, zeros, 0, Math.min(zeros.length, this.bytes - at), at);
      }
      fsyncSync(fd);
      this.#held = true;
    } catch {
      this.#held = false;
    } finally {
      if (fd !== null) closeSync(fd);
    }
    if (!this.#held) rmSync(this.#path, { force: true });
    return this.#held;
  }

  /** Gives the reserve's blocks back to the filesystem; true if it was held. */
  release(): boolean {
    if (!this.#held) return false;
    this.#held = false;
    try {
      // Truncate first: it frees the blocks even if something still holds the file open.
      truncateSync(this.#path, 0);
    } catch {
      // Missing already: nothing to free.
    }
    rmSync(this.#path, { force: true });
    return true;
  }

  /**
   * Whether `bytes` more may be written while the reserve is released: the free space left
   * after them must still cover the reserve. Always true while the reserve is held.
   */
  allows(bytes: number): boolean {
    return this.held || this.freeBytes() - bytes >= this.bytes;
  }

  /** Writes the reserve again once there is room for it twice over; true if it is held. */
  restoreIfRoom(): boolean {
    if (this.held) return true;
    if (this.freeBytes() < 2 * this.bytes) return false;
    return this.ensure();
  }
}

function filesystemBytes(dir: string): number {
  try {
    const s = statfsSync(dir);
    return s.blocks * s.bsize;
  } catch {
    return Number.POSITIVE_INFINITY;
  }
}
