/**
 * NBD wire constants, named as the protocol specification names them (doc/proto.md of the
 * NetworkBlockDevice project). Every integer on the wire is big-endian. Frame sizes and field
 * offsets are derived from the field widths below, never written twice as bare numbers.
 */

/** Width in bytes of each integer type on the wire. */
export const U16_BYTES = 2;
export const U32_BYTES = 4;
export const U64_BYTES = 8;

// ---------------------------------------------------------------------------------------------
// Handshake

/** "NBDMAGIC": first 8 bytes of the server greeting. */
export const NBDMAGIC = 0x4e42444d41474943n;
/** "IHAVEOPT": greeting magic of newstyle servers, and the magic of every option request. */
export const IHAVEOPT = 0x49484156454f5054n;
/** Magic of every option reply. */
export const NBD_REP_MAGIC = 0x0003e889045565a9n;

/** Handshake flags (server -> client, u16). */
export const NBD_FLAG_FIXED_NEWSTYLE = 1 << 0;
export const NBD_FLAG_NO_ZEROES = 1 << 1;
/** Client flags (client -> server, u32). */
export const NBD_FLAG_C_FIXED_NEWSTYLE = 1 << 0;
export const NBD_FLAG_C_NO_ZEROES = 1 << 1;

/** Greeting: NBDMAGIC, IHAVEOPT, handshake flags. */
export const GREETING_BYTES = U64_BYTES + U64_BYTES + U16_BYTES;
/** Client flags after the greeting. */
export const CLIENT_FLAGS_BYTES = U32_BYTES;
/** Option request header: IHAVEOPT, option, data length. */
export const OPTION_HEADER_BYTES = U64_BYTES + U32_BYTES + U32_BYTES;
/** Option reply header: NBD_REP_MAGIC, option, reply type, data length. */
export const OPTION_REPLY_HEADER_BYTES = U64_BYTES + U32_BYTES + U32_BYTES + U32_BYTES;
/** Zero padding after the NBD_OPT_EXPORT_NAME reply unless both sides agreed NO_ZEROES. */
export const EXPORT_NAME_PADDING_BYTES = 124;
/** NBD_OPT_EXPORT_NAME reply without padding: export size, transmission flags. */
export const EXPORT_NAME_REPLY_BYTES = U64_BYTES + U16_BYTES;

/** Option codes. */
export const NBD_OPT_EXPORT_NAME = 1;
export const NBD_OPT_ABORT = 2;
export const NBD_OPT_LIST = 3;
export const NBD_OPT_STARTTLS = 5;
export const NBD_OPT_INFO = 6;
export const NBD_OPT_GO = 7;
export const NBD_OPT_STRUCTURED_REPLY = 8;
export const NBD_OPT_LIST_META_CONTEXT = 9;
export const NBD_OPT_SET_META_CONTEXT = 10;

/** Option reply types. Error types have the high bit set. */
export const NBD_REP_ACK = 1;
export const NBD_REP_SERVER = 2;
export const NBD_REP_INFO = 3;
export const NBD_REP_META_CONTEXT = 4;
/** High bit of error reply types (added, not OR-ed: JS bitwise ops are signed 32-bit). */
export const NBD_REP_FLAG_ERROR = 0x80000000;
export const NBD_REP_ERR_UNSUP = NBD_REP_FLAG_ERROR + 1;
export const NBD_REP_ERR_POLICY = NBD_REP_FLAG_ERROR + 2;
export const NBD_REP_ERR_INVALID = NBD_REP_FLAG_ERROR + 3;
export const NBD_REP_ERR_PLATFORM = NBD_REP_FLAG_ERROR + 4;
export const NBD_REP_ERR_TLS_REQD = NBD_REP_FLAG_ERROR + 5;
export const NBD_REP_ERR_UNKNOWN = NBD_REP_FLAG_ERROR + 6;
export const NBD_REP_ERR_SHUTDOWN = NBD_REP_FLAG_ERROR + 7;
export const NBD_REP_ERR_BLOCK_SIZE_REQD = NBD_REP_FLAG_ERROR + 8;
export const NBD_REP_ERR_TOO_BIG = NBD_REP_FLAG_ERROR + 9;

/** Information types of NBD_REP_INFO (and requested in NBD_OPT_INFO / NBD_OPT_GO). */
export const NBD_INFO_EXPORT = 0;
export const NBD_INFO_NAME = 1;
export const NBD_INFO_DESCRIPTION = 2;
export const NBD_INFO_BLOCK_SIZE = 3;

/** NBD_REP_INFO payload sizes, type field included. */
export const INFO_EXPORT_BYTES = U16_BYTES + U64_BYTES + U16_BYTES;
export const INFO_BLOCK_SIZE_BYTES = U16_BYTES + 3 * U32_BYTES;

/** Longest string (export name, context name, message) the spec lets a peer send. */
export const NBD_MAX_STRING_BYTES = 4096;

/** The one metadata context namespace and leaf we serve. */
export const BASE_ALLOCATION = 'base:allocation';
/** Namespace prefix; as a LIST query it means "every context in this namespace". */
export const BASE_NAMESPACE = 'base:';
/** base:allocation status flags. */
export const NBD_STATE_HOLE = 1 << 0;
export const NBD_STATE_ZERO = 1 << 1;

// ---------------------------------------------------------------------------------------------
// Transmission

/** Transmission flags (u16), sent in NBD_INFO_EXPORT and the NBD_OPT_EXPORT_NAME reply. */
export const NBD_FLAG_HAS_FLAGS = 1 << 0;
export const NBD_FLAG_READ_ONLY = 1 << 1;
export const NBD_FLAG_SEND_FLUSH = 1 << 2;
export const NBD_FLAG_SEND_FUA = 1 << 3;
export const NBD_FLAG_ROTATIONAL = 1 << 4;
export const NBD_FLAG_SEND_TRIM = 1 << 5;
export const NBD_FLAG_SEND_WRITE_ZEROES = 1 << 6;
export const NBD_FLAG_SEND_DF = 1 << 7;
export const NBD_FLAG_CAN_MULTI_CONN = 1 << 8;
export const NBD_FLAG_SEND_CACHE = 1 << 10;
export const NBD_FLAG_SEND_FAST_ZERO = 1 << 11;

/** Magic of every request. */
export const NBD_REQUEST_MAGIC = 0x25609513;
/** Magic of a simple reply. */
export const NBD_SIMPLE_REPLY_MAGIC = 0x67446698;
/** Magic of a structured reply chunk. */
export const NBD_STRUCTURED_REPLY_MAGIC = 0x668e33ef;

/** Request header: magic, command flags, type, cookie, offset, length. */
export const REQUEST_HEADER_BYTES =
  U32_BYTES + U16_BYTES + U16_BYTES + U64_BYTES + U64_BYTES + U32_BYTES;
/** Field offsets inside the request header, derived in field order. */
export const REQUEST_FLAGS_AT = U32_BYTES;
export const REQUEST_TYPE_AT = REQUEST_FLAGS_AT + U16_BYTES;
export const REQUEST_COOKIE_AT = REQUEST_TYPE_AT + U16_BYTES;
export const REQUEST_OFFSET_AT = REQUEST_COOKIE_AT + U64_BYTES;
export const REQUEST_LENGTH_AT = REQUEST_OFFSET_AT + U64_BYTES;

/** Simple reply: magic, error, cookie. */
export const SIMPLE_REPLY_BYTES = U32_BYTES + U32_BYTES + U64_BYTES;
/** Structured reply chunk header: magic, flags, type, cookie, payload length. */
export const CHUNK_HEADER_BYTES = U32_BYTES + U16_BYTES + U16_BYTES + U64_BYTES + U32_BYTES;
/** Payload prefix of OFFSET_DATA (offset) and OFFSET_HOLE (offset, hole size). */
export const OFFSET_DATA_PREFIX_BYTES = U64_BYTES;
export const OFFSET_HOLE_PAYLOAD_BYTES = U64_BYTES + U32_BYTES;
/** BLOCK_STATUS payload: context id, then (length, flags) per extent. */
export const BLOCK_STATUS_PREFIX_BYTES = U32_BYTES;
export const BLOCK_DESCRIPTOR_BYTES = U32_BYTES + U32_BYTES;
/** ERROR payload prefix: error, message length. */
export const ERROR_PREFIX_BYTES = U32_BYTES + U16_BYTES;

/** Command types. */
export const NBD_CMD_READ = 0;
export const NBD_CMD_WRITE = 1;
export const NBD_CMD_DISC = 2;
export const NBD_CMD_FLUSH = 3;
export const NBD_CMD_TRIM = 4;
export const NBD_CMD_CACHE = 5;
export const NBD_CMD_WRITE_ZEROES = 6;
export const NBD_CMD_BLOCK_STATUS = 7;

/** Command flags (u16). */
export const NBD_CMD_FLAG_FUA = 1 << 0;
export const NBD_CMD_FLAG_NO_HOLE = 1 << 1;
export const NBD_CMD_FLAG_DF = 1 << 2;
export const NBD_CMD_FLAG_REQ_ONE = 1 << 3;
export const NBD_CMD_FLAG_FAST_ZERO = 1 << 4;
/** Every command flag this server understands. */
export const KNOWN_CMD_FLAGS =
  NBD_CMD_FLAG_FUA |
  NBD_CMD_FLAG_NO_HOLE |
  NBD_CMD_FLAG_DF |
  NBD_CMD_FLAG_REQ_ONE |
  NBD_CMD_FLAG_FAST_ZERO;

/** Structured reply chunk flags and types. */
export const NBD_REPLY_FLAG_DONE = 1 << 0;
export const NBD_REPLY_TYPE_NONE = 0;
export const NBD_REPLY_TYPE_OFFSET_DATA = 1;
export const NBD_REPLY_TYPE_OFFSET_HOLE = 2;
export const NBD_REPLY_TYPE_BLOCK_STATUS = 5;
export const NBD_REPLY_TYPE_ERROR = (1 << 15) | 1;
export const NBD_REPLY_TYPE_ERROR_OFFSET = (1 << 15) | 2;

/** Error values of replies (the spec fixes them to the Linux errno numbers). */
export const NBD_EPERM = 1;
export const NBD_EIO = 5;
export const NBD_ENOMEM = 12;
export const NBD_EINVAL = 22;
export const NBD_ENOSPC = 28;
export const NBD_EOVERFLOW = 75;
export const NBD_ENOTSUP = 95;
export const NBD_ESHUTDOWN = 108;

/** Names for metrics and messages. */
export const COMMAND_NAMES: Readonly<Record<number, string>> = {
  [NBD_CMD_READ]: 'read',
  [NBD_CMD_WRITE]: 'write',
  [NBD_CMD_DISC]: 'disc',
  [NBD_CMD_FLUSH]: 'flush',
  [NBD_CMD_TRIM]: 'trim',
  [NBD_CMD_CACHE]: 'cache',
  [NBD_CMD_WRITE_ZEROES]: 'write_zeroes',
  [NBD_CMD_BLOCK_STATUS]: 'block_status',
};

export const ERRNO_NAMES: Readonly<Record<number, string>> = {
  [NBD_EPERM]: 'EPERM',
  [NBD_EIO]: 'EIO',
  [NBD_ENOMEM]: 'ENOMEM',
  [NBD_EINVAL]: 'EINVAL',
  [NBD_ENOSPC]: 'ENOSPC',
  [NBD_EOVERFLOW]: 'EOVERFLOW',
  [NBD_ENOTSUP]: 'ENOTSUP',
  [NBD_ESHUTDOWN]: 'ESHUTDOWN',
};

/** Largest u64, for overflow checks on offset + length. */
export const U64_MAX = (1n << 64n) - 1n;
