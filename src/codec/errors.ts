/** Why a payload could not be decoded; the store counts these and answers EIO. */
export class CodecError extends Error {
  override readonly name = 'CodecError';
  constructor(
    /** Name of the codec that refused the payload. */
    readonly codec: string,
    message: string,
  ) {
    super(`${codec}: ${message}`);
  }
}
