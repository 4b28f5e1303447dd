/**
 * One client connection: moves bytes between the transport and the frame reader, runs the
 * negotiation, then dispatches requests concurrently and writes their replies as they finish
 * (out of order). Replies finished in the same tick go out in one corked write.
 *
 * Bounds: at most `inFlightMax` requests execute at once, and WRITE payloads in flight plus
 * replies the client has not taken stay under `bufferedBytesMax`; past either the transport is
 * paused until requests finish or the client reads (backpressure, no unbounded queue).
 *
 * The transport is any Duplex; the reader never sees it, so STARTTLS replaces the plain socket
 * with a TLS socket over it between two frames: the ACK leaves in the clear, our listeners
 * move from the plain socket to the TLS one, and the negotiation starts again inside TLS.
 * A client that sent anything after STARTTLS before reading the ACK is cut off (those bytes
 * can be neither options nor TLS records we could hand over).
 */
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { type SecureContext, TLSSocket } from 'node:tls';
import type { Counter, Histogram } from 'prom-client';
import type { ClientOrigin } from '../config/access.js';
import type { Logger } from '../log/index.js';
import type { Metrics } from '../metrics/index.js';
import type { BusyPoll } from './busy-poll.js';
import { toNbdFailure } from './errors.js';
import type { ExportTable } from './exports.js';
import { type Negotiated, Negotiator, type OptionOutcome } from './handshake.js';
import type { NbdLimits } from './limits.js';
import { encodeGreeting, type RequestHeader } from './messages.js';
import {
  COMMAND_NAMES,
  ERRNO_NAMES,
  NBD_CMD_BLOCK_STATUS,
  NBD_CMD_DISC,
  NBD_CMD_FLAG_REQ_ONE,
  NBD_CMD_READ,
  NBD_CMD_WRITE,
  REQUEST_HEADER_BYTES,
} from './protocol.js';
import { type Frame, FrameReader, type WritePolicy } from './reader.js';
import type { ReplySlab } from './slab.js';
import {
  errorReply,
  executeRequest,
  type Rejection,
  type Reply,
  type RequestContext,
  validateRequest,
} from './transmission.js';

/** The server's TLS setup, shared by its connections. */
export interface ServerTls {
  mode: 'optional' | 'required';
  context: SecureContext;
  /** Ask for a client certificate and refuse the handshake without a valid one. */
  requestCert: boolean;
}

export interface ConnectionOptions {
  id: number;
  transport: Duplex;
  remote: string;
  /** Where the client connects from (the exports' allow lists). */
  origin: ClientOrigin;
  tls: ServerTls | null;
  exports: ExportTable;
  metrics: Metrics;
  logger: Logger;
  limits: NbdLimits;
  /** READ reply buffers: this connection's own. */
  slab: ReplySlab;
  /** The server's busy-poll window, told when this connection runs out of requests. */
  busyPoll: BusyPoll;
  onClose: (connection: NbdConnection) => void;
}

type Phase = 'handshake' | 'transmission' | 'closing' | 'closed';

/** Most requests in flight at once for which running dry starts the busy-poll window. */
const BUSY_POLL_IN_FLIGHT_MAX = 1;

/** Label children of one connection's export, looked up once instead of per request. */
interface Instruments {
  ok: Map<number, Counter.Internal>;
  latency: Map<number, Histogram.Internal<'command' | 'export'>>;
  readBytes: Counter.Internal;
  writeBytes: Counter.Internal;
}

/**
 * Successful requests and bytes, counted locally and added to the counters only when they are
 * read (Metrics.onCollect) and at close: prom-client hashes the labels on every inc().
 */
interface Tally {
  okByCommand: Uint32Array;
  readBytes: number;
  writeBytes: number;
}

export class NbdConnection {
  readonly id: number;
  readonly remote: string;
  readonly connectedAtMs = Date.now();
  readonly closed: Promise<void>;
  #transport: Duplex;
  readonly #o: ConnectionOptions;
  readonly #log: Logger;
  readonly #reader: FrameReader;
  readonly #negotiator: Negotiator;
  #phase: Phase = 'handshake';
  #negotiated: Negotiated | null = null;
  #ctx: RequestContext | null = null;
  #instruments: Instruments | null = null;
  readonly #tally: Tally = {
    okByCommand: new Uint32Array(Object.keys(COMMAND_NAMES).length),
    readBytes: 0,
    writeBytes: 0,
  };
  #removeCollectHook: (() => void) | null = null;
  #inFlight = 0;
  /** Most requests in flight since the connection last ran out of them. */
  #inFlightPeak = 0;
  /** Bytes held by requests in flight: WRITE payloads, and READ replies being filled. */
  #bytesInFlight = 0;
  #paused = false;
  #corked = false;
  #shuttingDown = false;
  #ended = false;
  /** Rejection decided by the write policy for the WRITE whose payload is being skipped. */
  #writeRejection: Rejection | null = null;
  #handshakeTimer: NodeJS.Timeout | null = null;
  /** 'pending' from STARTTLS's ACK until the TLS handshake completes. */
  #tls: 'none' | 'pending' | 'up' = 'none';
  readonly #listeners = {
    data: (chunk: Buffer) => this.#onData(chunk),
    end: () => this.#onEnd(),
    error: (error: Error) => this.#onError(error),
    close: () => this.#onClose(),
    drain: () => this.#maybeResume(),
  };
  #resolveClosed!: () => void;

  constructor(options: ConnectionOptions) {
    this.#o = options;
    this.id = options.id;
    this.remote = options.remote;
    this.#transport = options.transport;
    this.#log = options.logger.child({ conn: options.id, remote: options.remote });
    this.closed = new Promise((resolve) => {
      this.#resolveClosed = resolve;
    });
    this.#reader = new FrameReader({
      optionBytesMax: options.limits.optionBytesMax,
      writePolicy: (header) => this.#writePolicy(header),
    });
    this.#negotiator = new Negotiator({
      exports: options.exports,
      send: (buf) => this.#send(buf),
      reject: (reason) => this.#reject(reason),
      payloadBytesMax: options.limits.payloadBytesMax,
      optionCountMax:
        options.limits.optionCountMax + options.limits.optionCountPerExport * options.exports.size,
      shuttingDown: () => this.#shuttingDown,
      tlsMode: options.tls?.mode ?? 'off',
      origin: options.origin,
    });
  }

  get exportName(): string | null {
    return this.#negotiated?.entry.name ?? null;
  }

  /** True once the connection runs over TLS. */
  get tls(): boolean {
    return this.#tls === 'up';
  }

  get inFlight(): number {
    return this.#inFlight;
  }

  /** Bytes this connection holds: unparsed input, requests in flight, unsent replies. */
  get bufferedBytes(): number {
    return this.#reader.bufferedBytes + this.#bytesInFlight + this.#transport.writableLength;
  }

  /** Sends the greeting and starts reading. */
  start(): void {
    this.#attach(this.#transport);
    this.#handshakeTimer = setTimeout(() => {
      this.#reject('handshake_timeout');
      this.#log.info('handshake timed out');
      this.#destroy();
    }, this.#o.limits.handshakeTimeoutMs);
    this.#handshakeTimer.unref();
    this.#send(encodeGreeting());
  }

  /**
   * Server shutdown: options now get ERR_SHUTDOWN and new requests ESHUTDOWN; requests in
   * flight finish, then the connection closes (at once when nothing is in flight).
   */
  shutdown(): void {
    this.#shuttingDown = true;
    if (this.#phase === 'transmission' && this.#inFlight === 0) this.#endGracefully();
  }

  /** Closes now, whatever is in flight (end of the shutdown grace period). */
  destroy(): void {
    this.#destroy();
  }

  #attach(transport: Duplex) {
    for (const [event, listener] of Object.entries(this.#listeners)) transport.on(event, listener);
  }

  /**
   * Stops taking data and flow events from `transport`. Its 'error' and 'close' listeners
   * stay: a plain socket under TLS may still fail or close, and an 'error' nobody listens to
   * would end the process. Both handlers are safe to run twice.
   */
  #detachData(transport: Duplex) {
    const { data, end, drain } = this.#listeners;
    transport.off('data', data).off('end', end).off('drain', drain);
  }

  /** After STARTTLS's ACK: runs the TLS handshake over the plain socket (see the note). */
  #startTls() {
    const tls = this.#o.tls;
    if (tls === null || this.#reader.bufferedBytes > 0) {
      this.#reject('tls_early_data');
      this.#log.info('closing: client sent data after STARTTLS before the TLS handshake');
      this.#destroy();
      return;
    }
    const plain = this.#transport;
    this.#uncork();
    this.#detachData(plain);
    plain.pause();
    this.#tls = 'pending';
    const upgrade = () => {
      if (plain.destroyed) return this.#onClose();
      const secure = new TLSSocket(plain as Socket, {
        isServer: true,
        secureContext: tls.context,
        requestCert: tls.requestCert,
        rejectUnauthorized: tls.requestCert,
      });
      secure.once('secure', () => {
        this.#tls = 'up';
        this.#negotiator.onTlsEstablished();
        this.#log.debug({ protocol: secure.getProtocol() }, 'TLS established');
      });
      this.#transport = secure;
      this.#attach(secure);
    };
    // The ACK must be out in the clear before the TLS socket takes the stream over.
    if (plain.writableLength === 0) upgrade();
    else plain.once('drain', upgrade);
  }

  #onData(chunk: Buffer) {
    this.#reader.push(chunk);
    this.#pumpSafely();
  }

  /**
   * A bug in frame handling must cost this connection, never the process or its neighbours:
   * anything thrown is logged as a server fault and the connection is dropped.
   */
  #pumpSafely() {
    try {
      this.#pump();
    } catch (error) {
      this.#reject('internal_error');
      this.#log.error({ err: error }, 'closing connection after an internal error');
      this.#destroy();
    }
  }

  /** Handles every complete frame the reader has, while the bounds allow. */
  #pump() {
    while (this.#phase === 'handshake' || this.#phase === 'transmission') {
      if (this.#phase === 'transmission' && !this.#canDispatch()) {
        this.#pause();
        return;
      }
      const frame = this.#reader.next();
      if (frame === null) break;
      this.#onFrame(frame);
    }
    this.#resume();
  }

  #canDispatch(): boolean {
    const limits = this.#o.limits;
    if (this.#inFlight >= limits.inFlightMax) return false;
    const held = this.#bytesInFlight + this.#transport.writableLength;
    return held < limits.bufferedBytesMax;
  }

  #onFrame(frame: Frame) {
    switch (frame.kind) {
      case 'clientFlags':
        this.#afterOption(this.#negotiator.onClientFlags(frame.flags));
        return;
      case 'option':
        this.#afterOption(this.#negotiator.onOption(frame.header, frame.data));
        return;
      case 'request':
        this.#onRequest(frame.header, frame.payload, frame.discarded);
        return;
      case 'fatal':
        this.#reject(frame.reason);
        this.#log.info({ reason: frame.reason }, `closing: ${frame.message}`);
        this.#destroy();
        return;
    }
  }

  #afterOption(outcome: OptionOutcome) {
    if (outcome.kind === 'continue') return;
    if (outcome.kind === 'starttls') {
      this.#startTls();
      return;
    }
    if (outcome.kind === 'close') {
      if (outcome.reason !== null) this.#log.info({ reason: outcome.reason }, outcome.message);
      else this.#log.debug(outcome.message);
      this.#endGracefully();
      return;
    }
    this.#enterTransmission(outcome.negotiated);
  }

  #enterTransmission(negotiated: Negotiated) {
    if (this.#handshakeTimer !== null) clearTimeout(this.#handshakeTimer);
    this.#handshakeTimer = null;
    this.#negotiated = negotiated;
    const limits = this.#o.limits;
    this.#ctx = {
      device: negotiated.entry.device,
      sizeBytes: negotiated.entry.sizeBytes,
      structuredReplies: negotiated.structuredReplies,
      blockStatus: negotiated.blockStatus,
      payloadBytesMax: limits.payloadBytesMax,
      blockStatusBytesMax: limits.blockStatusBytesMax,
      blockStatusExtentsMax: limits.blockStatusExtentsMax,
      slab: this.#o.slab,
    };
    this.#instruments = instrumentsFor(this.#o.metrics, negotiated.entry.name);
    this.#removeCollectHook = this.#o.metrics.onCollect(() => this.#flushTally());
    this.#o.metrics.nbdConnections.labels(negotiated.entry.name).inc();
    this.#phase = 'transmission';
    this.#reader.startTransmission();
    this.#log.debug({ export: negotiated.entry.name }, 'transmission started');
  }

  /** Decides from the header alone whether a WRITE's payload is kept or skipped. */
  #writePolicy(header: RequestHeader): WritePolicy {
    const rejection = validateRequest(header, this.#ctx!, this.#shuttingDown);
    this.#writeRejection = rejection;
    if (rejection === null) return 'collect';
    return header.length <= this.#o.limits.discardBytesMax ? 'discard' : 'close';
  }

  #onRequest(header: RequestHeader, payload: Buffer | null, discarded: boolean) {
    if (header.type === NBD_CMD_DISC) {
      this.#log.debug('client disconnected (DISC)');
      this.#endGracefully();
      return;
    }
    const ctx = this.#ctx!;
    const rejection = discarded
      ? this.#writeRejection
      : header.type === NBD_CMD_WRITE
        ? null // checked by the write policy when its header arrived
        : validateRequest(header, ctx, this.#shuttingDown);
    this.#writeRejection = null;
    if (rejection !== null) {
      this.#reject(rejection.reason);
      this.#count(header.type, rejection.errno);
      this.#send(
        errorReply(header.cookie, rejection.errno, rejection.message, ctx.structuredReplies),
      );
      return;
    }
    this.#dispatch(header, payload, ctx);
  }

  #dispatch(header: RequestHeader, payload: Buffer | null, ctx: RequestContext) {
    const startedAt = performance.now();
    // A READ's reply buffer is allocated before its bytes reach the transport: count it now,
    // or a burst of large READs could allocate inFlightMax replies at once. The same for the
    // extent list of a BLOCK_STATUS.
    const heldBytes =
      header.type === NBD_CMD_READ
        ? header.length
        : header.type === NBD_CMD_BLOCK_STATUS
          ? blockStatusHeldBytes(header, ctx)
          : (payload?.length ?? 0);
    this.#inFlight++;
    if (this.#inFlight > this.#inFlightPeak) this.#inFlightPeak = this.#inFlight;
    this.#bytesInFlight += heldBytes;
    executeRequest(header, payload, ctx)
      .then(
        (reply) => this.#finish(header, reply, 0, startedAt, heldBytes),
        (error: unknown) => {
          const failure = toNbdFailure(error);
          if (failure.serverFault) this.#log.error({ err: error }, 'request failed');
          const reply = errorReply(
            header.cookie,
            failure.errno,
            failure.message,
            ctx.structuredReplies,
          );
          this.#finish(header, reply, failure.errno, startedAt, heldBytes);
        },
      )
      .catch((error: unknown) => {
        // Only a bug in #finish lands here; keep it from becoming an unhandled rejection.
        this.#reject('internal_error');
        this.#log.error({ err: error }, 'closing connection after an internal error');
        this.#destroy();
      });
  }

  #finish(h: RequestHeader, reply: Reply, errno: number, startedAt: number, heldBytes: number) {
    this.#inFlight--;
    this.#bytesInFlight -= heldBytes;
    if (this.#phase !== 'closed') {
      if (Array.isArray(reply)) for (const buf of reply) this.#send(buf);
      else this.#send(reply);
    }
    this.#instruments!.latency.get(h.type)?.observe((performance.now() - startedAt) / 1000);
    if (errno === 0) this.#tallyOk(h.type, h.length);
    else this.#count(h.type, errno);
    if (this.#phase === 'closing' || this.#shuttingDown) {
      if (this.#inFlight === 0) this.#endGracefully();
      return;
    }
    this.#maybeResume();
    if (this.#inFlight === 0) {
      // Only a client waiting on one request at a time gains from the spin; a deep queue
      // that drained will refill on its own, and spinning would take CPU it needs.
      if (this.#inFlightPeak <= BUSY_POLL_IN_FLIGHT_MAX) this.#o.busyPoll.idle();
      this.#inFlightPeak = 0;
    }
  }

  #tallyOk(command: number, length: number) {
    const tally = this.#tally;
    if (command < tally.okByCommand.length) tally.okByCommand[command]!++;
    else this.#count(command, 0);
    if (command === NBD_CMD_READ) tally.readBytes += length;
    if (command === NBD_CMD_WRITE) tally.writeBytes += length;
  }

  #flushTally() {
    const instruments = this.#instruments;
    if (instruments === null) return;
    const tally = this.#tally;
    for (let command = 0; command < tally.okByCommand.length; command++) {
      const count = tally.okByCommand[command]!;
      if (count === 0) continue;
      tally.okByCommand[command] = 0;
      instruments.ok.get(command)?.inc(count);
    }
    if (tally.readBytes > 0) instruments.readBytes.inc(tally.readBytes);
    if (tally.writeBytes > 0) instruments.writeBytes.inc(tally.writeBytes);
    tally.readBytes = 0;
    tally.writeBytes = 0;
  }

  /** Counts one request outcome right away (errors: rare, and tests read them at once). */
  #count(command: number, errno: number) {
    this.#o.metrics.nbdRequests
      .labels(
        COMMAND_NAMES[command] ?? 'unknown',
        this.exportName ?? '',
        errno === 0 ? 'ok' : (ERRNO_NAMES[errno] ?? `errno_${errno}`),
      )
      .inc();
  }

  #reject(reason: string) {
    this.#o.metrics.nbdRejected.labels(reason).inc();
  }

  /** Queues bytes for the client; everything sent in one tick leaves in one write. */
  #send(buf: Buffer) {
    const transport = this.#transport;
    if (transport.destroyed || !transport.writable) return;
    if (!this.#corked) {
      this.#corked = true;
      transport.cork();
      process.nextTick(() => this.#uncork());
    }
    transport.write(buf);
  }

  #uncork() {
    if (!this.#corked) return;
    this.#corked = false;
    this.#transport.uncork();
  }

  #pause() {
    if (this.#paused) return;
    this.#paused = true;
    this.#transport.pause();
  }

  #resume() {
    if (!this.#paused) return;
    this.#paused = false;
    this.#transport.resume();
  }

  #maybeResume() {
    if (this.#phase !== 'transmission') return;
    if (this.#paused && this.#canDispatch()) this.#pumpSafely();
  }

  #onEnd() {
    if (this.#phase === 'closed' || this.#phase === 'closing') return;
    if (this.#reader.midFrame) {
      this.#reject('truncated_frame');
      this.#log.info('client closed the connection in the middle of a frame');
    } else {
      this.#log.debug('client closed the connection');
    }
    this.#endGracefully();
  }

  #onError(error: Error) {
    if (this.#phase === 'closed') return;
    if (this.#tls === 'pending') {
      this.#reject('tls_handshake_failed');
      this.#log.info({ err: error.message }, 'TLS handshake failed');
    } else {
      this.#log.debug({ err: error.message }, 'transport error');
    }
    this.#destroy();
  }

  /** Stops reading; closes once the requests in flight have answered. */
  #endGracefully() {
    if (this.#phase === 'closed') return;
    this.#phase = 'closing';
    this.#reader.close();
    if (this.#inFlight > 0 || this.#ended) return;
    this.#ended = true;
    const transport = this.#transport;
    // Uncork first so queued replies go out before the FIN.
    this.#uncork();
    transport.end();
    // A client that never reads its last replies must not keep the socket forever.
    setTimeout(() => transport.destroy(), this.#o.limits.closeLingerMs).unref();
  }

  #destroy() {
    this.#reader.close();
    this.#transport.destroy();
  }

  #onClose() {
    if (this.#phase === 'closed') return;
    this.#flushTally();
    this.#removeCollectHook?.();
    const wasTransmitting = this.#negotiated !== null;
    this.#phase = 'closed';
    this.#reader.close();
    if (this.#handshakeTimer !== null) clearTimeout(this.#handshakeTimer);
    if (wasTransmitting) this.#o.metrics.nbdConnections.labels(this.exportName!).dec();
    this.#o.onClose(this);
    this.#resolveClosed();
  }
}

function instrumentsFor(metrics: Metrics, exportName: string): Instruments {
  const ok = new Map<number, Counter.Internal>();
  const latency = new Map<number, Histogram.Internal<'command' | 'export'>>();
  for (const [code, name] of Object.entries(COMMAND_NAMES)) {
    if (Number(code) === NBD_CMD_DISC) continue;
    ok.set(Number(code), metrics.nbdRequests.labels(name, exportName, 'ok'));
    latency.set(Number(code), metrics.nbdLatency.labels(name, exportName));
  }
  return {
    ok,
    latency,
    readBytes: metrics.nbdBytes.labels('read', exportName),
    writeBytes: metrics.nbdBytes.labels('write', exportName),
  };
}

/**
 * Memory a BLOCK_STATUS holds until its reply is out: its extent list (an object each on the
 * way, far more than the 8 wire bytes of a descriptor) and the reply.
 */
function blockStatusHeldBytes(header: RequestHeader, ctx: RequestContext): number {
  const extents = (header.flags & NBD_CMD_FLAG_REQ_ONE) !== 0 ? 1 : ctx.blockStatusExtentsMax;
  return extents * BLOCK_STATUS_EXTENT_HELD_BYTES;
}

/** Bytes counted per extent of a BLOCK_STATUS in flight (an extent object and its descriptor). */
const BLOCK_STATUS_EXTENT_HELD_BYTES = 64;

/** Exported for tests: smallest buffered-bytes bound that cannot deadlock one full WRITE. */
export function minimumBufferedBytes(limits: NbdLimits): number {
  return limits.payloadBytesMax + REQUEST_HEADER_BYTES;
}
