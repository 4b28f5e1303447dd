// Malformed and hostile input over raw sockets: one test per rule. Each checks the answer the
// spec asks for, the rejection counter for its reason, and that a healthy connection opened
// before the hostile one is still served afterwards.
import assert from 'node:assert/strict';
import net from 'node:net';
import { after, before, describe, it } from 'node:test';
import { MemoryBackend } from '../../src/device/memory.js';
import type { Backend, ExportSpec, PageDevice } from '../../src/device/types.js';
import { silentLogger } from '../../src/log/index.js';
import { Metrics } from '../../src/metrics/index.js';
import {
  encodeInfoRequest,
  encodeMetaContextRequest,
  encodeOptionRequest,
  encodeRequest,
  parseChunkHeader,
  parseOptionReplyHeader,
  parseSimpleReply,
  type RequestHeader,
} from '../../src/nbd/messages.js';
import {
  CHUNK_HEADER_BYTES,
  EXPORT_NAME_REPLY_BYTES,
  GREETING_BYTES,
  NBD_CMD_DISC,
  NBD_CMD_FLUSH,
  NBD_CMD_READ,
  NBD_CMD_WRITE,
  NBD_EINVAL,
  NBD_ENOSPC,
  NBD_EPERM,
  NBD_ESHUTDOWN,
  NBD_OPT_EXPORT_NAME,
  NBD_OPT_GO,
  NBD_OPT_LIST,
  NBD_OPT_SET_META_CONTEXT,
  NBD_OPT_STRUCTURED_REPLY,
  NBD_REP_ACK,
  NBD_REP_ERR_INVALID,
  NBD_REP_ERR_SHUTDOWN,
  NBD_REP_ERR_UNSUP,
  NBD_REP_INFO,
  NBD_REPLY_TYPE_ERROR,
  OPTION_REPLY_HEADER_BYTES,
  REQUEST_HEADER_BYTES,
  SIMPLE_REPLY_BYTES,
} from '../../src/nbd/protocol.js';
import { ByteQueue } from '../../src/nbd/reader.js';
import { type NbdServer, startNbdServer } from '../../src/nbd/server.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const DISK_BYTES = 4 * MiB;
/** Small limits so oversize cases are cheap to send. */
const LIMITS = {
  payloadBytesMax: 256 * KiB,
  discardBytesMax: 1 * MiB,
  bufferedBytesMax: 4 * MiB,
  optionBytesMax: 8 * KiB,
  optionCountMax: 16,
  optionCountPerExport: 0,
};
/** Bound on every wait in this file; a broken server fails the test instead of hanging it. */
const WAIT_MS = 5_000;

/** A raw NBD client: exact bytes out, exact byte counts in, and close detection. */
class RawClient {
  readonly socket: net.Socket;
  readonly #buffer = new ByteQueue();
  #closed = false;
  #wake: (() => void) | null = null;

  constructor(socket: net.Socket) {
    this.socket = socket;
    socket.on('data', (chunk: Buffer) => {
      this.#buffer.push(chunk);
      this.#wake?.();
    });
    const onEnd = () => {
      this.#closed = true;
      this.#wake?.();
    };
    socket.on('end', onEnd);
    socket.on('close', onEnd);
    socket.on('error', onEnd);
  }

  static connect(port: number): Promise<RawClient> {
    return new Promise((resolve, reject) => {
      const socket = net.connect({ host: '127.0.0.1', port }, () => resolve(new RawClient(socket)));
      socket.once('error', reject);
    });
  }

  write(buf: Buffer) {
    this.socket.write(buf);
  }

  /** Exactly `n` bytes, or a rejection if the server closes or time runs out first. */
  async read(n: number): Promise<Buffer> {
    const deadline = Date.now() + WAIT_MS;
    while (this.#buffer.length < n) {
      if (this.#closed)
        throw new Error(`connection closed after ${this.#buffer.length}/${n} bytes`);
      await this.#waitUntil(deadline);
    }
    return this.#buffer.take(n);
  }

  /** Resolves true once the server has closed the connection (false on timeout). */
  async closedByServer(): Promise<boolean> {
    const deadline = Date.now() + WAIT_MS;
    while (!this.#closed) {
      if (Date.now() >= deadline) return false;
      await this.#waitUntil(deadline).catch(() => {});
    }
    return true;
  }

  #waitUntil(deadline: number): Promise<void> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(
        () => {
          this.#wake = null;
          reject(new Error('timed out waiting for the server'));
        },
        Math.max(0, deadline - Date.now()),
      );
      this.#wake = () => {
        clearTimeout(timer);
        this.#wake = null;
        resolve();
      };
    });
  }

  async greet(): Promise<void> {
    const greeting = await this.read(GREETING_BYTES);
    assert.equal(greeting.subarray(0, 8).toString('latin1'), 'NBDMAGIC');
    const flags = Buffer.alloc(4);
    flags.writeUInt32BE(3, 0);
    this.write(flags);
  }

  async optionReply(): Promise<{ option: number; type: number; data: Buffer }> {
    const h = parseOptionReplyHeader(await this.read(OPTION_REPLY_HEADER_BYTES));
    return { option: h.option, type: h.type, data: await this.read(h.length) };
  }

  /** Option replies up to and including the final ACK or error. */
  async optionReplies(): Promise<number[]> {
    const types: number[] = [];
    for (;;) {
      const r = await this.optionReply();
      types.push(r.type);
      if (r.type !== NBD_REP_INFO && r.type !== 2 && r.type !== 4) return types;
    }
  }

  /** Greets, optionally negotiates structured replies, and GOes to `name`. */
  async open(name = 'disk', structured = false): Promise<void> {
    await this.greet();
    if (structured) {
      this.write(encodeOptionRequest(NBD_OPT_STRUCTURED_REPLY));
      assert.deepEqual(await this.optionReplies(), [NBD_REP_ACK]);
    }
    this.write(encodeOptionRequest(NBD_OPT_GO, encodeInfoRequest(name, [])));
    const types = await this.optionReplies();
    assert.equal(types.at(-1), NBD_REP_ACK);
  }

  request(h: Partial<RequestHeader> & { type: number }, payload?: Buffer) {
    const full = { flags: 0, cookie: { hi: 0, lo: 1 }, offset: 0n, length: 0, ...h };
    this.write(encodeRequest(full, payload));
  }

  async simpleReply(dataBytes = 0) {
    const r = parseSimpleReply(await this.read(SIMPLE_REPLY_BYTES));
    return { ...r, data: await this.read(r.error === 0 ? dataBytes : 0) };
  }

  destroy() {
    this.socket.destroy();
  }
}

describe('malformed input', () => {
  let server: NbdServer;
  let metrics: Metrics;
  let port: number;
  let healthy: RawClient;
  let healthyCookie = 1000;

  before(async () => {
    metrics = new Metrics();
    const backend = new MemoryBackend([
      { name: 'disk', sizeBytes: DISK_BYTES },
      { name: 'ro', sizeBytes: MiB, readOnly: true },
    ]);
    server = await startNbdServer({
      backend,
      metrics,
      logger: silentLogger(),
      listen: [{ host: '127.0.0.1', port: 0 }],
      limits: LIMITS,
    });
    const address = server.addresses[0]!;
    assert.ok('port' in address);
    port = address.port;
    healthy = await RawClient.connect(port);
    await healthy.open('disk');
  });

  after(async () => {
    healthy.destroy();
    await server.close({ graceMs: 500 });
  });

  async function rejected(reason: string): Promise<number> {
    const values = (await metrics.nbdRejected.get()).values;
    return values.find((v) => v.labels.reason === reason)?.value ?? 0;
  }

  /** The long-lived healthy connection still writes and reads back its own bytes. */
  async function assertHealthy() {
    const cookie = { hi: 7, lo: healthyCookie++ };
    const data = Buffer.alloc(512, healthyCookie & 0xff);
    healthy.request({ type: NBD_CMD_WRITE, cookie, offset: 8192n, length: 512 }, data);
    const w = await healthy.simpleReply();
    assert.deepEqual([w.error, w.cookie], [0, cookie]);
    healthy.request({ type: NBD_CMD_READ, cookie, offset: 8192n, length: 512 });
    const r = await healthy.simpleReply(512);
    assert.deepEqual(r.data, data);
  }

  /** Runs `body` and checks the counter for `reason` moved by exactly `by`. */
  async function expectRejection(reason: string, body: () => Promise<void>, by = 1) {
    const before = await rejected(reason);
    await body();
    assert.equal(await rejected(reason), before + by, `nbdRejected{reason=${reason}}`);
    await assertHealthy();
  }

  it('closes only the offending connection on a bad request magic', async () => {
    await expectRejection('bad_request_magic', async () => {
      const c = await RawClient.connect(port);
      await c.open();
      const bad = encodeRequest({
        flags: 0,
        type: NBD_CMD_READ,
        cookie: { hi: 0, lo: 1 },
        offset: 0n,
        length: 1,
      });
      bad.writeUInt32BE(0xbadbad00, 0);
      c.write(bad);
      assert.equal(await c.closedByServer(), true);
    });
  });

  it('closes on a truncated request header and on a truncated WRITE payload', async () => {
    await expectRejection('truncated_frame', async () => {
      const c = await RawClient.connect(port);
      await c.open();
      c.write(
        encodeRequest({
          flags: 0,
          type: NBD_CMD_READ,
          cookie: { hi: 0, lo: 1 },
          offset: 0n,
          length: 1,
        }).subarray(0, 10),
      );
      c.socket.end();
      assert.equal(await c.closedByServer(), true);
    });
    await expectRejection('truncated_frame', async () => {
      const c = await RawClient.connect(port);
      await c.open();
      const w = encodeRequest(
        { flags: 0, type: NBD_CMD_WRITE, cookie: { hi: 0, lo: 1 }, offset: 0n, length: 4096 },
        Buffer.alloc(4096, 1),
      );
      c.write(w.subarray(0, REQUEST_HEADER_BYTES + 100));
      c.socket.end();
      assert.equal(await c.closedByServer(), true);
    });
  });

  it('discards the payload of an invalid WRITE, answers ENOSPC, and stays framed', async () => {
    await expectRejection('past_end', async () => {
      const c = await RawClient.connect(port);
      await c.open();
      // The payload looks like a request: if it were parsed as one, framing would be lost.
      const decoy = encodeRequest({
        flags: 0,
        type: NBD_CMD_DISC,
        cookie: { hi: 0, lo: 0 },
        offset: 0n,
        length: 0,
      });
      const payload = Buffer.concat([decoy, decoy, Buffer.alloc(4096 - 2 * decoy.length, 9)]);
      c.request(
        {
          type: NBD_CMD_WRITE,
          cookie: { hi: 1, lo: 1 },
          offset: BigInt(DISK_BYTES - 10),
          length: 4096,
        },
        payload,
      );
      c.request({
        type: NBD_CMD_READ,
        cookie: { hi: 1, lo: 2 },
        offset: BigInt(DISK_BYTES - 10),
        length: 10,
      });
      const w = await c.simpleReply();
      assert.deepEqual([w.error, w.cookie], [NBD_ENOSPC, { hi: 1, lo: 1 }]);
      const r = await c.simpleReply(10);
      assert.deepEqual([r.error, r.cookie, r.data], [0, { hi: 1, lo: 2 }, Buffer.alloc(10)]);
      c.destroy();
    });
  });

  it('answers EPERM to a WRITE on a read-only export, skipping its payload', async () => {
    await expectRejection('read_only', async () => {
      const c = await RawClient.connect(port);
      await c.open('ro');
      c.request(
        { type: NBD_CMD_WRITE, cookie: { hi: 2, lo: 1 }, length: 100 },
        Buffer.alloc(100, 1),
      );
      c.request({ type: NBD_CMD_FLUSH, cookie: { hi: 2, lo: 2 } });
      assert.equal((await c.simpleReply()).error, NBD_EPERM);
      assert.deepEqual((await c.simpleReply()).cookie, { hi: 2, lo: 2 });
      c.destroy();
    });
  });

  it('answers EINVAL to an unknown command and keeps serving', async () => {
    await expectRejection('unknown_command', async () => {
      const c = await RawClient.connect(port);
      await c.open();
      c.request({ type: 99, cookie: { hi: 3, lo: 1 }, length: 512 });
      c.request({ type: NBD_CMD_READ, cookie: { hi: 3, lo: 2 }, length: 512 });
      assert.deepEqual(await c.simpleReply(), {
        magic: 0x67446698,
        error: NBD_EINVAL,
        cookie: { hi: 3, lo: 1 },
        data: Buffer.alloc(0),
      });
      assert.equal((await c.simpleReply(512)).error, 0);
      c.destroy();
    });
  });

  it('answers EINVAL to unknown flags', async () => {
    await expectRejection('unknown_flags', async () => {
      const c = await RawClient.connect(port);
      await c.open();
      c.request({ type: NBD_CMD_READ, flags: 0x80, cookie: { hi: 4, lo: 1 }, length: 512 });
      assert.equal((await c.simpleReply()).error, NBD_EINVAL);
      c.destroy();
    });
  });

  it('answers EINVAL to a READ past the end, as an error chunk with text', async () => {
    await expectRejection('past_end', async () => {
      const c = await RawClient.connect(port);
      await c.open('disk', true);
      c.request({
        type: NBD_CMD_READ,
        cookie: { hi: 5, lo: 1 },
        offset: BigInt(DISK_BYTES),
        length: 1,
      });
      const h = parseChunkHeader(await c.read(CHUNK_HEADER_BYTES));
      assert.equal(h.type, NBD_REPLY_TYPE_ERROR);
      assert.deepEqual(h.cookie, { hi: 5, lo: 1 });
      const payload = await c.read(h.length);
      assert.equal(payload.readUInt32BE(0), NBD_EINVAL);
      assert.match(payload.subarray(6).toString(), /past the export size/);
      c.destroy();
    });
  });

  it('rejects offset + length overflowing 64 bits with u64 math', async () => {
    await expectRejection(
      'range_overflow',
      async () => {
        const c = await RawClient.connect(port);
        await c.open();
        const max = (1n << 64n) - 1n;
        c.request({ type: NBD_CMD_READ, cookie: { hi: 6, lo: 1 }, offset: max, length: 1 });
        c.request(
          { type: NBD_CMD_WRITE, cookie: { hi: 6, lo: 2 }, offset: max - 1n, length: 8 },
          Buffer.alloc(8),
        );
        assert.equal((await c.simpleReply()).error, NBD_EINVAL);
        assert.equal((await c.simpleReply()).error, NBD_EINVAL);
        c.destroy();
      },
      2,
    );
  });

  it('skips an oversize WRITE payload within the discard bound, closes beyond it', async () => {
    await expectRejection(
      'payload_too_large',
      async () => {
        const c = await RawClient.connect(port);
        await c.open();
        const length = LIMITS.payloadBytesMax + 1;
        c.request(
          { type: NBD_CMD_WRITE, cookie: { hi: 7, lo: 1 }, length },
          Buffer.alloc(length, 3),
        );
        c.request({ type: NBD_CMD_READ, cookie: { hi: 7, lo: 2 }, length: 1 });
        assert.equal((await c.simpleReply()).error, NBD_EINVAL);
        assert.equal((await c.simpleReply(1)).error, 0);
        // A READ over the maximum is refused the same way, without a payload.
        c.request({ type: NBD_CMD_READ, cookie: { hi: 7, lo: 3 }, length });
        assert.equal((await c.simpleReply()).error, NBD_EINVAL);
        c.destroy();
      },
      2,
    );
    await expectRejection('write_payload_too_large', async () => {
      const c = await RawClient.connect(port);
      await c.open();
      c.request({
        type: NBD_CMD_WRITE,
        cookie: { hi: 7, lo: 4 },
        length: LIMITS.discardBytesMax + 1,
      });
      assert.equal(await c.closedByServer(), true);
    });
  });

  it('answers unknown options with ERR_UNSUP, skipping their data, then serves GO', async () => {
    await expectRejection('unknown_option', async () => {
      const c = await RawClient.connect(port);
      await c.greet();
      c.write(encodeOptionRequest(0x7654321, Buffer.alloc(1000, 0x49)));
      assert.deepEqual(await c.optionReplies(), [NBD_REP_ERR_UNSUP]);
      c.write(encodeOptionRequest(NBD_OPT_LIST));
      assert.deepEqual(await c.optionReplies(), [2, 2, NBD_REP_ACK]);
      c.write(encodeOptionRequest(NBD_OPT_GO, encodeInfoRequest('disk', [])));
      assert.equal((await c.optionReplies()).at(-1), NBD_REP_ACK);
      c.request({ type: NBD_CMD_READ, length: 8 });
      assert.equal((await c.simpleReply(8)).error, 0);
      c.destroy();
    });
  });

  it('answers options out of order with ERR_INVALID and keeps negotiating', async () => {
    await expectRejection('meta_context_without_sr', async () => {
      const c = await RawClient.connect(port);
      await c.greet();
      c.write(
        encodeOptionRequest(
          NBD_OPT_SET_META_CONTEXT,
          encodeMetaContextRequest('disk', ['base:allocation']),
        ),
      );
      assert.deepEqual(await c.optionReplies(), [NBD_REP_ERR_INVALID]);
      c.write(encodeOptionRequest(NBD_OPT_GO, encodeInfoRequest('disk', [])));
      assert.equal((await c.optionReplies()).at(-1), NBD_REP_ACK);
      c.destroy();
    });
  });

  it('closes when requests arrive before negotiation (no option magic)', async () => {
    await expectRejection('bad_option_magic', async () => {
      const c = await RawClient.connect(port);
      await c.greet();
      c.request({ type: NBD_CMD_READ, length: 1 });
      assert.equal(await c.closedByServer(), true);
    });
  });

  it('closes on a huge option length without reading the data', async () => {
    await expectRejection('option_too_long', async () => {
      const c = await RawClient.connect(port);
      await c.greet();
      const header = encodeOptionRequest(NBD_OPT_GO);
      header.writeUInt32BE(0xffffffff, 12);
      c.write(header);
      assert.equal(await c.closedByServer(), true);
    });
  });

  it('closes on client flags it did not offer', async () => {
    await expectRejection('bad_client_flags', async () => {
      const c = await RawClient.connect(port);
      await c.read(GREETING_BYTES);
      const flags = Buffer.alloc(4);
      flags.writeUInt32BE(0xff, 0);
      c.write(flags);
      assert.equal(await c.closedByServer(), true);
    });
  });

  it('closes after too many options', async () => {
    await expectRejection('too_many_options', async () => {
      const c = await RawClient.connect(port);
      await c.greet();
      for (let i = 0; i < LIMITS.optionCountMax; i++) c.write(encodeOptionRequest(NBD_OPT_LIST));
      for (let i = 0; i < LIMITS.optionCountMax; i++) await c.optionReplies();
      c.write(encodeOptionRequest(NBD_OPT_LIST));
      assert.equal(await c.closedByServer(), true);
    });
  });

  it('closes on EXPORT_NAME of an unknown export, serves a known one unpadded', async () => {
    await expectRejection('unknown_export', async () => {
      const c = await RawClient.connect(port);
      await c.greet();
      c.write(encodeOptionRequest(NBD_OPT_EXPORT_NAME, Buffer.from('nope')));
      assert.equal(await c.closedByServer(), true);
      const ok = await RawClient.connect(port);
      await ok.greet();
      ok.write(encodeOptionRequest(NBD_OPT_EXPORT_NAME, Buffer.from('disk')));
      const reply = await ok.read(EXPORT_NAME_REPLY_BYTES);
      assert.equal(reply.readBigUInt64BE(0), BigInt(DISK_BYTES));
      ok.request({ type: NBD_CMD_READ, length: 4 });
      assert.equal((await ok.simpleReply(4)).error, 0);
      ok.destroy();
    });
  });

  it('survives random garbage on many connections at once', async () => {
    let seed = 12345;
    const next = () => {
      seed = (seed * 1103515245 + 12345) & 0x7fffffff;
      return seed;
    };
    const clients = await Promise.all(Array.from({ length: 20 }, () => RawClient.connect(port)));
    for (const [i, c] of clients.entries()) {
      if (i % 2 === 0) await c.open();
      const junk = Buffer.alloc(2000 + (next() % 5000));
      for (let j = 0; j < junk.length; j++) junk[j] = next() & 0xff;
      c.write(junk);
    }
    await assertHealthy();
    for (const c of clients) c.destroy();
    await assertHealthy();
  });

  it('stops reading from a client that does not read its replies', async () => {
    const c = await RawClient.connect(port);
    await c.open();
    c.socket.pause();
    const count = 100;
    const length = LIMITS.payloadBytesMax;
    for (let i = 0; i < count; i++) {
      c.request({ type: NBD_CMD_READ, cookie: { hi: 9, lo: i }, offset: BigInt(i * 4096), length });
    }
    // While the client reads nothing, the server holds at most its bound plus one reply.
    let heldMax = 0;
    for (let i = 0; i < 30; i++) {
      await new Promise((r) => setTimeout(r, 10));
      const mine = server.connections().filter((x) => x.inFlight > 0 || x.bufferedBytes > 0);
      for (const info of mine) heldMax = Math.max(heldMax, info.bufferedBytes);
    }
    assert.ok(heldMax > 0, 'the server did take some requests');
    const bound = LIMITS.bufferedBytesMax + length + count * REQUEST_HEADER_BYTES;
    assert.ok(heldMax <= bound, `held ${heldMax} bytes, bound ${bound}`);
    await assertHealthy();
    c.socket.resume();
    const seen = new Set<number>();
    for (let i = 0; i < count; i++) {
      const r = await c.simpleReply(length);
      assert.equal(r.error, 0);
      seen.add(r.cookie.lo);
    }
    assert.equal(seen.size, count, 'every request answered once the client reads');
    c.destroy();
  });

  it('answers 64 pipelined READs, each once, and counts them', async () => {
    const okReads = async () => {
      const values = (await metrics.nbdRequests.get()).values;
      const labels = { command: 'read', export: 'disk', result: 'ok' };
      return values.find((v) => JSON.stringify(v.labels) === JSON.stringify(labels))?.value ?? 0;
    };
    const readBytes = async () =>
      (await metrics.nbdBytes.get()).values.find((v) => v.labels.command === 'read')?.value ?? 0;
    const [okBefore, bytesBefore] = [await okReads(), await readBytes()];
    const c = await RawClient.connect(port);
    await c.open();
    const cookies = [];
    for (let i = 0; i < 64; i++) {
      const cookie = { hi: 0xabc, lo: i };
      cookies.push(cookie);
      c.request({ type: NBD_CMD_READ, cookie, offset: BigInt(i * 4096), length: 4096 });
    }
    const seen = new Set<number>();
    for (let i = 0; i < 64; i++) {
      const r = await c.simpleReply(4096);
      assert.equal(r.error, 0);
      seen.add(r.cookie.lo);
    }
    assert.equal(seen.size, 64);
    assert.equal(await okReads(), okBefore + 64, 'each answered READ counted once');
    assert.equal(await readBytes(), bytesBefore + 64 * 4096);
    c.destroy();
  });
});

/** A memory backend whose writes wait for `release()`: keeps requests in flight on demand. */
class GatedBackend implements Backend {
  readonly kind = 'memory' as const;
  readonly #memory: MemoryBackend;
  readonly #devices = new Map<string, PageDevice>();
  #gate: Promise<void> = Promise.resolve();
  #open: () => void = () => {};

  hold() {
    this.#gate = new Promise((resolve) => {
      this.#open = resolve;
    });
  }

  release() {
    this.#open();
  }

  constructor(exports: ExportSpec[]) {
    this.#memory = new MemoryBackend(exports);
  }

  exportNames() {
    return this.#memory.exportNames();
  }

  description(name: string) {
    return this.#memory.description(name);
  }

  stats() {
    return this.#memory.stats();
  }

  close() {
    return this.#memory.close();
  }

  device(name: string): PageDevice | undefined {
    const cached = this.#devices.get(name);
    if (cached !== undefined) return cached;
    const inner = this.#memory.device(name);
    if (inner === undefined) return undefined;
    const gate = () => this.#gate;
    const device: PageDevice = {
      name: inner.name,
      pageCount: inner.pageCount,
      writable: inner.writable,
      readPages: (...a) => inner.readPages(...a),
      writePages: async (...a) => {
        await gate();
        return inner.writePages(...a);
      },
      zeroPages: (...a) => inner.zeroPages(...a),
      flush: () => inner.flush(),
      extents: (...a) => inner.extents(...a),
    };
    this.#devices.set(name, device);
    return device;
  }
}

describe('backpressure', () => {
  it('executes at most inFlightMax requests of a connection at once', async (t) => {
    const backend = new GatedBackend([{ name: 'disk', sizeBytes: MiB }]);
    const inFlightMax = 4;
    const server = await startNbdServer({
      backend,
      metrics: new Metrics(),
      logger: silentLogger(),
      listen: [{ host: '127.0.0.1', port: 0 }],
      limits: { inFlightMax },
    });
    t.after(() => server.close({ graceMs: 100 }));
    const address = server.addresses[0]!;
    assert.ok('port' in address);
    const c = await RawClient.connect(address.port);
    await c.open();
    backend.hold();
    const count = 20;
    for (let i = 0; i < count; i++) {
      const offset = BigInt(i * 4096);
      c.request(
        { type: NBD_CMD_WRITE, cookie: { hi: 3, lo: i }, offset, length: 4096 },
        Buffer.alloc(4096, i),
      );
    }
    let peak = 0;
    for (let i = 0; i < 20; i++) {
      await new Promise((r) => setTimeout(r, 5));
      for (const info of server.connections()) peak = Math.max(peak, info.inFlight);
    }
    assert.equal(peak, inFlightMax);
    backend.release();
    for (let i = 0; i < count; i++) assert.equal((await c.simpleReply()).error, 0);
    c.destroy();
  });
});

describe('pipelining', () => {
  it('answers a READ while an earlier WRITE is still executing (out of order)', async (t) => {
    const backend = new GatedBackend([{ name: 'disk', sizeBytes: MiB }]);
    const server = await startNbdServer({
      backend,
      metrics: new Metrics(),
      logger: silentLogger(),
      listen: [{ host: '127.0.0.1', port: 0 }],
    });
    t.after(() => server.close({ graceMs: 100 }));
    const address = server.addresses[0]!;
    assert.ok('port' in address);
    const c = await RawClient.connect(address.port);
    await c.open();
    backend.hold();
    const page = Buffer.alloc(4096, 5);
    c.request({ type: NBD_CMD_WRITE, cookie: { hi: 1, lo: 1 }, length: 4096 }, page);
    c.request({ type: NBD_CMD_READ, cookie: { hi: 1, lo: 2 }, offset: 8192n, length: 4096 });
    const first = await c.simpleReply(4096);
    assert.deepEqual(first.cookie, { hi: 1, lo: 2 }, 'the later READ is answered first');
    backend.release();
    const second = await c.simpleReply();
    assert.deepEqual([second.error, second.cookie], [0, { hi: 1, lo: 1 }]);
    c.request({ type: NBD_CMD_READ, cookie: { hi: 1, lo: 3 }, length: 4096 });
    assert.deepEqual((await c.simpleReply(4096)).data, page);
    c.destroy();
  });
});

describe('connection limits', () => {
  it('refuses connections over the limit and drops handshakes that take too long', async (t) => {
    const metrics = new Metrics();
    const server = await startNbdServer({
      backend: new MemoryBackend([{ name: 'disk', sizeBytes: MiB }]),
      metrics,
      logger: silentLogger(),
      listen: [{ host: '127.0.0.1', port: 0 }],
      limits: { connectionsMax: 2, handshakeTimeoutMs: 300 },
    });
    t.after(() => server.close({ graceMs: 100 }));
    const address = server.addresses[0]!;
    assert.ok('port' in address);
    const count = async (reason: string) =>
      (await metrics.nbdRejected.get()).values.find((v) => v.labels.reason === reason)?.value;
    const negotiated = await RawClient.connect(address.port);
    await negotiated.open();
    const idle = await RawClient.connect(address.port);
    await idle.read(GREETING_BYTES);
    const third = await RawClient.connect(address.port);
    assert.equal(await third.closedByServer(), true, 'over the limit: closed at once');
    assert.equal(await count('too_many_connections'), 1);
    assert.equal(await idle.closedByServer(), true, 'silent in negotiation: dropped');
    assert.equal(await count('handshake_timeout'), 1);
    negotiated.request({ type: NBD_CMD_READ, length: 1 });
    assert.equal((await negotiated.simpleReply(1)).error, 0, 'transmission has no such timeout');
    negotiated.destroy();
  });
});

describe('shutdown', () => {
  it('finishes requests in flight, then ESHUTDOWN and ERR_SHUTDOWN', async (t) => {
    const backend = new GatedBackend([{ name: 'disk', sizeBytes: MiB }]);
    const server = await startNbdServer({
      backend,
      metrics: new Metrics(),
      logger: silentLogger(),
      listen: [{ host: '127.0.0.1', port: 0 }],
    });
    t.after(() => server.close({ graceMs: 100 }));
    const address = server.addresses[0]!;
    assert.ok('port' in address);
    const negotiating = await RawClient.connect(address.port);
    await negotiating.greet();
    negotiating.write(encodeOptionRequest(NBD_OPT_LIST));
    await negotiating.optionReplies();
    const busy = await RawClient.connect(address.port);
    await busy.open();
    const idle = await RawClient.connect(address.port);
    await idle.open();

    backend.hold();
    busy.request({ type: NBD_CMD_WRITE, cookie: { hi: 1, lo: 1 }, length: 4 }, Buffer.from('abcd'));
    const deadline = Date.now() + WAIT_MS;
    while (!server.connections().some((c) => c.inFlight > 0)) {
      assert.ok(Date.now() < deadline, 'write never went in flight');
      await new Promise((r) => setTimeout(r, 2));
    }
    const closing = server.close({ graceMs: WAIT_MS });

    busy.request({ type: NBD_CMD_READ, cookie: { hi: 1, lo: 2 }, length: 4 });
    const late = await busy.simpleReply();
    assert.deepEqual([late.error, late.cookie], [NBD_ESHUTDOWN, { hi: 1, lo: 2 }]);
    negotiating.write(encodeOptionRequest(NBD_OPT_LIST));
    assert.deepEqual(await negotiating.optionReplies(), [NBD_REP_ERR_SHUTDOWN]);
    assert.equal(await idle.closedByServer(), true, 'an idle connection closes at once');

    backend.release();
    const done = await busy.simpleReply();
    assert.deepEqual([done.error, done.cookie], [0, { hi: 1, lo: 1 }], 'in-flight write finished');
    assert.equal(await busy.closedByServer(), true);
    negotiating.destroy();
    await closing;
    assert.equal(server.connections().length, 0);
    const page = Buffer.alloc(4096);
    await backend.device('disk')!.readPages(0, 1, page, 0);
    assert.equal(page.subarray(0, 4).toString(), 'abcd');
  });
});
