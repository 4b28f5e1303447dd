/**
 * Client access rules of an export (`exports[].allow`): which clients may see and open it.
 * Parsed here so the config can reject a bad rule at start-up with a hint, and the NBD
 * layer can match connections against the same parse.
 *
 * A rule is one of: an IPv4 or IPv6 address (`192.0.2.7`, `::1`), a subnet in CIDR form
 * (`10.0.0.0/8`, `fd00::/8`), or `unix` (clients of the Unix socket listener). An IPv4
 * client reaching a dual-stack listener as `::ffff:a.b.c.d` is matched as IPv4.
 */
import { BlockList, isIP } from 'node:net';

export type AccessRule =
  | { kind: 'unix' }
  | { kind: 'subnet'; address: string; prefix: number; family: 'ipv4' | 'ipv6' };

/** Where a connection comes from, as the NBD layer sees it. */
export type ClientOrigin = { kind: 'unix' } | { kind: 'tcp'; address: string };

/** Parses one rule; a string explaining what to write instead when it is malformed. */
export function parseAccessRule(text: string): AccessRule | string {
  const rule = text.trim();
  if (rule === 'unix') return { kind: 'unix' };
  const slash = rule.indexOf('/');
  const address = slash < 0 ? rule : rule.slice(0, slash);
  const version = isIP(address);
  if (version === 0) {
    return `'${text}' is not an address, a subnet or 'unix'; write e.g. 10.0.0.0/8, ::1 or unix`;
  }
  const bits = version === 4 ? 32 : 128;
  const prefixText = slash < 0 ? String(bits) : rule.slice(slash + 1);
  const prefix = /^\d{1,3}$/.test(prefixText) ? Number(prefixText) : Number.NaN;
  if (!(prefix >= 0 && prefix <= bits)) {
    return `'${text}': the prefix length must be 0 to ${bits}`;
  }
  return { kind: 'subnet', address, prefix, family: version === 4 ? 'ipv4' : 'ipv6' };
}

/** A compiled allow list: the rules of one export, matched in one lookup. */
export class AccessList {
  readonly #subnets = new BlockList();
  readonly #unix: boolean;
  readonly rules: readonly string[];

  /** `rules` must parse (the config validated them); throws on one that does not. */
  constructor(rules: readonly string[]) {
    this.rules = rules;
    let unix = false;
    for (const text of rules) {
      const rule = parseAccessRule(text);
      if (typeof rule === 'string') throw new Error(rule);
      if (rule.kind === 'unix') unix = true;
      else this.#subnets.addSubnet(rule.address, rule.prefix, rule.family);
    }
    this.#unix = unix;
  }

  allows(origin: ClientOrigin): boolean {
    if (origin.kind === 'unix') return this.#unix;
    const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(origin.address);
    const address = mapped?.[1] ?? origin.address;
    const version = isIP(address);
    if (version === 0) return false;
    return this.#subnets.check(address, version === 4 ? 'ipv4' : 'ipv6');
  }
}
