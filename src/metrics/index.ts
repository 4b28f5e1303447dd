/**
 * Prometheus instruments (prom-client), one registry per server so tests can run several
 * servers in one process. The data path only increments counters and observes histograms
 * through cached label children; gauges that mirror store state are filled on scrape by
 * collect callbacks registered by whoever owns the state.
 */
import client from 'prom-client';

/** Latency buckets in seconds: 20 us (memory hit) to 2.5 s (stalled disk). */
const LATENCY_BUCKETS_S = [
  0.00002, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1,
  2.5,
];

export class Metrics {
  readonly registry: client.Registry;
  /** NBD requests answered, by command, export and result (`ok` or an errno name). */
  readonly nbdRequests: client.Counter<'command' | 'export' | 'result'>;
  /** Payload bytes moved by READ and WRITE, by command and export. */
  readonly nbdBytes: client.Counter<'command' | 'export'>;
  /** Time from a request's last byte received to its reply queued. */
  readonly nbdLatency: client.Histogram<'command' | 'export'>;
  /** Client input refused, by reason (bad magic, bad range, unknown option, ...). */
  readonly nbdRejected: client.Counter<'reason'>;
  /** Connections in transmission phase, by export. */
  readonly nbdConnections: client.Gauge<'export'>;
  /** Connections accepted since start. */
  readonly nbdConnectionsAccepted: client.Counter;
  /** Run before nbdRequests and nbdBytes are read (see onCollect). */
  readonly #collectHooks = new Set<() => void>();

  constructor(options: { collectProcess?: boolean } = {}) {
    this.registry = new client.Registry();
    const registers = [this.registry];
    if (options.collectProcess) client.collectDefaultMetrics({ register: this.registry });
    this.nbdRequests = new client.Counter({
      name: 'diffswap_nbd_requests_total',
      help: 'NBD requests answered, by command, export and result',
      labelNames: ['command', 'export', 'result'],
      registers,
      collect: () => this.#runCollectHooks(),
    });
    this.nbdBytes = new client.Counter({
      name: 'diffswap_nbd_payload_bytes_total',
      help: 'Payload bytes of NBD READ and WRITE requests',
      labelNames: ['command', 'export'],
      registers,
      collect: () => this.#runCollectHooks(),
    });
    this.nbdLatency = new client.Histogram({
      name: 'diffswap_nbd_request_duration_seconds',
      help: 'Time from a request received to its reply queued',
      labelNames: ['command', 'export'],
      buckets: LATENCY_BUCKETS_S,
      registers,
    });
    this.nbdRejected = new client.Counter({
      name: 'diffswap_nbd_rejected_total',
      help: 'Client input refused, by reason',
      labelNames: ['reason'],
      registers,
    });
    this.nbdConnections = new client.Gauge({
      name: 'diffswap_nbd_connections',
      help: 'NBD connections in transmission phase, by export',
      labelNames: ['export'],
      registers,
    });
    this.nbdConnectionsAccepted = new client.Counter({
      name: 'diffswap_nbd_connections_accepted_total',
      help: 'NBD connections accepted since start',
      registers,
    });
  }

  /**
   * Registers a hook that adds locally kept counts to nbdRequests / nbdBytes just before they
   * are read (scrape, tests), so the data path can count with plain integers. Returns a
   * function that removes the hook.
   */
  onCollect(hook: () => void): () => void {
    this.#collectHooks.add(hook);
    return () => this.#collectHooks.delete(hook);
  }

  #runCollectHooks() {
    for (const hook of this.#collectHooks) hook();
  }
}
