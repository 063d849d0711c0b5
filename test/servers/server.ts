/** A server started for tests, on loopback in a temporary directory. */
export interface TestServer {
  /** Connection URL on loopback. */
  readonly url: string;
  /** Stops the server and starts it again on the same port and data (for restart tests). */
  restart(): Promise<void>;
  /** Stops the server and removes its temporary directory. */
  stop(): Promise<void>;
}
