/**
 * The one place where failures become NBD error values. Devices throw DeviceError with a
 * code; anything else thrown below the protocol layer is a server fault and becomes EIO.
 */
import { DeviceError, type DeviceErrorCode } from '../device/types.js';
import {
  NBD_EINVAL,
  NBD_EIO,
  NBD_ENOSPC,
  NBD_ENOTSUP,
  NBD_EOVERFLOW,
  NBD_EPERM,
  NBD_ESHUTDOWN,
} from './protocol.js';

const ERRNO_BY_CODE: Readonly<Record<DeviceErrorCode, number>> = {
  EIO: NBD_EIO,
  ENOSPC: NBD_ENOSPC,
  EINVAL: NBD_EINVAL,
  EPERM: NBD_EPERM,
  EOVERFLOW: NBD_EOVERFLOW,
  ESHUTDOWN: NBD_ESHUTDOWN,
  ENOTSUP: NBD_ENOTSUP,
};

/** A failure as the client will see it: an NBD error value and a message. */
export interface NbdFailure {
  errno: number;
  message: string;
  /** True when the failure is the server's fault (log it), not the client's. */
  serverFault: boolean;
}

/**
 * Maps anything a device call threw to an NBD error value. DeviceError codes map one to one
 * (EIO is a stored-data problem, reported but not a crash); other errors are server bugs:
 * the client gets EIO and the caller logs the fault.
 */
export function toNbdFailure(error: unknown): NbdFailure {
  if (error instanceof DeviceError) {
    return { errno: ERRNO_BY_CODE[error.code], message: error.message, serverFault: false };
  }
  const message = error instanceof Error ? error.message : String(error);
  return { errno: NBD_EIO, message: `internal error: ${message}`, serverFault: true };
}
