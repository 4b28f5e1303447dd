/**
 * A pool of worker threads computing ChunkStats, with results handed back in submission
 * order. At most `inFlightMax` chunks are out at once, so memory stays bounded however
 * large the image (each chunk holds its page buffer).
 */
import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';
import { PAGE_SIZE } from '../device/types.js';
import { type ChunkStats, chunkStats } from './chunk.js';

export interface ChunkRequest {
  id: number;
  buffer: ArrayBuffer;
  pageCount: number;
}

export interface ChunkReply {
  id: number;
  buffer: ArrayBuffer;
  stats: ChunkStats;
}

interface Pending {
  resolve(reply: ChunkReply): void;
  reject(error: Error): void;
}

/** Chunks queued per worker: one computing, one waiting, so no worker idles between two. */
const CHUNKS_PER_WORKER = 2;

/** Worker threads computing ChunkStats; see the file comment. Close it with `close()`. */
export class ChunkPool {
  private readonly workers: Worker[] = [];
  private readonly pending = new Map<number, Pending>();
  private nextId = 0;
  private nextWorker = 0;
  private failure: Error | null = null;

  /** `workerCount` 0 computes inline in this thread (for tiny images and debugging). */
  constructor(readonly workerCount = availableParallelism()) {
    const script = new URL('./worker.js', import.meta.url);
    for (let i = 0; i < workerCount; i++) {
      const worker = new Worker(script);
      worker.on('message', (reply: ChunkReply) => this.settle(reply));
      worker.on('error', (error) => this.fail(error));
      worker.on('exit', (code) => {
        if (code !== 0) this.fail(new Error(`analyze worker exited with code ${code}`));
      });
      this.workers.push(worker);
    }
  }

  /** Chunks that may be out at once before the caller should wait for the oldest. */
  get inFlightMax(): number {
    return Math.max(1, this.workerCount * CHUNKS_PER_WORKER);
  }

  /** Sends `buffer` (transferred: the caller must not touch it until the reply). */
  submit(buffer: ArrayBuffer, pageCount: number): Promise<ChunkReply> {
    if (this.failure) return Promise.reject(this.failure);
    const id = this.nextId++;
    if (this.workers.length === 0) {
      const stats = chunkStats(Buffer.from(buffer, 0, pageCount * PAGE_SIZE), pageCount);
      return Promise.resolve({ id, buffer, stats });
    }
    const promise = new Promise<ChunkReply>((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
    });
    const worker = this.workers[this.nextWorker++ % this.workers.length]!;
    const request: ChunkRequest = { id, buffer, pageCount };
    worker.postMessage(request, [buffer]);
    return promise;
  }

  private settle(reply: ChunkReply): void {
    const pending = this.pending.get(reply.id);
    this.pending.delete(reply.id);
    pending?.resolve(reply);
  }

  private fail(error: Error): void {
    this.failure ??= error;
    for (const pending of this.pending.values()) pending.reject(error);
    this.pending.clear();
  }

  async close(): Promise<void> {
    await Promise.all(this.workers.map((worker) => worker.terminate()));
    this.workers.length = 0;
  }
}
