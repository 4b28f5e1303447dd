/**
 * The client's side of the NBD wire, written for the reliability tests independently of the
 * server's own encoders (src/nbd/messages.ts), so a fault shared by both cannot hide: frame
 * builders that can also build wrong frames on purpose, and an incremental reply parser that
 * checks what the server sends back. Only the spec's constants are shared.
 */
import {
  CHUNK_HEADER_BYTES,
  GREETING_BYTES,
  IHAVEOPT,
  NBD_CMD_READ,
  NBD_REP_FLAG_ERROR,
  NBD_REP_MAGIC,
  NBD_REPLY_FLAG_DONE,
  NBD_REQUEST_MAGIC,
  NBD_SIMPLE_REPLY_MAGIC,
  NBD_STRUCTURED_REPLY_MAGIC,
  NBDMAGIC,
  OPTION_HEADER_BYTES,
  OPTION_REPLY_HEADER_BYTES,
  REQUEST_HEADER_BYTES,
  SIMPLE_REPLY_BYTES,
  U16_BYTES,
  U32_BYTES,
  U64_BYTES,
} from '../../src/nbd/protocol.js';

/**
 * Largest reply payload the parser accepts before calling the stream broken: the server's
 * own maximum READ (32 MiB) plus a chunk prefix. Anything larger is a server fault.
 */
export const REPLY_PAYLOAD_BYTES_MAX = 32 * 1024 * 1024 + 64;

/** Option request: magic (normally IHAVEOPT), option code, data (length may lie). */
export function encodeOption(
  option: number,
  data: Buffer,
  o: { magic?: bigint; lengthField?: number } = {},
): Buffer {
  const out = Buffer.alloc(OPTION_HEADER_BYTES + data.length);
  out.writeBigUInt64BE(o.magic ?? IHAVEOPT, 0);
  out.writeUInt32BE(option >>> 0, U64_BYTES);
  out.writeUInt32BE((o.lengthField ?? data.length) >>> 0, U64_BYTES + U32_BYTES);
  data.copy(out, OPTION_HEADER_BYTES);
  return out;
}

/** INFO/GO data: name length, name, count of info requests, the requests. */
export function infoData(name: Buffer, infos: number[], o: { nameLength?: number } = {}): Buffer {
  const out = Buffer.alloc(U32_BYTES + name.length + U16_BYTES + infos.length * U16_BYTES);
  out.writeUInt32BE((o.nameLength ?? name.length) >>> 0, 0);
  name.copy(out, U32_BYTES);
  let at = U32_BYTES + name.length;
  out.writeUInt16BE(infos.length & 0xffff, at);
  at += U16_BYTES;
  for (const info of infos) {
    out.writeUInt16BE(info & 0xffff, at);
    at += U16_BYTES;
  }
  return out;
}

/** LIST/SET_META_CONTEXT data: name length, name, query count, (length, query) each. */
export function metaContextData(name: Buffer, queries: Buffer[]): Buffer {
  const parts: Buffer[] = [];
  const head = Buffer.alloc(U32_BYTES);
  head.writeUInt32BE(name.length, 0);
  parts.push(head, name);
  const count = Buffer.alloc(U32_BYTES);
  count.writeUInt32BE(queries.length, 0);
  parts.push(count);
  for (const query of queries) {
    const length = Buffer.alloc(U32_BYTES);
    length.writeUInt32BE(query.length, 0);
    parts.push(length, query);
  }
  return Buffer.concat(parts);
}

export interface RequestFields {
  flags: number;
  type: number;
  cookie: bigint;
  offset: bigint;
  length: number;
  magic?: number;
}

/** A transmission request header (payload, if any, follows separately). */
export function encodeRequest(r: RequestFields): Buffer {
  const out = Buffer.alloc(REQUEST_HEADER_BYTES);
  out.writeUInt32BE((r.magic ?? NBD_REQUEST_MAGIC) >>> 0, 0);
  out.writeUInt16BE(r.flags & 0xffff, U32_BYTES);
  out.writeUInt16BE(r.type & 0xffff, U32_BYTES + U16_BYTES);
  out.writeBigUInt64BE(r.cookie, U32_BYTES + 2 * U16_BYTES);
  out.writeBigUInt64BE(r.offset, U32_BYTES + 2 * U16_BYTES + U64_BYTES);
  out.writeUInt32BE(r.length >>> 0, U32_BYTES + 2 * U16_BYTES + 2 * U64_BYTES);
  return out;
}

/** What the parser hands back, in stream order. */
export type ServerMessage =
  | { kind: 'greeting'; flags: number }
  | { kind: 'optionReply'; option: number; type: number; data: Buffer; final: boolean }
  | { kind: 'exportNameReply'; sizeBytes: bigint; flags: number }
  | {
      kind: 'reply';
      cookie: bigint;
      error: number;
      /** Structured chunk type, or null for a simple reply. */
      chunkType: number | null;
      /** READ data (simple reply) or the chunk's payload (structured). */
      payload: Buffer | null;
      final: boolean;
    }
  | { kind: 'violation'; message: string };

type ParsePhase = 'greeting' | 'options' | 'exportName' | 'transmission' | 'broken';

/**
 * Incremental parser of everything a server sends a client. The owner tells it the phase
 * changes the client caused (EXPORT_NAME sent, transmission entered) and, for simple replies,
 * which cookies are READs of how many bytes (a simple reply carries no length).
 */
export class ReplyParser {
  #buffer: Buffer = Buffer.alloc(0);
  #phase: ParsePhase = 'greeting';
  /** Bytes of padding after an EXPORT_NAME reply (0 when NO_ZEROES was agreed). */
  #exportNamePaddingBytes = 0;
  /** READ cookies with their lengths, for simple replies. */
  readonly readLengths = new Map<bigint, number>();

  expectExportNameReply(paddingBytes: number): void {
    this.#phase = 'exportName';
    this.#exportNamePaddingBytes = paddingBytes;
  }

  startTransmission(): void {
    this.#phase = 'transmission';
  }

  get broken(): boolean {
    return this.#phase === 'broken';
  }

  push(chunk: Buffer): ServerMessage[] {
    if (this.#phase === 'broken') return [];
    this.#buffer = this.#buffer.length === 0 ? chunk : Buffer.concat([this.#buffer, chunk]);
    const out: ServerMessage[] = [];
    for (;;) {
      const message = this.#next();
      if (message === null) break;
      out.push(message);
      if (message.kind === 'violation') {
        this.#phase = 'broken';
        break;
      }
    }
    return out;
  }

  #take(n: number): Buffer {
    const out = this.#buffer.subarray(0, n);
    this.#buffer = this.#buffer.subarray(n);
    return out;
  }

  #next(): ServerMessage | null {
    switch (this.#phase) {
      case 'greeting':
        return this.#greeting();
      case 'options':
        return this.#optionReply();
      case 'exportName':
        return this.#exportNameReply();
      case 'transmission':
        return this.#transmissionReply();
      case 'broken':
        return null;
    }
  }

  #greeting(): ServerMessage | null {
    if (this.#buffer.length < GREETING_BYTES) return null;
    const bytes = this.#take(GREETING_BYTES);
    if (bytes.readBigUInt64BE(0) !== NBDMAGIC || bytes.readBigUInt64BE(U64_BYTES) !== IHAVEOPT) {
      return { kind: 'violation', message: 'greeting magics wrong' };
    }
    this.#phase = 'options';
    return { kind: 'greeting', flags: bytes.readUInt16BE(2 * U64_BYTES) };
  }

  #optionReply(): ServerMessage | null {
    if (this.#buffer.length < OPTION_REPLY_HEADER_BYTES) return null;
    const length = this.#buffer.readUInt32BE(U64_BYTES + 2 * U32_BYTES);
    if (length > REPLY_PAYLOAD_BYTES_MAX) {
      return { kind: 'violation', message: `option reply of ${length} bytes` };
    }
    if (this.#buffer.length < OPTION_REPLY_HEADER_BYTES + length) return null;
    const header = this.#take(OPTION_REPLY_HEADER_BYTES);
    if (header.readBigUInt64BE(0) !== NBD_REP_MAGIC) {
      return { kind: 'violation', message: 'option reply magic wrong' };
    }
    const option = header.readUInt32BE(U64_BYTES);
    const type = header.readUInt32BE(U64_BYTES + U32_BYTES);
    const data = Buffer.from(this.#take(length));
    const final = type === 1 || (type & NBD_REP_FLAG_ERROR) !== 0;
    return { kind: 'optionReply', option, type, data, final };
  }

  #exportNameReply(): ServerMessage | null {
    const bytes = U64_BYTES + U16_BYTES + this.#exportNamePaddingBytes;
    if (this.#buffer.length < bytes) return null;
    const reply = this.#take(bytes);
    this.#phase = 'transmission';
    return {
      kind: 'exportNameReply',
      sizeBytes: reply.readBigUInt64BE(0),
      flags: reply.readUInt16BE(U64_BYTES),
    };
  }

  #transmissionReply(): ServerMessage | null {
    if (this.#buffer.length < U32_BYTES) return null;
    const magic = this.#buffer.readUInt32BE(0);
    if (magic === NBD_SIMPLE_REPLY_MAGIC) return this.#simpleReply();
    if (magic === NBD_STRUCTURED_REPLY_MAGIC) return this.#chunk();
    return { kind: 'violation', message: `reply magic 0x${magic.toString(16)}` };
  }

  #simpleReply(): ServerMessage | null {
    if (this.#buffer.length < SIMPLE_REPLY_BYTES) return null;
    const error = this.#buffer.readUInt32BE(U32_BYTES);
    const cookie = this.#buffer.readBigUInt64BE(2 * U32_BYTES);
    const readLength = this.readLengths.get(cookie);
    const dataBytes = error === 0 && readLength !== undefined ? readLength : 0;
    if (this.#buffer.length < SIMPLE_REPLY_BYTES + dataBytes) return null;
    this.#take(SIMPLE_REPLY_BYTES);
    const data = dataBytes > 0 ? Buffer.from(this.#take(dataBytes)) : null;
    this.readLengths.delete(cookie);
    return { kind: 'reply', cookie, error, chunkType: null, payload: data, final: true };
  }

  #chunk(): ServerMessage | null {
    if (this.#buffer.length < CHUNK_HEADER_BYTES) return null;
    const length = this.#buffer.readUInt32BE(CHUNK_HEADER_BYTES - U32_BYTES);
    if (length > REPLY_PAYLOAD_BYTES_MAX) {
      return { kind: 'violation', message: `reply chunk of ${length} bytes` };
    }
    if (this.#buffer.length < CHUNK_HEADER_BYTES + length) return null;
    const header = this.#take(CHUNK_HEADER_BYTES);
    const flags = header.readUInt16BE(U32_BYTES);
    const type = header.readUInt16BE(U32_BYTES + U16_BYTES);
    const cookie = header.readBigUInt64BE(U32_BYTES + 2 * U16_BYTES);
    const payload = Buffer.from(this.#take(length));
    const final = (flags & NBD_REPLY_FLAG_DONE) !== 0;
    // Error chunks have the high bit of the type set; their payload starts with the errno.
    const isError = (type & 0x8000) !== 0;
    const error = isError && payload.length >= U32_BYTES ? payload.readUInt32BE(0) : 0;
    if (isError && error === 0) return { kind: 'violation', message: 'error chunk with errno 0' };
    if (final) this.readLengths.delete(cookie);
    return { kind: 'reply', cookie, error, chunkType: type, payload, final };
  }
}

/** True when a request type is a READ (its simple reply carries data). */
export function isRead(type: number): boolean {
  return type === NBD_CMD_READ;
}
