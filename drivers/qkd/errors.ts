/** Errors of the QKD module driver, with a code for callers and a transient flag for the supervisor. */

export type DriverErrorCode =
  | 'QKD_TIMEOUT' // the module did not answer in time
  | 'QKD_FRAME' // the module broke the protocol (malformed frame, block beyond credit)
  | 'QKD_VERSION' // the module speaks another protocol version: not transient
  | 'QKD_LINK_DOWN' // the transport closed, or the quantum link is down
  | 'QKD_MODULE' // the module reported an ERROR
  | 'QKD_FAILED' // gave up reconnecting
  | 'QKD_CLOSED' // the driver was closed
  | 'QKD_BUSY'; // a second blocks() iteration while one runs

export class DriverError extends Error {
  override readonly name = 'DriverError';
  constructor(
    readonly code: DriverErrorCode,
    message: string,
    readonly transient = true,
    opts?: ErrorOptions,
  ) {
    super(message, opts);
  }
}
