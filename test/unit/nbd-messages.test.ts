// Every NBD message: encoded by one side, parsed by the other, byte layout checked against the
// spec's field order.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import {
  encodeBlockStatus,
  encodeErrorChunk,
  encodeExportNameReply,
  encodeGreeting,
  encodeInfoBlockSize,
  encodeInfoExport,
  encodeInfoRequest,
  encodeInfoString,
  encodeMetaContextRequest,
  encodeNoneDone,
  encodeOffsetHole,
  encodeOptionError,
  encodeOptionReply,
  encodeOptionRequest,
  encodeRepMetaContext,
  encodeRepServer,
  encodeRequest,
  encodeSimpleReply,
  isParseError,
  OFFSET_DATA_HEADER_BYTES,
  parseChunkHeader,
  parseInfoRequest,
  parseMetaContextRequest,
  parseName,
  parseOptionHeader,
  parseOptionReplyHeader,
  parseRepInfo,
  parseRequestHeader,
  parseSimpleReply,
  writeOffsetDataHeader,
} from '../../src/nbd/messages.js';
import {
  CHUNK_HEADER_BYTES,
  GREETING_BYTES,
  IHAVEOPT,
  NBD_CMD_WRITE,
  NBD_EINVAL,
  NBD_INFO_BLOCK_SIZE,
  NBD_INFO_DESCRIPTION,
  NBD_INFO_EXPORT,
  NBD_INFO_NAME,
  NBD_MAX_STRING_BYTES,
  NBD_OPT_GO,
  NBD_OPT_LIST,
  NBD_REP_ACK,
  NBD_REP_ERR_UNSUP,
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
  OPTION_HEADER_BYTES,
  OPTION_REPLY_HEADER_BYTES,
  REQUEST_HEADER_BYTES,
  SIMPLE_REPLY_BYTES,
} from '../../src/nbd/protocol.js';

const cookie = { hi: 0xdeadbeef, lo: 0x01020304 };

describe('NBD wire sizes', () => {
  it('derives the spec sizes', () => {
    assert.equal(GREETING_BYTES, 18);
    assert.equal(OPTION_HEADER_BYTES, 16);
    assert.equal(OPTION_REPLY_HEADER_BYTES, 20);
    assert.equal(REQUEST_HEADER_BYTES, 28);
    assert.equal(SIMPLE_REPLY_BYTES, 16);
    assert.equal(CHUNK_HEADER_BYTES, 20);
  });
});

describe('handshake messages', () => {
  it('greets with NBDMAGIC, IHAVEOPT and FIXED_NEWSTYLE|NO_ZEROES', () => {
    const g = encodeGreeting();
    assert.equal(g.length, GREETING_BYTES);
    assert.equal(g.readBigUInt64BE(0), NBDMAGIC);
    assert.equal(g.subarray(0, 8).toString('latin1'), 'NBDMAGIC');
    assert.equal(g.subarray(8, 16).toString('latin1'), 'IHAVEOPT');
    assert.equal(g.readUInt16BE(16), 3);
  });

  it('round-trips option requests and replies', () => {
    const req = encodeOptionRequest(NBD_OPT_LIST, Buffer.from('xyz'));
    assert.deepEqual(parseOptionHeader(req), { magic: IHAVEOPT, option: NBD_OPT_LIST, length: 3 });
    assert.equal(req.subarray(OPTION_HEADER_BYTES).toString(), 'xyz');
    const rep = encodeOptionReply(NBD_OPT_GO, NBD_REP_ACK);
    assert.deepEqual(parseOptionReplyHeader(rep), {
      magic: NBD_REP_MAGIC,
      option: NBD_OPT_GO,
      type: NBD_REP_ACK,
      length: 0,
    });
    const err = encodeOptionError(99, NBD_REP_ERR_UNSUP, 'nope');
    assert.equal(parseOptionReplyHeader(err).type, NBD_REP_ERR_UNSUP);
    assert.equal(err.subarray(OPTION_REPLY_HEADER_BYTES).toString(), 'nope');
  });

  it('clips error messages to the string limit', () => {
    const err = encodeOptionError(1, NBD_REP_ERR_UNSUP, 'é'.repeat(NBD_MAX_STRING_BYTES));
    assert.ok(parseOptionReplyHeader(err).length <= NBD_MAX_STRING_BYTES);
  });

  it('encodes NBD_REP_SERVER and NBD_REP_META_CONTEXT', () => {
    const s = encodeRepServer('disk', 'a disk');
    assert.equal(s.readUInt32BE(0), 4);
    assert.equal(s.subarray(4, 8).toString(), 'disk');
    assert.equal(s.subarray(8).toString(), 'a disk');
    const m = encodeRepMetaContext(7, 'base:allocation');
    assert.equal(m.readUInt32BE(0), 7);
    assert.equal(m.subarray(4).toString(), 'base:allocation');
  });

  it('encodes every NBD_REP_INFO and parses it back', () => {
    assert.deepEqual(parseRepInfo(encodeInfoExport(1n << 40n, 0x1234)), {
      info: NBD_INFO_EXPORT,
      fields: { sizeBytes: 1n << 40n, flags: 0x1234 },
    });
    assert.equal(encodeInfoExport(1n, 1).length, 12);
    assert.deepEqual(parseRepInfo(encodeInfoString(NBD_INFO_NAME, 'n')), {
      info: NBD_INFO_NAME,
      fields: { text: 'n' },
    });
    assert.deepEqual(parseRepInfo(encodeInfoString(NBD_INFO_DESCRIPTION, 'd')).fields, {
      text: 'd',
    });
    const bs = encodeInfoBlockSize(1, 4096, 32 << 20);
    assert.equal(bs.length, 14);
    assert.deepEqual(parseRepInfo(bs), {
      info: NBD_INFO_BLOCK_SIZE,
      fields: { minimum: 1, preferred: 4096, maximum: 32 << 20 },
    });
  });

  it('pads the EXPORT_NAME reply unless NO_ZEROES', () => {
    const padded = encodeExportNameReply(4096n, 3, false);
    assert.equal(padded.length, 134);
    assert.ok(padded.subarray(10).every((b) => b === 0));
    const bare = encodeExportNameReply(4096n, 3, true);
    assert.equal(bare.length, 10);
    assert.equal(bare.readBigUInt64BE(0), 4096n);
    assert.equal(bare.readUInt16BE(8), 3);
  });

  it('parses INFO/GO data and rejects each bad length', () => {
    assert.deepEqual(parseInfoRequest(encodeInfoRequest('disk', [1, 3])), {
      name: 'disk',
      infos: [1, 3],
    });
    assert.deepEqual(parseInfoRequest(encodeInfoRequest('', [])), { name: '', infos: [] });
    const short = parseInfoRequest(Buffer.alloc(5));
    assert.ok(isParseError(short) && short.reason === 'option_short');
    const long = Buffer.alloc(6);
    long.writeUInt32BE(1, 0);
    const nameTooLong = parseInfoRequest(long);
    assert.ok(isParseError(nameTooLong) && nameTooLong.reason === 'option_bad_length');
    const extra = Buffer.concat([encodeInfoRequest('a', [1]), Buffer.alloc(1)]);
    const badCount = parseInfoRequest(extra);
    assert.ok(isParseError(badCount) && badCount.reason === 'option_bad_length');
    const nul = parseInfoRequest(encodeInfoRequest('a\0b', []));
    assert.ok(isParseError(nul) && nul.reason === 'name_has_nul');
  });

  it('parses meta context data and rejects each bad length', () => {
    const data = encodeMetaContextRequest('disk', ['base:allocation', 'qemu:x']);
    assert.deepEqual(parseMetaContextRequest(data), {
      name: 'disk',
      queries: ['base:allocation', 'qemu:x'],
    });
    const truncated = parseMetaContextRequest(data.subarray(0, data.length - 1));
    assert.ok(isParseError(truncated) && truncated.reason === 'option_bad_length');
    const trailing = parseMetaContextRequest(Buffer.concat([data, Buffer.alloc(1)]));
    assert.ok(isParseError(trailing) && trailing.reason === 'option_bad_length');
    const manyQueries = Buffer.from(encodeMetaContextRequest('d', []));
    manyQueries.writeUInt32BE(1000, 5);
    const count = parseMetaContextRequest(manyQueries);
    assert.ok(isParseError(count) && count.reason === 'option_bad_length');
    const short = parseMetaContextRequest(Buffer.alloc(7));
    assert.ok(isParseError(short) && short.reason === 'option_short');
  });

  it('refuses names over 4096 bytes', () => {
    const big = Buffer.alloc(NBD_MAX_STRING_BYTES + 1, 0x61);
    const result = parseName(big, 0, big.length);
    assert.ok(isParseError(result) && result.reason === 'name_too_long');
    assert.equal(parseName(big, 0, NBD_MAX_STRING_BYTES), 'a'.repeat(NBD_MAX_STRING_BYTES));
  });
});

describe('transmission messages', () => {
  it('round-trips a request header with a u64 offset and cookie', () => {
    const h = { flags: 5, type: NBD_CMD_WRITE, cookie, offset: (1n << 64n) - 1n, length: 3 };
    const buf = encodeRequest(h, Buffer.from('abc'));
    assert.equal(buf.length, REQUEST_HEADER_BYTES + 3);
    assert.deepEqual(parseRequestHeader(buf), { magic: NBD_REQUEST_MAGIC, ...h });
    assert.equal(buf.readUInt32BE(0), 0x25609513);
  });

  it('encodes a simple reply echoing the cookie byte for byte', () => {
    const r = encodeSimpleReply(NBD_EINVAL, cookie);
    assert.deepEqual(parseSimpleReply(r), { magic: NBD_SIMPLE_REPLY_MAGIC, error: 22, cookie });
    assert.equal(r.subarray(8).toString('hex'), 'deadbeef01020304');
  });

  it('encodes OFFSET_DATA, OFFSET_HOLE, NONE, ERROR and BLOCK_STATUS chunks', () => {
    const data = Buffer.alloc(OFFSET_DATA_HEADER_BYTES + 4);
    writeOffsetDataHeader(data, 0, NBD_REPLY_FLAG_DONE, cookie, 8192, 4);
    assert.deepEqual(parseChunkHeader(data), {
      magic: NBD_STRUCTURED_REPLY_MAGIC,
      flags: NBD_REPLY_FLAG_DONE,
      type: NBD_REPLY_TYPE_OFFSET_DATA,
      cookie,
      length: 12,
    });
    assert.equal(data.readBigUInt64BE(CHUNK_HEADER_BYTES), 8192n);

    const hole = encodeOffsetHole(0, cookie, 4096, 512);
    assert.equal(parseChunkHeader(hole).type, NBD_REPLY_TYPE_OFFSET_HOLE);
    assert.equal(parseChunkHeader(hole).length, 12);
    assert.equal(hole.readBigUInt64BE(CHUNK_HEADER_BYTES), 4096n);
    assert.equal(hole.readUInt32BE(CHUNK_HEADER_BYTES + 8), 512);

    const none = encodeNoneDone(cookie);
    assert.equal(none.length, CHUNK_HEADER_BYTES);
    assert.equal(parseChunkHeader(none).type, NBD_REPLY_TYPE_NONE);

    const err = encodeErrorChunk(NBD_EINVAL, cookie, 'bad');
    const eh = parseChunkHeader(err);
    assert.equal(eh.type, NBD_REPLY_TYPE_ERROR);
    assert.equal(eh.flags, NBD_REPLY_FLAG_DONE);
    assert.equal(eh.length, 4 + 2 + 3);
    assert.equal(err.readUInt32BE(CHUNK_HEADER_BYTES), NBD_EINVAL);
    assert.equal(err.readUInt16BE(CHUNK_HEADER_BYTES + 4), 3);
    assert.equal(err.subarray(CHUNK_HEADER_BYTES + 6).toString(), 'bad');

    const bs = encodeBlockStatus(cookie, 1, [
      { length: 4096, flags: 3 },
      { length: 512, flags: 0 },
    ]);
    const bh = parseChunkHeader(bs);
    assert.equal(bh.type, NBD_REPLY_TYPE_BLOCK_STATUS);
    assert.equal(bh.length, 4 + 2 * 8);
    assert.deepEqual(
      [1, 4096, 3, 512, 0].map((_, i) => bs.readUInt32BE(CHUNK_HEADER_BYTES + 4 * i)),
      [1, 4096, 3, 512, 0],
    );
  });
});
