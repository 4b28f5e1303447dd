// The incremental frame reader: the same frames come out whatever way the bytes are split.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { encodeInfoRequest, encodeOptionRequest, encodeRequest } from '../../src/nbd/messages.js';
import {
  NBD_CMD_DISC,
  NBD_CMD_FLUSH,
  NBD_CMD_READ,
  NBD_CMD_WRITE,
  NBD_FLAG_C_FIXED_NEWSTYLE,
  NBD_FLAG_C_NO_ZEROES,
  NBD_OPT_GO,
  NBD_OPT_LIST,
} from '../../src/nbd/protocol.js';
import { ByteQueue, type Frame, FrameReader, type WritePolicy } from '../../src/nbd/reader.js';

const DISCARD_OFFSET = 666n;
const CLOSE_LENGTH = 1 << 30;

function policy(header: { offset: bigint; length: number }): WritePolicy {
  if (header.length === CLOSE_LENGTH) return 'close';
  return header.offset === DISCARD_OFFSET ? 'discard' : 'collect';
}

function clientFlags(): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES, 0);
  return b;
}

const cookie = (n: number) => ({ hi: n, lo: ~n >>> 0 });

/** A whole session: flags, three options (one unknown with data), then requests. */
function session(): Buffer {
  return Buffer.concat([
    clientFlags(),
    encodeOptionRequest(NBD_OPT_LIST),
    encodeOptionRequest(0x7654321, Buffer.from('ignored payload')),
    encodeOptionRequest(NBD_OPT_GO, encodeInfoRequest('disk', [3])),
    encodeRequest({ flags: 0, type: NBD_CMD_READ, cookie: cookie(1), offset: 0n, length: 512 }),
    encodeRequest(
      { flags: 1, type: NBD_CMD_WRITE, cookie: cookie(2), offset: 4096n, length: 5 },
      Buffer.from('hello'),
    ),
    encodeRequest(
      { flags: 0, type: NBD_CMD_WRITE, cookie: cookie(3), offset: DISCARD_OFFSET, length: 7 },
      Buffer.from('discard'),
    ),
    encodeRequest({
      flags: 0,
      type: NBD_CMD_WRITE,
      cookie: cookie(4),
      offset: DISCARD_OFFSET,
      length: 0,
    }),
    encodeRequest({ flags: 0, type: NBD_CMD_FLUSH, cookie: cookie(5), offset: 0n, length: 0 }),
    encodeRequest({ flags: 0, type: NBD_CMD_DISC, cookie: cookie(6), offset: 0n, length: 0 }),
  ]);
}

/** Feeds pieces, draining frames after each, switching to transmission after GO. */
function run(pieces: Buffer[]): Frame[] {
  const reader = new FrameReader({ optionBytesMax: 1024, writePolicy: policy });
  const frames: Frame[] = [];
  for (const piece of pieces) {
    reader.push(piece);
    for (let f = reader.next(); f !== null; f = reader.next()) {
      // Copy payloads: they may share memory with the pieces.
      if (f.kind === 'request' && f.payload) f.payload = Buffer.from(f.payload);
      if (f.kind === 'option') f.data = Buffer.from(f.data);
      frames.push(f);
      if (f.kind === 'option' && f.header.option === NBD_OPT_GO) reader.startTransmission();
    }
  }
  assert.equal(reader.midFrame, false);
  return frames;
}

describe('FrameReader', () => {
  const whole = session();
  const expected = run([whole]);

  it('reads a whole session in one piece', () => {
    assert.deepEqual(
      expected.map((f) => f.kind),
      ['clientFlags', 'option', 'option', 'option', ...Array(6).fill('request')],
    );
    const writes = expected.filter((f) => f.kind === 'request' && f.header.type === NBD_CMD_WRITE);
    assert.equal(writes.length, 3);
    const [kept, skipped, empty] = writes as Extract<Frame, { kind: 'request' }>[];
    assert.equal(kept!.payload!.toString(), 'hello');
    assert.equal(kept!.discarded, false);
    assert.equal(skipped!.payload, null);
    assert.equal(skipped!.discarded, true);
    assert.equal(empty!.discarded, true, 'a zero-length refused write is still reported');
  });

  it('yields the same frames for a split at every byte boundary', () => {
    for (let cut = 1; cut < whole.length; cut++) {
      assert.deepEqual(run([whole.subarray(0, cut), whole.subarray(cut)]), expected, `cut ${cut}`);
    }
  });

  it('yields the same frames one byte at a time and in three random pieces', () => {
    const bytes = [...whole].map((b) => Buffer.from([b]));
    assert.deepEqual(run(bytes), expected);
    for (let i = 1; i < 200; i++) {
      const a = (i * 7919) % whole.length;
      const b = (i * 104729) % whole.length;
      const [x, y] = a < b ? [a, b] : [b, a];
      const pieces = [whole.subarray(0, x), whole.subarray(x, y), whole.subarray(y)];
      assert.deepEqual(run(pieces), expected);
    }
  });

  it('treats a bad option magic as fatal and stops framing', () => {
    const reader = new FrameReader({ optionBytesMax: 1024, writePolicy: policy });
    const bad = encodeOptionRequest(NBD_OPT_LIST);
    bad[0] = 0;
    reader.push(Buffer.concat([clientFlags(), bad, encodeOptionRequest(NBD_OPT_LIST)]));
    assert.equal(reader.next()?.kind, 'clientFlags');
    const fatal = reader.next();
    assert.deepEqual(fatal?.kind === 'fatal' && fatal.reason, 'bad_option_magic');
    assert.equal(reader.next(), null);
  });

  it('treats option data over the limit as fatal before reading it', () => {
    const reader = new FrameReader({ optionBytesMax: 16, writePolicy: policy });
    reader.push(clientFlags());
    reader.next();
    reader.push(encodeOptionRequest(99, Buffer.alloc(17)).subarray(0, 16));
    const fatal = reader.next();
    assert.equal(fatal?.kind === 'fatal' && fatal.reason, 'option_too_long');
  });

  it('treats a bad request magic as fatal', () => {
    const reader = new FrameReader({ optionBytesMax: 16, writePolicy: policy });
    reader.startTransmission();
    const req = encodeRequest({ flags: 0, type: 0, cookie: cookie(1), offset: 0n, length: 1 });
    req.writeUInt32BE(0x12345678, 0);
    reader.push(req);
    const fatal = reader.next();
    assert.equal(fatal?.kind === 'fatal' && fatal.reason, 'bad_request_magic');
  });

  it('closes on a WRITE the policy will not even skip', () => {
    const reader = new FrameReader({ optionBytesMax: 16, writePolicy: policy });
    reader.startTransmission();
    reader.push(
      encodeRequest({
        flags: 0,
        type: NBD_CMD_WRITE,
        cookie: cookie(1),
        offset: 0n,
        length: CLOSE_LENGTH,
      }),
    );
    const fatal = reader.next();
    assert.equal(fatal?.kind === 'fatal' && fatal.reason, 'write_payload_too_large');
  });

  it('reports a frame cut short as mid-frame', () => {
    const reader = new FrameReader({ optionBytesMax: 16, writePolicy: policy });
    reader.startTransmission();
    const req = encodeRequest(
      { flags: 0, type: NBD_CMD_WRITE, cookie: cookie(1), offset: 0n, length: 4 },
      Buffer.from('abcd'),
    );
    reader.push(req.subarray(0, 30));
    assert.equal(reader.next(), null);
    assert.equal(reader.midFrame, true);
    reader.push(req.subarray(30));
    assert.equal(reader.next()?.kind, 'request');
    assert.equal(reader.midFrame, false);
  });
});

describe('ByteQueue', () => {
  it('takes across chunks, skips and shares memory only within one chunk', () => {
    const q = new ByteQueue();
    const a = Buffer.from('abc');
    q.push(a);
    q.push(Buffer.from('defgh'));
    q.push(Buffer.alloc(0));
    assert.equal(q.length, 8);
    const ab = q.take(2);
    assert.equal(ab.toString(), 'ab');
    assert.equal(ab.buffer, a.buffer, 'within one chunk: no copy');
    assert.equal(q.take(3).toString(), 'cde');
    assert.equal(q.skip(10), 3);
    assert.equal(q.length, 0);
    for (let i = 0; i < 200; i++) q.push(Buffer.from([i]));
    assert.equal(q.take(150).length, 150);
    assert.equal(q.take(50)[49], 199);
  });
});
