/**
 * A bare diffswap NBD server in its own process, for benchmarks when the CLI is not usable
 * (DIFFSWAP_BENCH_SERVER=child). Same server and devices as `diffswap serve`, without config
 * files or the HTTP dashboard.
 *
 * Usage: node serve-child.js --port N --backend memory|store [--data DIR] --export NAME:BYTES...
 * Runs until SIGTERM or SIGINT.
 */
import { parseArgs } from 'node:util';
import { MemoryBackend } from '../../../src/device/memory.js';
import type { Backend, ExportSpec } from '../../../src/device/types.js';
import { createLogger } from '../../../src/log/index.js';
import { Metrics } from '../../../src/metrics/index.js';
import { startNbdServer } from '../../../src/nbd/server.js';

const { values } = parseArgs({
  options: {
    port: { type: 'string' },
    backend: { type: 'string', default: 'memory' },
    data: { type: 'string' },
    export: { type: 'string', multiple: true, default: [] },
  },
});

const exports: ExportSpec[] = (values.export ?? []).map((text) => {
  const [name, bytes] = text.split(':');
  if (!name || !bytes || !/^\d+$/.test(bytes)) throw new Error(`--export ${text}: NAME:BYTES`);
  return { name, sizeBytes: Number(bytes) };
});
const logger = createLogger({ level: 'warn' });

async function openBackend(): Promise<Backend> {
  if (values.backend === 'memory') return new MemoryBackend(exports);
  if (!values.data) throw new Error('--backend store needs --data DIR');
  const store = await import('../../../src/store/index.js');
  return store.openPageStore({ dataDir: values.data, exports, logger });
}

const backend = await openBackend();
const server = await startNbdServer({
  backend,
  metrics: new Metrics(),
  logger,
  listen: [{ host: '127.0.0.1', port: Number(values.port ?? 0) }],
});

let stopping = false;
async function stop() {
  if (stopping) return;
  stopping = true;
  await server.close({ graceMs: 1000 });
  await backend.close();
  process.exit(0);
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
