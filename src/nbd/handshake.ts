/**
 * Option haggling (fixed newstyle), independent of the socket: the negotiator receives parsed
 * frames, sends replies through a callback and tells the connection what happens next. Every
 * refusal is reported through `reject(reason)` so the connection can count it.
 *
 * TLS (the spec's three modes). off: STARTTLS gets ERR_POLICY. optional: STARTTLS gets ACK
 * and the connection swaps a TLS socket under the reader (`onTlsEstablished()` then forgets
 * everything negotiated, as the spec requires); exports marked requireTls answer INFO/GO with
 * ERR_TLS_REQD until then (selective TLS). required: before TLS, every option but STARTTLS
 * and ABORT gets ERR_TLS_REQD, and EXPORT_NAME (which cannot carry an error) closes.
 *
 * Access. An export whose allow list does not take the client's origin is left out of LIST
 * and refused with ERR_POLICY by INFO, GO and the meta-context options (EXPORT_NAME closes),
 * so a client can neither read nor write it, nor learn its size.
 */
import type { ClientOrigin } from '../config/access.js';
import { type ExportEntry, type ExportTable, transmissionFlags } from './exports.js';
import { BLOCK_SIZE_MINIMUM, BLOCK_SIZE_PREFERRED } from './limits.js';
import {
  encodeExportNameReply,
  encodeInfoBlockSize,
  encodeInfoExport,
  encodeInfoString,
  encodeOptionError,
  encodeOptionReply,
  encodeRepMetaContext,
  encodeRepServer,
  isParseError,
  type OptionHeader,
  parseInfoRequest,
  parseMetaContextRequest,
  parseName,
} from './messages.js';
import {
  BASE_ALLOCATION,
  BASE_NAMESPACE,
  NBD_FLAG_C_FIXED_NEWSTYLE,
  NBD_FLAG_C_NO_ZEROES,
  NBD_INFO_DESCRIPTION,
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
} from './protocol.js';

/** Context id of base:allocation in SET_META_CONTEXT replies and BLOCK_STATUS chunks. */
export const BASE_ALLOCATION_CONTEXT_ID = 1;
/** LIST_META_CONTEXT replies carry id 0: the ids only mean something after SET. */
const LISTED_CONTEXT_ID = 0;

/** What the negotiated connection carries into transmission. */
export interface Negotiated {
  entry: ExportEntry;
  structuredReplies: boolean;
  /** base:allocation was selected for this export. */
  blockStatus: boolean;
  transmissionFlags: number;
}

export type OptionOutcome =
  | { kind: 'continue' }
  /** Close the connection: ABORT (after its ACK), or a fault that leaves no other way. */
  | { kind: 'close'; reason: string | null; message: string }
  /** STARTTLS was accepted (ACK sent): the next bytes are the TLS handshake. */
  | { kind: 'starttls' }
  | { kind: 'transmission'; negotiated: Negotiated };

export interface NegotiatorOptions {
  exports: ExportTable;
  /** Sends bytes to the client, in order. */
  send: (buf: Buffer) => void;
  /** Counts a refused client input by a stable reason. */
  reject: (reason: string) => void;
  /** Largest payload, advertised in NBD_INFO_BLOCK_SIZE. */
  payloadBytesMax: number;
  /** Options allowed before transmission. */
  optionCountMax: number;
  /** True once the server is shutting down: options get ERR_SHUTDOWN. */
  shuttingDown: () => boolean;
  /** The server's TLS mode (a server without certificates is 'off'). */
  tlsMode: 'off' | 'optional' | 'required';
  /** Where the client connects from, for the exports' allow lists. */
  origin: ClientOrigin;
}

const CONTINUE: OptionOutcome = { kind: 'continue' };

export class Negotiator {
  readonly #o: NegotiatorOptions;
  #noZeroes = false;
  #structuredReplies = false;
  /** Canonical name of the export base:allocation was selected for; null if none. */
  #metaContextExport: string | null = null;
  #optionCount = 0;
  #tls = false;

  constructor(options: NegotiatorOptions) {
    this.#o = options;
  }

  /**
   * Client flags: only the two bits we offered may be set, else the spec says disconnect.
   * A client without C_FIXED_NEWSTYLE (older nbd-client, libnbd with handshake flags 0) is
   * served as if it had set it, which the spec allows: such a client sends EXPORT_NAME
   * alone, and gets the 124 zero bytes after it unless it asked for NO_ZEROES.
   */
  onClientFlags(flags: number): OptionOutcome {
    const known = NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES;
    if ((flags & ~known) !== 0) {
      return this.#close('bad_client_flags', `unsupported client flags 0x${flags.toString(16)}`);
    }
    this.#noZeroes = (flags & NBD_FLAG_C_NO_ZEROES) !== 0;
    return CONTINUE;
  }

  /** The TLS handshake completed: forgets every negotiated state, as the spec requires. */
  onTlsEstablished(): void {
    this.#tls = true;
    this.#structuredReplies = false;
    this.#metaContextExport = null;
  }

  get tls(): boolean {
    return this.#tls;
  }

  /** Handles one option request whose data has been read completely. */
  onOption(header: OptionHeader, data: Buffer): OptionOutcome {
    this.#optionCount++;
    if (this.#optionCount > this.#o.optionCountMax) {
      return this.#close('too_many_options', `more than ${this.#o.optionCountMax} options`);
    }
    if (this.#o.shuttingDown()) return this.#shuttingDown(header.option);
    const option = header.option;
    if (this.#o.tlsMode === 'required' && !this.#tls) {
      if (option === NBD_OPT_EXPORT_NAME) {
        return this.#close('tls_required', 'EXPORT_NAME before TLS on a server that requires it');
      }
      if (option !== NBD_OPT_STARTTLS && option !== NBD_OPT_ABORT) {
        return this.#error(option, NBD_REP_ERR_TLS_REQD, 'tls_required', 'TLS is required');
      }
    }
    switch (option) {
      case NBD_OPT_EXPORT_NAME:
        return this.#exportName(data);
      case NBD_OPT_ABORT:
        this.#reply(header.option, NBD_REP_ACK);
        return { kind: 'close', reason: null, message: 'client aborted negotiation' };
      case NBD_OPT_LIST:
        return this.#list(data);
      case NBD_OPT_STARTTLS:
        return this.#startTls(data);
      case NBD_OPT_INFO:
      case NBD_OPT_GO:
        return this.#infoOrGo(header.option, data);
      case NBD_OPT_STRUCTURED_REPLY:
        return this.#structuredReply(data);
      case NBD_OPT_LIST_META_CONTEXT:
      case NBD_OPT_SET_META_CONTEXT:
        return this.#metaContext(header.option, data);
      default:
        return this.#error(
          header.option,
          NBD_REP_ERR_UNSUP,
          'unknown_option',
          `option ${header.option} is not supported`,
        );
    }
  }

  #shuttingDown(option: number): OptionOutcome {
    if (option === NBD_OPT_EXPORT_NAME) {
      return this.#close('shutting_down', 'server is shutting down');
    }
    if (option === NBD_OPT_ABORT) {
      this.#reply(option, NBD_REP_ACK);
      return { kind: 'close', reason: null, message: 'client aborted negotiation' };
    }
    return this.#error(option, NBD_REP_ERR_SHUTDOWN, 'shutting_down', 'server is shutting down');
  }

  /** Old-style export choice: no way to report errors, so failures close the connection. */
  #exportName(data: Buffer): OptionOutcome {
    const name = parseName(data, 0, data.length);
    if (isParseError(name)) return this.#close(name.reason, name.message);
    const entry = this.#o.exports.lookup(name);
    if (entry === undefined) return this.#close('unknown_export', `no export named '${name}'`);
    const refusal = this.#refusal(entry);
    if (refusal) return this.#close(refusal.reason, refusal.message);
    const negotiated = this.#negotiated(entry);
    this.#o.send(
      encodeExportNameReply(entry.sizeBytes, negotiated.transmissionFlags, this.#noZeroes),
    );
    return { kind: 'transmission', negotiated };
  }

  #list(data: Buffer): OptionOutcome {
    const withData = this.#refuseData(NBD_OPT_LIST, data, 'LIST');
    if (withData) return withData;
    for (const entry of this.#o.exports.list()) {
      if (!this.#admits(entry)) continue;
      this.#reply(NBD_OPT_LIST, NBD_REP_SERVER, encodeRepServer(entry.name, entry.description));
    }
    this.#reply(NBD_OPT_LIST, NBD_REP_ACK);
    return CONTINUE;
  }

  #infoOrGo(option: number, data: Buffer): OptionOutcome {
    const request = parseInfoRequest(data);
    if (isParseError(request)) {
      return this.#error(option, NBD_REP_ERR_INVALID, request.reason, request.message);
    }
    const entry = this.#o.exports.lookup(request.name);
    if (entry === undefined) {
      return this.#error(
        option,
        NBD_REP_ERR_UNKNOWN,
        'unknown_export',
        `no export named '${request.name}'`,
      );
    }
    const refusal = this.#refusal(entry);
    if (refusal) return this.#error(option, refusal.type, refusal.reason, refusal.message);
    const flags = transmissionFlags(entry, this.#structuredReplies);
    this.#reply(option, NBD_REP_INFO, encodeInfoExport(entry.sizeBytes, flags));
    const asked = new Set(request.infos);
    if (asked.has(NBD_INFO_NAME)) {
      this.#reply(option, NBD_REP_INFO, encodeInfoString(NBD_INFO_NAME, entry.name));
    }
    if (asked.has(NBD_INFO_DESCRIPTION)) {
      this.#reply(option, NBD_REP_INFO, encodeInfoString(NBD_INFO_DESCRIPTION, entry.description));
    }
    // Sent even when not asked for (as qemu does): minimum 1 constrains nothing.
    const blockSize = encodeInfoBlockSize(
      BLOCK_SIZE_MINIMUM,
      BLOCK_SIZE_PREFERRED,
      this.#o.payloadBytesMax,
    );
    this.#reply(option, NBD_REP_INFO, blockSize);
    this.#reply(option, NBD_REP_ACK);
    if (option === NBD_OPT_INFO) return CONTINUE;
    return { kind: 'transmission', negotiated: this.#negotiated(entry) };
  }

  #structuredReply(data: Buffer): OptionOutcome {
    const option = NBD_OPT_STRUCTURED_REPLY;
    const withData = this.#refuseData(option, data, 'STRUCTURED_REPLY');
    if (withData) return withData;
    if (this.#structuredReplies) {
      return this.#error(
        option,
        NBD_REP_ERR_INVALID,
        'repeated_option',
        'structured replies already negotiated',
      );
    }
    this.#structuredReplies = true;
    this.#reply(option, NBD_REP_ACK);
    return CONTINUE;
  }

  #metaContext(option: number, data: Buffer): OptionOutcome {
    const isSet = option === NBD_OPT_SET_META_CONTEXT;
    // SET replaces the selection even when it fails.
    if (isSet) this.#metaContextExport = null;
    if (!this.#structuredReplies) {
      return this.#error(
        option,
        NBD_REP_ERR_INVALID,
        'meta_context_without_sr',
        'meta contexts need structured replies first',
      );
    }
    const request = parseMetaContextRequest(data);
    if (isParseError(request)) {
      return this.#error(option, NBD_REP_ERR_INVALID, request.reason, request.message);
    }
    const entry = this.#o.exports.lookup(request.name);
    if (entry === undefined) {
      return this.#error(
        option,
        NBD_REP_ERR_UNKNOWN,
        'unknown_export',
        `no export named '${request.name}'`,
      );
    }
    const refusal = this.#refusal(entry);
    if (refusal) return this.#error(option, refusal.type, refusal.reason, refusal.message);
    if (matchesBaseAllocation(request.queries, isSet)) {
      const id = isSet ? BASE_ALLOCATION_CONTEXT_ID : LISTED_CONTEXT_ID;
      this.#reply(option, NBD_REP_META_CONTEXT, encodeRepMetaContext(id, BASE_ALLOCATION));
      if (isSet) this.#metaContextExport = entry.name;
    }
    this.#reply(option, NBD_REP_ACK);
    return CONTINUE;
  }

  #startTls(data: Buffer): OptionOutcome {
    const option = NBD_OPT_STARTTLS;
    if (this.#o.tlsMode === 'off') {
      return this.#error(
        option,
        NBD_REP_ERR_POLICY,
        'tls_not_configured',
        'TLS is not configured on this server',
      );
    }
    const withData = this.#refuseData(option, data, 'STARTTLS');
    if (withData) return withData;
    if (this.#tls) {
      return this.#error(option, NBD_REP_ERR_INVALID, 'repeated_option', 'TLS is already on');
    }
    this.#reply(option, NBD_REP_ACK);
    return { kind: 'starttls' };
  }

  /** Whether the client's origin is on the export's allow list. */
  #admits(entry: ExportEntry): boolean {
    return entry.access === null || entry.access.allows(this.#o.origin);
  }

  /** Why this client may not open `entry` now, or null when it may. */
  #refusal(entry: ExportEntry): { type: number; reason: string; message: string } | null {
    if (!this.#admits(entry)) {
      return {
        type: NBD_REP_ERR_POLICY,
        reason: 'export_denied',
        message: `export '${entry.name}' is not open to this client`,
      };
    }
    if (entry.requireTls && !this.#tls) {
      return {
        type: NBD_REP_ERR_TLS_REQD,
        reason: 'tls_required',
        message: `export '${entry.name}' is served over TLS only`,
      };
    }
    return null;
  }

  #negotiated(entry: ExportEntry): Negotiated {
    return {
      entry,
      structuredReplies: this.#structuredReplies,
      // A selection made for another export is void once this one is chosen.
      blockStatus: this.#structuredReplies && this.#metaContextExport === entry.name,
      transmissionFlags: transmissionFlags(entry, this.#structuredReplies),
    };
  }

  #reply(option: number, type: number, data?: Buffer) {
    this.#o.send(encodeOptionReply(option, type, data));
  }

  /** ERR_INVALID for an option that takes no data but came with some; null when it has none. */
  #refuseData(option: number, data: Buffer, name: string): OptionOutcome | null {
    if (data.length === 0) return null;
    return this.#error(option, NBD_REP_ERR_INVALID, 'option_bad_length', `${name} takes no data`);
  }

  #error(option: number, type: number, reason: string, message: string): OptionOutcome {
    this.#o.reject(reason);
    this.#o.send(encodeOptionError(option, type, message));
    return CONTINUE;
  }

  #close(reason: string, message: string): OptionOutcome {
    this.#o.reject(reason);
    return { kind: 'close', reason, message };
  }
}

/**
 * Whether the queries select base:allocation. For LIST, no query means every context and the
 * bare namespace is a wildcard; for SET only the full name selects it. Unknown names are
 * ignored, as the spec asks.
 */
export function matchesBaseAllocation(queries: readonly string[], isSet: boolean): boolean {
  if (!isSet && queries.length === 0) return true;
  return queries.some((q) => q === BASE_ALLOCATION || (!isSet && q === BASE_NAMESPACE));
}
