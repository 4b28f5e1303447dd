// Request validation guard by guard, and each command's reply bytes, without a socket.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { MemoryPageDevice } from '../../src/device/memory.js';
import { PagedDevice } from '../../src/device/paged.js';
import { DeviceError, PAGE_SIZE } from '../../src/device/types.js';
import { toNbdFailure } from '../../src/nbd/errors.js';
import { parseChunkHeader, parseSimpleReply, type RequestHeader } from '../../src/nbd/messages.js';
import {
  CHUNK_HEADER_BYTES,
  NBD_CMD_BLOCK_STATUS,
  NBD_CMD_CACHE,
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
  NBD_EIO,
  NBD_ENOSPC,
  NBD_ENOTSUP,
  NBD_EPERM,
  NBD_ESHUTDOWN,
  NBD_REPLY_FLAG_DONE,
  NBD_REPLY_TYPE_BLOCK_STATUS,
  NBD_REPLY_TYPE_ERROR,
  NBD_REPLY_TYPE_NONE,
  NBD_REPLY_TYPE_OFFSET_DATA,
  NBD_REPLY_TYPE_OFFSET_HOLE,
  NBD_STATE_HOLE,
  NBD_STATE_ZERO,
  SIMPLE_REPLY_BYTES,
} from '../../src/nbd/protocol.js';
import { ReplySlab } from '../../src/nbd/slab.js';
import {
  errorReply,
  executeRequest,
  type RequestContext,
  validateRequest,
} from '../../src/nbd/transmission.js';

const PAGES = 16;
const SIZE = PAGES * PAGE_SIZE;

function context(overrides: Partial<RequestContext> = {}, writable = true): RequestContext {
  const device = new PagedDevice(new MemoryPageDevice('d', PAGES, writable));
  return {
    device,
    sizeBytes: BigInt(SIZE),
    structuredReplies: true,
    blockStatus: true,
    payloadBytesMax: 8 * PAGE_SIZE,
    blockStatusBytesMax: SIZE,
    blockStatusExtentsMax: 64 * 1024,
    slab: new ReplySlab(),
    ...overrides,
  };
}

function req(type: number, offset: bigint | number, length: number, flags = 0): RequestHeader {
  return { magic: 0, flags, type, cookie: { hi: 1, lo: 2 }, offset: BigInt(offset), length };
}

function guard(h: RequestHeader, ctx = context(), shuttingDown = false) {
  const r = validateRequest(h, ctx, shuttingDown);
  return r === null ? null : [r.errno, r.reason];
}

describe('validateRequest guards', () => {
  it('accepts valid requests of every command', () => {
    for (const type of [NBD_CMD_READ, NBD_CMD_WRITE, NBD_CMD_TRIM, NBD_CMD_CACHE]) {
      assert.equal(guard(req(type, 0, 4096)), null);
    }
    assert.equal(guard(req(NBD_CMD_FLUSH, 0, 0)), null);
    assert.equal(guard(req(NBD_CMD_WRITE_ZEROES, 1, SIZE - 1, NBD_CMD_FLAG_NO_HOLE)), null);
    assert.equal(guard(req(NBD_CMD_BLOCK_STATUS, 0, SIZE, NBD_CMD_FLAG_REQ_ONE)), null);
    assert.equal(guard(req(NBD_CMD_READ, 0, 1, NBD_CMD_FLAG_DF | NBD_CMD_FLAG_FUA)), null);
    assert.equal(guard(req(NBD_CMD_READ, SIZE, 0)), null, 'zero length at the end is fine');
  });

  it('shutting down: ESHUTDOWN', () => {
    assert.deepEqual(guard(req(NBD_CMD_READ, 0, 1), context(), true), [
      NBD_ESHUTDOWN,
      'shutting_down',
    ]);
  });

  it('unknown command: EINVAL', () => {
    assert.deepEqual(guard(req(99, 0, 1)), [NBD_EINVAL, 'unknown_command']);
  });

  it('unknown flag: EINVAL', () => {
    assert.deepEqual(guard(req(NBD_CMD_READ, 0, 1, 0x80)), [NBD_EINVAL, 'unknown_flags']);
  });

  it('flag on the wrong command: EINVAL', () => {
    assert.deepEqual(guard(req(NBD_CMD_WRITE, 0, 1, NBD_CMD_FLAG_NO_HOLE)), [
      NBD_EINVAL,
      'flag_not_allowed',
    ]);
    assert.deepEqual(
      guard(req(NBD_CMD_READ, 0, 1, NBD_CMD_FLAG_FAST_ZERO))?.[1],
      'flag_not_allowed',
    );
    assert.deepEqual(guard(req(NBD_CMD_WRITE, 0, 1, NBD_CMD_FLAG_DF))?.[1], 'flag_not_allowed');
    assert.deepEqual(guard(req(NBD_CMD_READ, 0, 1, NBD_CMD_FLAG_REQ_ONE))?.[1], 'flag_not_allowed');
  });

  it('DF without structured replies: EINVAL', () => {
    const ctx = context({ structuredReplies: false, blockStatus: false });
    assert.deepEqual(guard(req(NBD_CMD_READ, 0, 1, NBD_CMD_FLAG_DF), ctx), [
      NBD_EINVAL,
      'flag_not_negotiated',
    ]);
  });

  it('FLUSH with a range: EINVAL', () => {
    assert.deepEqual(guard(req(NBD_CMD_FLUSH, 512, 0)), [NBD_EINVAL, 'flush_with_range']);
    assert.deepEqual(guard(req(NBD_CMD_FLUSH, 0, 1)), [NBD_EINVAL, 'flush_with_range']);
  });

  it('writes, trims and zeroes on a read-only export: EPERM', () => {
    const ro = context({}, false);
    for (const type of [NBD_CMD_WRITE, NBD_CMD_TRIM, NBD_CMD_WRITE_ZEROES]) {
      assert.deepEqual(guard(req(type, 0, 1), ro), [NBD_EPERM, 'read_only']);
    }
    assert.equal(guard(req(NBD_CMD_READ, 0, 1), ro), null);
  });

  it('BLOCK_STATUS without a negotiated context: EINVAL', () => {
    assert.deepEqual(guard(req(NBD_CMD_BLOCK_STATUS, 0, 1), context({ blockStatus: false })), [
      NBD_EINVAL,
      'no_meta_context',
    ]);
  });

  it('offset + length overflowing u64: EINVAL', () => {
    const max = (1n << 64n) - 1n;
    assert.deepEqual(guard(req(NBD_CMD_READ, max, 1)), [NBD_EINVAL, 'range_overflow']);
    assert.deepEqual(guard(req(NBD_CMD_WRITE, max - 10n, 4096)), [NBD_EINVAL, 'range_overflow']);
    assert.deepEqual(guard(req(NBD_CMD_READ, max, 0)), [NBD_EINVAL, 'past_end']);
  });

  it('past the end: EINVAL for reads/trim/cache/status, ENOSPC for writes/zeroes', () => {
    for (const type of [NBD_CMD_READ, NBD_CMD_TRIM, NBD_CMD_CACHE, NBD_CMD_BLOCK_STATUS]) {
      assert.deepEqual(guard(req(type, SIZE - 1, 2)), [NBD_EINVAL, 'past_end']);
    }
    for (const type of [NBD_CMD_WRITE, NBD_CMD_WRITE_ZEROES]) {
      assert.deepEqual(guard(req(type, SIZE, 1)), [NBD_ENOSPC, 'past_end']);
    }
    // 2^53 + 1 is where float arithmetic would round; u64 math must not.
    assert.deepEqual(guard(req(NBD_CMD_READ, (1n << 53n) + 1n, 0)), [NBD_EINVAL, 'past_end']);
  });

  it('READ/WRITE over the maximum payload: EINVAL; TRIM/ZERO of any length are fine', () => {
    const big = context({ sizeBytes: 1n << 40n, payloadBytesMax: 1024 });
    assert.deepEqual(guard(req(NBD_CMD_READ, 0, 1025), big), [NBD_EINVAL, 'payload_too_large']);
    assert.deepEqual(guard(req(NBD_CMD_WRITE, 0, 1025), big), [NBD_EINVAL, 'payload_too_large']);
    assert.equal(guard(req(NBD_CMD_TRIM, 0, 0xffffffff), big), null);
    assert.equal(guard(req(NBD_CMD_WRITE_ZEROES, 0, 0xffffffff), big), null);
  });

  it('BLOCK_STATUS of zero bytes: EINVAL', () => {
    assert.deepEqual(guard(req(NBD_CMD_BLOCK_STATUS, 0, 0)), [NBD_EINVAL, 'zero_length']);
  });
});

async function run(h: RequestHeader, ctx: RequestContext, payload: Buffer | null = null) {
  const reply = await executeRequest(h, payload, ctx);
  return Buffer.concat(Array.isArray(reply) ? reply : [reply]);
}

/** Splits a structured reply into chunks. */
function chunks(buf: Buffer) {
  const out = [];
  let at = 0;
  while (at < buf.length) {
    const h = parseChunkHeader(buf, at);
    out.push({
      ...h,
      payload: buf.subarray(at + CHUNK_HEADER_BYTES, at + CHUNK_HEADER_BYTES + h.length),
    });
    at += CHUNK_HEADER_BYTES + h.length;
  }
  return out;
}

describe('executeRequest', () => {
  it('writes, then reads back with a simple reply', async () => {
    const ctx = context({ structuredReplies: false, blockStatus: false });
    const w = await run(req(NBD_CMD_WRITE, 100, 5, NBD_CMD_FLAG_FUA), ctx, Buffer.from('hello'));
    assert.deepEqual(parseSimpleReply(w), {
      magic: 0x67446698,
      error: 0,
      cookie: { hi: 1, lo: 2 },
    });
    const r = await run(req(NBD_CMD_READ, 100, 5), ctx);
    assert.equal(r.length, SIMPLE_REPLY_BYTES + 5);
    assert.equal(r.subarray(SIMPLE_REPLY_BYTES).toString(), 'hello');
  });

  it('reads zero pages as OFFSET_HOLE, data as OFFSET_DATA, DONE last', async () => {
    const ctx = context();
    await run(req(NBD_CMD_WRITE, PAGE_SIZE, PAGE_SIZE), ctx, Buffer.alloc(PAGE_SIZE, 7));
    const reply = chunks(await run(req(NBD_CMD_READ, 10, 3 * PAGE_SIZE), ctx));
    assert.deepEqual(
      reply.map((c) => [c.type, c.flags]),
      [
        [NBD_REPLY_TYPE_OFFSET_DATA, 0], // partial head page (never a hole) + page 1
        [NBD_REPLY_TYPE_OFFSET_HOLE, 0], // page 2
        [NBD_REPLY_TYPE_OFFSET_DATA, NBD_REPLY_FLAG_DONE], // partial tail
      ],
    );
    // Chunks cover the request exactly, without overlap.
    let covered = 0;
    for (const c of reply) {
      const offset = Number(c.payload.readBigUInt64BE(0));
      assert.equal(offset, 10 + covered);
      covered += c.type === NBD_REPLY_TYPE_OFFSET_HOLE ? c.payload.readUInt32BE(8) : c.length - 8;
    }
    assert.equal(covered, 3 * PAGE_SIZE);
  });

  it('DF reads come back as one OFFSET_DATA chunk even over holes', async () => {
    const reply = chunks(
      await run(req(NBD_CMD_READ, 0, 4 * PAGE_SIZE, NBD_CMD_FLAG_DF), context()),
    );
    assert.equal(reply.length, 1);
    assert.equal(reply[0]!.type, NBD_REPLY_TYPE_OFFSET_DATA);
    assert.equal(reply[0]!.flags, NBD_REPLY_FLAG_DONE);
  });

  it('a zero-length structured read is a NONE chunk with DONE', async () => {
    const reply = chunks(await run(req(NBD_CMD_READ, 0, 0), context()));
    assert.deepEqual(
      reply.map((c) => [c.type, c.flags]),
      [[NBD_REPLY_TYPE_NONE, NBD_REPLY_FLAG_DONE]],
    );
  });

  it('WRITE_ZEROES, TRIM, FLUSH and CACHE answer simple success', async () => {
    const ctx = context();
    await run(req(NBD_CMD_WRITE, 0, SIZE), ctx, Buffer.alloc(SIZE, 1));
    for (const h of [
      req(NBD_CMD_WRITE_ZEROES, 1, PAGE_SIZE, NBD_CMD_FLAG_NO_HOLE | NBD_CMD_FLAG_FAST_ZERO),
      req(NBD_CMD_TRIM, 2 * PAGE_SIZE, 2 * PAGE_SIZE),
      req(NBD_CMD_FLUSH, 0, 0),
      req(NBD_CMD_CACHE, 0, SIZE),
    ]) {
      assert.equal(parseSimpleReply(await run(h, ctx)).error, 0);
    }
    const data = Buffer.alloc(SIZE);
    await ctx.device.read(0, SIZE, data, 0);
    assert.equal(data[0], 1);
    assert.ok(data.subarray(1, PAGE_SIZE + 1).every((b) => b === 0));
    assert.equal(data[PAGE_SIZE + 1], 1);
    assert.ok(data.subarray(2 * PAGE_SIZE, 4 * PAGE_SIZE).every((b) => b === 0));
  });

  it('BLOCK_STATUS reports holes and data; REQ_ONE gives exactly one extent', async () => {
    const ctx = context();
    await run(req(NBD_CMD_WRITE, PAGE_SIZE, PAGE_SIZE), ctx, Buffer.alloc(PAGE_SIZE, 1));
    const [all] = chunks(await run(req(NBD_CMD_BLOCK_STATUS, 0, SIZE), ctx));
    assert.equal(all!.type, NBD_REPLY_TYPE_BLOCK_STATUS);
    assert.equal(all!.flags, NBD_REPLY_FLAG_DONE);
    const words = [];
    for (let at = 0; at < all!.payload.length; at += 4) words.push(all!.payload.readUInt32BE(at));
    const hz = NBD_STATE_HOLE | NBD_STATE_ZERO;
    assert.deepEqual(words, [1, PAGE_SIZE, hz, PAGE_SIZE, 0, SIZE - 2 * PAGE_SIZE, hz]);
    const [one] = chunks(await run(req(NBD_CMD_BLOCK_STATUS, 0, SIZE, NBD_CMD_FLAG_REQ_ONE), ctx));
    assert.equal(one!.length, 4 + 8);
    assert.equal(one!.payload.readUInt32BE(4), PAGE_SIZE);
  });

  it('BLOCK_STATUS looks at no more than its byte limit', async () => {
    const ctx = context({ blockStatusBytesMax: 2 * PAGE_SIZE });
    const [c] = chunks(await run(req(NBD_CMD_BLOCK_STATUS, 0, SIZE), ctx));
    assert.equal(c!.payload.readUInt32BE(4), 2 * PAGE_SIZE);
  });

  it('BLOCK_STATUS describes no more than its extent limit', async () => {
    const ctx = context({ blockStatusExtentsMax: 3 });
    // Every other page written: the whole device is one extent a page.
    for (let page = 1; page * PAGE_SIZE < SIZE; page += 2) {
      const at = page * PAGE_SIZE;
      await run(req(NBD_CMD_WRITE, at, PAGE_SIZE), ctx, Buffer.alloc(PAGE_SIZE, 1));
    }
    const [c] = chunks(await run(req(NBD_CMD_BLOCK_STATUS, 0, SIZE), ctx));
    assert.equal(c!.length, 4 + 3 * 8, 'three descriptors');
    const lengths = [4, 12, 20].map((at) => c!.payload.readUInt32BE(at));
    assert.deepEqual(lengths, [PAGE_SIZE, PAGE_SIZE, PAGE_SIZE]);
  });

  it('structured errors carry the message; simple errors only the errno', () => {
    const [c] = chunks(errorReply({ hi: 0, lo: 9 }, NBD_EINVAL, 'past the end', true));
    assert.equal(c!.type, NBD_REPLY_TYPE_ERROR);
    assert.equal(c!.payload.readUInt32BE(0), NBD_EINVAL);
    assert.equal(c!.payload.subarray(6).toString(), 'past the end');
    const simple = errorReply({ hi: 0, lo: 9 }, NBD_ENOSPC, 'x', false);
    assert.equal(parseSimpleReply(simple).error, NBD_ENOSPC);
  });
});

describe('toNbdFailure', () => {
  it('maps each device error code to its errno, anything else to EIO as a server fault', () => {
    assert.deepEqual(toNbdFailure(new DeviceError('EPERM', 'ro')), {
      errno: NBD_EPERM,
      message: 'ro',
      serverFault: false,
    });
    assert.equal(toNbdFailure(new DeviceError('ENOSPC', '')).errno, NBD_ENOSPC);
    assert.equal(toNbdFailure(new DeviceError('ENOTSUP', '')).errno, NBD_ENOTSUP);
    assert.equal(toNbdFailure(new DeviceError('ESHUTDOWN', '')).errno, NBD_ESHUTDOWN);
    assert.equal(toNbdFailure(new DeviceError('EIO', '')).errno, NBD_EIO);
    const bug = toNbdFailure(new TypeError('oops'));
    assert.equal(bug.errno, NBD_EIO);
    assert.equal(bug.serverFault, true);
  });
});
