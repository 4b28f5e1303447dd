/**
 * Errors of the HTTP API. Every failure answers `{ error: { code, message } }` with a code
 * from the table below; codes are stable (scripts match on them), messages are for people.
 */
import type { FastifyError, FastifyReply, FastifyRequest } from 'fastify';
import type { Logger } from '../log/index.js';

/** Stable error codes and the HTTP status each answers with. */
export const API_ERRORS = {
  /** The request does not match the route's schema (query, params or body). */
  BAD_REQUEST: 400,
  /** A token is set and the request carried none, or a wrong one. */
  UNAUTHORIZED: 401,
  /**
   * A write route refused whatever the token: from another site's page (Origin), or, with no
   * token set, from off loopback or for a non-loopback Host name.
   */
  FORBIDDEN: 403,
  /** No such route. */
  NOT_FOUND: 404,
  /** No export of that name. */
  EXPORT_NOT_FOUND: 404,
  /** The route exists but the route's method does not. */
  METHOD_NOT_ALLOWED: 405,
  /** A compaction or check is already running. */
  BUSY: 409,
  /** The request body is larger than the API takes. */
  PAYLOAD_TOO_LARGE: 413,
  /** The body is not JSON. */
  UNSUPPORTED_MEDIA_TYPE: 415,
  /** The store behind this server does not offer the operation (e.g. the memory backend). */
  NOT_SUPPORTED: 501,
  /** A fault of the server; details are in its log. */
  INTERNAL: 500,
} as const;

export type ApiErrorCode = keyof typeof API_ERRORS;

/** An error a route raises on purpose; the handler answers it with its code and message. */
export class ApiError extends Error {
  readonly code: ApiErrorCode;

  constructor(code: ApiErrorCode, message: string) {
    super(message);
    this.name = 'ApiError';
    this.code = code;
  }

  get statusCode(): number {
    return API_ERRORS[this.code];
  }
}

/** JSON schema of the error body, shared by every route's responses. */
export const errorBodySchema = {
  type: 'object',
  required: ['error'],
  properties: {
    error: {
      type: 'object',
      required: ['code', 'message'],
      properties: { code: { type: 'string' }, message: { type: 'string' } },
    },
  },
} as const;

/** Sends an error body with the status of `code`. */
export function sendError(reply: FastifyReply, code: ApiErrorCode, message: string) {
  return reply.code(API_ERRORS[code]).send({ error: { code, message } });
}

/**
 * Fastify's error handler: maps our errors, Fastify's own (validation, body limits, bad
 * content type) and anything unexpected to the error body. Client faults log at debug,
 * server faults at error, never with request bodies.
 */
export function errorHandler(logger: Logger) {
  return (err: FastifyError | ApiError, request: FastifyRequest, reply: FastifyReply) => {
    if (err instanceof ApiError) return sendError(reply, err.code, err.message);
    const mapped = mapFastifyError(err);
    if (mapped) {
      logger.debug({ url: request.url, code: mapped }, 'http client error');
      return sendError(reply, mapped, err.message);
    }
    logger.error({ err, url: request.url, method: request.method }, 'http handler failed');
    return sendError(reply, 'INTERNAL', 'internal error; see the server log');
  };
}

function mapFastifyError(err: FastifyError): ApiErrorCode | null {
  if (err.validation) return 'BAD_REQUEST';
  switch (err.code) {
    case 'FST_ERR_CTP_BODY_TOO_LARGE':
      return 'PAYLOAD_TOO_LARGE';
    case 'FST_ERR_CTP_INVALID_MEDIA_TYPE':
      return 'UNSUPPORTED_MEDIA_TYPE';
    case 'FST_ERR_CTP_EMPTY_JSON_BODY':
    case 'FST_ERR_CTP_INVALID_CONTENT_LENGTH':
      return 'BAD_REQUEST';
  }
  const status = err.statusCode ?? 500;
  // Body parse errors (bad JSON) come as plain 400 errors from the parser.
  if (status === 400) return 'BAD_REQUEST';
  return null;
}
