/**
 * Who may use the HTTP listener. The listener is loopback-only unless the operator sets a
 * bearer token; with a token, every data route (the API and /metrics) wants it, compared in
 * constant time. Probes (/healthz, /readyz) and the page's static files hold no store data
 * and stay open, so a load balancer can probe and the page can ask the user for the token.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { isIP } from 'node:net';

/**
 * Shortest token accepted. A bearer token is the only thing between the network and the
 * write routes; 16 characters of random text is far beyond guessing over HTTP.
 */
export const TOKEN_LENGTH_MIN = 16;

/** True when `host` names a loopback address (127.0.0.0/8, ::1, or `localhost`). */
export function isLoopbackHost(host: string): boolean {
  const bare = host.startsWith('[') && host.endsWith(']') ? host.slice(1, -1) : host;
  if (bare === 'localhost') return true;
  if (isIP(bare) === 4) return bare.startsWith('127.');
  if (isIP(bare) === 6) {
    const lower = bare.toLowerCase();
    if (lower === '::1' || lower === '0:0:0:0:0:0:0:1') return true;
    // IPv4-mapped loopback, as a dual-stack socket reports it.
    return lower.startsWith('::ffff:127.');
  }
  return false;
}

/**
 * Decides whether a listener may start on `host` with `token`. Returns null when it may, or
 * the reason it may not (a sentence for the operator, with the fix).
 */
export function bindRefusal(host: string, token: string | undefined): string | null {
  if (token !== undefined && token.length < TOKEN_LENGTH_MIN) {
    return (
      `the HTTP token is shorter than ${TOKEN_LENGTH_MIN} characters; ` +
      'generate one with `openssl rand -hex 24`'
    );
  }
  if (token === undefined && !isLoopbackHost(host)) {
    return (
      `refusing to serve HTTP on ${host} without a token: set http.token in the config ` +
      'or DIFFSWAP_HTTP_TOKEN, or bind to 127.0.0.1'
    );
  }
  return null;
}

/** Compares a presented token with the expected one in time independent of their contents. */
export class TokenCheck {
  readonly #expectedDigest: Buffer;

  constructor(token: string) {
    this.#expectedDigest = digest(token);
  }

  /**
   * True when `authorization` (an HTTP Authorization header value, or undefined) carries
   * `Bearer <token>`. Both sides are hashed first so lengths never leak through timing.
   */
  matches(authorization: string | undefined): boolean {
    if (authorization === undefined) return false;
    const match = /^Bearer[ ]+(\S+)\s*$/i.exec(authorization);
    const presented = match?.[1];
    if (presented === undefined) return false;
    return timingSafeEqual(digest(presented), this.#expectedDigest);
  }
}

function digest(text: string): Buffer {
  return createHash('sha256').update(text, 'utf8').digest();
}
