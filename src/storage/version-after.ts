import type { WorkspaceCommit } from './storage.js';

/**
 * The version a store writes when `commit` applies: its {@link WorkspaceCommit.nextVersion},
 * or `expectedVersion + 1` for a hand-made commit without one.
 *
 * @example
 * ```ts
 * await sql`UPDATE workspaces SET version = ${versionAfter(commit)}, state = ${state}
 *           WHERE workspace_id = ${commit.workspaceId} AND version = ${commit.expectedVersion}`;
 * ```
 */
export function versionAfter(commit: WorkspaceCommit): number {
  return commit.nextVersion ?? commit.expectedVersion + 1;
}
