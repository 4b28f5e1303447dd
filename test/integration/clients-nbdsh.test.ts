/**
 * nbdsh (python3-libnbd) scripts against diffswap: FLUSH and FUA, TRIM, WRITE_ZEROES with
 * NO_HOLE and FAST_ZERO, CACHE, BLOCK_STATUS (base:allocation) for written, trimmed and
 * never-written pages, structured reads across holes, largest requests, multi-conn, and
 * out-of-range requests sent with libnbd's client-side checks turned off.
 *
 * Each script asserts in Python what it can see directly and emits JSON for the checks that
 * compare with the server's own counters.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import type { ExportSpec } from '../../src/device/types.js';
import { nbdshJson, runNbdsh } from '../helpers/clients.js';
import { runToolOk } from '../helpers/exec.js';
import {
  backendsUnderTest,
  connectionsAccepted,
  requestCounts,
  withTestServer,
} from '../helpers/nbd-server.js';

const MiB = 1024 * 1024;
/** A small export whose pages the block-status test can enumerate one by one. */
const SMALL: ExportSpec[] = [{ name: 'small', sizeBytes: MiB, description: 'small' }];

/** Count of answered requests whose command label matches `pattern` (e.g. /flush/i). */
function countCommand(byCommand: Record<string, number>, pattern: RegExp): number {
  return Object.entries(byCommand)
    .filter(([command]) => pattern.test(command))
    .reduce((sum, [, n]) => sum + n, 0);
}

/**
 * Python: flags of every page of [0, size), gathered by block_status calls until the whole
 * range is covered. A page touched by several extents gets every flag value seen.
 */
const PAGE_FLAGS_PY = `
def page_flags(handle, size, page=4096, flags=0):
    seen = [set() for _ in range(size // page)]
    offset = 0
    while offset < size:
        extents = []
        def on_extents(context, start, entries, err):
            if context == nbd.CONTEXT_BASE_ALLOCATION:
                extents.append((start, list(entries)))
            return 0
        handle.block_status(size - offset, offset, on_extents, flags)
        assert len(extents) == 1, f'expected one base:allocation reply, got {extents}'
        start, entries = extents[0]
        assert start == offset, f'extents start at {start}, asked {offset}'
        assert entries and len(entries) % 2 == 0, f'bad entries {entries}'
        if flags & nbd.CMD_FLAG_REQ_ONE:
            assert len(entries) == 2, f'REQ_ONE answered {len(entries) // 2} extents'
        pos = offset
        for i in range(0, len(entries), 2):
            length, flags = entries[i], entries[i + 1]
            assert length > 0, f'zero-length extent in {entries}'
            end = min(pos + length, size)
            for p in range(pos // page, (end + page - 1) // page):
                seen[p].add(flags)
            pos += length
            if pos >= size:
                break
        offset = pos
    return [sorted(s) for s in seen]
`;

for (const backend of backendsUnderTest()) {
  describe(`nbdsh (${backend})`, () => {
    test('FUA writes and FLUSH are visible on a new connection', async () => {
      await withTestServer({ backend }, async (srv) => {
        const before = await requestCounts(srv, 'disk');
        await runNbdsh(
          srv.uri(),
          `
h = connect()
assert h.can_flush() and h.can_fua()
h.pwrite(b'\\xa5' * 8192, 4096, nbd.CMD_FLAG_FUA)
h.pwrite(b'\\x5a' * 100, 50000)
h.flush()
h2 = connect()
assert h2.pread(8192, 4096) == b'\\xa5' * 8192
assert h2.pread(100, 50000) == b'\\x5a' * 100
assert h2.pread(4096, 0) == bytes(4096)
h2.flush()
`,
        );
        const after = await requestCounts(srv, 'disk');
        if (before && after) {
          assert.ok(countCommand(after.byCommand, /flush/i) >= 2, JSON.stringify(after));
          assert.equal(after.failed, 0);
        }
      });
    });

    test('TRIM zeroes whole pages and leaves the bytes around them alone', async () => {
      await withTestServer({ backend }, async (srv) => {
        await runNbdsh(
          srv.uri(),
          `
h = connect()
assert h.can_trim()
data = bytes(range(256)) * 256            # 64 KiB over pages 0..15
h.pwrite(data, 0)
h.trim(16384, 16384)                       # pages 4..7
h.flush()
got = connect().pread(65536, 0)
assert got[:16384] == data[:16384], 'bytes before the trim changed'
assert got[16384:32768] == bytes(16384), 'trimmed pages do not read as zeroes'
assert got[32768:] == data[32768:], 'bytes after the trim changed'
# A trim that covers no whole page may be ignored, but must not touch bytes outside it.
h.trim(3000, 40000)                        # bytes 40000..42999 (inside pages 9 and 10)
expect = data[:16384] + bytes(16384) + data[32768:]
got = h.pread(65536, 0)
assert got[:40000] == expect[:40000] and got[43000:] == expect[43000:]
`,
        );
      });
    });

    test('WRITE_ZEROES plain, NO_HOLE, unaligned and FAST_ZERO', async () => {
      await withTestServer({ backend }, async (srv) => {
        const result = await runNbdsh(
          srv.uri(),
          `
import errno
h = connect()
assert h.can_zero() and h.can_fast_zero()
data = bytes((i * 7 + 3) & 255 for i in range(256 * 1024))
h.pwrite(data, 0)
expect = bytearray(data)
def zero_and_check(length, offset, flags=0):
    h.zero(length, offset, flags)
    expect[offset:offset + length] = bytes(length)
    got = connect().pread(len(expect), 0)
    assert got == bytes(expect), f'zero({length}, {offset}, {flags}) read back wrong'
zero_and_check(8192, 8192)
zero_and_check(32768, 65536, nbd.CMD_FLAG_NO_HOLE)
zero_and_check(5000, 100)                  # unaligned both ends: read-modify-write
zero_and_check(1, 200001)
outcomes = []
for flags in (nbd.CMD_FLAG_FAST_ZERO, nbd.CMD_FLAG_FAST_ZERO | nbd.CMD_FLAG_NO_HOLE):
    try:
        zero_and_check(65536, 131072 if flags == nbd.CMD_FLAG_FAST_ZERO else 196608, flags)
        outcomes.append('ok')
    except nbd.Error as e:
        # FAST_ZERO may be refused, but only with ENOTSUP and without touching the data.
        assert e.errno == 'ENOTSUP', f'fast zero failed with {e.errno}'
        assert connect().pread(len(data), 0) == bytes(expect)
        outcomes.append(e.errno)
emit({'fastZero': outcomes})
`,
        );
        const [report] = nbdshJson<{ fastZero: string[] }>(result);
        assert.equal(report?.fastZero.length, 2);
      });
    });

    test('CACHE is accepted over the whole export and changes nothing', async () => {
      await withTestServer({ backend }, async (srv) => {
        await runNbdsh(
          srv.uri(),
          `
h = connect()
assert h.can_cache()
size = h.get_size()
h.pwrite(b'\\x42' * 4096, size - 4096)
h.cache(size, 0)
h.cache(1, size - 1)
h.cache(12345, 999)
assert h.pread(4096, size - 4096) == b'\\x42' * 4096
assert h.pread(4096, 0) == bytes(4096)
`,
        );
      });
    });

    test('clients of older handshakes: no FIXED_NEWSTYLE, with and without NO_ZEROES', async () => {
      await withTestServer({ backend, exports: SMALL }, async (srv) => {
        // libnbd then sends EXPORT_NAME only (no GO, no structured replies); the server must
        // serve it as fixed newstyle, padding the EXPORT_NAME reply unless NO_ZEROES is set.
        const result = await runNbdsh(
          srv.uri(),
          `
sizes = []
for flags in (0, nbd.HANDSHAKE_FLAG_NO_ZEROES):
    h = nbd.NBD()
    h.set_handshake_flags(flags)
    h.connect_uri(URI)
    data = bytes([0x30 + flags]) * 4096
    h.pwrite(data, 8192)
    h.flush()
    assert h.pread(4096, 8192) == data
    assert not h.get_structured_replies_negotiated()
    sizes.append(h.get_size())
    h.shutdown()
emit({'sizes': sizes, 'after': list(connect().pread(1, 8192))})
`,
        );
        const [report] = nbdshJson<{ sizes: number[]; after: number[] }>(result);
        assert.deepEqual(report?.sizes, [SMALL[0]!.sizeBytes, SMALL[0]!.sizeBytes]);
        assert.deepEqual(report?.after, [0x32]);
      });
    });

    test('block status tells written pages from trimmed and never-written ones', async (t) => {
      if (backend === 'nbdkit') return t.skip('nbdkit memory allocates 32 KiB chunks');
      await withTestServer({ backend, exports: SMALL }, async (srv) => {
        const result = await runNbdsh(
          srv.uri(),
          `${PAGE_FLAGS_PY}
h = connect()
assert h.can_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
page = bytes(range(256)) * 16
for p in list(range(0, 4)) + [10] + list(range(20, 30)) + [255]:
    h.pwrite(bytes([p]) + page[1:], p * 4096)
h.trim(4 * 4096, 22 * 4096)                # pages 22..25
h.zero(4096, 27 * 4096)                    # page 27, holes allowed
# Asked at once, the writes are likely still buffered; after FLUSH they are committed.
# REQ_ONE (qemu asks one extent at a time) must give the same map as whole replies.
pending_one = page_flags(h, h.get_size(), flags=nbd.CMD_FLAG_REQ_ONE)
h.flush()
emit({'pages': page_flags(connect(), h.get_size()), 'pendingOne': pending_one,
      'committedOne': page_flags(h, h.get_size(), flags=nbd.CMD_FLAG_REQ_ONE)})
`,
        );
        const [report] =
          nbdshJson<Record<'pages' | 'pendingOne' | 'committedOne', number[][]>>(result);
        assert.ok(report);
        const written = new Set([0, 1, 2, 3, 10, 20, 21, 26, 28, 29, 255]);
        const HOLE_AND_ZERO = 3;
        for (const [name, pages] of Object.entries(report)) {
          pages.forEach((flags, page) => {
            if (written.has(page)) {
              assert.deepEqual(flags, [0], `${name}: written page ${page} reported ${flags}`);
            } else if (page === 27) {
              // Zeroed: may be allocated or a hole, but every value reported must include
              // ZERO or be plain data; it must never be a hole that is not zero.
              for (const f of flags) assert.ok(f === 0 || (f & 2) === 2, `${name} 27: ${flags}`);
            } else {
              assert.deepEqual(flags, [HOLE_AND_ZERO], `${name}: unwritten ${page}: ${flags}`);
            }
          });
        }

        // nbdinfo --map (a second libnbd client) must agree on where data is.
        const map = await runToolOk('nbdinfo', ['--map', '--json', srv.uri()]);
        const extents = JSON.parse(map.stdout) as Array<{
          offset: number;
          length: number;
          type: number;
        }>;
        const dataPages = new Set<number>();
        for (const e of extents) {
          if ((e.type & 1) === 0) {
            for (let p = e.offset / 4096; p < (e.offset + e.length) / 4096; p++) dataPages.add(p);
          }
        }
        dataPages.delete(27);
        assert.deepEqual(
          [...dataPages].sort((a, b) => a - b),
          [...written].sort((a, b) => a - b),
        );
      });
    });

    test('structured reads across data and holes reassemble exactly', async () => {
      await withTestServer({ backend, exports: SMALL }, async (srv) => {
        const result = await runNbdsh(
          srv.uri(),
          `
h = connect()
assert h.get_structured_replies_negotiated()
expect = bytearray(65536)
for p in (0, 2, 5):
    chunk = bytes([0x10 + p]) * 4096
    h.pwrite(chunk, p * 4096)
    expect[p * 4096:(p + 1) * 4096] = chunk
kinds = set()
def read_structured(length, offset):
    out = bytearray(length)
    covered = [0] * length
    def on_chunk(buf, at, status, err):
        assert offset <= at and at + len(buf) <= offset + length, f'chunk {at}+{len(buf)} outside'
        if status == nbd.READ_HOLE:
            kinds.add('hole')
            assert bytes(buf) == bytes(len(buf))
        else:
            assert status == nbd.READ_DATA, f'unexpected chunk status {status}'
            kinds.add('data')
        out[at - offset:at - offset + len(buf)] = buf
        for i in range(at - offset, at - offset + len(buf)):
            covered[i] += 1
        return 0
    h.pread_structured(length, offset, on_chunk)
    assert all(c == 1 for c in covered), 'chunks do not cover the read exactly once'
    return bytes(out)
for length, offset in ((65536, 0), (5000, 4000), (3, 8191), (4096 * 3 + 17, 4090)):
    want = bytes(expect[offset:offset + length])
    assert read_structured(length, offset) == want, (length, offset)
simple = connect(structured=False)
assert not simple.get_structured_replies_negotiated()
assert simple.pread(65536, 0) == bytes(expect)
emit({'kinds': sorted(kinds)})
`,
        );
        const [report] = nbdshJson<{ kinds: string[] }>(result);
        assert.ok(report?.kinds.includes('data'));
      });
    });

    test('32 MiB reads and writes, the advertised maximum, round-trip', async () => {
      await withTestServer({ backend }, async (srv) => {
        await runNbdsh(
          srv.uri(),
          `
h = connect()
assert h.get_block_size(nbd.SIZE_MAXIMUM) == 32 * 1024 * 1024
big = bytes((i * 131) & 255 for i in range(4096)) * 8192
h.pwrite(big, 16 * 1024 * 1024)
assert connect().pread(len(big), 16 * 1024 * 1024) == big
assert h.pread(32 * 1024 * 1024, 0)[16 * 1024 * 1024:] == big[:16 * 1024 * 1024]
`,
          { timeoutMs: 120_000 },
        );
      });
    });

    test('multi-conn: a flush on one connection covers writes acked on the others', async () => {
      await withTestServer({ backend }, async (srv) => {
        const before = await connectionsAccepted(srv);
        await runNbdsh(
          srv.uri(),
          `
hs = [connect() for _ in range(4)]
assert all(x.can_multi_conn() for x in hs)
# Each connection queues 64 async writes to interleaved pages, all in flight together.
cookies = []
for n, x in enumerate(hs):
    for k in range(64):
        page = k * 4 + n
        cookies.append((x, x.aio_pwrite(bytes([n + 1, k]) * 2048, page * 4096)))
for x, cookie in cookies:
    while not x.aio_command_completed(cookie):
        x.poll(-1)
hs[3].flush()
reader = connect()
for k in range(64):
    for n in range(4):
        page = k * 4 + n
        assert reader.pread(4096, page * 4096) == bytes([n + 1, k]) * 2048, (n, k)
`,
        );
        const after = await connectionsAccepted(srv);
        if (before !== undefined && after !== undefined) assert.ok(after - before >= 5);
      });
    });

    test('requests past the end fail with an errno and the connection stays usable', async () => {
      await withTestServer({ backend }, async (srv) => {
        const before = await requestCounts(srv, 'disk');
        const result = await runNbdsh(
          srv.uri(),
          `
h = connect()
h.set_strict_mode(0)                       # let libnbd send what it would refuse
size = h.get_size()
h.pwrite(b'\\x77' * 4096, size - 4096)
attempts = {
    'read': lambda: h.pread(4096, size - 2048),
    'read_far': lambda: h.pread(512, size + (1 << 40)),
    'write': lambda: h.pwrite(b'\\x01' * 8192, size - 4096),
    'trim': lambda: h.trim(8192, size - 4096),
    'zero': lambda: h.zero(8192, size),
    'cache': lambda: h.cache(4096, size),
}
errnos = {}
for name, attempt in attempts.items():
    try:
        attempt()
        errnos[name] = 'ok'
    except nbd.Error as e:
        errnos[name] = e.errno
    assert h.pread(4096, size - 4096) == b'\\x77' * 4096, f'data changed after {name}'
emit(errnos)
`,
        );
        const [errnos] = nbdshJson<Record<string, string>>(result);
        assert.ok(errnos);
        assert.equal(errnos.read, 'EINVAL');
        assert.equal(errnos.read_far, 'EINVAL');
        assert.ok(['EINVAL', 'ENOSPC'].includes(errnos.write ?? ''), `write: ${errnos.write}`);
        assert.equal(errnos.trim, 'EINVAL');
        assert.ok(['EINVAL', 'ENOSPC'].includes(errnos.zero ?? ''), `zero: ${errnos.zero}`);
        assert.equal(errnos.cache, 'EINVAL');
        const after = await requestCounts(srv, 'disk');
        if (before && after) assert.ok(after.failed - before.failed >= 6, JSON.stringify(after));
      });
    });
  });
}
