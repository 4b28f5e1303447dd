/**
 * Every bound the NBD layer keeps on what a client can make it hold or do, in one place.
 * Defaults suit a swap server for a few VMs; the server takes overrides for tests.
 */
import { NBD_MAX_STRING_BYTES } from './protocol.js';

const MiB = 1024 * 1024;

export interface NbdLimits {
  /**
   * Largest READ/WRITE payload. 32 MiB is what the kernel client ever sends and what qemu
   * accepts; advertised as the maximum in NBD_INFO_BLOCK_SIZE.
   */
  payloadBytesMax: number;
  /**
   * A WRITE longer than payloadBytesMax is read and discarded (to keep the stream framed and
   * answer EINVAL) up to this length; beyond it the connection is closed, since reading it
   * would let one client make the server consume gigabytes for nothing.
   */
  discardBytesMax: number;
  /**
   * Requests one connection may have executing at once. The kernel client keeps up to 128 in
   * flight per socket; more only queues inside the server.
   */
  inFlightMax: number;
  /**
   * Bytes one connection may hold: unparsed input, WRITE payloads in flight and replies not
   * yet taken by the kernel. Above it the server stops reading the socket (backpressure).
   */
  bufferedBytesMax: number;
  /** Options before transmission: negotiation is cheap, but not free; nbdkit allows 32. */
  optionCountMax: number;
  /** Extra options allowed per export, so a client can INFO every export it LISTed. */
  optionCountPerExport: number;
  /**
   * Longest option data. The largest legitimate option is INFO/GO or SET_META_CONTEXT with a
   * few names of at most 4 KiB each; anything longer closes the connection.
   */
  optionBytesMax: number;
  /**
   * BLOCK_STATUS looks at most this many bytes per request; clients ask again at the first
   * offset not covered. Bounds the work and reply size of one request.
   */
  blockStatusBytesMax: number;
  /**
   * Extents one BLOCK_STATUS reply describes at most (the client asks again past the last).
   * A fragmented GiB is a quarter million extents: without a cap, a pipeline of such requests
   * would build hundreds of MB of extent lists before the first reply leaves.
   */
  blockStatusExtentsMax: number;
  /** Connections served at once across all listeners; more are refused at accept. */
  connectionsMax: number;
  /** Time a handshake may take before the connection is dropped (idle unauthenticated peers). */
  handshakeTimeoutMs: number;
  /**
   * After the server ends a connection (DISC, ABORT, shutdown), a client that neither reads
   * its last replies nor closes its side is cut off after this long.
   */
  closeLingerMs: number;
}

export const DEFAULT_LIMITS: Readonly<NbdLimits> = Object.freeze({
  payloadBytesMax: 32 * MiB,
  discardBytesMax: 128 * MiB,
  inFlightMax: 128,
  bufferedBytesMax: 64 * MiB,
  optionCountMax: 32,
  optionCountPerExport: 8,
  optionBytesMax: 16 * NBD_MAX_STRING_BYTES,
  blockStatusBytesMax: 1024 * MiB,
  blockStatusExtentsMax: 64 * 1024,
  connectionsMax: 1024,
  handshakeTimeoutMs: 30_000,
  closeLingerMs: 10_000,
});

/** Block sizes advertised in NBD_INFO_BLOCK_SIZE. */
export const BLOCK_SIZE_MINIMUM = 1;
/** One page: smaller requests cost a read-modify-write. */
export const BLOCK_SIZE_PREFERRED = 4096;
