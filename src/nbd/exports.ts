/**
 * The exports a server offers: one byte-range adapter per export, shared by every connection
 * to it (so page locks and flush cover all of them: that is what makes CAN_MULTI_CONN true).
 */
import { AccessList } from '../config/access.js';
import type { ExportAccessConfig } from '../config/index.js';
import { PagedDevice } from '../device/paged.js';
import type { Backend } from '../device/types.js';
import {
  NBD_FLAG_CAN_MULTI_CONN,
  NBD_FLAG_HAS_FLAGS,
  NBD_FLAG_READ_ONLY,
  NBD_FLAG_SEND_CACHE,
  NBD_FLAG_SEND_DF,
  NBD_FLAG_SEND_FAST_ZERO,
  NBD_FLAG_SEND_FLUSH,
  NBD_FLAG_SEND_FUA,
  NBD_FLAG_SEND_TRIM,
  NBD_FLAG_SEND_WRITE_ZEROES,
} from './protocol.js';

export interface ExportEntry {
  /** Canonical name (what NBD_INFO_NAME reports). */
  name: string;
  description: string;
  device: PagedDevice;
  sizeBytes: bigint;
  /** Clients allowed to see and open it; null: every client of the listeners. */
  access: AccessList | null;
  /** Served over TLS only (selective TLS). */
  requireTls: boolean;
}

export class ExportTable {
  readonly #entries = new Map<string, ExportEntry>();

  /**
   * Builds one adapter per export of `backend`; exports added to it later are not seen.
   * `access` holds the allow lists and TLS demands by export name (absent: open to all).
   */
  constructor(backend: Backend, access: Readonly<Record<string, ExportAccessConfig>> = {}) {
    for (const name of backend.exportNames()) {
      const device = backend.device(name);
      if (device === undefined) continue;
      const paged = new PagedDevice(device);
      const rules = access[name];
      this.#entries.set(name, {
        name,
        description: backend.description(name),
        device: paged,
        sizeBytes: BigInt(paged.sizeBytes),
        access: rules?.allow ? new AccessList(rules.allow) : null,
        requireTls: rules?.requireTls ?? false,
      });
    }
  }

  get size(): number {
    return this.#entries.size;
  }

  /**
   * The export a client names. The empty name means the default export (the first one
   * configured), as nbd-client and qemu send it when the user gives no name.
   */
  lookup(name: string): ExportEntry | undefined {
    const entry = this.#entries.get(name);
    if (entry !== undefined || name !== '') return entry;
    return this.#entries.values().next().value;
  }

  list(): ExportEntry[] {
    return [...this.#entries.values()];
  }
}

/**
 * Transmission flags of an export for one connection. SEND_DF only with structured replies
 * (DF means "one data chunk", which needs them). CAN_MULTI_CONN is true because every
 * connection shares the export's one device and its flush covers writes from all of them.
 */
export function transmissionFlags(entry: ExportEntry, structuredReplies: boolean): number {
  let flags =
    NBD_FLAG_HAS_FLAGS |
    NBD_FLAG_SEND_FLUSH |
    NBD_FLAG_SEND_FUA |
    NBD_FLAG_SEND_CACHE |
    NBD_FLAG_CAN_MULTI_CONN;
  if (entry.device.writable) {
    flags |= NBD_FLAG_SEND_TRIM | NBD_FLAG_SEND_WRITE_ZEROES | NBD_FLAG_SEND_FAST_ZERO;
  } else {
    flags |= NBD_FLAG_READ_ONLY;
  }
  if (structuredReplies) flags |= NBD_FLAG_SEND_DF;
  return flags;
}
