// Option negotiation, driven frame by frame without a socket: each option's replies, errors
// and counted rejections.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { ClientOrigin } from '../../src/config/access.js';
import type { ExportAccessConfig } from '../../src/config/index.js';
import { MemoryBackend } from '../../src/device/memory.js';
import { ExportTable, transmissionFlags } from '../../src/nbd/exports.js';
import {
  BASE_ALLOCATION_CONTEXT_ID,
  matchesBaseAllocation,
  Negotiator,
  type OptionOutcome,
} from '../../src/nbd/handshake.js';
import {
  encodeInfoRequest,
  encodeMetaContextRequest,
  parseOptionReplyHeader,
  parseRepInfo,
} from '../../src/nbd/messages.js';
import {
  IHAVEOPT,
  NBD_FLAG_CAN_MULTI_CONN,
  NBD_FLAG_HAS_FLAGS,
  NBD_FLAG_READ_ONLY,
  NBD_FLAG_SEND_DF,
  NBD_FLAG_SEND_TRIM,
  NBD_INFO_BLOCK_SIZE,
  NBD_INFO_DESCRIPTION,
  NBD_INFO_EXPORT,
  NBD_INFO_NAME,
  NBD_OPT_ABORT,
  NBD_OPT_EXPORT_NAME,
  NBD_OPT_GO,
  NBD_OPT_INFO,
  NBD_OPT_LIST,
  NBD_OPT_LIST_META_CONTEXT,
  NBD_OPT_SET_META_CONTEXT,
  NBD_OPT_STARTTLS,
  NBD_OPT_STRUCTURED_REPLY,
  NBD_REP_ACK,
  NBD_REP_ERR_INVALID,
  NBD_REP_ERR_POLICY,
  NBD_REP_ERR_SHUTDOWN,
  NBD_REP_ERR_TLS_REQD,
  NBD_REP_ERR_UNKNOWN,
  NBD_REP_ERR_UNSUP,
  NBD_REP_INFO,
  NBD_REP_META_CONTEXT,
  NBD_REP_SERVER,
  OPTION_REPLY_HEADER_BYTES,
} from '../../src/nbd/protocol.js';

const MiB = 1024 * 1024;

interface Reply {
  option: number;
  type: number;
  data: Buffer;
}

interface HarnessOptions {
  optionCountMax?: number;
  tlsMode?: 'off' | 'optional' | 'required';
  origin?: ClientOrigin;
  access?: Record<string, ExportAccessConfig>;
}

function harness(options: HarnessOptions = {}) {
  const backend = new MemoryBackend([
    { name: 'disk', sizeBytes: 4 * MiB, description: 'the disk' },
    { name: 'ro', sizeBytes: MiB, readOnly: true },
  ]);
  const exports = new ExportTable(backend, options.access);
  const sent: Buffer[] = [];
  const rejected: string[] = [];
  let shuttingDown = false;
  const negotiator = new Negotiator({
    exports,
    send: (buf) => sent.push(buf),
    reject: (reason) => rejected.push(reason),
    payloadBytesMax: 32 * MiB,
    optionCountMax: options.optionCountMax ?? 32,
    shuttingDown: () => shuttingDown,
    tlsMode: options.tlsMode ?? 'off',
    origin: options.origin ?? { kind: 'tcp', address: '127.0.0.1' },
  });
  assert.equal(negotiator.onClientFlags(3).kind, 'continue');
  const option = (code: number, data: Buffer = Buffer.alloc(0)): [OptionOutcome, Reply[]] => {
    sent.length = 0;
    const outcome = negotiator.onOption(
      { magic: IHAVEOPT, option: code, length: data.length },
      data,
    );
    if (code === NBD_OPT_EXPORT_NAME) return [outcome, []];
    const replies = sent.map((buf) => {
      const h = parseOptionReplyHeader(buf);
      assert.equal(buf.length, OPTION_REPLY_HEADER_BYTES + h.length);
      return { option: h.option, type: h.type, data: buf.subarray(OPTION_REPLY_HEADER_BYTES) };
    });
    for (const r of replies) assert.equal(r.option, code, 'every reply names its option');
    return [outcome, replies];
  };
  return {
    negotiator,
    exports,
    option,
    rejected,
    sent,
    shutdown: () => {
      shuttingDown = true;
    },
  };
}

const types = (replies: Reply[]) => replies.map((r) => r.type);

describe('Negotiator', () => {
  it('refuses client flags it did not offer', () => {
    const h = harness();
    const fresh = new Negotiator({
      exports: h.exports,
      send: () => {},
      reject: (r) => h.rejected.push(r),
      payloadBytesMax: 1,
      optionCountMax: 1,
      shuttingDown: () => false,
      tlsMode: 'off',
      origin: { kind: 'unix' },
    });
    assert.equal(fresh.onClientFlags(4 | 1).kind, 'close');
    assert.equal(fresh.onClientFlags(0x8000_0000).kind, 'close');
    assert.deepEqual(h.rejected, ['bad_client_flags', 'bad_client_flags']);
  });

  it('LIST names every export with its description, then ACK', () => {
    const [outcome, replies] = harness().option(NBD_OPT_LIST);
    assert.equal(outcome.kind, 'continue');
    assert.deepEqual(types(replies), [NBD_REP_SERVER, NBD_REP_SERVER, NBD_REP_ACK]);
    const first = replies[0]!.data;
    assert.equal(first.subarray(4, 4 + first.readUInt32BE(0)).toString(), 'disk');
    assert.equal(first.subarray(8).toString(), 'the disk');
  });

  it('LIST with data is ERR_INVALID and negotiation goes on', () => {
    const h = harness();
    const [outcome, replies] = h.option(NBD_OPT_LIST, Buffer.from('x'));
    assert.equal(outcome.kind, 'continue');
    assert.deepEqual(types(replies), [NBD_REP_ERR_INVALID]);
    assert.deepEqual(h.rejected, ['option_bad_length']);
  });

  it('INFO answers EXPORT, the asked NAME/DESCRIPTION, BLOCK_SIZE, ACK; GO the same', () => {
    const h = harness();
    const data = encodeInfoRequest('disk', [NBD_INFO_NAME, NBD_INFO_DESCRIPTION, 999]);
    const [info, infoReplies] = h.option(NBD_OPT_INFO, data);
    assert.equal(info.kind, 'continue');
    assert.deepEqual(types(infoReplies), [
      NBD_REP_INFO,
      NBD_REP_INFO,
      NBD_REP_INFO,
      NBD_REP_INFO,
      NBD_REP_ACK,
    ]);
    const parsed = infoReplies.slice(0, 4).map((r) => parseRepInfo(r.data));
    assert.deepEqual(
      parsed.map((p) => p.info),
      [NBD_INFO_EXPORT, NBD_INFO_NAME, NBD_INFO_DESCRIPTION, NBD_INFO_BLOCK_SIZE],
    );
    assert.equal(parsed[0]!.fields.sizeBytes, BigInt(4 * MiB));
    assert.equal(parsed[1]!.fields.text, 'disk');
    assert.deepEqual(parsed[3]!.fields, { minimum: 1, preferred: 4096, maximum: 32 * MiB });
    const [go, goReplies] = h.option(NBD_OPT_GO, data);
    assert.equal(go.kind, 'transmission');
    assert.deepEqual(
      goReplies.map((r) => r.data),
      infoReplies.map((r) => r.data),
      'GO right after INFO returns the same information',
    );
  });

  it('the empty name selects the default (first) export', () => {
    const [go] = harness().option(NBD_OPT_GO, encodeInfoRequest('', []));
    assert.ok(go.kind === 'transmission' && go.negotiated.entry.name === 'disk');
  });

  it('INFO/GO on an unknown export is ERR_UNKNOWN without INFO replies', () => {
    const h = harness();
    const [outcome, replies] = h.option(NBD_OPT_GO, encodeInfoRequest('nope', []));
    assert.equal(outcome.kind, 'continue');
    assert.deepEqual(types(replies), [NBD_REP_ERR_UNKNOWN]);
    assert.deepEqual(h.rejected, ['unknown_export']);
  });

  it('INFO/GO with inconsistent lengths is ERR_INVALID', () => {
    const h = harness();
    const data = encodeInfoRequest('disk', [1]);
    data.writeUInt32BE(100, 0);
    const [, replies] = h.option(NBD_OPT_GO, data);
    assert.deepEqual(types(replies), [NBD_REP_ERR_INVALID]);
    assert.deepEqual(h.rejected, ['option_bad_length']);
  });

  it('EXPORT_NAME enters transmission, or closes on an unknown name', () => {
    const h = harness();
    const [ok, replies] = h.option(NBD_OPT_EXPORT_NAME, Buffer.from('ro'));
    assert.equal(ok.kind, 'transmission');
    assert.equal(replies.length, 0);
    assert.equal(h.sent.length, 1, 'one EXPORT_NAME reply, without an option-reply header');
    assert.equal(h.sent[0]!.length, 10, 'NO_ZEROES was agreed: no padding');
    assert.equal(h.sent[0]!.readBigUInt64BE(0), BigInt(MiB));
    const [bad] = harness().option(NBD_OPT_EXPORT_NAME, Buffer.from('nope'));
    assert.equal(bad.kind, 'close');
  });

  it('ABORT is acknowledged and closes', () => {
    const [outcome, replies] = harness().option(NBD_OPT_ABORT);
    assert.equal(outcome.kind, 'close');
    assert.deepEqual(types(replies), [NBD_REP_ACK]);
  });

  it('STARTTLS is refused by policy; unknown options are ERR_UNSUP', () => {
    const h = harness();
    assert.deepEqual(types(h.option(NBD_OPT_STARTTLS)[1]), [NBD_REP_ERR_POLICY]);
    assert.deepEqual(types(h.option(0x7654321, Buffer.from('junk'))[1]), [NBD_REP_ERR_UNSUP]);
    assert.deepEqual(h.rejected, ['tls_not_configured', 'unknown_option']);
    assert.equal(h.option(NBD_OPT_GO, encodeInfoRequest('disk', []))[0].kind, 'transmission');
  });

  it('STRUCTURED_REPLY is ACKed once, then ERR_INVALID', () => {
    const h = harness();
    assert.deepEqual(types(h.option(NBD_OPT_STRUCTURED_REPLY)[1]), [NBD_REP_ACK]);
    assert.deepEqual(types(h.option(NBD_OPT_STRUCTURED_REPLY)[1]), [NBD_REP_ERR_INVALID]);
    assert.deepEqual(types(harness().option(NBD_OPT_STRUCTURED_REPLY, Buffer.from('x'))[1]), [
      NBD_REP_ERR_INVALID,
    ]);
  });

  it('meta contexts need structured replies first', () => {
    const h = harness();
    const data = encodeMetaContextRequest('disk', ['base:allocation']);
    assert.deepEqual(types(h.option(NBD_OPT_SET_META_CONTEXT, data)[1]), [NBD_REP_ERR_INVALID]);
    assert.deepEqual(h.rejected, ['meta_context_without_sr']);
  });

  it('LIST_META_CONTEXT lists base:allocation for no query or the base: wildcard', () => {
    const h = harness();
    h.option(NBD_OPT_STRUCTURED_REPLY);
    for (const queries of [[], ['base:'], ['base:allocation', 'qemu:dirty-bitmap:x']]) {
      const [, replies] = h.option(
        NBD_OPT_LIST_META_CONTEXT,
        encodeMetaContextRequest('disk', queries),
      );
      assert.deepEqual(types(replies), [NBD_REP_META_CONTEXT, NBD_REP_ACK]);
      assert.equal(replies[0]!.data.subarray(4).toString(), 'base:allocation');
    }
    const [, none] = h.option(NBD_OPT_LIST_META_CONTEXT, encodeMetaContextRequest('disk', ['x:y']));
    assert.deepEqual(types(none), [NBD_REP_ACK]);
  });

  it('SET_META_CONTEXT selects base:allocation for the export GO then names', () => {
    const h = harness();
    h.option(NBD_OPT_STRUCTURED_REPLY);
    const [, replies] = h.option(
      NBD_OPT_SET_META_CONTEXT,
      encodeMetaContextRequest('disk', ['base:allocation']),
    );
    assert.deepEqual(types(replies), [NBD_REP_META_CONTEXT, NBD_REP_ACK]);
    assert.equal(replies[0]!.data.readUInt32BE(0), BASE_ALLOCATION_CONTEXT_ID);
    const [go] = h.option(NBD_OPT_GO, encodeInfoRequest('disk', []));
    assert.ok(go.kind === 'transmission' && go.negotiated.blockStatus);
    assert.ok(go.kind === 'transmission' && go.negotiated.structuredReplies);
  });

  it('a context selected for one export is void when GO names another', () => {
    const h = harness();
    h.option(NBD_OPT_STRUCTURED_REPLY);
    h.option(NBD_OPT_SET_META_CONTEXT, encodeMetaContextRequest('disk', ['base:allocation']));
    const [go] = h.option(NBD_OPT_GO, encodeInfoRequest('ro', []));
    assert.ok(go.kind === 'transmission' && !go.negotiated.blockStatus);
  });

  it('a failed SET_META_CONTEXT still clears the previous selection', () => {
    const h = harness();
    h.option(NBD_OPT_STRUCTURED_REPLY);
    h.option(NBD_OPT_SET_META_CONTEXT, encodeMetaContextRequest('disk', ['base:allocation']));
    const [, replies] = h.option(NBD_OPT_SET_META_CONTEXT, Buffer.from('bad'));
    assert.deepEqual(types(replies), [NBD_REP_ERR_INVALID]);
    const [go] = h.option(NBD_OPT_GO, encodeInfoRequest('disk', []));
    assert.ok(go.kind === 'transmission' && !go.negotiated.blockStatus);
  });

  it('closes after too many options', () => {
    const h = harness({ optionCountMax: 3 });
    for (let i = 0; i < 3; i++) assert.equal(h.option(NBD_OPT_LIST)[0].kind, 'continue');
    assert.equal(h.option(NBD_OPT_LIST)[0].kind, 'close');
    assert.deepEqual(h.rejected, ['too_many_options']);
  });

  it('answers ERR_SHUTDOWN while the server shuts down, ACKs ABORT', () => {
    const h = harness();
    h.shutdown();
    assert.deepEqual(types(h.option(NBD_OPT_LIST)[1]), [NBD_REP_ERR_SHUTDOWN]);
    assert.deepEqual(types(h.option(NBD_OPT_GO, encodeInfoRequest('disk', []))[1]), [
      NBD_REP_ERR_SHUTDOWN,
    ]);
    assert.deepEqual(types(h.option(NBD_OPT_ABORT)[1]), [NBD_REP_ACK]);
  });

  it('matches base:allocation queries as the spec says for LIST and SET', () => {
    assert.equal(matchesBaseAllocation([], false), true);
    assert.equal(matchesBaseAllocation([], true), false);
    assert.equal(matchesBaseAllocation(['base:'], false), true);
    assert.equal(matchesBaseAllocation(['base:'], true), false);
    assert.equal(matchesBaseAllocation(['base:allocation'], true), true);
    assert.equal(matchesBaseAllocation(['base:allocationx'], false), false);
  });
});

describe('transmissionFlags', () => {
  it('advertises writes, multi-conn and DF only with structured replies', () => {
    const exports = harness().exports;
    const disk = exports.lookup('disk')!;
    const ro = exports.lookup('ro')!;
    const rw = transmissionFlags(disk, false);
    assert.ok(rw & NBD_FLAG_HAS_FLAGS && rw & NBD_FLAG_CAN_MULTI_CONN && rw & NBD_FLAG_SEND_TRIM);
    assert.equal(rw & NBD_FLAG_SEND_DF, 0);
    assert.equal(rw & NBD_FLAG_READ_ONLY, 0);
    assert.ok(transmissionFlags(disk, true) & NBD_FLAG_SEND_DF);
    const r = transmissionFlags(ro, false);
    assert.ok(r & NBD_FLAG_READ_ONLY);
    assert.equal(r & NBD_FLAG_SEND_TRIM, 0);
  });

  it('in required TLS mode answers ERR_TLS_REQD to all but STARTTLS and ABORT', () => {
    const h = harness({ tlsMode: 'required' });
    assert.deepEqual(types(h.option(NBD_OPT_LIST)[1]), [NBD_REP_ERR_TLS_REQD]);
    const info = encodeInfoRequest('disk', []);
    assert.deepEqual(types(h.option(NBD_OPT_GO, info)[1]), [NBD_REP_ERR_TLS_REQD]);
    assert.deepEqual(types(h.option(NBD_OPT_STRUCTURED_REPLY)[1]), [NBD_REP_ERR_TLS_REQD]);
    const [named] = h.option(NBD_OPT_EXPORT_NAME, Buffer.from('disk'));
    assert.equal(named.kind, 'close', 'EXPORT_NAME cannot carry an error: it closes');
    assert.deepEqual(h.rejected, ['tls_required', 'tls_required', 'tls_required', 'tls_required']);
  });

  it('STARTTLS is ACKed when TLS is on, refused with data or a second time', () => {
    const h = harness({ tlsMode: 'required' });
    const withData = h.option(NBD_OPT_STARTTLS, Buffer.from([1]));
    assert.deepEqual(types(withData[1]), [NBD_REP_ERR_INVALID]);
    const [outcome, replies] = h.option(NBD_OPT_STARTTLS);
    assert.equal(outcome.kind, 'starttls');
    assert.deepEqual(types(replies), [NBD_REP_ACK]);
    h.negotiator.onTlsEstablished();
    assert.equal(h.negotiator.tls, true);
    assert.deepEqual(types(h.option(NBD_OPT_STARTTLS)[1]), [NBD_REP_ERR_INVALID]);
    assert.deepEqual(types(h.option(NBD_OPT_LIST)[1]), [
      NBD_REP_SERVER,
      NBD_REP_SERVER,
      NBD_REP_ACK,
    ]);
  });

  it('forgets structured replies and meta contexts negotiated before TLS', () => {
    const h = harness({ tlsMode: 'optional' });
    assert.deepEqual(types(h.option(NBD_OPT_STRUCTURED_REPLY)[1]), [NBD_REP_ACK]);
    h.option(NBD_OPT_STARTTLS);
    h.negotiator.onTlsEstablished();
    const [outcome] = h.option(NBD_OPT_GO, encodeInfoRequest('disk', []));
    assert.equal(outcome.kind, 'transmission');
    if (outcome.kind !== 'transmission') return;
    assert.equal(outcome.negotiated.structuredReplies, false);
    assert.equal(outcome.negotiated.transmissionFlags & NBD_FLAG_SEND_DF, 0);
  });

  it('serves a requireTls export only over TLS (selective TLS)', () => {
    const access = { disk: { allow: null, requireTls: true } };
    const h = harness({ tlsMode: 'optional', access });
    const info = encodeInfoRequest('disk', []);
    assert.deepEqual(types(h.option(NBD_OPT_INFO, info)[1]), [NBD_REP_ERR_TLS_REQD]);
    assert.deepEqual(
      types(h.option(NBD_OPT_INFO, encodeInfoRequest('ro', []))[1]).at(-1),
      NBD_REP_ACK,
      'other exports stay open in the clear',
    );
    h.option(NBD_OPT_STARTTLS);
    h.negotiator.onTlsEstablished();
    assert.equal(h.option(NBD_OPT_GO, info)[0].kind, 'transmission');
  });

  it('hides an export from clients off its allow list and refuses to open it', () => {
    const access = { disk: { allow: ['unix', '10.0.0.0/8'], requireTls: false } };
    const h = harness({ access, origin: { kind: 'tcp', address: '127.0.0.1' } });
    const [, listed] = h.option(NBD_OPT_LIST);
    assert.deepEqual(types(listed), [NBD_REP_SERVER, NBD_REP_ACK], 'only ro is listed');
    const info = encodeInfoRequest('disk', []);
    assert.deepEqual(types(h.option(NBD_OPT_GO, info)[1]), [NBD_REP_ERR_POLICY]);
    h.option(NBD_OPT_STRUCTURED_REPLY);
    const meta = encodeMetaContextRequest('disk', ['base:allocation']);
    assert.deepEqual(types(h.option(NBD_OPT_SET_META_CONTEXT, meta)[1]), [NBD_REP_ERR_POLICY]);
    assert.equal(h.option(NBD_OPT_EXPORT_NAME, Buffer.from('disk'))[0].kind, 'close');
    assert.deepEqual(h.rejected, ['export_denied', 'export_denied', 'export_denied']);
  });

  it('admits clients on the allow list: the Unix socket, a subnet, a mapped IPv4', () => {
    const access = { disk: { allow: ['unix', '10.0.0.0/8', '::1'], requireTls: false } };
    const origins: ClientOrigin[] = [
      { kind: 'unix' },
      { kind: 'tcp', address: '10.1.2.3' },
      { kind: 'tcp', address: '::ffff:10.9.9.9' },
      { kind: 'tcp', address: '::1' },
    ];
    for (const origin of origins) {
      const h = harness({ access, origin });
      const [outcome] = h.option(NBD_OPT_GO, encodeInfoRequest('disk', []));
      assert.equal(outcome.kind, 'transmission', JSON.stringify(origin));
    }
    const outside = harness({ access, origin: { kind: 'tcp', address: '11.0.0.1' } });
    assert.equal(outside.option(NBD_OPT_GO, encodeInfoRequest('disk', []))[0].kind, 'continue');
  });
});
