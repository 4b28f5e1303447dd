/**
 * Encoders and parsers for every NBD message this server sends or receives, plus the client's
 * side of each (used by tests and tools). Pure functions over Buffers: no sockets, no state.
 * Parsers of client input never throw on bad input; they return a `ParseError` with a stable
 * reason string that the caller counts and answers.
 */
import {
  BLOCK_DESCRIPTOR_BYTES,
  BLOCK_STATUS_PREFIX_BYTES,
  CHUNK_HEADER_BYTES,
  ERROR_PREFIX_BYTES,
  EXPORT_NAME_PADDING_BYTES,
  EXPORT_NAME_REPLY_BYTES,
  GREETING_BYTES,
  IHAVEOPT,
  INFO_BLOCK_SIZE_BYTES,
  INFO_EXPORT_BYTES,
  NBD_FLAG_FIXED_NEWSTYLE,
  NBD_FLAG_NO_ZEROES,
  NBD_INFO_BLOCK_SIZE,
  NBD_INFO_DESCRIPTION,
  NBD_INFO_EXPORT,
  NBD_INFO_NAME,
  NBD_MAX_STRING_BYTES,
  NBD_REP_MAGIC,
  NBD_REPLY_FLAG_DONE,
  NBD_REPLY_TYPE_BLOCK_STATUS,
  NBD_REPLY_TYPE_ERROR,
  NBD_REPLY_TYPE_NONE,
  NBD_REPLY_TYPE_OFFSET_DATA,
  NBD_REPLY_TYPE_OFFSET_HOLE,
  NBD_REQUEST_MAGIC,
  NBD_SIMPLE_REPLY_MAGIC,
  NBD_STRUCTURED_REPLY_MAGIC,
  NBDMAGIC,
  OFFSET_DATA_PREFIX_BYTES,
  OFFSET_HOLE_PAYLOAD_BYTES,
  OPTION_HEADER_BYTES,
  OPTION_REPLY_HEADER_BYTES,
  REQUEST_COOKIE_AT,
  REQUEST_FLAGS_AT,
  REQUEST_HEADER_BYTES,
  REQUEST_LENGTH_AT,
  REQUEST_OFFSET_AT,
  REQUEST_TYPE_AT,
  SIMPLE_REPLY_BYTES,
  U16_BYTES,
  U32_BYTES,
  U64_BYTES,
} from './protocol.js';

/** A client message that does not parse; `reason` is a stable metrics label. */
export interface ParseError {
  reason: string;
  message: string;
}

export function isParseError(value: unknown): value is ParseError {
  return typeof value === 'object' && value !== null && 'reason' in value && 'message' in value;
}

/** 64-bit cookie as two halves, echoed byte for byte without a BigInt per request. */
export interface Cookie {
  hi: number;
  lo: number;
}

// ---------------------------------------------------------------------------------------------
// Handshake: server -> client

/** The 18-byte greeting of a fixed-newstyle server offering NO_ZEROES. */
export function encodeGreeting(): Buffer {
  const buf = Buffer.alloc(GREETING_BYTES);
  buf.writeBigUInt64BE(NBDMAGIC, 0);
  buf.writeBigUInt64BE(IHAVEOPT, U64_BYTES);
  buf.writeUInt16BE(NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES, 2 * U64_BYTES);
  return buf;
}

/** One option reply: header plus `data` (copied into the result). */
export function encodeOptionReply(option: number, type: number, data?: Buffer): Buffer {
  const dataBytes = data?.length ?? 0;
  const buf = Buffer.alloc(OPTION_REPLY_HEADER_BYTES + dataBytes);
  buf.writeBigUInt64BE(NBD_REP_MAGIC, 0);
  buf.writeUInt32BE(option, U64_BYTES);
  buf.writeUInt32BE(type, U64_BYTES + U32_BYTES);
  buf.writeUInt32BE(dataBytes, U64_BYTES + 2 * U32_BYTES);
  data?.copy(buf, OPTION_REPLY_HEADER_BYTES);
  return buf;
}

/** An option error reply whose data is a human-readable message. */
export function encodeOptionError(option: number, type: number, message: string): Buffer {
  return encodeOptionReply(option, type, Buffer.from(clipString(message), 'utf8'));
}

/** NBD_REP_SERVER data: name length, name, description. */
export function encodeRepServer(name: string, description: string): Buffer {
  const nameBytes = Buffer.from(name, 'utf8');
  const descBytes = Buffer.from(clipString(description), 'utf8');
  const buf = Buffer.alloc(U32_BYTES + nameBytes.length + descBytes.length);
  buf.writeUInt32BE(nameBytes.length, 0);
  nameBytes.copy(buf, U32_BYTES);
  descBytes.copy(buf, U32_BYTES + nameBytes.length);
  return buf;
}

/** NBD_REP_INFO data for NBD_INFO_EXPORT. */
export function encodeInfoExport(sizeBytes: bigint, transmissionFlags: number): Buffer {
  const buf = Buffer.alloc(INFO_EXPORT_BYTES);
  buf.writeUInt16BE(NBD_INFO_EXPORT, 0);
  buf.writeBigUInt64BE(sizeBytes, U16_BYTES);
  buf.writeUInt16BE(transmissionFlags, U16_BYTES + U64_BYTES);
  return buf;
}

/** NBD_REP_INFO data for NBD_INFO_NAME or NBD_INFO_DESCRIPTION. */
export function encodeInfoString(info: number, text: string): Buffer {
  const bytes = Buffer.from(clipString(text), 'utf8');
  const buf = Buffer.alloc(U16_BYTES + bytes.length);
  buf.writeUInt16BE(info, 0);
  bytes.copy(buf, U16_BYTES);
  return buf;
}

/** NBD_REP_INFO data for NBD_INFO_BLOCK_SIZE. */
export function encodeInfoBlockSize(minimum: number, preferred: number, maximum: number): Buffer {
  const buf = Buffer.alloc(INFO_BLOCK_SIZE_BYTES);
  buf.writeUInt16BE(NBD_INFO_BLOCK_SIZE, 0);
  buf.writeUInt32BE(minimum, U16_BYTES);
  buf.writeUInt32BE(preferred, U16_BYTES + U32_BYTES);
  buf.writeUInt32BE(maximum, U16_BYTES + 2 * U32_BYTES);
  return buf;
}

/** NBD_REP_META_CONTEXT data: context id, name. */
export function encodeRepMetaContext(contextId: number, name: string): Buffer {
  const nameBytes = Buffer.from(name, 'utf8');
  const buf = Buffer.alloc(U32_BYTES + nameBytes.length);
  buf.writeUInt32BE(contextId, 0);
  nameBytes.copy(buf, U32_BYTES);
  return buf;
}

/** Reply to NBD_OPT_EXPORT_NAME: size, flags, and 124 zero bytes unless NO_ZEROES. */
export function encodeExportNameReply(
  sizeBytes: bigint,
  transmissionFlags: number,
  noZeroes: boolean,
): Buffer {
  const padding = noZeroes ? 0 : EXPORT_NAME_PADDING_BYTES;
  const buf = Buffer.alloc(EXPORT_NAME_REPLY_BYTES + padding);
  buf.writeBigUInt64BE(sizeBytes, 0);
  buf.writeUInt16BE(transmissionFlags, U64_BYTES);
  return buf;
}

// ---------------------------------------------------------------------------------------------
// Handshake: client -> server

export interface OptionHeader {
  magic: bigint;
  option: number;
  length: number;
}

/** Reads an option request header at `at` (OPTION_HEADER_BYTES available). */
export function parseOptionHeader(buf: Buffer, at = 0): OptionHeader {
  return {
    magic: buf.readBigUInt64BE(at),
    option: buf.readUInt32BE(at + U64_BYTES),
    length: buf.readUInt32BE(at + U64_BYTES + U32_BYTES),
  };
}

/** NBD_OPT_INFO / NBD_OPT_GO data: export name and requested information types. */
export interface InfoRequest {
  name: string;
  infos: number[];
}

/** Parses INFO/GO data, checking every length against the option's length. */
export function parseInfoRequest(data: Buffer): InfoRequest | ParseError {
  if (data.length < U32_BYTES + U16_BYTES) {
    return { reason: 'option_short', message: 'INFO/GO data shorter than its fixed fields' };
  }
  const nameBytes = data.readUInt32BE(0);
  if (nameBytes > data.length - U32_BYTES - U16_BYTES) {
    return { reason: 'option_bad_length', message: 'export name longer than the option' };
  }
  const name = parseName(data, U32_BYTES, nameBytes);
  if (isParseError(name)) return name;
  const countAt = U32_BYTES + nameBytes;
  const count = data.readUInt16BE(countAt);
  if (data.length !== countAt + U16_BYTES + count * U16_BYTES) {
    return { reason: 'option_bad_length', message: 'information request count does not match' };
  }
  const infos: number[] = [];
  for (let i = 0; i < count; i++)
    infos.push(data.readUInt16BE(countAt + U16_BYTES + i * U16_BYTES));
  return { name, infos };
}

/** LIST_META_CONTEXT / SET_META_CONTEXT data: export name and context queries. */
export interface MetaContextRequest {
  name: string;
  queries: string[];
}

export function parseMetaContextRequest(data: Buffer): MetaContextRequest | ParseError {
  if (data.length < 2 * U32_BYTES) {
    return { reason: 'option_short', message: 'meta context data shorter than its fields' };
  }
  const nameBytes = data.readUInt32BE(0);
  if (nameBytes > data.length - 2 * U32_BYTES) {
    return { reason: 'option_bad_length', message: 'export name longer than the option' };
  }
  const name = parseName(data, U32_BYTES, nameBytes);
  if (isParseError(name)) return name;
  let at = U32_BYTES + nameBytes;
  const count = data.readUInt32BE(at);
  at += U32_BYTES;
  const queries: string[] = [];
  for (let i = 0; i < count; i++) {
    if (data.length - at < U32_BYTES) {
      return { reason: 'option_bad_length', message: 'meta context query count too large' };
    }
    const queryBytes = data.readUInt32BE(at);
    at += U32_BYTES;
    if (queryBytes > data.length - at) {
      return { reason: 'option_bad_length', message: 'meta context query longer than option' };
    }
    const query = parseName(data, at, queryBytes);
    if (isParseError(query)) return query;
    queries.push(query);
    at += queryBytes;
  }
  if (at !== data.length) {
    return { reason: 'option_bad_length', message: 'trailing bytes after meta context queries' };
  }
  return { name, queries };
}

/** A protocol string: at most NBD_MAX_STRING_BYTES, no NUL. */
export function parseName(data: Buffer, at: number, length: number): string | ParseError {
  if (length > NBD_MAX_STRING_BYTES) {
    return { reason: 'name_too_long', message: `string longer than ${NBD_MAX_STRING_BYTES}` };
  }
  const bytes = data.subarray(at, at + length);
  if (bytes.includes(0)) return { reason: 'name_has_nul', message: 'string contains NUL' };
  return bytes.toString('utf8');
}

/** Client side: an option request. */
export function encodeOptionRequest(option: number, data?: Buffer): Buffer {
  const dataBytes = data?.length ?? 0;
  const buf = Buffer.alloc(OPTION_HEADER_BYTES + dataBytes);
  buf.writeBigUInt64BE(IHAVEOPT, 0);
  buf.writeUInt32BE(option, U64_BYTES);
  buf.writeUInt32BE(dataBytes, U64_BYTES + U32_BYTES);
  data?.copy(buf, OPTION_HEADER_BYTES);
  return buf;
}

/** Client side: INFO/GO data. */
export function encodeInfoRequest(name: string, infos: number[]): Buffer {
  const nameBytes = Buffer.from(name, 'utf8');
  const buf = Buffer.alloc(U32_BYTES + nameBytes.length + U16_BYTES + infos.length * U16_BYTES);
  buf.writeUInt32BE(nameBytes.length, 0);
  nameBytes.copy(buf, U32_BYTES);
  let at = U32_BYTES + nameBytes.length;
  at = buf.writeUInt16BE(infos.length, at);
  for (const info of infos) at = buf.writeUInt16BE(info, at);
  return buf;
}

/** Client side: LIST/SET_META_CONTEXT data. */
export function encodeMetaContextRequest(name: string, queries: string[]): Buffer {
  const parts = [u32(Buffer.byteLength(name)), Buffer.from(name), u32(queries.length)];
  for (const query of queries) parts.push(u32(Buffer.byteLength(query)), Buffer.from(query));
  return Buffer.concat(parts);
}

/** Client side: a parsed option reply header (data follows it). */
export interface OptionReplyHeader {
  magic: bigint;
  option: number;
  type: number;
  length: number;
}

export function parseOptionReplyHeader(buf: Buffer, at = 0): OptionReplyHeader {
  return {
    magic: buf.readBigUInt64BE(at),
    option: buf.readUInt32BE(at + U64_BYTES),
    type: buf.readUInt32BE(at + U64_BYTES + U32_BYTES),
    length: buf.readUInt32BE(at + U64_BYTES + 2 * U32_BYTES),
  };
}

/** Client side: decodes an NBD_REP_INFO data blob into a small record. */
export function parseRepInfo(data: Buffer): { info: number; fields: Record<string, unknown> } {
  const info = data.readUInt16BE(0);
  switch (info) {
    case NBD_INFO_EXPORT:
      return {
        info,
        fields: {
          sizeBytes: data.readBigUInt64BE(U16_BYTES),
          flags: data.readUInt16BE(U16_BYTES + U64_BYTES),
        },
      };
    case NBD_INFO_NAME:
    case NBD_INFO_DESCRIPTION:
      return { info, fields: { text: data.subarray(U16_BYTES).toString('utf8') } };
    case NBD_INFO_BLOCK_SIZE:
      return {
        info,
        fields: {
          minimum: data.readUInt32BE(U16_BYTES),
          preferred: data.readUInt32BE(U16_BYTES + U32_BYTES),
          maximum: data.readUInt32BE(U16_BYTES + 2 * U32_BYTES),
        },
      };
    default:
      return { info, fields: {} };
  }
}

// ---------------------------------------------------------------------------------------------
// Transmission: client -> server

/** One request as read from the wire. `offset` is a u64, kept exact as a BigInt. */
export interface RequestHeader {
  magic: number;
  flags: number;
  type: number;
  cookie: Cookie;
  offset: bigint;
  length: number;
}

/** Reads a request header at `at` (REQUEST_HEADER_BYTES available). */
export function parseRequestHeader(buf: Buffer, at = 0): RequestHeader {
  return {
    magic: buf.readUInt32BE(at),
    flags: buf.readUInt16BE(at + REQUEST_FLAGS_AT),
    type: buf.readUInt16BE(at + REQUEST_TYPE_AT),
    cookie: {
      hi: buf.readUInt32BE(at + REQUEST_COOKIE_AT),
      lo: buf.readUInt32BE(at + REQUEST_COOKIE_AT + U32_BYTES),
    },
    offset: buf.readBigUInt64BE(at + REQUEST_OFFSET_AT),
    length: buf.readUInt32BE(at + REQUEST_LENGTH_AT),
  };
}

/** Client side: a request header, followed by `payload` when given (WRITE). */
export function encodeRequest(
  request: Omit<RequestHeader, 'magic'> & { magic?: number },
  payload?: Buffer,
): Buffer {
  const buf = Buffer.alloc(REQUEST_HEADER_BYTES + (payload?.length ?? 0));
  buf.writeUInt32BE(request.magic ?? NBD_REQUEST_MAGIC, 0);
  buf.writeUInt16BE(request.flags, REQUEST_FLAGS_AT);
  buf.writeUInt16BE(request.type, REQUEST_TYPE_AT);
  writeCookie(buf, REQUEST_COOKIE_AT, request.cookie);
  buf.writeBigUInt64BE(request.offset, REQUEST_OFFSET_AT);
  buf.writeUInt32BE(request.length, REQUEST_LENGTH_AT);
  payload?.copy(buf, REQUEST_HEADER_BYTES);
  return buf;
}

// ---------------------------------------------------------------------------------------------
// Transmission: server -> client

export function writeCookie(buf: Buffer, at: number, cookie: Cookie): void {
  buf.writeUInt32BE(cookie.hi, at);
  buf.writeUInt32BE(cookie.lo, at + U32_BYTES);
}

/** Writes a simple reply header at `at`; READ data, if any, follows it in the same buffer. */
export function writeSimpleReply(buf: Buffer, at: number, error: number, cookie: Cookie): void {
  buf.writeUInt32BE(NBD_SIMPLE_REPLY_MAGIC, at);
  buf.writeUInt32BE(error, at + U32_BYTES);
  writeCookie(buf, at + 2 * U32_BYTES, cookie);
}

/** A simple reply without data. */
export function encodeSimpleReply(error: number, cookie: Cookie): Buffer {
  const buf = Buffer.allocUnsafe(SIMPLE_REPLY_BYTES);
  writeSimpleReply(buf, 0, error, cookie);
  return buf;
}

/** Writes a structured chunk header at `at`; `payloadBytes` follow it. */
export function writeChunkHeader(
  buf: Buffer,
  at: number,
  flags: number,
  type: number,
  cookie: Cookie,
  payloadBytes: number,
): void {
  buf.writeUInt32BE(NBD_STRUCTURED_REPLY_MAGIC, at);
  buf.writeUInt16BE(flags, at + U32_BYTES);
  buf.writeUInt16BE(type, at + U32_BYTES + U16_BYTES);
  writeCookie(buf, at + U32_BYTES + 2 * U16_BYTES, cookie);
  buf.writeUInt32BE(payloadBytes, at + U32_BYTES + 2 * U16_BYTES + U64_BYTES);
}

/**
 * Writes the header of an OFFSET_DATA chunk carrying `dataBytes` bytes read at `offset`;
 * the data follows at `at + OFFSET_DATA_HEADER_BYTES`.
 */
export function writeOffsetDataHeader(
  buf: Buffer,
  at: number,
  flags: number,
  cookie: Cookie,
  offset: number,
  dataBytes: number,
): void {
  writeChunkHeader(
    buf,
    at,
    flags,
    NBD_REPLY_TYPE_OFFSET_DATA,
    cookie,
    OFFSET_DATA_PREFIX_BYTES + dataBytes,
  );
  buf.writeBigUInt64BE(BigInt(offset), at + CHUNK_HEADER_BYTES);
}

/** Bytes before the data in an OFFSET_DATA chunk. */
export const OFFSET_DATA_HEADER_BYTES = CHUNK_HEADER_BYTES + OFFSET_DATA_PREFIX_BYTES;

/** An OFFSET_HOLE chunk: `holeBytes` zeroes at `offset`. */
export function encodeOffsetHole(
  flags: number,
  cookie: Cookie,
  offset: number,
  holeBytes: number,
): Buffer {
  const buf = Buffer.allocUnsafe(CHUNK_HEADER_BYTES + OFFSET_HOLE_PAYLOAD_BYTES);
  writeChunkHeader(buf, 0, flags, NBD_REPLY_TYPE_OFFSET_HOLE, cookie, OFFSET_HOLE_PAYLOAD_BYTES);
  buf.writeBigUInt64BE(BigInt(offset), CHUNK_HEADER_BYTES);
  buf.writeUInt32BE(holeBytes, CHUNK_HEADER_BYTES + U64_BYTES);
  return buf;
}

/** A NONE chunk with DONE: ends a structured reply that carries nothing else. */
export function encodeNoneDone(cookie: Cookie): Buffer {
  const buf = Buffer.allocUnsafe(CHUNK_HEADER_BYTES);
  writeChunkHeader(buf, 0, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_NONE, cookie, 0);
  return buf;
}

/** A final ERROR chunk with a message for the client. */
export function encodeErrorChunk(error: number, cookie: Cookie, message: string): Buffer {
  const text = Buffer.from(clipString(message), 'utf8');
  const payloadBytes = ERROR_PREFIX_BYTES + text.length;
  const buf = Buffer.allocUnsafe(CHUNK_HEADER_BYTES + payloadBytes);
  writeChunkHeader(buf, 0, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_ERROR, cookie, payloadBytes);
  buf.writeUInt32BE(error, CHUNK_HEADER_BYTES);
  buf.writeUInt16BE(text.length, CHUNK_HEADER_BYTES + U32_BYTES);
  text.copy(buf, CHUNK_HEADER_BYTES + ERROR_PREFIX_BYTES);
  return buf;
}

/** One BLOCK_STATUS descriptor. */
export interface BlockDescriptor {
  length: number;
  flags: number;
}

/** A final BLOCK_STATUS chunk for one context. */
export function encodeBlockStatus(
  cookie: Cookie,
  contextId: number,
  extents: readonly BlockDescriptor[],
): Buffer {
  const payloadBytes = BLOCK_STATUS_PREFIX_BYTES + extents.length * BLOCK_DESCRIPTOR_BYTES;
  const buf = Buffer.allocUnsafe(CHUNK_HEADER_BYTES + payloadBytes);
  writeChunkHeader(buf, 0, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_BLOCK_STATUS, cookie, payloadBytes);
  let at = buf.writeUInt32BE(contextId, CHUNK_HEADER_BYTES);
  for (const extent of extents) {
    at = buf.writeUInt32BE(extent.length, at);
    at = buf.writeUInt32BE(extent.flags, at);
  }
  return buf;
}

/** Client side: a simple reply header. */
export function parseSimpleReply(
  buf: Buffer,
  at = 0,
): { magic: number; error: number; cookie: Cookie } {
  return {
    magic: buf.readUInt32BE(at),
    error: buf.readUInt32BE(at + U32_BYTES),
    cookie: { hi: buf.readUInt32BE(at + 2 * U32_BYTES), lo: buf.readUInt32BE(at + 3 * U32_BYTES) },
  };
}

/** Client side: a structured chunk header. */
export interface ChunkHeader {
  magic: number;
  flags: number;
  type: number;
  cookie: Cookie;
  length: number;
}

export function parseChunkHeader(buf: Buffer, at = 0): ChunkHeader {
  const cookieAt = at + U32_BYTES + 2 * U16_BYTES;
  return {
    magic: buf.readUInt32BE(at),
    flags: buf.readUInt16BE(at + U32_BYTES),
    type: buf.readUInt16BE(at + U32_BYTES + U16_BYTES),
    cookie: { hi: buf.readUInt32BE(cookieAt), lo: buf.readUInt32BE(cookieAt + U32_BYTES) },
    length: buf.readUInt32BE(cookieAt + U64_BYTES),
  };
}

// ---------------------------------------------------------------------------------------------

function u32(value: number): Buffer {
  const buf = Buffer.alloc(U32_BYTES);
  buf.writeUInt32BE(value, 0);
  return buf;
}

/** Cuts a message to the protocol's string limit (on a character boundary). */
function clipString(text: string): string {
  if (Buffer.byteLength(text) <= NBD_MAX_STRING_BYTES) return text;
  let clipped = text.slice(0, NBD_MAX_STRING_BYTES);
  while (Buffer.byteLength(clipped) > NBD_MAX_STRING_BYTES) clipped = clipped.slice(0, -1);
  return clipped;
}
