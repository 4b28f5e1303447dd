/**
 * Worker thread of `diffswap analyze`: computes ChunkStats for each chunk it is sent and
 * sends the chunk buffer back with them (both transferred, not copied).
 */
import { parentPort } from 'node:worker_threads';
import { PAGE_SIZE } from '../device/types.js';
import { chunkStats, chunkTransferList } from './chunk.js';
import type { ChunkReply, ChunkRequest } from './pool.js';

const port = parentPort;
if (port === null) throw new Error('analyze/worker.js runs only as a worker thread');

port.on('message', (request: ChunkRequest) => {
  const src = Buffer.from(request.buffer, 0, request.pageCount * PAGE_SIZE);
  const stats = chunkStats(src, request.pageCount);
  const reply: ChunkReply = { id: request.id, buffer: request.buffer, stats };
  port.postMessage(reply, [request.buffer, ...chunkTransferList(stats)]);
});
