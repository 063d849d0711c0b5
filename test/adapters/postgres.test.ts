import { randomUUID } from 'node:crypto';
import { inject } from 'vitest';
import { PostgresStorage } from '../../src/adapters/postgres/index.js';
import { runStorageConformance } from '../../src/testing/index.js';
import { dropPostgresSchema } from './fixtures/postgres-schemas.js';

// Each case gets its own schema on the shared test server, dropped after the case.
runStorageConformance({
  name: 'postgres',
  create: () => new PostgresStorage({ connectionString: inject('postgresUrl'), schema: `conf_${randomUUID().replaceAll('-', '')}` }),
  cleanup: (storage) => dropPostgresSchema(storage as PostgresStorage, inject('postgresUrl')),
});
