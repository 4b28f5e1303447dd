/**
 * NBD over TLS and per-export access, against real clients: nbdinfo (libnbd, GnuTLS) and
 * qemu-img/qemu-io (qemu's tls-creds-x509) with certificates openssl makes for the test, and
 * a raw client (Node's own TLS) for the exact option replies the spec asks for. Access: allow
 * lists seen from 127.0.0.1, [::1] and the Unix socket, and the socket file's permissions
 * against an unprivileged user (setpriv).
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { chmod, readFile, writeFile } from 'node:fs/promises';
import net from 'node:net';
import { dirname, join } from 'node:path';
import type { Duplex } from 'node:stream';
import { after, before, describe, test } from 'node:test';
import tls, { createSecureContext } from 'node:tls';
import type { ExportAccessConfig } from '../../src/config/index.js';
import {
  GREETING_BYTES,
  NBD_FLAG_C_FIXED_NEWSTYLE,
  NBD_FLAG_C_NO_ZEROES,
  NBD_OPT_EXPORT_NAME,
  NBD_OPT_GO,
  NBD_OPT_LIST,
  NBD_OPT_STARTTLS,
  NBD_REP_ACK,
  NBD_REP_ERR_INVALID,
  NBD_REP_ERR_POLICY,
  NBD_REP_ERR_TLS_REQD,
  NBD_REP_SERVER,
  OPTION_REPLY_HEADER_BYTES,
} from '../../src/nbd/protocol.js';
import type { ServerTls } from '../../src/nbd/server.js';
import { type NbdinfoReport, qemuIo } from '../helpers/clients.js';
import { runTool, runToolFails, runToolOk } from '../helpers/exec.js';
import { makeTempDir } from '../helpers/files.js';
import { startTestServer, type TestServer } from '../helpers/nbd-server.js';
import { makeTestCertificates, type TestCertificates } from '../helpers/tls-certs.js';
import { encodeOption, infoData } from '../reliability/nbd-wire.js';

const MiB = 1024 * 1024;
/** Bound on every raw-client wait: a broken server fails the test instead of hanging it. */
const WAIT_MS = 5_000;
const NOBODY = '65534';

/** The server's PEM files, read once. */
interface Pem {
  cert: string;
  key: string;
  ca: string;
}

async function loadPem(certs: TestCertificates): Promise<Pem> {
  const [cert, key, ca] = await Promise.all(
    [certs.serverCert, certs.serverKey, certs.caCert].map((path) => readFile(path, 'utf8')),
  );
  return { cert: cert!, key: key!, ca: ca! };
}

/** TLS as `diffswap serve` sets it up; `mutual`: client certificates from the CA only. */
function serverTls(pem: Pem, mode: ServerTls['mode'], mutual = false): ServerTls {
  const context = createSecureContext({
    cert: pem.cert,
    key: pem.key,
    ...(mutual ? { ca: pem.ca } : {}),
    minVersion: 'TLSv1.2',
  });
  return { mode, context, requestCert: mutual };
}

/** `nbds://` URI of an export with libnbd's certificate directory. */
function tlsUri(server: TestServer, name: string, dir: string): string {
  return `nbds://127.0.0.1:${server.port}/${name}?tls-certificates=${dir}`;
}

/** qemu's TLS credentials object and the image options of an export using them. */
function qemuTls(server: TestServer, name: string, dir: string) {
  return {
    object: `tls-creds-x509,id=tls0,dir=${dir},endpoint=client`,
    image: `driver=nbd,host=127.0.0.1,port=${server.port},export=${name},tls-creds=tls0`,
  };
}

async function nbdinfoJson(
  uri: string,
  extra: string[] = [],
): Promise<NbdinfoReport & { TLS?: boolean }> {
  const result = await runToolOk('nbdinfo', ['--json', ...extra, uri]);
  return JSON.parse(result.stdout) as NbdinfoReport & { TLS?: boolean };
}

async function rejected(server: TestServer, reason: string): Promise<number> {
  const values = (await server.metrics!.nbdRejected.get()).values;
  return values.find((v) => v.labels.reason === reason)?.value ?? 0;
}

/** A minimal client for the option phase, over a plain or a TLS stream. */
class OptionClient {
  #stream: Duplex;
  #buffer = Buffer.alloc(0);
  #closed = false;
  #wake: (() => void) | null = null;
  readonly #onData = (chunk: Buffer) => {
    this.#buffer = Buffer.concat([this.#buffer, chunk]);
    this.#wake?.();
  };
  readonly #onEnd = () => {
    this.#closed = true;
    this.#wake?.();
  };

  constructor(stream: Duplex) {
    this.#stream = stream;
    this.#listen(stream);
  }

  static async connect(port: number): Promise<OptionClient> {
    const socket = await new Promise<net.Socket>((resolve, reject) => {
      const s = net.connect({ host: '127.0.0.1', port }, () => resolve(s));
      s.once('error', reject);
    });
    const client = new OptionClient(socket);
    const greeting = await client.read(GREETING_BYTES);
    assert.equal(greeting.subarray(0, 8).toString('latin1'), 'NBDMAGIC');
    const flags = Buffer.alloc(4);
    flags.writeUInt32BE(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
    client.write(flags);
    return client;
  }

  #listen(stream: Duplex) {
    stream.on('data', this.#onData);
    stream.on('end', this.#onEnd);
    stream.on('close', this.#onEnd);
    stream.on('error', this.#onEnd);
  }

  write(buf: Buffer) {
    this.#stream.write(buf);
  }

  async read(n: number): Promise<Buffer> {
    const deadline = Date.now() + WAIT_MS;
    while (this.#buffer.length < n) {
      if (this.#closed) throw new Error(`closed after ${this.#buffer.length}/${n} bytes`);
      if (Date.now() > deadline) throw new Error('timed out waiting for the server');
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, 50);
        this.#wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
    }
    const out = this.#buffer.subarray(0, n);
    this.#buffer = this.#buffer.subarray(n);
    return out;
  }

  /** Sends an option and collects its replies up to the final one (ACK or an error). */
  async option(code: number, data: Buffer = Buffer.alloc(0)): Promise<number[]> {
    this.write(encodeOption(code, data));
    const types: number[] = [];
    for (;;) {
      const header = await this.read(OPTION_REPLY_HEADER_BYTES);
      const type = header.readUInt32BE(12);
      await this.read(header.readUInt32BE(16));
      types.push(type);
      if (type !== NBD_REP_SERVER) return types;
    }
  }

  /** Resolves true once the server has closed the connection. */
  async closedByServer(): Promise<boolean> {
    const deadline = Date.now() + WAIT_MS;
    while (!this.#closed && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    return this.#closed;
  }

  /** Runs the TLS handshake over the connection (after STARTTLS's ACK). */
  async startTls(ca: string): Promise<void> {
    const plain = this.#stream;
    plain.off('data', this.#onData);
    const secure = tls.connect({ socket: plain as net.Socket, ca, servername: 'localhost' });
    await new Promise<void>((resolve, reject) => {
      secure.once('secureConnect', resolve);
      secure.once('error', reject);
    });
    this.#stream = secure;
    this.#listen(secure);
  }

  close() {
    this.#stream.destroy();
  }

  /** Ends the connection with a TCP reset, as a crashed client would. */
  reset() {
    (this.#stream as net.Socket).resetAndDestroy();
  }
}

describe('NBD over TLS', () => {
  let certs: TestCertificates;
  let pem: Pem;
  let work: { path: string; remove(): Promise<void> };

  before(async () => {
    certs = await makeTestCertificates();
    pem = await loadPem(certs);
    work = await makeTempDir('diffswap-tls-data-');
  });
  after(async () => {
    await certs?.remove();
    await work?.remove();
  });

  test('required: real clients work over TLS, plaintext gets ERR_TLS_REQD', async (t) => {
    const server = await startTestServer({
      backend: 'store',
      exports: [{ name: 'swap', sizeBytes: 8 * MiB }],
      tls: serverTls(pem, 'required'),
    });
    t.after(() => server.close());

    const report = await nbdinfoJson(tlsUri(server, 'swap', certs.caOnlyDir));
    assert.equal(report.TLS, true);
    assert.equal(report.exports[0]?.['export-size'], 8 * MiB);

    // A random image in over TLS with qemu-img, back out over TLS, byte for byte.
    const image = join(work.path, 'in.raw');
    const back = join(work.path, 'out.raw');
    await writeFile(image, randomBytes(4 * MiB));
    const creds = qemuTls(server, 'swap', certs.caOnlyDir);
    await runToolOk('qemu-img', [
      'convert',
      '--object',
      creds.object,
      '-n',
      '-f',
      'raw',
      '--target-image-opts',
      image,
      creds.image,
    ]);
    await runToolOk('qemu-img', [
      'convert',
      '--object',
      creds.object,
      '--image-opts',
      creds.image,
      '-O',
      'raw',
      back,
    ]);
    const written = await readFile(image);
    const read = await readFile(back);
    assert.ok(read.subarray(0, written.length).equals(written), 'image read back over TLS');

    // Plaintext: nbdinfo fails; the raw client sees the spec's replies.
    const before = await rejected(server, 'tls_required');
    await runToolFails('nbdinfo', [server.uri('swap')]);
    const raw = await OptionClient.connect(server.port);
    assert.deepEqual(await raw.option(NBD_OPT_LIST), [NBD_REP_ERR_TLS_REQD]);
    raw.write(encodeOption(NBD_OPT_EXPORT_NAME, Buffer.from('swap')));
    assert.ok(await raw.closedByServer(), 'EXPORT_NAME before TLS closes the connection');
    assert.ok((await rejected(server, 'tls_required')) >= before + 2);
  });

  test('optional: plaintext and TLS both work; a requireTls export needs TLS', async (t) => {
    const access: Record<string, ExportAccessConfig> = {
      secret: { allow: null, requireTls: true },
    };
    const server = await startTestServer({
      backend: 'memory',
      exports: [
        { name: 'open', sizeBytes: 4 * MiB },
        { name: 'secret', sizeBytes: 4 * MiB },
      ],
      tls: serverTls(pem, 'optional'),
      access,
    });
    t.after(() => server.close());

    const plain = await nbdinfoJson(server.uri('open'));
    assert.equal(plain.TLS, false);
    const failed = await runToolFails('nbdinfo', [server.uri('secret')]);
    assert.match(failed.stderr, /secret/);
    const secure = await nbdinfoJson(tlsUri(server, 'secret', certs.caOnlyDir));
    assert.equal(secure.TLS, true);
    const creds = qemuTls(server, 'secret', certs.caOnlyDir);
    const io = await runToolOk('qemu-io', [
      '--object',
      creds.object,
      '--image-opts',
      '-c',
      'write -P 0x5a 0 1M',
      '-c',
      'read -P 0x5a 0 1M',
      creds.image,
    ]);
    assert.doesNotMatch(io.stdout, /fail|error|Pattern verification/i);
  });

  test('a raw client: STARTTLS once, options start again inside TLS', async (t) => {
    const server = await startTestServer({
      backend: 'memory',
      exports: [{ name: 'disk', sizeBytes: MiB }],
      tls: serverTls(pem, 'required'),
    });
    t.after(() => server.close());
    const client = await OptionClient.connect(server.port);
    t.after(() => client.close());
    assert.deepEqual(await client.option(NBD_OPT_STARTTLS, Buffer.from([0])), [
      NBD_REP_ERR_INVALID,
    ]);
    assert.deepEqual(await client.option(NBD_OPT_STARTTLS), [NBD_REP_ACK]);
    await client.startTls(pem.ca);
    assert.deepEqual(await client.option(NBD_OPT_LIST), [NBD_REP_SERVER, NBD_REP_ACK]);
    assert.deepEqual(await client.option(NBD_OPT_STARTTLS), [NBD_REP_ERR_INVALID]);

    // Bytes sent after STARTTLS before its ACK was read: the server cuts the client off.
    const early = await OptionClient.connect(server.port);
    t.after(() => early.close());
    early.write(Buffer.concat([encodeOption(NBD_OPT_STARTTLS, Buffer.alloc(0)), Buffer.alloc(8)]));
    assert.ok(await early.closedByServer());
    assert.equal(await rejected(server, 'tls_early_data'), 1);

    // Clients that reset the connection at every step of the upgrade: the server stays up,
    // forgets them, and serves the next client.
    for (const stage of ['after STARTTLS', 'after its ACK', 'mid-handshake']) {
      const quitter = await OptionClient.connect(server.port);
      quitter.write(encodeOption(NBD_OPT_STARTTLS, Buffer.alloc(0)));
      if (stage !== 'after STARTTLS') await quitter.read(OPTION_REPLY_HEADER_BYTES);
      if (stage === 'mid-handshake') quitter.write(Buffer.from([0x16, 0x03, 0x01, 0x00]));
      quitter.reset();
    }
    const deadline = Date.now() + WAIT_MS;
    while (server.server!.connections().length > 1 && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 20));
    }
    assert.equal(server.server!.connections().length, 1, 'only the TLS client is left');
    const report = await nbdinfoJson(tlsUri(server, 'disk', certs.caOnlyDir));
    assert.equal(report.TLS, true);
  });

  test('mutual TLS: a client without a certificate from the CA is refused', async (t) => {
    const server = await startTestServer({
      backend: 'memory',
      exports: [{ name: 'disk', sizeBytes: MiB }],
      tls: serverTls(pem, 'required', true),
    });
    t.after(() => server.close());
    const report = await nbdinfoJson(tlsUri(server, 'disk', certs.clientDir));
    assert.equal(report.TLS, true);
    await runToolFails('nbdinfo', [tlsUri(server, 'disk', certs.caOnlyDir)]);
    assert.ok((await rejected(server, 'tls_handshake_failed')) >= 1);
    // And the client side: a server certificate from an unknown CA is refused by libnbd.
    await runToolFails('nbdinfo', [tlsUri(server, 'disk', certs.strangerDir)]);
  });
});

describe('per-export access', () => {
  const access: Record<string, ExportAccessConfig> = {
    v4: { allow: ['127.0.0.0/8'], requireTls: false },
    local: { allow: ['unix'], requireTls: false },
  };
  const exports = [
    { name: 'open', sizeBytes: MiB },
    { name: 'v4', sizeBytes: MiB },
    { name: 'local', sizeBytes: MiB },
  ];

  const listed = async (uri: string) =>
    (await nbdinfoJson(uri, ['--list'])).exports.map((e) => e['export-name']).sort();

  test('allow lists decide what each origin sees and opens', async (t) => {
    const server = await startTestServer({
      backend: 'memory',
      exports,
      access,
      ipv6: true,
      unixSocket: true,
    });
    t.after(() => server.close());
    assert.deepEqual(await listed(server.uri('open')), ['open', 'v4']);
    assert.deepEqual(await listed(server.ipv6Uri('open')), ['open']);
    assert.deepEqual(await listed(server.unixUri('open')), ['local', 'open']);

    const denied = await runToolFails('nbdinfo', [server.ipv6Uri('v4')]);
    assert.match(denied.stderr, /opt_go.*v4/, 'refused at GO (libnbd does not print why)');
    await runToolFails('qemu-io', ['-f', 'raw', '-c', 'read 0 4k', server.uri('local')]);
    // Clients retry a refused export (GO, then other ways), each refusal counted.
    assert.ok((await rejected(server, 'export_denied')) >= 2);
    const raw = await OptionClient.connect(server.port);
    t.after(() => raw.close());
    assert.deepEqual(await raw.option(NBD_OPT_GO, infoData(Buffer.from('local'), [])), [
      NBD_REP_ERR_POLICY,
    ]);

    await qemuIo(server.unixUri('local'), ['write -P 0x33 0 64k', 'read -P 0x33 0 64k']);
    await qemuIo(server.uri('v4'), ['write -P 0x44 0 64k', 'read -P 0x44 0 64k']);
  });

  test("the Unix socket's mode decides which users may connect", async (t) => {
    const [closed, open] = await Promise.all(
      [0o600, 0o666].map((socketMode) =>
        startTestServer({ backend: 'memory', exports, unixSocket: true, socketMode }),
      ),
    );
    for (const server of [closed!, open!]) {
      t.after(() => server.close());
      await chmod(dirname(server.socketPath!), 0o755);
    }

    const asNobody = (uri: string) =>
      runTool('setpriv', [
        `--reuid=${NOBODY}`,
        `--regid=${NOBODY}`,
        '--clear-groups',
        'nbdinfo',
        uri,
      ]);
    const refused = await asNobody(closed!.unixUri('open'));
    assert.notEqual(refused.code, 0, 'mode 0600: an unprivileged user cannot connect');
    assert.match(refused.stderr, /permission denied/i);
    const allowed = await asNobody(open!.unixUri('open'));
    assert.equal(allowed.code, 0, `mode 0666: ${allowed.stderr}`);
  });
});
