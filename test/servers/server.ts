/** A server started for the test run. */
export interface TestServer {
  /** Connection URL on loopback. */
  readonly url: string;
  /** Stops the server and removes its temporary directory. */
  stop(): Promise<void>;
}
