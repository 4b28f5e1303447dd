/**
 * Incremental NBD frame reader, independent of any socket: bytes go in with `push` (in pieces
 * of any size, split anywhere), whole frames come out of `next()`. The connection drives it
 * and can swap the transport under it (TLS upgrade) since it only ever sees Buffers.
 *
 * Phases follow the protocol: client flags, then option requests, then (after the connection
 * says so) transmission requests. A WRITE's payload is collected into one Buffer, or skipped
 * without buffering when the write policy says the request will be refused, so the stream
 * stays framed.
 */
import {
  type OptionHeader,
  parseOptionHeader,
  parseRequestHeader,
  type RequestHeader,
} from './messages.js';
import {
  CLIENT_FLAGS_BYTES,
  IHAVEOPT,
  NBD_CMD_WRITE,
  NBD_REQUEST_MAGIC,
  OPTION_HEADER_BYTES,
  REQUEST_HEADER_BYTES,
} from './protocol.js';

/** A FIFO of received chunks with zero-copy takes when a frame lies inside one chunk. */
export class ByteQueue {
  #chunks: Buffer[] = [];
  /** Index of the first live chunk and the offset of the first live byte in it. */
  #head = 0;
  #headOffset = 0;
  #length = 0;

  get length(): number {
    return this.#length;
  }

  push(chunk: Buffer): void {
    if (chunk.length === 0) return;
    this.#chunks.push(chunk);
    this.#length += chunk.length;
  }

  /** Removes and returns the first `n` bytes (n <= length). May share memory with input. */
  take(n: number): Buffer {
    if (n === 0) return Buffer.alloc(0);
    const first = this.#chunks[this.#head]!;
    const available = first.length - this.#headOffset;
    if (n <= available) {
      const out = first.subarray(this.#headOffset, this.#headOffset + n);
      this.#advance(n);
      return out;
    }
    const out = Buffer.allocUnsafe(n);
    let filled = 0;
    while (filled < n) {
      const chunk = this.#chunks[this.#head]!;
      const from = this.#headOffset;
      const count = Math.min(n - filled, chunk.length - from);
      chunk.copy(out, filled, from, from + count);
      filled += count;
      this.#advance(count);
    }
    return out;
  }

  /** Drops up to `n` bytes; returns how many were dropped. */
  skip(n: number): number {
    let skipped = 0;
    while (skipped < n && this.#length > 0) {
      const chunk = this.#chunks[this.#head]!;
      const count = Math.min(n - skipped, chunk.length - this.#headOffset);
      this.#advance(count);
      skipped += count;
    }
    return skipped;
  }

  /** Drops everything (connection closing). */
  clear(): void {
    this.#chunks = [];
    this.#head = 0;
    this.#headOffset = 0;
    this.#length = 0;
  }

  #advance(n: number) {
    this.#length -= n;
    this.#headOffset += n;
    const chunk = this.#chunks[this.#head]!;
    if (this.#headOffset < chunk.length) return;
    this.#head++;
    this.#headOffset = 0;
    // Compact the array now and then rather than shifting on every chunk.
    if (this.#head === this.#chunks.length) {
      this.#chunks = [];
      this.#head = 0;
    } else if (this.#head >= 64) {
      this.#chunks = this.#chunks.slice(this.#head);
      this.#head = 0;
    }
  }
}

/** What the connection wants done with a WRITE's payload. */
export type WritePolicy = 'collect' | 'discard' | 'close';

export type Frame =
  | { kind: 'clientFlags'; flags: number }
  | { kind: 'option'; header: OptionHeader; data: Buffer }
  | {
      kind: 'request';
      header: RequestHeader;
      /** WRITE payload when collected; null for other commands and discarded payloads. */
      payload: Buffer | null;
      /** True when a WRITE's payload was read and thrown away. */
      discarded: boolean;
    }
  /** The stream cannot be framed any more (or a limit was hit): close the connection. */
  | { kind: 'fatal'; reason: string; message: string };

export interface FrameReaderOptions {
  /** Option data longer than this is fatal (see NbdLimits.optionBytesMax). */
  optionBytesMax: number;
  /** Decides, from a WRITE header alone, whether its payload is collected or skipped. */
  writePolicy: (header: RequestHeader) => WritePolicy;
}

type Phase = 'clientFlags' | 'options' | 'transmission' | 'closed';

export class FrameReader {
  readonly #queue = new ByteQueue();
  readonly #options: FrameReaderOptions;
  #phase: Phase = 'clientFlags';
  /** Option or WRITE waiting for its data / payload. */
  #pendingOption: OptionHeader | null = null;
  #pendingWrite: RequestHeader | null = null;
  /** True while the pending WRITE's payload is being skipped; bytes still to skip. */
  #discarding = false;
  #discardRemaining = 0;

  constructor(options: FrameReaderOptions) {
    this.#options = options;
  }

  /** Bytes received but not yet returned in a frame. */
  get bufferedBytes(): number {
    return this.#queue.length;
  }

  /** True when a frame has started but is not complete (EOF now means a truncated frame). */
  get midFrame(): boolean {
    if (this.#phase === 'closed') return false;
    return (
      this.#queue.length > 0 ||
      this.#pendingOption !== null ||
      this.#pendingWrite !== null ||
      this.#discarding
    );
  }

  push(chunk: Buffer): void {
    if (this.#phase !== 'closed') this.#queue.push(chunk);
  }

  /** After the client flags, option requests follow (the reader moves there by itself). */
  startTransmission(): void {
    this.#phase = 'transmission';
  }

  /** Stops framing; later input is dropped. */
  close(): void {
    this.#phase = 'closed';
    this.#queue.clear();
  }

  /** The next complete frame, or null when more bytes are needed. */
  next(): Frame | null {
    switch (this.#phase) {
      case 'clientFlags':
        return this.#nextClientFlags();
      case 'options':
        return this.#nextOption();
      case 'transmission':
        return this.#nextRequest();
      case 'closed':
        return null;
    }
  }

  #nextClientFlags(): Frame | null {
    if (this.#queue.length < CLIENT_FLAGS_BYTES) return null;
    const flags = this.#queue.take(CLIENT_FLAGS_BYTES).readUInt32BE(0);
    this.#phase = 'options';
    return { kind: 'clientFlags', flags };
  }

  #nextOption(): Frame | null {
    if (this.#pendingOption === null) {
      if (this.#queue.length < OPTION_HEADER_BYTES) return null;
      const header = parseOptionHeader(this.#queue.take(OPTION_HEADER_BYTES));
      if (header.magic !== IHAVEOPT) {
        return this.#fatal('bad_option_magic', 'option request without the IHAVEOPT magic');
      }
      if (header.length > this.#options.optionBytesMax) {
        return this.#fatal('option_too_long', `option data of ${header.length} bytes`);
      }
      this.#pendingOption = header;
    }
    const header = this.#pendingOption;
    if (this.#queue.length < header.length) return null;
    this.#pendingOption = null;
    return { kind: 'option', header, data: this.#queue.take(header.length) };
  }

  #nextRequest(): Frame | null {
    if (this.#pendingWrite !== null) return this.#nextPayload(this.#pendingWrite);
    if (this.#queue.length < REQUEST_HEADER_BYTES) return null;
    const header = parseRequestHeader(this.#queue.take(REQUEST_HEADER_BYTES));
    if (header.magic !== NBD_REQUEST_MAGIC) {
      return this.#fatal('bad_request_magic', 'request without the request magic');
    }
    if (header.type !== NBD_CMD_WRITE) {
      return { kind: 'request', header, payload: null, discarded: false };
    }
    const policy = this.#options.writePolicy(header);
    if (policy === 'close') {
      return this.#fatal('write_payload_too_large', `write payload of ${header.length} bytes`);
    }
    this.#pendingWrite = header;
    this.#discarding = policy === 'discard';
    this.#discardRemaining = this.#discarding ? header.length : 0;
    return this.#nextPayload(header);
  }

  #nextPayload(header: RequestHeader): Frame | null {
    if (this.#discarding) {
      this.#discardRemaining -= this.#queue.skip(this.#discardRemaining);
      if (this.#discardRemaining > 0) return null;
      this.#discarding = false;
      this.#pendingWrite = null;
      return { kind: 'request', header, payload: null, discarded: true };
    }
    if (this.#queue.length < header.length) return null;
    this.#pendingWrite = null;
    return { kind: 'request', header, payload: this.#queue.take(header.length), discarded: false };
  }

  #fatal(reason: string, message: string): Frame {
    this.close();
    return { kind: 'fatal', reason, message };
  }
}
