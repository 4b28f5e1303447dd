/**
 * Structured logging (pino). One root logger per process; each component and each connection
 * takes a child. Per-request outcomes are metrics, not log lines: logs are for life-cycle
 * events, client faults (info/debug) and server faults (error).
 *
 * Lines are JSON (one object a line, for journald, files and log shippers), except on a
 * terminal, where a person reads them: there each line is `time LEVEL component: message
 * key=value ...`. DIFFSWAP_LOG_FORMAT=json or =pretty chooses either way.
 */
import { type LevelWithSilent, type Logger, pino } from 'pino';

export type { Logger };

export interface LogOptions {
  level?: LevelWithSilent;
  /** Write to this file descriptor instead of stderr (tests pass a pipe or /dev/null). */
  fd?: number;
  /** `auto` (default): pretty on a terminal, JSON elsewhere. */
  format?: LogFormat;
}

export type LogFormat = 'auto' | 'json' | 'pretty';

/** Keys whose values never reach a log line (tokens, TLS keys). */
const REDACTED = ['token', 'password', '*.token', '*.password', '*.key', 'http.token', 'tls.key'];

export function createLogger(options: LogOptions = {}): Logger {
  const level = options.level ?? (process.env.DIFFSWAP_LOG_LEVEL as LevelWithSilent) ?? 'info';
  const fd = options.fd ?? 2;
  const destination = pino.destination({ fd, sync: false });
  const settings = { name: 'diffswap', level, redact: { paths: REDACTED, censor: '[redacted]' } };
  if (!usePretty(options.format ?? envFormat(), fd)) return pino(settings, destination);
  // pino's flush() passes on to the stream's flush, so the wrapper keeps that too.
  const pretty = {
    write: (line: string) => destination.write(prettyLine(line)),
    flush: (done?: (error?: Error) => void) => destination.flush(done),
  };
  return pino(settings, pretty);
}

/** A logger that writes nothing, for tests and library use. */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}

function envFormat(): LogFormat {
  const value = process.env.DIFFSWAP_LOG_FORMAT;
  return value === 'json' || value === 'pretty' ? value : 'auto';
}

function usePretty(format: LogFormat, fd: number): boolean {
  if (format !== 'auto') return format === 'pretty';
  const stream = fd === 1 ? process.stdout : fd === 2 ? process.stderr : null;
  return stream?.isTTY === true;
}

const LEVEL_NAMES: Record<number, string> = {
  10: 'TRACE',
  20: 'DEBUG',
  30: 'INFO ',
  40: 'WARN ',
  50: 'ERROR',
  60: 'FATAL',
};
/** Fields every line has, shown in the line's head or not at all. */
const HEAD_FIELDS = new Set(['level', 'time', 'pid', 'hostname', 'name', 'msg', 'component']);

/**
 * One pino JSON line as a line for people: `12:00:01.123 INFO  store: page store open
 * exports=1`. An error's stack follows on indented lines. Anything that is not a JSON object
 * passes through unchanged.
 */
export function prettyLine(json: string): string {
  let entry: Record<string, unknown>;
  try {
    entry = JSON.parse(json) as Record<string, unknown>;
  } catch {
    return json;
  }
  if (typeof entry !== 'object' || entry === null) return json;
  const time =
    typeof entry.time === 'number' ? new Date(entry.time).toISOString().slice(11, 23) : '';
  const level = LEVEL_NAMES[entry.level as number] ?? String(entry.level);
  const component = typeof entry.component === 'string' ? `${entry.component}: ` : '';
  const fields: string[] = [];
  let stack = '';
  for (const [key, value] of Object.entries(entry)) {
    if (HEAD_FIELDS.has(key)) continue;
    if (isError(value)) {
      fields.push(`${key}=${JSON.stringify(value.message)}`);
      stack = value.stack
        .split('\n')
        .slice(1)
        .map((l) => `    ${l.trim()}\n`)
        .join('');
    } else {
      fields.push(`${key}=${typeof value === 'string' ? quoted(value) : JSON.stringify(value)}`);
    }
  }
  const tail = fields.length > 0 ? ` ${fields.join(' ')}` : '';
  return `${time} ${level} ${component}${String(entry.msg ?? '')}${tail}\n${stack}`;
}

function isError(value: unknown): value is { message: string; stack: string } {
  if (typeof value !== 'object' || value === null) return false;
  const v = value as Record<string, unknown>;
  return typeof v.message === 'string' && typeof v.stack === 'string';
}

/** A string value as is when it is one plain word, else JSON-quoted. */
function quoted(value: string): string {
  return /^[\w./:@+-]+$/.test(value) ? value : JSON.stringify(value);
}
