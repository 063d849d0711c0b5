import { type InputIssue, InvalidInputError } from '../core/errors.js';
import { unknownKeyIssue } from '../core/validation.js';

/** The problem with one option's value (never called for an option left out), or undefined when it is fine. */
export type OptionCheck = (value: unknown) => string | undefined;

/** A check for every option a store takes, by name: the keys of every member of a union of option types. */
export type OptionChecks<O> = { readonly [K in O extends unknown ? keyof O : never]-?: OptionCheck };

/**
 * Checks a store's constructor options before the store keeps any of them, so a typo can never
 * send data to the wrong tables or keys: throws `INVALID_INPUT` (an {@link InvalidInputError})
 * naming every key that is not an option (with a hint for a near miss, `tableprefix` →
 * `tablePrefix`) and every option whose check fails. `exactlyOne` names two options of which
 * one must be given, such as a URL or a client.
 *
 * @example
 * ```ts
 * checkOptions<MyStoreOptions>(options, {
 *   url: (value) => (typeof value === 'string' && value !== '' ? undefined : 'must be a non-empty string'),
 *   tablePrefix: (value) => (typeof value === 'string' && /^\w*$/.test(value) ? undefined : 'must be letters, digits or _'),
 * });
 * ```
 */
export function checkOptions<O extends object>(options: O, checks: OptionChecks<O>, exactlyOne?: readonly [string, string]): O {
  if (typeof options !== 'object' || options === null) throw new InvalidInputError([{ path: 'options', message: 'must be an object' }]);
  const given = options as Record<string, unknown>;
  const known = Object.keys(checks);
  const issues: InputIssue[] = [];
  for (const key of Object.keys(given)) if (!known.includes(key)) issues.push(unknownKeyIssue(key, key, known));
  if (exactlyOne && (given[exactlyOne[0]] === undefined) === (given[exactlyOne[1]] === undefined)) {
    issues.push({ path: exactlyOne[0], message: `give exactly one of ${exactlyOne[0]} or ${exactlyOne[1]}` });
  }
  for (const [key, check] of Object.entries(checks as Record<string, OptionCheck>)) {
    const problem = given[key] === undefined ? undefined : check(given[key]);
    if (problem !== undefined) issues.push({ path: key, message: problem });
  }
  if (issues.length > 0) throw new InvalidInputError(issues);
  return options;
}
