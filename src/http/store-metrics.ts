/**
 * Prometheus gauges that mirror the store's state. They hold no values of their own: each
 * has a collect callback that reads the store's stats when Prometheus scrapes, so the data
 * path never updates them. Stats are read through a short cache, so one scrape (and a page
 * poll arriving with it) reads the store once.
 */
import client from 'prom-client';
import type { StoreStats } from '../device/types.js';
import type { HostSafetyReport } from '../native/host.js';
import { TECHNIQUES } from './history.js';

/**
 * How long one reading of the store's stats serves the gauges. A scrape collects some
 * twenty of them in a row; the /metrics route starts each scrape with a fresh reading, and
 * this bounds staleness when something else collects the registry.
 */
export const STATS_CACHE_MS = 250;

/** Reads `read()` at most once per `maxAgeMs`, or again after `refresh()`. */
export function cachedStats(read: () => StoreStats, maxAgeMs = STATS_CACHE_MS) {
  let value: StoreStats | null = null;
  let readAtMs = 0;
  const get = (): StoreStats => {
    const nowMs = Date.now();
    if (value === null || nowMs - readAtMs >= maxAgeMs) {
      value = read();
      readAtMs = nowMs;
    }
    return value;
  };
  return Object.assign(get, {
    refresh() {
      value = null;
    },
  });
}

type Read = () => StoreStats;

export interface StoreInfo {
  version: string;
  backendKind: string;
  /** Running totals the page store keeps (read errors, collisions, ...), if any. */
  counters?: (() => Readonly<Record<string, number>>) | undefined;
  /** The host safety measures of `diffswap serve` (mlock, I/O flusher, OOM score), if any. */
  hostSafety?: (() => HostSafetyReport) | undefined;
}

/** Page store counters exported as Prometheus counters: counter key -> metric name, help. */
const STORE_COUNTERS: Record<string, [string, string]> = {
  readErrors: ['diffswap_store_read_errors_total', 'Stored pages that failed to read or verify'],
  collisions: [
    'diffswap_store_hash_collisions_total',
    'Content-hash matches whose bytes differed (stored separately)',
  ],
  batches: ['diffswap_store_encode_batches_total', 'Write batches encoded and committed'],
  pagesEncoded: ['diffswap_store_pages_encoded_total', 'Pages run through the encoder'],
};

/**
 * Registers the store gauges on `registry`, plus process metrics when none are there yet.
 * Returns a function that unregisters everything this call added (for close and tests).
 */
export function registerStoreMetrics(
  registry: client.Registry,
  stats: Read,
  info: StoreInfo,
): () => void {
  const added: string[] = [];
  const registers = [registry];
  const gauge = (name: string, help: string, value: (s: StoreStats) => number) => {
    new client.Gauge({
      name,
      help,
      registers,
      collect() {
        this.set(value(stats()));
      },
    });
    added.push(name);
  };

  gauge(
    'diffswap_store_logical_bytes',
    'Bytes of mapped pages as clients see them',
    (s) => s.logicalBytes,
  );
  gauge('diffswap_store_stored_bytes', 'Payload bytes of live page objects', (s) => s.storedBytes);
  gauge('diffswap_store_disk_bytes', 'Bytes on disk: segments plus index', (s) => s.diskBytes);
  gauge('diffswap_store_index_bytes', 'Bytes of the index (LMDB) on disk', (s) => s.indexBytes);
  gauge(
    'diffswap_store_reference_pages',
    'Objects used as the base of at least one delta',
    (s) => s.referencePages,
  );
  gauge(
    'diffswap_store_reference_dependent_pages',
    'Delta objects leaning on a reference page',
    (s) => s.referenceFanInTotal,
  );
  gauge(
    'diffswap_store_reference_fan_in_max',
    'Most deltas leaning on one reference page',
    (s) => s.referenceFanInMax,
  );
  gauge(
    'diffswap_write_buffer_pages',
    'Pages waiting in the write-back buffer',
    (s) => s.writeBuffer.pages,
  );
  gauge(
    'diffswap_write_buffer_capacity_pages',
    'Capacity of the write-back buffer',
    (s) => s.writeBuffer.capacityPages,
  );
  gauge('diffswap_compaction_running', '1 while a compaction runs', (s) =>
    s.compaction.running ? 1 : 0,
  );
  gauge('diffswap_store_segments', 'Segment files holding payloads', (s) => s.compaction.segments);
  gauge(
    'diffswap_compaction_garbage_bytes',
    'Dead payload bytes a compaction would reclaim',
    (s) => s.compaction.garbageBytes,
  );
  gauge(
    'diffswap_compaction_last_run_timestamp_seconds',
    'Unix time the last compaction finished (0: never)',
    (s) => (s.compaction.lastRunAtMs ?? 0) / 1000,
  );

  const techniqueGauge = (
    name: string,
    help: string,
    key: 'pages' | 'objects' | 'storedBytes' | 'savedBytes',
  ) => {
    new client.Gauge({
      name,
      help,
      labelNames: ['technique'],
      registers,
      collect() {
        const s = stats();
        for (const t of TECHNIQUES) this.set({ technique: t }, s.techniques[t][key]);
      },
    });
    added.push(name);
  };
  techniqueGauge(
    'diffswap_store_pages',
    'Logical pages by the technique that stores them',
    'pages',
  );
  techniqueGauge('diffswap_store_objects', 'Distinct stored objects by technique', 'objects');
  techniqueGauge(
    'diffswap_store_technique_stored_bytes',
    'Payload bytes by technique',
    'storedBytes',
  );
  techniqueGauge(
    'diffswap_store_technique_saved_bytes',
    'Bytes saved against raw pages, by technique',
    'savedBytes',
  );

  added.push(...registerExportGauges(registry, stats));
  added.push(...registerCountersAndInfo(registry, stats, info));
  if (info.hostSafety) added.push(...registerHostSafety(registry, info.hostSafety));
  added.push(...ensureProcessMetrics(registry));
  return () => {
    for (const name of added) registry.removeSingleMetric(name);
  };
}

function registerExportGauges(registry: client.Registry, stats: Read): string[] {
  const registers = [registry];
  const perExport = (
    name: string,
    help: string,
    value: (e: StoreStats['exports'][number]) => number,
  ) => {
    new client.Gauge({
      name,
      help,
      labelNames: ['export', 'group'],
      registers,
      collect() {
        // Reset first so exports that went away stop being reported.
        this.reset();
        for (const e of stats().exports) this.set({ export: e.name, group: e.group }, value(e));
      },
    });
    return name;
  };
  const pagesByTechnique = 'diffswap_export_pages';
  new client.Gauge({
    name: pagesByTechnique,
    help: 'Logical pages of an export by the technique that stores them',
    labelNames: ['export', 'technique'],
    registers,
    collect() {
      this.reset();
      for (const e of stats().exports) {
        for (const t of TECHNIQUES)
          this.set({ export: e.name, technique: t }, e.techniques[t].pages);
      }
    },
  });
  return [
    perExport('diffswap_export_size_bytes', 'Size of an export', (e) => e.sizeBytes),
    perExport(
      'diffswap_export_mapped_pages',
      'Pages of an export holding data',
      (e) => e.mappedPages,
    ),
    perExport(
      'diffswap_export_logical_bytes',
      "Bytes of an export's mapped pages",
      (e) => e.logicalBytes,
    ),
    perExport(
      'diffswap_export_stored_bytes',
      'Payload bytes charged to an export',
      (e) => e.storedBytes,
    ),
    pagesByTechnique,
  ];
}

function registerCountersAndInfo(registry: client.Registry, stats: Read, info: StoreInfo) {
  const registers = [registry];
  const names: string[] = [];
  const counters = info.counters;
  if (counters) {
    for (const [key, [name, help]] of Object.entries(STORE_COUNTERS)) {
      if (typeof counters()[key] !== 'number') continue;
      new client.Counter({
        name,
        help,
        registers,
        collect() {
          this.reset();
          this.inc(counters()[key] ?? 0);
        },
      });
      names.push(name);
    }
  }
  new client.Counter({
    name: 'diffswap_compaction_reclaimed_bytes_total',
    help: 'Payload bytes reclaimed by compaction since the store was created',
    registers,
    collect() {
      // The store keeps the running total; mirror it (a counter cannot be set directly).
      this.reset();
      this.inc(stats().compaction.reclaimedBytesTotal);
    },
  });
  const build = new client.Gauge({
    name: 'diffswap_build_info',
    help: 'Constant 1, labelled with the version and the storage backend',
    labelNames: ['version', 'backend'],
    registers,
  });
  build.set({ version: info.version, backend: info.backendKind }, 1);
  return [...names, 'diffswap_compaction_reclaimed_bytes_total', 'diffswap_build_info'];
}

/** Adds prom-client's process and Node.js metrics unless someone already did. */
function ensureProcessMetrics(registry: client.Registry): string[] {
  if (registry.getSingleMetric('process_cpu_user_seconds_total')) return [];
  const before = new Set(registry.getMetricsAsArray().map((m) => m.name));
  client.collectDefaultMetrics({ register: registry });
  return registry
    .getMetricsAsArray()
    .map((m) => m.name)
    .filter((n) => !before.has(n));
}

/**
 * Whether each host safety measure is in effect (1) or not (0, asked for or not), and the
 * bytes mlock pins: an operator serving swap to its own host alerts on these.
 */
function registerHostSafety(registry: client.Registry, read: () => HostSafetyReport): string[] {
  const registers = [registry];
  new client.Gauge({
    name: 'diffswap_host_safety_in_effect',
    help: 'Host safety measure in effect (1) or not (0): mlock, io_flusher, oom_score_adj',
    labelNames: ['measure', 'requested'],
    registers,
    collect() {
      const r = read();
      const set = (measure: string, requested: boolean, inEffect: boolean) =>
        this.set({ measure, requested: String(requested) }, inEffect ? 1 : 0);
      set('mlock', r.mlock.requested, r.mlock.inEffect);
      set('io_flusher', r.ioFlusher.requested, r.ioFlusher.inEffect);
      set('oom_score_adj', r.oomScoreAdj.requested !== null, r.oomScoreAdj.inEffect);
    },
  });
  new client.Gauge({
    name: 'diffswap_host_locked_bytes',
    help: 'Address space of the server locked in memory (VmLck)',
    registers,
    collect() {
      this.set(read().mlock.lockedBytes ?? 0);
    },
  });
  return ['diffswap_host_safety_in_effect', 'diffswap_host_locked_bytes'];
}
