/**
 * The time series behind the dashboard's charts: one sample a second into a ring buffer.
 *
 * Design note. The sampler reads only what the server already keeps: the store's stats (one
 * synchronous call) and the Prometheus instruments the NBD layer updates. Rates and latency
 * percentiles are deltas between two readings of cumulative counters and histogram buckets,
 * so the data path does no extra work for the page and never waits for HTTP. Percentiles are
 * estimated by linear interpolation inside the histogram bucket that holds the rank, the same
 * estimate Prometheus' histogram_quantile() makes, so page and Grafana agree.
 */
import type { StoreStats, TechniqueName } from '../device/types.js';
import type { Logger } from '../log/index.js';
import type { Metrics } from '../metrics/index.js';

/** Time between samples. One second matches the page's refresh and Prometheus' finest use. */
export const HISTORY_INTERVAL_MS = 1000;
/**
 * Samples kept: 15 minutes at one a second. The charts show that window; each sample is a
 * few hundred bytes, so the buffer stays under a megabyte even with many exports.
 */
export const HISTORY_SAMPLES_MAX = 900;
/** Window over which the page reports an export's recent errors. */
export const RECENT_ERRORS_WINDOW_MS = 5 * 60 * 1000;

export const TECHNIQUES: readonly TechniqueName[] = [
  'zero',
  'duplicate',
  'delta',
  'compressed',
  'raw',
];

export interface HistorySample {
  tMs: number;
  logicalBytes: number;
  storedBytes: number;
  diskBytes: number;
  /** Logical pages and payload bytes per technique. */
  techniques: Record<TechniqueName, { pages: number; storedBytes: number }>;
  readOpsPerS: number;
  writeOpsPerS: number;
  /** Requests of any command that ended in an error, per second. */
  errorsPerS: number;
  readBytesPerS: number;
  writeBytesPerS: number;
  /** Latency percentiles over the last interval; null when no request of that kind ran. */
  readP50S: number | null;
  readP99S: number | null;
  writeP50S: number | null;
  writeP99S: number | null;
  bufferPages: number;
  bufferCapacityPages: number;
  /** Connections in transmission phase per export. */
  connections: Record<string, number>;
  /** Cumulative failed requests per export since start (recent errors are differences). */
  errorsTotalByExport: Record<string, number>;
}

/** A fixed-capacity FIFO that overwrites its oldest entry when full. */
export class RingBuffer<T> {
  readonly capacity: number;
  readonly #items: T[] = [];
  #head = 0;

  constructor(capacity: number) {
    if (!Number.isInteger(capacity) || capacity < 1) throw new RangeError('capacity must be >= 1');
    this.capacity = capacity;
  }

  get length(): number {
    return this.#items.length;
  }

  push(item: T): void {
    if (this.#items.length < this.capacity) this.#items.push(item);
    else {
      this.#items[this.#head] = item;
      this.#head = (this.#head + 1) % this.capacity;
    }
  }

  /** Items oldest first. */
  toArray(): T[] {
    return [...this.#items.slice(this.#head), ...this.#items.slice(0, this.#head)];
  }

  last(): T | undefined {
    if (this.#items.length === 0) return undefined;
    const index = (this.#head + this.#items.length - 1) % this.#items.length;
    return this.#items[index];
  }
}

/** Cumulative readings of the NBD instruments, summed over exports. */
interface CounterReading {
  atMs: number;
  /** Requests by command (lower case), any result. */
  requests: Map<string, number>;
  errorsTotal: number;
  errorsByExport: Map<string, number>;
  /** Payload bytes by command. */
  bytes: Map<string, number>;
  /** Cumulative bucket counts by command, then by upper bound (Infinity for +Inf). */
  buckets: Map<string, Map<number, number>>;
}

export interface SamplerSources {
  stats: () => StoreStats;
  metrics: Metrics;
  connections: () => Record<string, number>;
  logger: Logger;
}

/** Samples the store and the NBD instruments every `intervalMs` into a ring buffer. */
export class HistorySampler {
  readonly intervalMs: number;
  readonly #ring: RingBuffer<HistorySample>;
  readonly #sources: SamplerSources;
  #previous: CounterReading | null = null;
  /** Failed requests per export when the sampler started. */
  #startErrors = new Map<string, number>();
  #timer: NodeJS.Timeout | null = null;
  #busy = false;
  #failureLogged = false;

  constructor(
    sources: SamplerSources,
    intervalMs = HISTORY_INTERVAL_MS,
    capacity = HISTORY_SAMPLES_MAX,
  ) {
    this.#sources = sources;
    this.intervalMs = intervalMs;
    this.#ring = new RingBuffer(capacity);
  }

  get capacity(): number {
    return this.#ring.capacity;
  }

  /**
   * Reads the counters now as the baseline for the first rates, then samples every interval.
   * The timer does not hold the process open.
   */
  async start(): Promise<void> {
    this.#previous = await readCounters(this.#sources.metrics);
    this.#startErrors = this.#previous.errorsByExport;
    this.#timer = setInterval(() => void this.tick(), this.intervalMs);
    this.#timer.unref();
  }

  stop(): void {
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = null;
  }

  /** Samples taken after `sinceMs` (all when undefined), oldest first, at most `limit`. */
  samples(sinceMs?: number, limit?: number): HistorySample[] {
    const all = this.#ring.toArray();
    const after = sinceMs === undefined ? all : all.filter((s) => s.tMs > sinceMs);
    return limit === undefined || after.length <= limit ? after : after.slice(-limit);
  }

  latest(): HistorySample | undefined {
    return this.#ring.last();
  }

  /** Failed requests of an export within RECENT_ERRORS_WINDOW_MS, and since start. */
  recentErrors(exportName: string): { windowCount: number; total: number } {
    const all = this.#ring.toArray();
    const last = all[all.length - 1];
    if (!last) return { windowCount: 0, total: 0 };
    const total = last.errorsTotalByExport[exportName] ?? 0;
    const fromMs = last.tMs - RECENT_ERRORS_WINDOW_MS;
    // The count at the window's start: the last sample before it, else the reading taken
    // at start (while the ring still holds everything since then), else the oldest sample.
    const before = all.filter((s) => s.tMs < fromMs).pop();
    let base: number;
    if (before) base = before.errorsTotalByExport[exportName] ?? 0;
    else if (all.length < this.#ring.capacity) base = this.#startErrors.get(exportName) ?? 0;
    else base = all[0]?.errorsTotalByExport[exportName] ?? 0;
    return { windowCount: Math.max(0, total - base), total };
  }

  /** Takes one sample. Overlapping calls are dropped; failures are logged once. */
  async tick(): Promise<void> {
    if (this.#busy) return;
    this.#busy = true;
    try {
      const reading = await readCounters(this.#sources.metrics);
      const stats = this.#sources.stats();
      const sample = buildSample(stats, reading, this.#previous, this.#sources.connections());
      this.#previous = reading;
      this.#ring.push(sample);
      this.#failureLogged = false;
    } catch (err) {
      if (!this.#failureLogged) this.#sources.logger.warn({ err }, 'history sample failed');
      this.#failureLogged = true;
    } finally {
      this.#busy = false;
    }
  }
}

function buildSample(
  stats: StoreStats,
  now: CounterReading,
  before: CounterReading | null,
  connections: Record<string, number>,
): HistorySample {
  const elapsedS = before ? Math.max(0.001, (now.atMs - before.atMs) / 1000) : 1;
  const rate = (cur: Map<string, number>, prev: Map<string, number> | undefined, key: string) =>
    before ? Math.max(0, (cur.get(key) ?? 0) - (prev?.get(key) ?? 0)) / elapsedS : 0;
  const quantile = (command: string, q: number) =>
    before ? bucketQuantile(now.buckets.get(command), before.buckets.get(command), q) : null;
  const techniques = {} as HistorySample['techniques'];
  for (const name of TECHNIQUES) {
    const t = stats.techniques[name];
    techniques[name] = { pages: t.pages, storedBytes: t.storedBytes };
  }
  return {
    tMs: now.atMs,
    logicalBytes: stats.logicalBytes,
    storedBytes: stats.storedBytes,
    diskBytes: stats.diskBytes,
    techniques,
    readOpsPerS: rate(now.requests, before?.requests, 'read'),
    writeOpsPerS: rate(now.requests, before?.requests, 'write'),
    errorsPerS: before ? Math.max(0, now.errorsTotal - before.errorsTotal) / elapsedS : 0,
    readBytesPerS: rate(now.bytes, before?.bytes, 'read'),
    writeBytesPerS: rate(now.bytes, before?.bytes, 'write'),
    readP50S: quantile('read', 0.5),
    readP99S: quantile('read', 0.99),
    writeP50S: quantile('write', 0.5),
    writeP99S: quantile('write', 0.99),
    bufferPages: stats.writeBuffer.pages,
    bufferCapacityPages: stats.writeBuffer.capacityPages,
    connections,
    errorsTotalByExport: Object.fromEntries(now.errorsByExport),
  };
}

/**
 * Estimates quantile `q` of the observations that fell between two readings of cumulative
 * buckets (bound -> count). Null when none fell. Ranks in the +Inf bucket report the largest
 * finite bound, as histogram_quantile() does.
 */
export function bucketQuantile(
  now: Map<number, number> | undefined,
  before: Map<number, number> | undefined,
  q: number,
): number | null {
  if (!now) return null;
  const bounds = [...now.keys()].sort((a, b) => a - b);
  const counts = bounds.map((b) => Math.max(0, (now.get(b) ?? 0) - (before?.get(b) ?? 0)));
  const total = counts[counts.length - 1] ?? 0;
  if (total === 0) return null;
  const rank = q * total;
  let lowerBound = 0;
  let lowerCount = 0;
  for (let i = 0; i < bounds.length; i++) {
    const bound = bounds[i] ?? Infinity;
    const count = counts[i] ?? 0;
    if (count >= rank) {
      if (bound === Infinity) return lowerBound;
      const inBucket = count - lowerCount;
      const fraction = inBucket > 0 ? (rank - lowerCount) / inBucket : 1;
      return lowerBound + (bound - lowerBound) * fraction;
    }
    lowerBound = bound;
    lowerCount = count;
  }
  return lowerBound;
}

async function readCounters(metrics: Metrics): Promise<CounterReading> {
  const [requests, bytes, latency] = await Promise.all([
    metrics.nbdRequests.get(),
    metrics.nbdBytes.get(),
    metrics.nbdLatency.get(),
  ]);
  const reading: CounterReading = {
    atMs: Date.now(),
    requests: new Map(),
    errorsTotal: 0,
    errorsByExport: new Map(),
    bytes: new Map(),
    buckets: new Map(),
  };
  for (const v of requests.values) {
    addTo(reading.requests, commandOf(v.labels.command), v.value);
    if (v.labels.result === 'ok' || v.labels.result === undefined) continue;
    reading.errorsTotal += v.value;
    addTo(reading.errorsByExport, String(v.labels.export ?? ''), v.value);
  }
  for (const v of bytes.values) addTo(reading.bytes, commandOf(v.labels.command), v.value);
  for (const v of latency.values) {
    if (!v.metricName?.endsWith('_bucket')) continue;
    const command = commandOf(v.labels.command);
    const le = (v.labels as { le?: string | number }).le;
    const bound = le === '+Inf' ? Infinity : Number(le);
    const byBound = reading.buckets.get(command) ?? new Map<number, number>();
    reading.buckets.set(command, byBound);
    addTo(byBound, bound, v.value);
  }
  return reading;
}

function commandOf(label: string | number | undefined): string {
  return String(label ?? '').toLowerCase();
}

function addTo<K>(map: Map<K, number>, key: K, value: number) {
  map.set(key, (map.get(key) ?? 0) + value);
}
