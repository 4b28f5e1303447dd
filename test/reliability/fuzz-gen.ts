/**
 * A seeded generator of hostile NBD client sessions: malformed and adversarial frames in both
 * phases (handshake options and transmission requests), each frame labelled with what a
 * correct server must do about it, so the runner (fuzz-run.ts) can check every answer.
 *
 * Kinds of session, drawn by weight:
 * - options: a fuzzed handshake (bad magics, lying lengths, options out of order, unknown
 *   options, names with NUL or too long, too many options, bad client flags, truncation);
 * - requests: a normal handshake, then batches of transmission requests mixing valid reads,
 *   writes, trims and zeroes inside the session's own region (checked against a model) with
 *   malformed ones (unknown commands and flags, ranges past the end or overflowing 64 bits,
 *   payloads over the maximum), optionally ended by a fatal frame (bad magic, a truncated
 *   header, a WRITE whose payload lies about its size, a length beyond any discard limit);
 * - flood: thousands of requests pipelined at once, every one of which must be answered;
 * - slow: a client that queues many large READs and never reads the replies.
 *
 * Replay: the same seed and options give the same sessions, in the same order.
 */
import {
  KNOWN_CMD_FLAGS,
  NBD_CMD_BLOCK_STATUS,
  NBD_CMD_CACHE,
  NBD_CMD_DISC,
  NBD_CMD_FLAG_DF,
  NBD_CMD_FLAG_FAST_ZERO,
  NBD_CMD_FLAG_FUA,
  NBD_CMD_FLAG_NO_HOLE,
  NBD_CMD_FLAG_REQ_ONE,
  NBD_CMD_FLUSH,
  NBD_CMD_READ,
  NBD_CMD_TRIM,
  NBD_CMD_WRITE,
  NBD_CMD_WRITE_ZEROES,
  NBD_FLAG_C_FIXED_NEWSTYLE,
  NBD_FLAG_C_NO_ZEROES,
  NBD_INFO_BLOCK_SIZE,
  NBD_INFO_DESCRIPTION,
  NBD_INFO_EXPORT,
  NBD_INFO_NAME,
  NBD_MAX_STRING_BYTES,
  NBD_OPT_ABORT,
  NBD_OPT_EXPORT_NAME,
  NBD_OPT_GO,
  NBD_OPT_INFO,
  NBD_OPT_LIST,
  NBD_OPT_LIST_META_CONTEXT,
  NBD_OPT_SET_META_CONTEXT,
  NBD_OPT_STARTTLS,
  NBD_OPT_STRUCTURED_REPLY,
  REQUEST_HEADER_BYTES,
  U64_MAX,
} from '../../src/nbd/protocol.js';
import { encodeOption, encodeRequest, infoData, metaContextData } from './nbd-wire.js';

const KiB = 1024;
const MiB = 1024 * KiB;

/**
 * What a correct server does with a frame:
 * - ok: answers success; error: answers an error and keeps the connection;
 * - answer: answers, success or error (the spec leaves the choice);
 * - errorOrClose: answers an error or drops the connection;
 * - close: drops the connection (it cannot stay framed, or the spec says so);
 * - none: nothing to check (the frame ends the session: DISC, truncation, a lie).
 */
export type Expect = 'ok' | 'error' | 'answer' | 'errorOrClose' | 'close' | 'none';

export interface FuzzFrame {
  bytes: Buffer;
  expect: Expect;
  /** Metrics reason the server must count when it refuses this frame (see connection.ts). */
  reason?: string;
  /** Option code, for handshake frames that get an option reply. */
  option?: number;
  /** Request cookie, for transmission frames that get a reply. */
  cookie?: bigint;
  /** A READ inside the session's region: compare the data with the model. */
  verify?: { offset: number; length: number };
  /** What a successful answer does to the session's region (offsets relative to the export). */
  effect?: { offset: number; data: Buffer | null; length: number };
  /** READ cookies need their length for simple replies. */
  readLength?: number;
}

export type SessionKind = 'options' | 'requests' | 'flood' | 'slow';

export interface FuzzSession {
  kind: SessionKind;
  /** Handshake: raw frames for 'options'; for the others the runner negotiates normally. */
  structured: boolean;
  metaContext: boolean;
  /** Transmission frames in batches; the runner waits for every answer between batches. */
  batches: FuzzFrame[][];
  /** Slow sessions: how long to hold the connection without reading. */
  holdMs: number;
}

export interface GeneratorOptions {
  /** Name and size of the export the sessions attack. */
  exportName: string;
  exportSizeBytes: number;
  /** Each concurrent session owns one region of this size for valid writes. */
  regionBytes: number;
  /** Allow frames with 32+ MiB payloads (slow to send; the long run turns them on). */
  hugePayloads: boolean;
}

/** Probabilities of each session kind, in per-mille. */
const SESSION_WEIGHTS: ReadonlyArray<readonly [SessionKind, number]> = [
  ['options', 300],
  ['requests', 640],
  ['flood', 40],
  ['slow', 20],
];

/**
 * Largest valid READ/WRITE a session sends: big enough to span pages and cross the store's
 * batching, small enough that a million frames stay mostly protocol work, not bulk I/O.
 */
const VALID_IO_BYTES_MAX = 16 * KiB;
/** Requests pipelined by a flood session: far above the server's in-flight limit (128). */
const FLOOD_REQUESTS_MIN = 1_000;
const FLOOD_REQUESTS_MAX = 5_000;
/** READs a slow client queues, and their size: 256 MiB of replies it never takes. */
const SLOW_READS = 256;
const SLOW_READ_BYTES = MiB;

export class FuzzGenerator {
  readonly #next: () => number;
  readonly #o: GeneratorOptions;
  #cookie = 1n;

  constructor(seed: number, options: GeneratorOptions) {
    this.#next = mulberry32(seed);
    this.#o = options;
  }

  /** A uniformly drawn integer in [0, n). */
  int(n: number): number {
    return Math.floor((this.#next() / 2 ** 32) * n);
  }

  #chance(perMille: number): boolean {
    return this.int(1000) < perMille;
  }

  #bytes(n: number): Buffer {
    const out = Buffer.allocUnsafe(n);
    for (let i = 0; i < n; i += 4) {
      const word = this.#next();
      for (let j = 0; j < 4 && i + j < n; j++) out[i + j] = (word >>> (8 * j)) & 0xff;
    }
    return out;
  }

  /** The next session; `regionOffset` is the byte offset of the region it may write. */
  session(regionOffset: number): FuzzSession {
    let pick = this.int(1000);
    let kind: SessionKind = 'requests';
    for (const [k, weight] of SESSION_WEIGHTS) {
      if (pick < weight) {
        kind = k;
        break;
      }
      pick -= weight;
    }
    const structured = this.#chance(500);
    const base = { kind, structured, metaContext: structured && this.#chance(500), holdMs: 0 };
    switch (kind) {
      case 'options':
        return { ...base, structured: false, metaContext: false, batches: [this.#options()] };
      case 'requests':
        return { ...base, batches: this.#requestBatches(regionOffset, base.metaContext) };
      case 'flood':
        return { ...base, batches: [this.#flood(regionOffset)] };
      case 'slow':
        return { ...base, batches: [this.#slow()], holdMs: 500 + this.int(2_500) };
    }
  }

  // -------------------------------------------------------------------------------------------
  // Handshake

  /** Client flags, then up to 30 option frames; ends with a fatal frame or an ABORT. */
  #options(): FuzzFrame[] {
    const frames: FuzzFrame[] = [];
    const flags = Buffer.alloc(4);
    if (this.#chance(40)) {
      // Unknown client flag bits: the spec says disconnect.
      const bad = (1 << (2 + this.int(30))) | (this.#chance(500) ? NBD_FLAG_C_NO_ZEROES : 0);
      flags.writeUInt32BE(bad >>> 0, 0);
      frames.push({ bytes: flags, expect: 'close', reason: 'bad_client_flags' });
      return frames;
    }
    flags.writeUInt32BE(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES, 0);
    frames.push({ bytes: flags, expect: 'none' });
    const count = 1 + this.int(28);
    let structured = false;
    for (let i = 0; i < count; i++) {
      const frame = this.#optionFrame(structured);
      if (frame.option === NBD_OPT_STRUCTURED_REPLY && frame.expect === 'ok') structured = true;
      frames.push(frame);
      if (frame.expect === 'close' || frame.expect === 'none') return frames;
    }
    frames.push(...this.#fatalOption());
    return frames;
  }

  #optionFrame(structured: boolean): FuzzFrame {
    const name = Buffer.from(this.#o.exportName);
    const option = (code: number, data: Buffer, expect: Expect, reason?: string): FuzzFrame => ({
      bytes: encodeOption(code, data),
      expect,
      option: code,
      ...(reason === undefined ? {} : { reason }),
    });
    switch (this.int(14)) {
      case 0:
        return option(NBD_OPT_LIST, Buffer.alloc(0), 'ok');
      case 1:
        return option(NBD_OPT_LIST, this.#bytes(1 + this.int(64)), 'error', 'option_bad_length');
      case 2: {
        const code = this.#unknownOptionCode();
        return option(code, this.#bytes(this.int(256)), 'error', 'unknown_option');
      }
      case 3:
        return option(NBD_OPT_STARTTLS, Buffer.alloc(0), 'error', 'tls_not_configured');
      case 4:
        return option(NBD_OPT_INFO, infoData(name, this.#infoCodes()), 'ok');
      case 5: {
        // The name length field claims more bytes than the option holds.
        const data = infoData(name, [], { nameLength: name.length + 1 + this.int(1 << 20) });
        return option(NBD_OPT_INFO, data, 'error', 'option_bad_length');
      }
      case 6: {
        const unknown = Buffer.from(`no-such-${this.int(1e9)}`);
        return option(NBD_OPT_INFO, infoData(unknown, []), 'error', 'unknown_export');
      }
      case 7: {
        const withNul = Buffer.concat([name, Buffer.from([0]), this.#bytes(3)]);
        return option(NBD_OPT_INFO, infoData(withNul, []), 'error', 'name_has_nul');
      }
      case 8: {
        const long = Buffer.alloc(NBD_MAX_STRING_BYTES + 1 + this.int(4 * KiB), 0x61);
        return option(NBD_OPT_INFO, infoData(long, []), 'error', 'name_too_long');
      }
      case 9:
        // Repeating STRUCTURED_REPLY may be refused; the first one must succeed.
        return structured
          ? option(NBD_OPT_STRUCTURED_REPLY, Buffer.alloc(0), 'answer')
          : option(NBD_OPT_STRUCTURED_REPLY, Buffer.alloc(0), 'ok');
      case 10:
        return option(NBD_OPT_STRUCTURED_REPLY, this.#bytes(1 + this.int(16)), 'error');
      case 11: {
        // Out of order: meta contexts before structured replies were agreed.
        const data = metaContextData(name, [Buffer.from('base:allocation')]);
        return structured
          ? option(NBD_OPT_SET_META_CONTEXT, data, 'ok')
          : option(NBD_OPT_SET_META_CONTEXT, data, 'error', 'meta_context_without_sr');
      }
      case 12: {
        // Garbage meta context data: counts and lengths that do not add up.
        const data = this.#bytes(this.int(64));
        return option(NBD_OPT_LIST_META_CONTEXT, data, 'error');
      }
      default: {
        // INFO whose info-request count disagrees with the bytes that follow.
        const data = infoData(name, this.#infoCodes());
        const cut = data.subarray(0, Math.max(0, data.length - 1 - this.int(3)));
        return option(NBD_OPT_INFO, cut, 'error');
      }
    }
  }

  /** The frames that end a fuzzed handshake. */
  #fatalOption(): FuzzFrame[] {
    if (this.#chance(850)) return [this.#fatalOptionFrame()];
    // Out of order: more option haggling after GO, which the server reads as a request (with
    // data, so the frame is at least as long as a request header).
    const name = Buffer.from(this.#o.exportName);
    const go = encodeOption(NBD_OPT_GO, infoData(name, [NBD_INFO_BLOCK_SIZE]));
    return [
      { bytes: go, expect: 'ok', option: NBD_OPT_GO },
      {
        bytes: encodeOption(NBD_OPT_LIST, Buffer.alloc(16)),
        expect: 'close',
        reason: 'bad_request_magic',
      },
    ];
  }

  #fatalOptionFrame(): FuzzFrame {
    const name = Buffer.from(this.#o.exportName);
    switch (this.int(6)) {
      case 0:
        return {
          bytes: encodeOption(NBD_OPT_LIST, Buffer.alloc(0), { magic: this.#badMagic64() }),
          expect: 'close',
          reason: 'bad_option_magic',
        };
      case 1: {
        // A length no option needs; the data is never sent.
        const length = 0x10000 + 1 + this.int(0xffff0000);
        return {
          bytes: encodeOption(NBD_OPT_GO, Buffer.alloc(0), { lengthField: length }),
          expect: 'close',
          reason: 'option_too_long',
        };
      }
      case 2: {
        const unknown = Buffer.from(`missing-${this.int(1e6)}`);
        return {
          bytes: encodeOption(NBD_OPT_EXPORT_NAME, unknown),
          expect: 'close',
          reason: 'unknown_export',
        };
      }
      case 3: {
        // Truncated: half an option header, then the client hangs up.
        const whole = encodeOption(NBD_OPT_INFO, infoData(name, []));
        return { bytes: whole.subarray(0, 1 + this.int(whole.length - 1)), expect: 'none' };
      }
      case 4:
        return { bytes: encodeOption(NBD_OPT_ABORT, Buffer.alloc(0)), expect: 'none' };
      default: {
        // Data that lies about its length: fewer bytes than the header says, then hang up.
        const data = infoData(name, [NBD_INFO_EXPORT]);
        const frame = encodeOption(NBD_OPT_GO, data, { lengthField: data.length + 100 });
        return { bytes: frame, expect: 'none' };
      }
    }
  }

  #unknownOptionCode(): number {
    const known = new Set([1, 2, 3, 5, 6, 7, 8, 9, 10]);
    for (;;) {
      const code = this.#chance(500) ? this.int(64) : this.#next();
      if (!known.has(code)) return code;
    }
  }

  #infoCodes(): number[] {
    const codes = [NBD_INFO_EXPORT, NBD_INFO_NAME, NBD_INFO_DESCRIPTION, NBD_INFO_BLOCK_SIZE];
    const out: number[] = [];
    const count = this.int(6);
    for (let i = 0; i < count; i++) {
      out.push(this.#chance(700) ? (codes[this.int(codes.length)] ?? 0) : this.int(0x10000));
    }
    return out;
  }

  #badMagic64(): bigint {
    const magic = (BigInt(this.#next()) << 32n) | BigInt(this.#next());
    return magic === 0x49484156454f5054n ? 0n : magic;
  }

  // -------------------------------------------------------------------------------------------
  // Transmission

  #requestBatches(region: number, metaContext: boolean): FuzzFrame[][] {
    const batches: FuzzFrame[][] = [];
    const count = 1 + this.int(8);
    for (let b = 0; b < count; b++) {
      const verifying = b % 2 === 1;
      const frames: FuzzFrame[] = [];
      const size = 1 + this.int(120);
      for (let i = 0; i < size; i++) {
        frames.push(this.#requestFrame(region, verifying, metaContext));
      }
      batches.push(frames);
    }
    const last = batches[batches.length - 1] ?? [];
    if (this.#chance(350)) last.push(this.#fatalRequest());
    else if (this.#chance(500)) last.push(this.#disc());
    return batches;
  }

  #cookieNext(): bigint {
    const cookie = this.#cookie;
    this.#cookie = (this.#cookie + 1n) & U64_MAX;
    return cookie;
  }

  #request(type: number, flags: number, offset: bigint, length: number, payload?: Buffer) {
    const cookie = this.#cookieNext();
    const header = encodeRequest({ flags, type, cookie, offset, length });
    return { cookie, bytes: payload ? Buffer.concat([header, payload]) : header };
  }

  /** A range inside the session's region: offset and length, often unaligned. */
  #regionRange(region: number, maxBytes: number): { offset: number; length: number } {
    const aligned = this.#chance(700);
    const unit = aligned ? 4 * KiB : 1;
    const units = Math.floor(this.#o.regionBytes / unit);
    const length = unit * (1 + this.int(Math.max(1, Math.floor(maxBytes / unit))));
    const start = unit * this.int(Math.max(1, units - length / unit));
    return { offset: region + start, length: Math.min(length, this.#o.regionBytes - start) };
  }

  #requestFrame(region: number, verifying: boolean, metaContext: boolean): FuzzFrame {
    const pick = this.int(100);
    if (pick < 30) return verifying ? this.#validRead(region) : this.#validMutation(region);
    if (pick < 40) return this.#validRead(region, false);
    if (pick < 45) {
      const { cookie, bytes } = this.#request(NBD_CMD_FLUSH, 0, 0n, 0);
      return { bytes, expect: 'ok', cookie };
    }
    return this.#malformedRequest(region, metaContext, verifying);
  }

  #validRead(region: number, verify = true): FuzzFrame {
    const { offset, length } = this.#regionRange(region, VALID_IO_BYTES_MAX);
    const flags = this.#chance(100) ? NBD_CMD_FLAG_FUA : 0;
    const { cookie, bytes } = this.#request(NBD_CMD_READ, flags, BigInt(offset), length);
    const frame: FuzzFrame = { bytes, expect: 'ok', cookie, readLength: length };
    if (verify) frame.verify = { offset, length };
    return frame;
  }

  #validMutation(region: number): FuzzFrame {
    const { offset, length } = this.#regionRange(region, VALID_IO_BYTES_MAX);
    const fua = this.#chance(200) ? NBD_CMD_FLAG_FUA : 0;
    const kind = this.int(10);
    if (kind < 7) {
      const data = this.#pageLike(length);
      const { cookie, bytes } = this.#request(NBD_CMD_WRITE, fua, BigInt(offset), length, data);
      return { bytes, expect: 'ok', cookie, effect: { offset, data, length } };
    }
    if (kind < 9) {
      const flags = fua | (this.#chance(500) ? NBD_CMD_FLAG_NO_HOLE : 0);
      const { cookie, bytes } = this.#request(NBD_CMD_WRITE_ZEROES, flags, BigInt(offset), length);
      return {
        bytes,
        expect: 'ok',
        cookie,
        effect: { offset, data: Buffer.alloc(length), length },
      };
    }
    // After TRIM the range's content is unspecified until written again: data null.
    const { cookie, bytes } = this.#request(NBD_CMD_TRIM, fua, BigInt(offset), length);
    return { bytes, expect: 'ok', cookie, effect: { offset, data: null, length } };
  }

  /** Bytes that look like memory: zero runs, repeated words, random stretches. */
  #pageLike(length: number): Buffer {
    switch (this.int(4)) {
      case 0:
        return Buffer.alloc(length);
      case 1:
        return Buffer.alloc(length, this.#next() & 0xff);
      case 2: {
        const out = Buffer.alloc(length);
        const patch = this.#bytes(Math.min(length, 1 + this.int(64)));
        patch.copy(out, this.int(length - patch.length + 1));
        return out;
      }
      default:
        return this.#bytes(length);
    }
  }

  /** A refused or odd request; in a verifying batch none of them may change the region. */
  #malformedRequest(region: number, metaContext: boolean, verifying: boolean): FuzzFrame {
    const size = BigInt(this.#o.exportSizeBytes);
    switch (this.int(verifying ? 12 : 13)) {
      case 0: {
        // Unknown command type.
        const type = 8 + this.int(0xffff - 8);
        const { cookie, bytes } = this.#request(type, 0, 0n, 0);
        return { bytes, expect: 'errorOrClose', reason: 'unknown_command', cookie };
      }
      case 1: {
        // A flag nobody defined, on a READ.
        const flag = this.#unknownFlag();
        const { cookie, bytes } = this.#request(NBD_CMD_READ, flag, 0n, 4096);
        return { bytes, expect: 'error', reason: 'unknown_flags', cookie, readLength: 4096 };
      }
      case 2: {
        // A WRITE with an unknown flag: refused, and its payload must be skipped.
        const length = 1 + this.int(16 * KiB);
        const payload = this.#bytes(length);
        const { offset } = this.#regionRange(region, length);
        const flag = this.#unknownFlag();
        const { cookie, bytes } = this.#request(
          NBD_CMD_WRITE,
          flag,
          BigInt(offset),
          length,
          payload,
        );
        return { bytes, expect: 'error', reason: 'unknown_flags', cookie };
      }
      case 3: {
        // A flag defined for another command.
        const [flag, type] = this.#misplacedFlag();
        const { cookie, bytes } = this.#request(type, flag, 0n, type === NBD_CMD_FLUSH ? 0 : 4096);
        const readLength = type === NBD_CMD_READ ? 4096 : undefined;
        return { bytes, expect: 'error', cookie, ...(readLength ? { readLength } : {}) };
      }
      case 4: {
        // READ past the end.
        const offset = size - BigInt(this.int(4096));
        const length = 4097 + this.int(MiB);
        const { cookie, bytes } = this.#request(NBD_CMD_READ, 0, offset, length);
        return { bytes, expect: 'error', reason: 'past_end', cookie, readLength: length };
      }
      case 5: {
        // offset + length overflows 64 bits.
        const offset = U64_MAX - BigInt(this.int(4096));
        const length = 4097 + this.int(MiB);
        const type = [NBD_CMD_READ, NBD_CMD_TRIM, NBD_CMD_WRITE_ZEROES][this.int(3)] ?? 0;
        const { cookie, bytes } = this.#request(type, 0, offset, length);
        const readLength = type === NBD_CMD_READ ? length : undefined;
        return {
          bytes,
          expect: 'error',
          reason: 'range_overflow',
          cookie,
          ...(readLength ? { readLength } : {}),
        };
      }
      case 6: {
        // WRITE past the end, payload sent: refused with the payload skipped.
        const length = 1 + this.int(32 * KiB);
        const offset = size - BigInt(this.int(length));
        const payload = this.#bytes(length);
        const { cookie, bytes } = this.#request(NBD_CMD_WRITE, 0, offset, length, payload);
        return { bytes, expect: 'error', reason: 'past_end', cookie };
      }
      case 7: {
        // READ longer than the maximum payload (inside the export when it is big enough).
        const length = 32 * MiB + 1 + this.int(64 * MiB);
        const { cookie, bytes } = this.#request(NBD_CMD_READ, 0, 0n, length);
        return { bytes, expect: 'error', cookie, readLength: length };
      }
      case 8: {
        // FLUSH with a range.
        const offset = BigInt(this.int(1 << 20));
        const { cookie, bytes } = this.#request(NBD_CMD_FLUSH, 0, offset, 1 + this.int(4096));
        return { bytes, expect: 'error', reason: 'flush_with_range', cookie };
      }
      case 9: {
        // BLOCK_STATUS: refused without a negotiated context, answered with one.
        const { offset, length } = this.#regionRange(region, MiB);
        const flags = this.#chance(500) ? NBD_CMD_FLAG_REQ_ONE : 0;
        const { cookie, bytes } = this.#request(
          NBD_CMD_BLOCK_STATUS,
          flags,
          BigInt(offset),
          length,
        );
        return metaContext
          ? { bytes, expect: 'ok', cookie }
          : { bytes, expect: 'error', reason: 'no_meta_context', cookie };
      }
      case 10: {
        // Zero-length READ, WRITE, TRIM: the spec leaves the answer open, not the framing.
        const type = [NBD_CMD_READ, NBD_CMD_WRITE, NBD_CMD_TRIM, NBD_CMD_CACHE][this.int(4)] ?? 0;
        const { cookie, bytes } = this.#request(type, 0, BigInt(region), 0);
        return {
          bytes,
          expect: 'answer',
          cookie,
          ...(type === NBD_CMD_READ ? { readLength: 0 } : {}),
        };
      }
      case 11: {
        // A WRITE over the maximum payload but under the discard limit: read, dropped, refused.
        // Rare even when allowed: each one sends 33 MiB.
        if (!this.#o.hugePayloads || !this.#chance(2)) {
          return this.#malformedRequest(region, metaContext, verifying);
        }
        const length = 32 * MiB + 1 + this.int(MiB);
        const payload = Buffer.alloc(length, 0xa5);
        const { cookie, bytes } = this.#request(NBD_CMD_WRITE, 0, 0n, length, payload);
        return { bytes, expect: 'error', reason: 'payload_too_large', cookie };
      }
      default: {
        // WRITE_ZEROES with FAST_ZERO: success or ENOTSUP, both fine.
        const { offset, length } = this.#regionRange(region, VALID_IO_BYTES_MAX);
        const flags = NBD_CMD_FLAG_FAST_ZERO;
        const { cookie, bytes } = this.#request(
          NBD_CMD_WRITE_ZEROES,
          flags,
          BigInt(offset),
          length,
        );
        // Success zeroes the range; an error leaves it: either way the range is now unknown.
        return { bytes, expect: 'answer', cookie, effect: { offset, data: null, length } };
      }
    }
  }

  #unknownFlag(): number {
    for (;;) {
      const flag = 1 << this.int(16);
      if ((flag & KNOWN_CMD_FLAGS) === 0) return flag;
    }
  }

  #misplacedFlag(): [flag: number, type: number] {
    const choices: Array<[number, number]> = [
      [NBD_CMD_FLAG_NO_HOLE, NBD_CMD_READ],
      [NBD_CMD_FLAG_FAST_ZERO, NBD_CMD_TRIM],
      [NBD_CMD_FLAG_REQ_ONE, NBD_CMD_READ],
      [NBD_CMD_FLAG_DF, NBD_CMD_FLUSH],
    ];
    return choices[this.int(choices.length)] ?? [NBD_CMD_FLAG_NO_HOLE, NBD_CMD_READ];
  }

  #disc(): FuzzFrame {
    // DISC with a range the spec says must be zero: either way the server ends the session.
    const offset = this.#chance(300) ? BigInt(this.#next()) : 0n;
    const { bytes } = this.#request(NBD_CMD_DISC, 0, offset, 0);
    return { bytes, expect: 'none' };
  }

  /** A frame after which the stream cannot be framed or the client leaves. */
  #fatalRequest(): FuzzFrame {
    switch (this.int(4)) {
      case 0: {
        const magic = this.#next() === 0x25609513 ? 0 : this.#next();
        const bytes = encodeRequest({
          flags: 0,
          type: 0,
          cookie: 0n,
          offset: 0n,
          length: 0,
          magic,
        });
        return { bytes, expect: 'close', reason: 'bad_request_magic' };
      }
      case 1: {
        const whole = encodeRequest({ flags: 0, type: 0, cookie: 1n, offset: 0n, length: 512 });
        const cut = 1 + this.int(REQUEST_HEADER_BYTES - 1);
        return { bytes: whole.subarray(0, cut), expect: 'none' };
      }
      case 2: {
        // A WRITE that promises more payload than it sends, then the client hangs up.
        const length = 4096 + this.int(MiB);
        const sent = this.#bytes(this.int(4096));
        const { bytes } = this.#request(NBD_CMD_WRITE, 0, 0n, length, sent);
        return { bytes, expect: 'none' };
      }
      default: {
        // A WRITE header claiming 4 GiB - 1: beyond any discard limit.
        const { bytes } = this.#request(NBD_CMD_WRITE, 0, 0n, 0xffffffff);
        return { bytes, expect: 'close', reason: 'write_payload_too_large' };
      }
    }
  }

  #flood(region: number): FuzzFrame[] {
    const count = FLOOD_REQUESTS_MIN + this.int(FLOOD_REQUESTS_MAX - FLOOD_REQUESTS_MIN);
    const frames: FuzzFrame[] = [];
    for (let i = 0; i < count; i++) {
      const pick = this.int(10);
      if (pick < 8) frames.push(this.#validRead(region, false));
      else if (pick < 9) {
        const type = 8 + this.int(100);
        const { cookie, bytes } = this.#request(type, 0, 0n, 0);
        frames.push({ bytes, expect: 'errorOrClose', reason: 'unknown_command', cookie });
      } else {
        const { cookie, bytes } = this.#request(NBD_CMD_FLUSH, 0, 0n, 0);
        frames.push({ bytes, expect: 'ok', cookie });
      }
    }
    return frames;
  }

  #slow(): FuzzFrame[] {
    const frames: FuzzFrame[] = [];
    const limit = Math.max(1, Math.floor(this.#o.exportSizeBytes / SLOW_READ_BYTES));
    for (let i = 0; i < SLOW_READS; i++) {
      const offset = BigInt((i % limit) * SLOW_READ_BYTES);
      const { cookie, bytes } = this.#request(NBD_CMD_READ, 0, offset, SLOW_READ_BYTES);
      frames.push({ bytes, expect: 'none', cookie, readLength: SLOW_READ_BYTES });
    }
    return frames;
  }
}

/** mulberry32 (Tommy Ettinger's public-domain 32-bit mixer), as in test/helpers/files.ts. */
function mulberry32(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  };
}

/** Options the runner sends in a normal handshake (NO_ZEROES agreed, then GO). */
export const NORMAL_CLIENT_FLAGS = NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES;
export { NBD_OPT_GO, NBD_OPT_SET_META_CONTEXT, NBD_OPT_STRUCTURED_REPLY };
