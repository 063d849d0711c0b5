import Database from 'better-sqlite3';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { MySqlStorage } from '../../src/adapters/mysql/index.js';
import { PostgresStorage } from '../../src/adapters/postgres/index.js';
import { RedisStorage } from '../../src/adapters/redis/index.js';
import { SqliteStorage } from '../../src/adapters/sqlite/index.js';
import { InvalidInputError, StorageError } from '../../src/index.js';
import {
  checkOptions,
  importOptionalPeer,
  LEDGER_COLUMNS,
  type LedgerKind,
  type LedgerQuery,
  type LedgerRow,
  ledgerFilters,
  ledgerRow,
  MemoryStorage,
  once,
  USAGE_GROUP_COLUMNS,
  UsageAccumulator,
  type UsageGroupBy,
} from '../../src/storage/index.js';

function invalid(make: () => unknown): InvalidInputError {
  try {
    make();
  } catch (error) {
    expect(error).toBeInstanceOf(InvalidInputError);
    return error as InvalidInputError;
  }
  throw new Error('expected INVALID_INPUT');
}

// Each store with valid options, and a typo of one of its options.
const STORES = [
  {
    name: 'SqliteStorage',
    make: (o: object) => new SqliteStorage({ filename: ':memory:', ...o }),
    typo: 'tableprefix',
    meant: 'tablePrefix',
  },
  {
    name: 'PostgresStorage',
    make: (o: object) => new PostgresStorage({ connectionString: 'postgres://127.0.0.1/x', ...o }),
    typo: 'poolsize',
    meant: 'poolSize',
  },
  {
    name: 'MySqlStorage',
    make: (o: object) => new MySqlStorage({ uri: 'mysql://127.0.0.1/x', ...o }),
    typo: 'tablePrefx',
    meant: 'tablePrefix',
  },
  {
    name: 'RedisStorage',
    make: (o: object) => new RedisStorage({ url: 'redis://127.0.0.1:1', ...o }),
    typo: 'keyprefix',
    meant: 'keyPrefix',
  },
];

describe('store options', () => {
  for (const store of STORES) {
    it(`${store.name} - a misspelt option is refused, naming it and the option meant, instead of falling back to the default`, () => {
      const error = invalid(() => store.make({ [store.typo]: 'app_' }));
      expect(error.field).toBe(store.typo);
      expect(error.message).toContain(`did you mean "${store.meant}"?`);
    });

    it(`${store.name} - options that are not an object are INVALID_INPUT, not a TypeError from inside`, () => {
      for (const options of [null, undefined, 'redis://x', 42])
        expect(invalid(() => new (store.make({}).constructor as new (o: unknown) => unknown)(options)).field).toBe('options');
    });
  }

  it('checkOptions - lists every problem: unknown keys, a missing either-or, each failing check; checks skip options left out', () => {
    const checks = {
      url: (v: unknown) => (typeof v === 'string' ? undefined : 'must be a string'),
      client: () => undefined,
      size: () => 'never fine',
    };
    const error = invalid(() =>
      checkOptions<{ url?: string; client?: object; size?: number }>({ size: 1, extra: true } as never, checks, ['url', 'client']),
    );
    expect(error.issues).toEqual([
      { path: 'extra', message: 'is not a known field' },
      { path: 'url', message: 'give exactly one of url or client' },
      { path: 'size', message: 'never fine' },
    ]);
    expect(invalid(() => checkOptions({ url: 1 }, checks, ['url', 'client'])).issues).toEqual([
      { path: 'url', message: 'must be a string' },
    ]);
    expect(invalid(() => checkOptions({ url: 'x', client: {} }, checks, ['url', 'client'])).issues).toEqual([
      { path: 'url', message: 'give exactly one of url or client' },
    ]);
    expect(invalid(() => checkOptions({ url: 'x', size: 3 }, checks)).field).toBe('size');
    const options = { url: 'x', size: undefined };
    expect(checkOptions(options, checks, ['url', 'client'])).toBe(options);
  });

  it('checkOptions - a prototype key is refused as such', () => {
    const options = JSON.parse('{"filename": ":memory:", "__proto__": {"tablePrefix": "x"}}');
    expect(invalid(() => new SqliteStorage(options)).issues[0]).toEqual({ path: '__proto__', message: 'is not allowed: a prototype key' });
  });

  it('SqliteStorage - an open database passes, and the store uses it', async () => {
    const database = new Database(':memory:');
    const storage = new SqliteStorage({ database, tablePrefix: 'app_' });
    await storage.migrate();
    expect(database.prepare("SELECT count(*) AS n FROM sqlite_master WHERE name = 'app_states'").get()).toEqual({ n: 1 });
    await storage.close();
    database.close();
  });
});

describe('once', () => {
  it('callers share the run in flight and later ones its result; a failed run is forgotten and the next call runs again', async () => {
    let runs = 0;
    let fail = true;
    const migrate = once(async () => {
      runs++;
      await new Promise((resolve) => setTimeout(resolve, 5));
      if (fail) throw new Error(`down ${runs}`);
      return runs;
    });
    const first = await Promise.allSettled([migrate(), migrate(), migrate()]);
    expect(first.map((result) => (result.status === 'rejected' ? (result.reason as Error).message : result.value))).toEqual([
      'down 1',
      'down 1',
      'down 1',
    ]);
    expect([runs, migrate.done]).toEqual([1, false]);
    fail = false;
    expect(await Promise.all([migrate(), migrate()])).toEqual([2, 2]);
    expect(await migrate()).toBe(2);
    expect([runs, migrate.done]).toEqual([2, true]);
  });
});

describe('importOptionalPeer', () => {
  it('a package that is not installed is a STORAGE_ERROR naming the package to install (not its subpath), and the way out', async () => {
    const error = await importOptionalPeer('no-such-driver-xyz/promise', 'connect', 'acme', 'or pass { client }').catch((e: unknown) => e);
    expect(error).toBeInstanceOf(StorageError);
    expect((error as StorageError).code).toBe('STORAGE_ERROR');
    expect((error as Error).message).toBe(
      '[credits] [acme] load driver failed: the optional peer dependency no-such-driver-xyz is not installed; run `npm install no-such-driver-xyz`, or pass { client }',
    );
    const scoped = await importOptionalPeer('@acme/no-such-driver/sub', 'connect', 'acme').catch((e: unknown) => e);
    expect((scoped as Error).message).toContain('run `npm install @acme/no-such-driver`');
  });

  it('finds a named export, a default export, and refuses a package without the export asked for', async () => {
    const { Redis } = await import('ioredis');
    expect(await importOptionalPeer('ioredis', 'Redis', 'redis')).toBe(Redis);
    expect(await importOptionalPeer('better-sqlite3', 'default', 'sqlite')).toBe(Database);
    const error = await importOptionalPeer('ioredis', 'NoSuchClass', 'redis').catch((e: unknown) => e);
    expect((error as Error).message).toContain('the installed ioredis has no NoSuchClass export');
  });
});

describe('LEDGER_COLUMNS', () => {
  it('names every field of a ledger row but the workspace, once, in snake_case, with integers where the row holds numbers', () => {
    const row = ledgerRow('w', 1, 'reply', -5, 9, { inputTokens: 3, outputTokens: 4, replyId: 'r' });
    expect(LEDGER_COLUMNS.map((c) => c.field)).toEqual(Object.keys(row).filter((field) => field !== 'workspaceId'));
    for (const c of LEDGER_COLUMNS) {
      expect(c.column).toMatch(/^[a-z]+(_[a-z]+)*$/);
      expect(c.column.replace(/_(.)/g, (_, letter: string) => letter.toUpperCase())).toBe(c.field);
      expect(c.type).toBe(typeof row[c.field] === 'number' ? 'integer' : 'text');
    }
    expect(LEDGER_COLUMNS.filter((c) => c.required).map((c) => c.field)).toEqual(['seq', 'kind', 'amount', 'at']);
  });

  it('USAGE_GROUP_COLUMNS - each grouping is the ledger column of the field the in-memory sum groups by', () => {
    const rows = [ledgerRow('w', 1, 'reply', -3, 0, { agentId: 'a', model: 'm', conversationId: 'c' })];
    for (const [groupBy, column] of Object.entries(USAGE_GROUP_COLUMNS) as [UsageGroupBy, (typeof USAGE_GROUP_COLUMNS)[UsageGroupBy]][]) {
      expect(LEDGER_COLUMNS).toContain(column);
      const sums = new UsageAccumulator(groupBy, false);
      for (const row of rows) sums.add(row);
      expect(sums.totals()).toEqual([{ key: rows[0]![column.field], amount: 3, replies: 1 }]);
    }
  });
});

describe('ledgerFilters', () => {
  const KINDS: LedgerKind[] = ['reply', 'topup', 'expiry', 'refund'];

  // What a SQL store does with the filters, in plain code.
  function matches(row: LedgerRow, query: LedgerQuery): boolean {
    return ledgerFilters(query).every(({ column, op, value }) => {
      const field = LEDGER_COLUMNS.find((c) => c.column === column)!.field;
      const actual = row[field];
      if (op === 'in') return (value as readonly string[]).includes(actual as string);
      if (op === '=') return actual === value;
      if (op === '>') return (actual as number) > (value as number);
      if (op === '>=') return (actual as number) >= (value as number);
      return (actual as number) < (value as number);
    });
  }

  it('select the rows the memory store pages (afterSeq exclusive, from inclusive, to exclusive, an empty kind list none)', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(
          fc.record({ at: fc.integer({ min: 0, max: 50 }), agent: fc.constantFrom('a', 'b', null), kind: fc.constantFrom(...KINDS) }),
          {
            maxLength: 30,
          },
        ),
        fc.record(
          {
            afterSeq: fc.integer({ min: 0, max: 30 }),
            from: fc.integer({ min: 0, max: 50 }),
            to: fc.integer({ min: 0, max: 50 }),
            agentId: fc.constantFrom('a', 'b'),
            kinds: fc.subarray(KINDS),
          },
          { requiredKeys: [] },
        ),
        fc.integer({ min: 0, max: 40 }),
        async (entries, filters, limit) => {
          const storage = new MemoryStorage();
          const ledger = entries.map((e, i) => ledgerRow('w', i + 1, e.kind, 1, e.at, { agentId: e.agent }));
          await storage.commit([
            {
              workspaceId: 'w',
              expectedVersion: 0,
              state: { workspaceId: 'w', account: null, ledgerSeq: ledger.length },
              ledger,
              records: [],
            },
          ]);
          const query: LedgerQuery = { workspaceId: 'w', limit, ...filters };
          expect(ledger.filter((row) => matches(row, query)).slice(0, limit)).toEqual(await storage.ledger(query));
        },
      ),
    );
  });
});
