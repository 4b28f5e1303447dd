/**
 * Transmission phase: request validation as one flat list of guards, and one small handler
 * per command that turns a valid request into device calls and reply buffers. No socket here:
 * handlers return the buffers to send; the connection writes them and counts the outcome.
 */
import type { ByteExtent, PagedDevice } from '../device/paged.js';
import { DeviceError, PAGE_SIZE } from '../device/types.js';
import { BASE_ALLOCATION_CONTEXT_ID } from './handshake.js';
import {
  type BlockDescriptor,
  type Cookie,
  encodeBlockStatus,
  encodeErrorChunk,
  encodeNoneDone,
  encodeOffsetHole,
  encodeSimpleReply,
  OFFSET_DATA_HEADER_BYTES,
  type RequestHeader,
  writeOffsetDataHeader,
  writeSimpleReply,
} from './messages.js';
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
  NBD_EINVAL,
  NBD_ENOSPC,
  NBD_EPERM,
  NBD_ESHUTDOWN,
  NBD_REPLY_FLAG_DONE,
  NBD_STATE_HOLE,
  NBD_STATE_ZERO,
  SIMPLE_REPLY_BYTES,
  U64_MAX,
} from './protocol.js';
import type { ReplySlab } from './slab.js';

/** What a request is checked and executed against. */
export interface RequestContext {
  device: PagedDevice;
  sizeBytes: bigint;
  structuredReplies: boolean;
  /** base:allocation selected for this export. */
  blockStatus: boolean;
  payloadBytesMax: number;
  blockStatusBytesMax: number;
  blockStatusExtentsMax: number;
  /** Where READ reply buffers come from (the connection's own slabs). */
  slab: ReplySlab;
}

/** A request refused before it reaches the device. */
export interface Rejection {
  errno: number;
  /** Stable metrics label. */
  reason: string;
  message: string;
}

const MUTATING = new Set([NBD_CMD_WRITE, NBD_CMD_TRIM, NBD_CMD_WRITE_ZEROES]);
const KNOWN_COMMANDS = new Set([
  NBD_CMD_READ,
  NBD_CMD_WRITE,
  NBD_CMD_DISC,
  NBD_CMD_FLUSH,
  NBD_CMD_TRIM,
  NBD_CMD_CACHE,
  NBD_CMD_WRITE_ZEROES,
  NBD_CMD_BLOCK_STATUS,
]);
/** Flags valid only on one command (FUA is accepted on every command, as clients send it). */
const FLAG_OWNERS: ReadonlyArray<readonly [flag: number, command: number]> = [
  [NBD_CMD_FLAG_NO_HOLE, NBD_CMD_WRITE_ZEROES],
  [NBD_CMD_FLAG_FAST_ZERO, NBD_CMD_WRITE_ZEROES],
  [NBD_CMD_FLAG_DF, NBD_CMD_READ],
  [NBD_CMD_FLAG_REQ_ONE, NBD_CMD_BLOCK_STATUS],
];

function reject(errno: number, reason: string, message: string): Rejection {
  return { errno, reason, message };
}

/**
 * Checks a request header against the export and the negotiated features. Returns null when
 * the request may run. DISC is never refused (the caller handles it before asking).
 * Range checks use u64 BigInt arithmetic: no float rounding, no overflow.
 */
export function validateRequest(
  h: RequestHeader,
  ctx: RequestContext,
  shuttingDown: boolean,
): Rejection | null {
  // Is the server going away? The client must disconnect.
  if (shuttingDown) return reject(NBD_ESHUTDOWN, 'shutting_down', 'server is shutting down');

  // Is it a command we know?
  if (!KNOWN_COMMANDS.has(h.type)) {
    return reject(NBD_EINVAL, 'unknown_command', `unknown command ${h.type}`);
  }

  // Are all flags known?
  if ((h.flags & ~KNOWN_CMD_FLAGS) !== 0) {
    return reject(NBD_EINVAL, 'unknown_flags', `unknown command flags 0x${h.flags.toString(16)}`);
  }

  // Is each command-specific flag on its command?
  for (const [flag, command] of FLAG_OWNERS) {
    if ((h.flags & flag) !== 0 && h.type !== command) {
      return reject(
        NBD_EINVAL,
        'flag_not_allowed',
        `flag 0x${flag.toString(16)} on command ${h.type}`,
      );
    }
  }

  // DF was only offered with structured replies.
  if ((h.flags & NBD_CMD_FLAG_DF) !== 0 && !ctx.structuredReplies) {
    return reject(NBD_EINVAL, 'flag_not_negotiated', 'DF needs structured replies');
  }

  // FLUSH carries no range.
  if (h.type === NBD_CMD_FLUSH && (h.offset !== 0n || h.length !== 0)) {
    return reject(NBD_EINVAL, 'flush_with_range', 'FLUSH must have offset and length 0');
  }

  // Writes to a read-only export.
  if (MUTATING.has(h.type) && !ctx.device.writable) {
    return reject(NBD_EPERM, 'read_only', 'export is read-only');
  }

  // BLOCK_STATUS needs a negotiated context.
  if (h.type === NBD_CMD_BLOCK_STATUS && !ctx.blockStatus) {
    return reject(NBD_EINVAL, 'no_meta_context', 'no metadata context was negotiated');
  }
  if (h.type === NBD_CMD_FLUSH) return null;

  // Does offset + length overflow a u64?
  const end = h.offset + BigInt(h.length);
  if (end > U64_MAX) {
    return reject(NBD_EINVAL, 'range_overflow', 'offset + length overflows 64 bits');
  }

  // Does the range end inside the export? Writes past the end are "no space" (spec SHOULD).
  if (end > ctx.sizeBytes) {
    const errno =
      h.type === NBD_CMD_WRITE || h.type === NBD_CMD_WRITE_ZEROES ? NBD_ENOSPC : NBD_EINVAL;
    return reject(errno, 'past_end', `range ends at ${end}, past the export size ${ctx.sizeBytes}`);
  }

  // Is a data-carrying request within the advertised maximum payload?
  if ((h.type === NBD_CMD_READ || h.type === NBD_CMD_WRITE) && h.length > ctx.payloadBytesMax) {
    return reject(NBD_EINVAL, 'payload_too_large', `payload over ${ctx.payloadBytesMax} bytes`);
  }

  // BLOCK_STATUS must answer at least one extent.
  if (h.type === NBD_CMD_BLOCK_STATUS && h.length === 0) {
    return reject(NBD_EINVAL, 'zero_length', 'BLOCK_STATUS of zero bytes');
  }
  return null;
}

/** Replies to send for one request, in order. */
export type Reply = Buffer | Buffer[];

/**
 * Runs a validated request (not DISC). `payload` is the WRITE data, borrowed. Throws device
 * errors; the caller maps them with `toNbdFailure` and answers with `errorReply`.
 */
export async function executeRequest(
  h: RequestHeader,
  payload: Buffer | null,
  ctx: RequestContext,
): Promise<Reply> {
  // Validated: the range is inside a device smaller than 2^53 bytes, so it converts exactly.
  const offset = Number(h.offset);
  const fua = (h.flags & NBD_CMD_FLAG_FUA) !== 0;
  switch (h.type) {
    case NBD_CMD_READ:
      return read(h, offset, ctx);
    case NBD_CMD_WRITE:
      return ctx.device.write(offset, payload ?? Buffer.alloc(0), { fua }).then(() => ok(h.cookie));
    case NBD_CMD_FLUSH:
      return ctx.device.flush().then(() => ok(h.cookie));
    case NBD_CMD_TRIM:
      return ctx.device.trim(offset, h.length, { fua }).then(() => ok(h.cookie));
    case NBD_CMD_WRITE_ZEROES:
      return writeZeroes(h, offset, fua, ctx);
    case NBD_CMD_CACHE:
      // A prefetch hint. The memory device has nothing to prefetch; the page store's own cache
      // fills on read. Answering success is what the spec asks of a server that ignores it.
      return Promise.resolve(ok(h.cookie));
    case NBD_CMD_BLOCK_STATUS:
      return blockStatus(h, offset, ctx);
    default:
      return Promise.reject(new DeviceError('EINVAL', `command ${h.type} cannot run`));
  }
}

/** The error reply for a request: an ERROR chunk with text under structured replies. */
export function errorReply(
  cookie: Cookie,
  errno: number,
  message: string,
  structuredReplies: boolean,
): Buffer {
  if (structuredReplies) return encodeErrorChunk(errno, cookie, message);
  return encodeSimpleReply(errno, cookie);
}

function ok(cookie: Cookie): Buffer {
  return encodeSimpleReply(0, cookie);
}

async function writeZeroes(h: RequestHeader, offset: number, fua: boolean, ctx: RequestContext) {
  // FAST_ZERO: our zeroing never costs more than writing zeroes would (whole pages become
  // holes; partial pages are one page write each), so it is always "fast" and always done.
  const mayTrim = (h.flags & NBD_CMD_FLAG_NO_HOLE) === 0;
  await ctx.device.zero(offset, h.length, { fua, mayTrim });
  return ok(h.cookie);
}

async function read(h: RequestHeader, offset: number, ctx: RequestContext): Promise<Reply> {
  if (!ctx.structuredReplies) {
    const buf = ctx.slab.allocate(SIMPLE_REPLY_BYTES + h.length);
    await ctx.device.read(offset, h.length, buf, SIMPLE_REPLY_BYTES);
    writeSimpleReply(buf, 0, 0, h.cookie);
    return buf;
  }
  if (h.length === 0) return encodeNoneDone(h.cookie);
  const buf = ctx.slab.allocate(OFFSET_DATA_HEADER_BYTES + h.length);
  await ctx.device.read(offset, h.length, buf, OFFSET_DATA_HEADER_BYTES);
  const dontFragment = (h.flags & NBD_CMD_FLAG_DF) !== 0;
  if (!dontFragment) {
    const pieces = splitHoles(buf, offset, h.length, h.cookie);
    if (pieces !== null) return pieces;
  }
  writeOffsetDataHeader(buf, 0, NBD_REPLY_FLAG_DONE, h.cookie, offset, h.length);
  return buf;
}

const ZERO_PAGE = Buffer.alloc(PAGE_SIZE);

/**
 * Splits a structured READ reply into OFFSET_DATA and OFFSET_HOLE chunks where whole device
 * pages read as zeroes, so zero pages (common in swap) cost 32 bytes on the wire instead of
 * 4 KiB. `buf` holds the data after OFFSET_DATA_HEADER_BYTES of room. Returns null when
 * nothing is zero (the caller sends one chunk).
 */
export function splitHoles(
  buf: Buffer,
  offset: number,
  length: number,
  cookie: Cookie,
): Buffer[] | null {
  const runs = zeroPageRuns(buf, OFFSET_DATA_HEADER_BYTES, offset, length);
  if (runs === null) return null;
  const out: Buffer[] = [];
  for (let i = 0; i < runs.length; i++) {
    const run = runs[i]!;
    const flags = i === runs.length - 1 ? NBD_REPLY_FLAG_DONE : 0;
    if (run.zero) {
      out.push(encodeOffsetHole(flags, cookie, offset + run.from, run.to - run.from));
      continue;
    }
    const header = Buffer.allocUnsafe(OFFSET_DATA_HEADER_BYTES);
    writeOffsetDataHeader(header, 0, flags, cookie, offset + run.from, run.to - run.from);
    const at = OFFSET_DATA_HEADER_BYTES;
    out.push(header, buf.subarray(at + run.from, at + run.to));
  }
  return out;
}

interface Run {
  from: number;
  to: number;
  zero: boolean;
}

/** Runs of whole zero pages (device-aligned) and data in `data[at, at+length)`, or null. */
function zeroPageRuns(data: Buffer, at: number, offset: number, length: number): Run[] | null {
  const runs: Run[] = [];
  let found = false;
  const push = (from: number, to: number, zero: boolean) => {
    const last = runs[runs.length - 1];
    if (last !== undefined && last.zero === zero) last.to = to;
    else runs.push({ from, to, zero });
  };
  let pos = 0;
  const head = (PAGE_SIZE - (offset % PAGE_SIZE)) % PAGE_SIZE;
  if (head > 0) {
    pos = Math.min(head, length);
    push(0, pos, false);
  }
  for (; pos + PAGE_SIZE <= length; pos += PAGE_SIZE) {
    const zero = ZERO_PAGE.compare(data, at + pos, at + pos + PAGE_SIZE) === 0;
    found ||= zero;
    push(pos, pos + PAGE_SIZE, zero);
  }
  if (pos < length) push(pos, length, false);
  return found ? runs : null;
}

async function blockStatus(h: RequestHeader, offset: number, ctx: RequestContext) {
  // The length is a hint: look at no more than the limit; the client asks again for the rest.
  const length = Math.min(h.length, ctx.blockStatusBytesMax);
  const one = (h.flags & NBD_CMD_FLAG_REQ_ONE) !== 0;
  const extentsMax = one ? 1 : ctx.blockStatusExtentsMax;
  let extents = await ctx.device.extents(offset, length, extentsMax);
  if (extents.length > extentsMax) extents = extents.slice(0, extentsMax);
  if (extents.length === 0) throw new DeviceError('EIO', 'device reported no extents');
  return encodeBlockStatus(h.cookie, BASE_ALLOCATION_CONTEXT_ID, extents.map(toDescriptor));
}

function toDescriptor(extent: ByteExtent): BlockDescriptor {
  const flags = (extent.hole ? NBD_STATE_HOLE : 0) | (extent.zero ? NBD_STATE_ZERO : 0);
  return { length: extent.length, flags };
}
