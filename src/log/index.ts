/**
 * Structured logging (pino). One root logger per process; each component and each connection
 * takes a child. Per-request outcomes are metrics, not log lines: logs are for life-cycle
 * events, client faults (info/debug) and server faults (error).
 */
import { type LevelWithSilent, type Logger, pino } from 'pino';

export type { Logger };

export interface LogOptions {
  level?: LevelWithSilent;
  /** Write to this file descriptor instead of stderr (tests pass a pipe or /dev/null). */
  fd?: number;
}

/** Keys whose values never reach a log line (tokens, TLS keys). */
const REDACTED = ['token', 'password', '*.token', '*.password', '*.key', 'http.token', 'tls.key'];

export function createLogger(options: LogOptions = {}): Logger {
  const level = options.level ?? (process.env.DIFFSWAP_LOG_LEVEL as LevelWithSilent) ?? 'info';
  return pino(
    { name: 'diffswap', level, redact: { paths: REDACTED, censor: '[redacted]' } },
    pino.destination({ fd: options.fd ?? 2, sync: false }),
  );
}

/** A logger that writes nothing, for tests and library use. */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
