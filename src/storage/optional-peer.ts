import { StorageError } from '../core/errors.js';

/**
 * Loads an export of an adapter's optional peer dependency on first use, so that importing the
 * adapter never loads its driver. A package that is not installed fails as a `STORAGE_ERROR`
 * that says what to install. Finds the export in an ES module and in CommonJS alike (named, or
 * on the default export); `'default'` asks for the default export itself.
 *
 * @param specifier - What to import, e.g. `'mysql2/promise'`.
 * @param exportName - The export wanted, e.g. `'createPool'`.
 * @param adapter - The store's name in the error, e.g. `'mysql'`.
 * @param alternative - Another way out, appended to the error, e.g. `'or pass { client }'`.
 */
export async function importOptionalPeer<T>(specifier: string, exportName: string, adapter: string, alternative?: string): Promise<T> {
  const name = specifier.startsWith('@') ? specifier.split('/', 2).join('/') : specifier.split('/')[0]!;
  let module: Record<string, unknown> & { default?: Record<string, unknown> };
  try {
    // A variable specifier keeps bundlers from resolving the optional peer at build time.
    module = await import(specifier);
  } catch (error) {
    const how = `run \`npm install ${name}\`${alternative ? `, ${alternative}` : ''}`;
    throw new StorageError(
      'load driver',
      new Error(`the optional peer dependency ${name} is not installed; ${how}`, { cause: error }),
      adapter,
    );
  }
  const found = exportName === 'default' ? (module.default ?? module) : (module[exportName] ?? module.default?.[exportName]);
  if (typeof found !== 'function')
    throw new StorageError('load driver', new Error(`the installed ${name} has no ${exportName} export`), adapter);
  return found as T;
}
