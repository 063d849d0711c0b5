import { randomUUID } from 'node:crypto';
import { createConnection } from 'mysql2/promise';
import { inject } from 'vitest';
import { MySqlStorage } from '../../src/adapters/mysql/index.js';
import { runStorageConformance } from '../../src/testing/index.js';

// Each case gets its own table prefix in the shared `credits` database, dropped after the case.
runStorageConformance({
  name: 'mysql',
  create: () => new MySqlStorage({ uri: inject('mysqlUrl'), tablePrefix: `c${randomUUID().replaceAll('-', '').slice(0, 12)}_` }),
  cleanup: async (storage) => {
    await storage.close();
    const prefix = (storage as MySqlStorage).tablePrefix;
    const connection = await createConnection(inject('mysqlUrl'));
    await connection.query(
      `DROP TABLE IF EXISTS ${['workspaces', 'records', 'ledger', 'migrations'].map((t) => `\`${prefix}${t}\``).join(', ')}`,
    );
    await connection.end();
  },
});
