// The tests and the runnable examples share one fake API server.
export * from '../../examples/shared/fake-llm-server.js';
