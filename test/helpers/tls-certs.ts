/**
 * X.509 material for the TLS tests, made fresh by openssl in a temp dir: a CA, a server
 * certificate for 127.0.0.1, ::1 and localhost, a client certificate, and a second CA that
 * signed nothing of ours. Client directories are laid out as libnbd (`tls-certificates=`)
 * and qemu (`tls-creds-x509,dir=`) both expect: ca-cert.pem, client-cert.pem, client-key.pem.
 */
import { copyFile, mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { runToolOk } from './exec.js';
import { makeTempDir } from './files.js';

export interface TestCertificates {
  dir: string;
  serverCert: string;
  serverKey: string;
  caCert: string;
  /** CA and client certificate: a client that can do mutual TLS. */
  clientDir: string;
  /** CA only: verifies the server, has no certificate of its own. */
  caOnlyDir: string;
  /** A CA that did not sign the server's certificate: verification must fail. */
  strangerDir: string;
  remove(): Promise<void>;
}

const DAYS = '2';

async function openssl(args: string[]): Promise<void> {
  await runToolOk('openssl', args, { timeoutMs: 30_000 });
}

async function makeCa(dir: string, name: string): Promise<{ cert: string; key: string }> {
  const cert = join(dir, `${name}-cert.pem`);
  const key = join(dir, `${name}-key.pem`);
  await openssl(
    ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', key, '-out', cert].concat([
      '-days',
      DAYS,
      '-subj',
      `/CN=diffswap test ${name}`,
    ]),
  );
  return { cert, key };
}

async function signLeaf(
  dir: string,
  name: string,
  ca: { cert: string; key: string },
  extensions: string,
): Promise<{ cert: string; key: string }> {
  const key = join(dir, `${name}-key.pem`);
  const csr = join(dir, `${name}.csr`);
  const cert = join(dir, `${name}-cert.pem`);
  const ext = join(dir, `${name}.ext`);
  await writeFile(ext, extensions);
  await openssl(
    ['req', '-newkey', 'rsa:2048', '-nodes', '-keyout', key, '-out', csr].concat([
      '-subj',
      `/CN=${name}`,
    ]),
  );
  await openssl(
    ['x509', '-req', '-in', csr, '-CA', ca.cert, '-CAkey', ca.key].concat([
      '-CAcreateserial',
      '-out',
      cert,
      '-days',
      DAYS,
      '-extfile',
      ext,
    ]),
  );
  return { cert, key };
}

export async function makeTestCertificates(): Promise<TestCertificates> {
  const temp = await makeTempDir('diffswap-tls-');
  const dir = temp.path;
  const ca = await makeCa(dir, 'ca');
  const stranger = await makeCa(dir, 'stranger');
  const server = await signLeaf(
    dir,
    'server',
    ca,
    ['subjectAltName=IP:127.0.0.1,IP:::1,DNS:localhost', 'extendedKeyUsage=serverAuth', ''].join(
      '\n',
    ),
  );
  const client = await signLeaf(dir, 'client', ca, 'extendedKeyUsage=clientAuth\n');

  const clientDir = join(dir, 'client');
  const caOnlyDir = join(dir, 'ca-only');
  const strangerDir = join(dir, 'stranger');
  for (const d of [clientDir, caOnlyDir, strangerDir]) await mkdir(d);
  await copyFile(ca.cert, join(clientDir, 'ca-cert.pem'));
  await copyFile(client.cert, join(clientDir, 'client-cert.pem'));
  await copyFile(client.key, join(clientDir, 'client-key.pem'));
  await copyFile(ca.cert, join(caOnlyDir, 'ca-cert.pem'));
  await copyFile(stranger.cert, join(strangerDir, 'ca-cert.pem'));
  return {
    dir,
    serverCert: server.cert,
    serverKey: server.key,
    caCert: ca.cert,
    clientDir,
    caOnlyDir,
    strangerDir,
    remove: () => temp.remove(),
  };
}
