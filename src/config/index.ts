/**
 * The configuration: one closed schema, validated once at start-up, then frozen.
 *
 * Sources, later ones winning: built-in defaults, the YAML file (`--config`), command-line
 * flags. Every problem is collected and reported together, each with the path of the bad key
 * and what to write instead. Unknown keys are errors (a typo must not silently do nothing).
 */
import { accessSync, constants as fsConstants, readFileSync } from 'node:fs';
import { isIP } from 'node:net';
import { resolve } from 'node:path';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';
import { type ExportSpec, PAGE_SIZE, type TechniqueSwitches } from '../device/types.js';
import { parseAccessRule } from './access.js';
import { parseSize } from './size.js';

/** Where a listener binds: TCP or a Unix socket path. */
export type Endpoint = { host: string; port: number };

export interface HostSafetyConfig {
  mlock: boolean;
  ioFlusher: boolean;
  oomScoreAdj: number | null;
}

/** NBD over TLS (STARTTLS): off, offered (optional), or demanded before anything else. */
export interface TlsConfig {
  mode: 'off' | 'optional' | 'required';
  /** PEM files; cert and key are set whenever mode is not off. */
  certFile: string | null;
  keyFile: string | null;
  /** When set, clients must present a certificate signed by this CA (mutual TLS). */
  caFile: string | null;
}

/** Who may use an export, beyond the listeners: enforced in the NBD handshake. */
export interface ExportAccessConfig {
  /** Allowed clients (addresses, subnets, `unix`; see access.ts); null: everyone. */
  allow: string[] | null;
  /** Only over TLS (the spec's selective TLS); needs nbd.tls.mode optional or required. */
  requireTls: boolean;
}

export interface Config {
  /** Data directory (page store files); relative paths resolve against the working dir. */
  dataDir: string;
  backend: 'store' | 'memory';
  nbd: {
    listen: Endpoint[];
    socket: string | null;
    /** Permission bits of the Unix socket file (who may connect); null leaves the umask's. */
    socketMode: number | null;
    tls: TlsConfig;
    /** Busy-poll window after the server runs out of requests (src/nbd/busy-poll.ts). */
    busyPollUs: number;
  };
  http: { listen: Endpoint | null; token: string | null };
  exports: ExportSpec[];
  /** Access rules by export name (every export has an entry). */
  exportAccess: Record<string, ExportAccessConfig>;
  /** Store tuning, keys as the page store's StoreTuning; sizes already in bytes. */
  store: Record<string, number | string | boolean>;
  host: HostSafetyConfig;
  log: { level: 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent' };
  /** Milliseconds SIGTERM waits for in-flight requests before failing them. */
  shutdownGraceMs: number;
}

/** Defaults: everything on loopback, data under ./data, one sparse export named `swap`. */
export const DEFAULT_NBD_PORT = 10809;
export const DEFAULT_HTTP_PORT = 8080;
export const DEFAULT_EXPORT: ExportSpec = { name: 'swap', sizeBytes: 8 * 1024 ** 3 };

/** Longest export name the NBD spec allows a server to require clients to handle. */
const EXPORT_NAME_BYTES_MAX = 4096;

export class ConfigError extends Error {
  readonly problems: string[];

  constructor(problems: string[]) {
    super(`invalid configuration:\n${problems.map((p) => `  - ${p}`).join('\n')}`);
    this.name = 'ConfigError';
    this.problems = problems;
  }
}

const size = z.union([z.string(), z.number()]);
const techniques = z
  .object({ zero: z.boolean(), dedup: z.boolean(), delta: z.boolean(), compress: z.boolean() })
  .partial()
  .strict();

const exportSchema = z
  .object({
    name: z.string(),
    size,
    group: z.string().optional(),
    description: z.string().optional(),
    readOnly: z.boolean().optional(),
    techniques: techniques.optional(),
    allow: z.array(z.string()).optional(),
    requireTls: z.boolean().optional(),
  })
  .strict();

const tlsSchema = z
  .object({
    mode: z.enum(['off', 'optional', 'required']),
    cert: z.string().nullable(),
    key: z.string().nullable(),
    ca: z.string().nullable(),
  })
  .partial()
  .strict();

/** The file's shape. Everything optional: defaults fill the gaps. */
/** Busy-poll window: 50 us takes most of the gain; past 1 ms it is only burnt CPU. */
const BUSY_POLL_US_DEFAULT = 50;
const BUSY_POLL_US_MAX = 1000;

const fileSchema = z
  .object({
    data: z.string(),
    backend: z.enum(['store', 'memory']),
    nbd: z
      .object({
        listen: z.union([z.string(), z.array(z.string())]),
        socket: z.string().nullable(),
        socketMode: z.union([z.string(), z.number()]).nullable(),
        tls: tlsSchema,
        busyPollUs: z.number().int().min(0).max(BUSY_POLL_US_MAX),
      })
      .partial()
      .strict(),
    http: z
      .object({ listen: z.string().nullable(), token: z.string().nullable() })
      .partial()
      .strict(),
    exports: z.array(exportSchema),
    store: z.record(z.string(), z.union([z.number(), z.string(), z.boolean()])),
    host: z
      .object({
        mlock: z.boolean(),
        ioFlusher: z.boolean(),
        oomScoreAdj: z.number().int().min(-1000).max(1000).nullable(),
      })
      .partial()
      .strict(),
    log: z
      .object({ level: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']) })
      .partial()
      .strict(),
    shutdownGrace: z.union([z.string(), z.number()]),
  })
  .partial()
  .strict();

export type ConfigFile = z.infer<typeof fileSchema>;

/** Command-line overrides; each replaces the file's value. */
/**
 * The page store's own check of the `store:` section (keys, types, values) and of the exports'
 * sizes, given by the caller: this module knows nothing of the store's limits. Its problems
 * join the others.
 */
export type StoreCheck = (
  store: Readonly<Record<string, number | string | boolean>>,
  exports: readonly ExportSpec[],
) => string[];

export interface ConfigOverrides {
  data?: string;
  backend?: 'store' | 'memory';
  listen?: string[];
  socket?: string;
  http?: string;
  exports?: string[];
  logLevel?: Config['log']['level'];
}

const KEY_HINTS: Record<string, string> = {
  data: 'a directory path, e.g. data: /var/lib/diffswap',
  backend: 'store (the page store) or memory (raw, nothing persisted)',
  'nbd.listen': 'HOST:PORT or a list of them, e.g. listen: ["127.0.0.1:10809", "[::1]:10809"]',
  'http.listen': 'HOST:PORT, e.g. 127.0.0.1:8080, or null to turn the dashboard off',
  exports: 'a list of { name, size } entries, e.g. - { name: swap, size: 8GiB }',
  'host.oomScoreAdj': 'a whole number from -1000 to 1000, or null to leave it',
  'nbd.busyPollUs': `a whole number of microseconds from 0 (off) to ${BUSY_POLL_US_MAX}`,
  'nbd.tls.mode': 'off, optional (clients may use STARTTLS) or required',
  'exports.allow': 'a list of addresses, subnets or unix, e.g. allow: [127.0.0.1, unix]',
};

/** Parses `HOST:PORT`, `[v6]:PORT` or `:PORT`; null when malformed. */
export function parseEndpoint(text: string): Endpoint | null {
  const match = /^(?:\[([^\]]+)\]|([^:[\]]*)):(\d{1,5})$/.exec(text.trim());
  if (!match) return null;
  const host = match[1] ?? (match[2] || '127.0.0.1');
  const port = Number(match[3]);
  if (port > 65535) return null;
  if (match[1] !== undefined && isIP(host) !== 6) return null;
  return { host, port };
}

/** `NAME:SIZE` from the command line, as an export entry of the file's shape. */
function parseExportFlag(text: string, problems: string[]): z.infer<typeof exportSchema> | null {
  const at = text.lastIndexOf(':');
  if (at <= 0) {
    problems.push(`--export ${text}: write NAME:SIZE, e.g. --export swap:8GiB`);
    return null;
  }
  return { name: text.slice(0, at), size: text.slice(at + 1) };
}

function closestKey(key: string, known: string[]): string | null {
  let best: string | null = null;
  let bestDistance = 3;
  for (const candidate of known) {
    const d = editDistance(key.toLowerCase(), candidate.toLowerCase());
    if (d < bestDistance) {
      best = candidate;
      bestDistance = d;
    }
  }
  return best;
}

function editDistance(a: string, b: string): number {
  let previous = Array.from({ length: b.length + 1 }, (_, i) => i);
  for (let i = 1; i <= a.length; i++) {
    const current = [i];
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      current[j] = Math.min(
        (previous[j] ?? 0) + 1,
        (current[j - 1] ?? 0) + 1,
        (previous[j - 1] ?? 0) + cost,
      );
    }
    previous = current;
  }
  return previous[b.length] ?? 0;
}

function knownKeysAt(path: (string | number | symbol)[]): string[] {
  const top = Object.keys(fileSchema.shape);
  if (path.length === 0) return top;
  const section = String(path[0]);
  if (section === 'exports') return Object.keys(exportSchema.shape);
  if (section === 'nbd' && path[1] === 'tls') return Object.keys(tlsSchema.shape);
  const shape = (fileSchema.shape as Record<string, z.ZodType>)[section];
  const inner = shape instanceof z.ZodOptional ? shape.unwrap() : shape;
  if (inner instanceof z.ZodObject) return Object.keys(inner.shape);
  return [];
}

/** One line per zod issue: where, what is wrong, and what to write instead. */
function describeIssues(issues: z.core.$ZodIssue[], source: string): string[] {
  return issues.map((issue) => {
    const where = issue.path.length ? issue.path.join('.') : '(top level)';
    if (issue.code === 'unrecognized_keys') {
      const known = knownKeysAt(issue.path);
      return issue.keys
        .map((key) => {
          const near = closestKey(key, known);
          const hint = near ? `did you mean '${near}'?` : `known keys: ${known.join(', ')}`;
          return `${source}: unknown key '${[...issue.path, key].join('.')}': ${hint}`;
        })
        .join('\n  - ');
    }
    const generic = issue.path.filter((p) => typeof p === 'string').join('.');
    const hint = KEY_HINTS[generic] ? ` (write ${KEY_HINTS[generic]})` : '';
    return `${source}: ${where}: ${issue.message}${hint}`;
  });
}

function toExportSpec(
  raw: z.infer<typeof exportSchema>,
  where: string,
  problems: string[],
): ExportSpec | null {
  const sizeBytes = parseSize(raw.size);
  const before = problems.length;
  if (sizeBytes === null || sizeBytes === 0) {
    problems.push(`${where}.size: '${raw.size}' is not a size; write e.g. 512MiB or 8GiB`);
  } else if (sizeBytes % PAGE_SIZE !== 0) {
    problems.push(`${where}.size: ${raw.size} is not a multiple of 4 KiB; round it, e.g. 8GiB`);
  }
  if (raw.name.length === 0 || Buffer.byteLength(raw.name) > EXPORT_NAME_BYTES_MAX) {
    problems.push(`${where}.name: must be 1 to ${EXPORT_NAME_BYTES_MAX} bytes`);
  } else if (raw.name.includes('\0')) {
    problems.push(`${where}.name: must not contain NUL`);
  }
  if (problems.length > before || sizeBytes === null) return null;
  const spec: ExportSpec = { name: raw.name, sizeBytes };
  if (raw.group !== undefined) spec.group = raw.group;
  if (raw.description !== undefined) spec.description = raw.description;
  if (raw.readOnly !== undefined) spec.readOnly = raw.readOnly;
  if (raw.techniques !== undefined) {
    const switches: Partial<TechniqueSwitches> = {};
    for (const [key, value] of Object.entries(raw.techniques)) {
      if (value !== undefined) switches[key as keyof TechniqueSwitches] = value;
    }
    spec.techniques = switches;
  }
  return spec;
}

function endpoints(list: string[], where: string, problems: string[]): Endpoint[] {
  const out: Endpoint[] = [];
  for (const text of list) {
    const endpoint = parseEndpoint(text);
    if (endpoint) out.push(endpoint);
    else problems.push(`${where}: '${text}' is not HOST:PORT; write e.g. 127.0.0.1:10809`);
  }
  return out;
}

/**
 * Store tuning values as given: sizes may be human (`64MiB`) for keys ending in `Bytes`.
 * The page store validates the key set itself (it owns StoreTuning); see `validateStoreKeys`.
 */
function storeTuning(raw: Record<string, number | string | boolean>, problems: string[]) {
  const out: Record<string, number | string | boolean> = {};
  for (const [key, value] of Object.entries(raw)) {
    if (key.endsWith('Bytes') && typeof value === 'string') {
      const bytes = parseSize(value);
      if (bytes === null) problems.push(`store.${key}: '${value}' is not a size; write e.g. 64MiB`);
      else out[key] = bytes;
    } else {
      out[key] = value;
    }
  }
  return out;
}

/** Checks store keys against the store's defaults: known key, same type. */
export function validateStoreKeys(
  tuning: Record<string, unknown>,
  defaults: Record<string, unknown>,
): string[] {
  const problems: string[] = [];
  const known = Object.keys(defaults);
  for (const [key, value] of Object.entries(tuning)) {
    if (!(key in defaults)) {
      const near = closestKey(key, known);
      const hint = near ? `did you mean '${near}'?` : `known keys: ${known.join(', ')}`;
      problems.push(`unknown key 'store.${key}': ${hint}`);
    } else if (typeof value !== typeof defaults[key]) {
      problems.push(
        `store.${key}: expected a ${typeof defaults[key]}, got ${JSON.stringify(value)}`,
      );
    }
  }
  return problems;
}

/** Reads and parses a YAML config file; throws ConfigError with a clear reason. */
export function readConfigFile(path: string): ConfigFile {
  const { file, problems } = readConfigFileLenient(path);
  if (problems.length > 0) throw new ConfigError(problems);
  return file;
}

/** Rounds of dropping bad keys and checking again; each round drops every key it reported. */
const SCHEMA_ROUNDS_MAX = 8;

/**
 * Reads and checks a config file as far as it goes: every key the schema refuses (unknown,
 * or of the wrong type) is reported and dropped, and what is left is returned, so the checks
 * of buildConfig can list their problems in the same go. Throws ConfigError only when the
 * file cannot be read or is not YAML.
 */
export function readConfigFileLenient(path: string): { file: ConfigFile; problems: string[] } {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (error) {
    throw new ConfigError([`${path}: cannot read: ${(error as Error).message}`]);
  }
  let data: unknown;
  try {
    data = parseYaml(text) ?? {};
  } catch (error) {
    throw new ConfigError([`${path}: not valid YAML: ${(error as Error).message}`]);
  }
  const problems: string[] = [];
  const reported: string[] = [];
  for (let round = 0; round < SCHEMA_ROUNDS_MAX; round++) {
    const parsed = fileSchema.safeParse(data);
    if (parsed.success) return { file: parsed.data, problems };
    // A key dropped in an earlier round may now be reported missing: that is no news.
    const fresh = parsed.error.issues.filter(
      (issue) => !reported.some((done) => issue.path.join('.').startsWith(done)),
    );
    problems.push(...describeIssues(fresh, path));
    for (const issue of parsed.error.issues) {
      reported.push(issue.path.join('.'));
      data = dropIssue(data, issue);
    }
  }
  return { file: {}, problems };
}

/** `data` without the value an issue is about (an unknown key, a value of the wrong type). */
function dropIssue(data: unknown, issue: z.core.$ZodIssue): unknown {
  const path = issue.path.map((p) => (typeof p === 'symbol' ? String(p) : p));
  const keys = issue.code === 'unrecognized_keys' ? issue.keys : null;
  if (path.length === 0 && keys === null) return {};
  let parent: unknown = data;
  const last = keys === null ? path.length - 1 : path.length;
  for (let i = 0; i < last; i++) {
    if (typeof parent !== 'object' || parent === null) return data;
    parent = (parent as Record<string | number, unknown>)[path[i] as string | number];
  }
  if (typeof parent !== 'object' || parent === null) return data;
  const record = parent as Record<string | number, unknown>;
  if (keys !== null) for (const key of keys) delete record[key];
  else delete record[path[last] as string | number];
  return data;
}

/**
 * The configuration from an optional file and flag overrides: the file's schema problems
 * and buildConfig's checks in one ConfigError listing all of them.
 */
export function loadConfig(
  path: string | undefined,
  overrides: ConfigOverrides = {},
  env: NodeJS.ProcessEnv = process.env,
  storeProblems: StoreCheck = () => [],
): Readonly<Config> {
  const { file, problems } = path ? readConfigFileLenient(path) : { file: {}, problems: [] };
  let config: Readonly<Config>;
  try {
    config = buildConfig(file, overrides, env, storeProblems);
  } catch (error) {
    if (error instanceof ConfigError) throw new ConfigError([...problems, ...error.problems]);
    throw error;
  }
  if (problems.length > 0) throw new ConfigError(problems);
  return config;
}

/**
 * Builds the frozen configuration from an optional file and flag overrides. Throws
 * ConfigError listing every problem found.
 */
export function buildConfig(
  file: ConfigFile,
  overrides: ConfigOverrides = {},
  env: NodeJS.ProcessEnv = process.env,
  storeProblems: StoreCheck = () => [],
): Readonly<Config> {
  const problems: string[] = [];
  const listenText = overrides.listen ?? file.nbd?.listen ?? `127.0.0.1:${DEFAULT_NBD_PORT}`;
  const listen = endpoints(
    Array.isArray(listenText) ? listenText : [listenText],
    'nbd.listen',
    problems,
  );
  const httpText =
    overrides.http ??
    (file.http?.listen === undefined ? `127.0.0.1:${DEFAULT_HTTP_PORT}` : file.http.listen);
  const httpListen =
    httpText === null || httpText === 'off' ? null : endpoints([httpText], 'http.listen', problems);

  const rawExports = overrides.exports
    ? overrides.exports.map((e) => parseExportFlag(e, problems)).filter((e) => e !== null)
    : (file.exports ?? []);
  const exports: ExportSpec[] = [];
  rawExports.forEach((raw, i) => {
    const spec = toExportSpec(raw, `exports[${i}]`, problems);
    if (spec) exports.push(spec);
  });
  if (rawExports.length === 0) exports.push({ ...DEFAULT_EXPORT });
  const names = new Set<string>();
  for (const raw of rawExports) {
    if (names.has(raw.name)) problems.push(`exports: '${raw.name}' is listed twice`);
    names.add(raw.name);
  }

  const grace = parseDuration(file.shutdownGrace ?? '5s');
  if (grace === null) problems.push(`shutdownGrace: write a duration like 5s or 1500ms`);

  const socket = overrides.socket ?? file.nbd?.socket ?? null;
  const socketMode = parseMode(file.nbd?.socketMode ?? null, problems);
  const tls = tlsConfig(file.nbd?.tls ?? {}, problems);
  const exportAccess = accessConfig(rawExports, tls, problems);
  if (rawExports.length === 0) exportAccess[DEFAULT_EXPORT.name] = OPEN_ACCESS;
  if (listen.length === 0 && socket === null && problems.length === 0) {
    problems.push('nbd: no TCP listener and no socket; set nbd.listen or nbd.socket');
  }
  const store = storeTuning(file.store ?? {}, problems);
  const backend = overrides.backend ?? file.backend ?? 'store';
  if (backend === 'store') problems.push(...storeProblems(store, exports));
  if (problems.length > 0) throw new ConfigError(problems);

  const config: Config = {
    dataDir: resolve(overrides.data ?? file.data ?? 'data'),
    backend,
    nbd: {
      listen,
      socket,
      socketMode,
      tls,
      busyPollUs: file.nbd?.busyPollUs ?? BUSY_POLL_US_DEFAULT,
    },
    http: {
      listen: httpListen?.[0] ?? null,
      token: env.DIFFSWAP_HTTP_TOKEN ?? file.http?.token ?? null,
    },
    exports,
    exportAccess,
    store,
    host: {
      mlock: file.host?.mlock ?? false,
      ioFlusher: file.host?.ioFlusher ?? false,
      oomScoreAdj: file.host?.oomScoreAdj ?? null,
    },
    log: { level: overrides.logLevel ?? file.log?.level ?? 'info' },
    shutdownGraceMs: grace ?? 5000,
  };
  return deepFreeze(config);
}

const OPEN_ACCESS: ExportAccessConfig = { allow: null, requireTls: false };

/** `0660`-style octal text, or a number; null when not set. */
function parseMode(raw: string | number | null, problems: string[]): number | null {
  if (raw === null) return null;
  const mode = typeof raw === 'number' ? raw : /^0?[0-7]{3}$/.test(raw) ? parseInt(raw, 8) : NaN;
  if (!(Number.isInteger(mode) && mode >= 0 && mode <= 0o777)) {
    problems.push(`nbd.socketMode: '${raw}' is not a file mode; write octal text, e.g. "0660"`);
    return null;
  }
  return mode;
}

function tlsConfig(raw: z.infer<typeof tlsSchema>, problems: string[]): TlsConfig {
  const mode = raw.mode ?? 'off';
  const file = (key: 'cert' | 'key' | 'ca'): string | null => {
    const path = raw[key] ?? null;
    if (path === null) return null;
    try {
      accessSync(path, fsConstants.R_OK);
    } catch (error) {
      problems.push(`nbd.tls.${key}: cannot read ${path}: ${(error as Error).message}`);
    }
    return resolve(path);
  };
  const config = { mode, certFile: file('cert'), keyFile: file('key'), caFile: file('ca') };
  if (mode !== 'off' && (config.certFile === null || config.keyFile === null)) {
    problems.push(
      `nbd.tls: mode ${mode} needs cert and key (PEM files), ` +
        'e.g. cert: /etc/diffswap/server-cert.pem',
    );
  }
  return config;
}

function accessConfig(
  rawExports: z.infer<typeof exportSchema>[],
  tls: TlsConfig,
  problems: string[],
): Record<string, ExportAccessConfig> {
  const out: Record<string, ExportAccessConfig> = {};
  rawExports.forEach((raw, i) => {
    for (const rule of raw.allow ?? []) {
      const parsed = parseAccessRule(rule);
      if (typeof parsed === 'string') problems.push(`exports[${i}].allow: ${parsed}`);
    }
    if (raw.allow !== undefined && raw.allow.length === 0) {
      problems.push(`exports[${i}].allow: an empty list lets nobody in; remove the key for all`);
    }
    if (raw.requireTls && tls.mode === 'off') {
      problems.push(`exports[${i}].requireTls: needs nbd.tls.mode optional or required`);
    }
    out[raw.name] = { allow: raw.allow ?? null, requireTls: raw.requireTls ?? false };
  });
  return out;
}

/** `5s`, `1500ms`, `2m`, or a number of milliseconds. */
export function parseDuration(text: string | number): number | null {
  if (typeof text === 'number') return Number.isFinite(text) && text >= 0 ? text : null;
  const match = /^\s*(\d+(?:\.\d+)?)\s*(ms|s|m)?\s*$/.exec(text);
  if (!match) return null;
  const scale = match[2] === 's' ? 1000 : match[2] === 'm' ? 60_000 : 1;
  return Math.round(Number(match[1]) * scale);
}

/** A copy of the config safe to show (HTTP info, logs): secrets replaced. */
export function redactConfig(config: Readonly<Config>): unknown {
  return { ...config, http: { ...config.http, token: config.http.token ? '[set]' : null } };
}

function deepFreeze<T>(value: T): T {
  if (value && typeof value === 'object') {
    for (const inner of Object.values(value)) deepFreeze(inner);
    Object.freeze(value);
  }
  return value;
}
