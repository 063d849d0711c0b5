/**
 * The PostgreSQL schema of the credits store: tables, indexes and the PL/pgSQL functions
 * that run each contract operation server-side, so that an operation costs one statement
 * and a whole group-commit batch one round trip.
 *
 * Every name is built from a validated schema and table prefix, so several stores can
 * live side by side on one database.
 */

/** The qualified, quoted names of everything one store owns. */
export interface SchemaNames {
  /** The schema, quoted. */
  readonly schema: string;
  /** The advisory-lock key text and prepared-statement prefix: `schema.prefix`. */
  readonly key: string;
  readonly workspaces: string;
  readonly grants: string;
  readonly replies: string;
  readonly ledger: string;
  readonly alerts: string;
  readonly migrations: string;
  /** Returns the qualified, quoted name of one of the store's functions. */
  fn(name: string): string;
  /** Returns an unqualified, quoted name for an index or constraint. */
  local(name: string): string;
}

const IDENTIFIER = /^[A-Za-z_][A-Za-z0-9_]*$/;

/** The longest table prefix: leaves room for the longest suffix within PostgreSQL's 63 bytes. */
export const MAX_PREFIX_LENGTH = 40;

/** Returns why `value` is not a usable schema name or table prefix, or undefined when it is. */
export function identifierProblem(value: unknown, kind: 'schema' | 'tablePrefix'): string | undefined {
  if (typeof value !== 'string') return 'must be a string';
  if (kind === 'tablePrefix' && value === '') return undefined;
  if (!IDENTIFIER.test(value)) return 'must start with a letter or underscore and hold only letters, digits and underscores';
  if (kind === 'schema' && /^pg_/i.test(value)) return 'must not start with pg_ (reserved for system schemas)';
  const max = kind === 'schema' ? 63 : MAX_PREFIX_LENGTH;
  if (value.length > max) return `must be at most ${max} characters`;
  return undefined;
}

function quote(identifier: string): string {
  return `"${identifier}"`;
}

/** Builds the names of a store's objects in `schema` with `prefix`. Both must be valid. */
export function schemaNames(schema: string, prefix: string): SchemaNames {
  const q = quote(schema);
  const table = (name: string) => `${q}.${quote(prefix + name)}`;
  return {
    schema: q,
    key: `${schema}.${prefix}`,
    workspaces: table('workspaces'),
    grants: table('grants'),
    replies: table('replies'),
    ledger: table('ledger'),
    alerts: table('alerts'),
    migrations: table('migrations'),
    fn: table,
    local: (name: string) => quote(prefix + name),
  };
}

/** The largest amount a store holds: 2⁵³ − 1 micro-credits (MAX_MICROS). */
const MAX_MICROS_SQL = '9007199254740991';

/**
 * The schema, as numbered steps. Step n brings the schema from version n − 1 to n; each
 * runs in the migration transaction under an advisory lock, so racing servers apply it once.
 */
export function migrations(n: SchemaNames): readonly string[] {
  const W = n.workspaces;
  const G = n.grants;
  const R = n.replies;
  const L = n.ledger;
  const A = n.alerts;
  const F = (name: string) => n.fn(name);
  // Grants are spent soonest-expiring first, never-expiring last, then oldest, then by id
  // (ids are COLLATE "C": byte order, as compareGrants compares code units).
  // The advisory-lock space of this store's workspaces (keys are hashtext of the ids).
  const LOCK_SPACE = `hashtext('${n.key}')`;
  const SPENDING_ORDER = 'expires_at ASC NULLS LAST, created_at, grant_id';

  const v1 = /* sql */ `
CREATE TABLE IF NOT EXISTS ${W} (
  workspace_id text COLLATE "C" PRIMARY KEY,
  plan text NOT NULL,
  allotment bigint NOT NULL,
  pending_plan text,
  pending_allotment bigint,
  anchor bigint NOT NULL,
  period_index bigint NOT NULL,
  period_start bigint NOT NULL,
  period_end bigint NOT NULL,
  used_this_period bigint NOT NULL,
  version bigint NOT NULL,
  created_at bigint NOT NULL,
  available bigint NOT NULL,
  held bigint NOT NULL,
  -- No hold lapses and no grant expires before this instant: the sweep is skipped until then.
  sweep_at bigint NOT NULL,
  CONSTRAINT ${n.local('workspaces_available_check')} CHECK (available >= 0)
) WITH (fillfactor = 50);

CREATE TABLE IF NOT EXISTS ${G} (
  workspace_id text COLLATE "C" NOT NULL,
  grant_id text COLLATE "C" NOT NULL,
  kind text NOT NULL,
  amount bigint NOT NULL,
  remaining bigint NOT NULL,
  expires_at bigint,
  created_at bigint NOT NULL,
  live boolean NOT NULL DEFAULT true,
  PRIMARY KEY (workspace_id, grant_id),
  CONSTRAINT ${n.local('grants_remaining_check')} CHECK (remaining >= 0)
) WITH (fillfactor = 70);
CREATE INDEX IF NOT EXISTS ${n.local('grants_live_idx')} ON ${G} (workspace_id, expires_at) WHERE live;

CREATE TABLE IF NOT EXISTS ${R} (
  reply_id text COLLATE "C" PRIMARY KEY,
  seq bigint GENERATED ALWAYS AS IDENTITY,
  workspace_id text COLLATE "C" NOT NULL,
  agent_id text NOT NULL,
  conversation_id text NOT NULL,
  model text NOT NULL,
  route text NOT NULL,
  amount bigint NOT NULL,
  price_version text NOT NULL,
  status text NOT NULL,
  created_at bigint NOT NULL,
  expires_at bigint NOT NULL,
  finished_at bigint,
  entry_id bigint,
  allocations jsonb
);
-- Holds that took credits from a workspace's grants, for the lapse sweep.
CREATE INDEX IF NOT EXISTS ${n.local('replies_held_idx')} ON ${R} (workspace_id, expires_at)
  WHERE status = 'held' AND allocations IS NOT NULL;

CREATE TABLE IF NOT EXISTS ${L} (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  workspace_id text COLLATE "C" NOT NULL,
  kind text NOT NULL,
  amount bigint NOT NULL,
  at bigint NOT NULL,
  reply_id text,
  agent_id text,
  conversation_id text,
  model text,
  route text,
  price_version text,
  grant_id text,
  plan text
);
CREATE INDEX IF NOT EXISTS ${n.local('ledger_ws_id_idx')} ON ${L} (workspace_id, id);
CREATE INDEX IF NOT EXISTS ${n.local('ledger_ws_at_idx')} ON ${L} (workspace_id, at);
CREATE INDEX IF NOT EXISTS ${n.local('ledger_ws_agent_idx')} ON ${L} (workspace_id, agent_id, id) WHERE agent_id IS NOT NULL;

CREATE TABLE IF NOT EXISTS ${A} (
  workspace_id text COLLATE "C" NOT NULL,
  period_index bigint NOT NULL,
  threshold double precision NOT NULL,
  PRIMARY KEY (workspace_id, period_index, threshold)
);

-- ─── JSON shapes returned to the adapter ──────────────────────────────────

CREATE OR REPLACE FUNCTION ${F('ws_json')}(w ${W}) RETURNS jsonb LANGUAGE sql STABLE AS $fn$
  SELECT jsonb_build_object(
    'workspaceId', w.workspace_id, 'plan', w.plan, 'allotment', w.allotment,
    'pendingPlan', w.pending_plan, 'pendingAllotment', w.pending_allotment, 'anchor', w.anchor,
    'periodIndex', w.period_index, 'periodStart', w.period_start, 'periodEnd', w.period_end,
    'usedThisPeriod', w.used_this_period, 'version', w.version, 'createdAt', w.created_at)
$fn$;

CREATE OR REPLACE FUNCTION ${F('reply_json')}(r ${R}) RETURNS jsonb LANGUAGE sql STABLE AS $fn$
  SELECT jsonb_build_object(
    'replyId', r.reply_id, 'workspaceId', r.workspace_id, 'agentId', r.agent_id,
    'conversationId', r.conversation_id, 'model', r.model, 'route', r.route, 'amount', r.amount,
    'priceVersion', r.price_version, 'status', r.status, 'createdAt', r.created_at,
    'expiresAt', r.expires_at, 'finishedAt', r.finished_at, 'entryId', r.entry_id::text)
$fn$;

CREATE OR REPLACE FUNCTION ${F('grant_json')}(g ${G}) RETURNS jsonb LANGUAGE sql STABLE AS $fn$
  SELECT jsonb_build_object(
    'grantId', g.grant_id, 'kind', g.kind, 'amount', g.amount, 'remaining', g.remaining,
    'expiresAt', g.expires_at, 'createdAt', g.created_at)
$fn$;

CREATE OR REPLACE FUNCTION ${F('ledger_json')}(l ${L}) RETURNS jsonb LANGUAGE sql STABLE AS $fn$
  SELECT jsonb_build_object(
    'id', l.id::text, 'workspaceId', l.workspace_id, 'kind', l.kind, 'amount', l.amount, 'at', l.at,
    'replyId', l.reply_id, 'agentId', l.agent_id, 'conversationId', l.conversation_id,
    'model', l.model, 'route', l.route, 'priceVersion', l.price_version, 'grantId', l.grant_id,
    'plan', l.plan)
$fn$;

CREATE OR REPLACE FUNCTION ${F('state')}(p_ws text) RETURNS jsonb LANGUAGE plpgsql AS $fn$
DECLARE
  w ${W};
  v_grants jsonb;
BEGIN
  SELECT * INTO w FROM ${W} WHERE workspace_id = p_ws;
  SELECT COALESCE(jsonb_agg(${F('grant_json')}(g) ORDER BY g.expires_at ASC NULLS LAST, g.created_at, g.grant_id), '[]'::jsonb)
    INTO v_grants FROM ${G} g WHERE g.workspace_id = p_ws AND g.live AND g.remaining > 0;
  RETURN jsonb_build_object('workspace', ${F('ws_json')}(w), 'available', w.available, 'held', w.held, 'grants', v_grants);
END
$fn$;

-- ─── building blocks ─────────────────────────────────────────────────────

CREATE OR REPLACE FUNCTION ${F('append')}(e jsonb) RETURNS void LANGUAGE plpgsql AS $fn$
BEGIN
  INSERT INTO ${L} (workspace_id, kind, amount, at, reply_id, agent_id, conversation_id, model, route,
                    price_version, grant_id, plan)
  VALUES (e->>'workspaceId', e->>'kind', (e->>'amount')::bigint, (e->>'at')::bigint, e->>'replyId',
          e->>'agentId', e->>'conversationId', e->>'model', e->>'route', e->>'priceVersion',
          e->>'grantId', e->>'plan');
END
$fn$;

CREATE OR REPLACE FUNCTION ${F('expire')}(p_ws text, p_grant text, p_amount bigint, p_now bigint)
RETURNS void LANGUAGE plpgsql AS $fn$
BEGIN
  IF p_amount > 0 THEN
    INSERT INTO ${L} (workspace_id, kind, amount, at, grant_id) VALUES (p_ws, 'expiry', -p_amount, p_now, p_grant);
  END IF;
END
$fn$;

CREATE OR REPLACE FUNCTION ${F('set_ws')}(p_ws text, v jsonb) RETURNS void LANGUAGE plpgsql AS $fn$
BEGIN
  UPDATE ${W} SET
    plan = v->>'plan', allotment = (v->>'allotment')::bigint, pending_plan = v->>'pendingPlan',
    pending_allotment = (v->>'pendingAllotment')::bigint, anchor = (v->>'anchor')::bigint,
    period_index = (v->>'periodIndex')::bigint, period_start = (v->>'periodStart')::bigint,
    period_end = (v->>'periodEnd')::bigint, used_this_period = (v->>'usedThisPeriod')::bigint,
    version = (v->>'version')::bigint, created_at = (v->>'createdAt')::bigint
  WHERE workspace_id = p_ws;
END
$fn$;

-- Ends a hold without a charge: credits go back to the grants they came from, or expire
-- at once with an expiry row when their grant ran out of time meanwhile.
CREATE OR REPLACE FUNCTION ${F('finish_hold')}(r ${R}, p_status text, p_now bigint)
RETURNS jsonb LANGUAGE plpgsql AS $fn$
DECLARE
  v_item record;
  v_grant record;
  v_amount bigint;
  v_back bigint := 0;
  -- A lapsed hold gave its credits back when it lapsed, not when someone noticed.
  v_returned_at bigint := CASE WHEN p_status = 'expired' THEN LEAST(p_now, r.expires_at) ELSE p_now END;
BEGIN
  UPDATE ${R} SET status = p_status, finished_at = p_now WHERE reply_id = r.reply_id RETURNING * INTO r;
  IF r.allocations IS NOT NULL THEN
    PERFORM 1 FROM ${W} WHERE workspace_id = r.workspace_id;
    IF FOUND THEN
      FOR v_item IN
        SELECT e.value FROM jsonb_array_elements(r.allocations) WITH ORDINALITY AS e(value, n) ORDER BY e.n
      LOOP
        v_amount := (v_item.value->>'amount')::bigint;
        SELECT live, expires_at INTO v_grant FROM ${G}
          WHERE workspace_id = r.workspace_id AND grant_id = v_item.value->>'grantId';
        IF FOUND AND v_grant.live AND (v_grant.expires_at IS NULL OR v_grant.expires_at > v_returned_at) THEN
          UPDATE ${G} SET remaining = remaining + v_amount
            WHERE workspace_id = r.workspace_id AND grant_id = v_item.value->>'grantId';
          v_back := v_back + v_amount;
        ELSE
          PERFORM ${F('expire')}(r.workspace_id, v_item.value->>'grantId', v_amount, p_now);
        END IF;
      END LOOP;
      UPDATE ${W} SET held = held - r.amount, available = available + v_back WHERE workspace_id = r.workspace_id;
    END IF;
  END IF;
  RETURN ${F('reply_json')}(r);
END
$fn$;

CREATE OR REPLACE FUNCTION ${F('lapse_holds')}(p_ws text, p_now bigint) RETURNS boolean LANGUAGE plpgsql AS $fn$
DECLARE
  r ${R};
  v_any boolean := false;
BEGIN
  FOR r IN
    SELECT * FROM ${R}
    WHERE workspace_id = p_ws AND status = 'held' AND allocations IS NOT NULL AND expires_at <= p_now
    ORDER BY seq
  LOOP
    PERFORM ${F('finish_hold')}(r, 'expired', p_now);
    v_any := true;
  END LOOP;
  RETURN v_any;
END
$fn$;

CREATE OR REPLACE FUNCTION ${F('expire_grants')}(p_ws text, p_now bigint) RETURNS boolean LANGUAGE plpgsql AS $fn$
DECLARE
  g record;
  v_gone bigint := 0;
  v_any boolean := false;
BEGIN
  FOR g IN
    SELECT grant_id, remaining FROM ${G}
    WHERE workspace_id = p_ws AND live AND expires_at <= p_now
    ORDER BY ${SPENDING_ORDER}
  LOOP
    PERFORM ${F('expire')}(p_ws, g.grant_id, g.remaining, p_now);
    v_gone := v_gone + g.remaining;
    v_any := true;
  END LOOP;
  IF v_any THEN
    UPDATE ${G} SET live = false, remaining = 0 WHERE workspace_id = p_ws AND live AND expires_at <= p_now;
    UPDATE ${W} SET available = available - v_gone WHERE workspace_id = p_ws;
  END IF;
  RETURN v_any;
END
$fn$;

-- Recomputes the instant before which no sweep is needed: the earliest live hold or grant expiry.
CREATE OR REPLACE FUNCTION ${F('reset_sweep_at')}(p_ws text) RETURNS void LANGUAGE plpgsql AS $fn$
BEGIN
  UPDATE ${W} SET sweep_at = LEAST(
    COALESCE((SELECT min(expires_at) FROM ${R} WHERE workspace_id = p_ws AND status = 'held' AND allocations IS NOT NULL), ${MAX_MICROS_SQL}),
    COALESCE((SELECT min(expires_at) FROM ${G} WHERE workspace_id = p_ws AND live), ${MAX_MICROS_SQL}))
  WHERE workspace_id = p_ws;
END
$fn$;

-- Lapses holds whose time is up, then expires grants whose time is up, when the workspace's
-- sweep_at says something may be due. True if it ran.
CREATE OR REPLACE FUNCTION ${F('sweep')}(p_ws text, p_now bigint, p_sweep_at bigint) RETURNS boolean LANGUAGE plpgsql AS $fn$
BEGIN
  IF p_now < p_sweep_at THEN
    RETURN false;
  END IF;
  PERFORM ${F('lapse_holds')}(p_ws, p_now);
  PERFORM ${F('expire_grants')}(p_ws, p_now);
  PERFORM ${F('reset_sweep_at')}(p_ws);
  RETURN true;
END
$fn$;

-- ─── the contract operations: one call each, a JSON command in, a JSON outcome out ───

CREATE OR REPLACE FUNCTION ${F('create_workspace')}(c jsonb) RETURNS jsonb LANGUAGE plpgsql AS $fn$
DECLARE
  v jsonb := c->'workspace';
  g jsonb := c->'grant';
  v_ws text := c->'workspace'->>'workspaceId';
BEGIN
  INSERT INTO ${W} (workspace_id, plan, allotment, pending_plan, pending_allotment, anchor, period_index,
                    period_start, period_end, used_this_period, version, created_at, available, held, sweep_at)
  VALUES (v_ws, v->>'plan', (v->>'allotment')::bigint, v->>'pendingPlan', (v->>'pendingAllotment')::bigint,
          (v->>'anchor')::bigint, (v->>'periodIndex')::bigint, (v->>'periodStart')::bigint,
          (v->>'periodEnd')::bigint, (v->>'usedThisPeriod')::bigint, (v->>'version')::bigint,
          (v->>'createdAt')::bigint, (g->>'remaining')::bigint, 0,
          COALESCE((g->>'expiresAt')::bigint, ${MAX_MICROS_SQL}))
  ON CONFLICT (workspace_id) DO NOTHING;
  IF NOT FOUND THEN
    RETURN jsonb_build_object('status', 'exists');
  END IF;
  INSERT INTO ${G} (workspace_id, grant_id, kind, amount, remaining, expires_at, created_at)
  VALUES (v_ws, g->>'grantId', g->>'kind', (g->>'amount')::bigint, (g->>'remaining')::bigint,
          (g->>'expiresAt')::bigint, (g->>'createdAt')::bigint);
  PERFORM ${F('append')}(c->'entry');
  RETURN jsonb_build_object('status', 'created', 'state', ${F('state')}(v_ws));
END
$fn$;

CREATE OR REPLACE FUNCTION ${F('get_workspace')}(c jsonb) RETURNS jsonb LANGUAGE plpgsql AS $fn$
DECLARE
  v_ws text := c->>'workspaceId';
  v_now bigint := (c->>'now')::bigint;
  w ${W};
BEGIN
  SELECT * INTO w FROM ${W} WHERE workspace_id = v_ws;
  IF NOT FOUND THEN
    RETURN jsonb_build_object('status', 'missing');
  END IF;
  -- At or past the period end nothing is swept: the caller renews first, so rollover sees the ending allotment.
  IF v_now < w.period_end THEN
    PERFORM ${F('sweep')}(v_ws, v_now, w.sweep_at);
  END IF;
  RETURN jsonb_build_object('status', 'found', 'state', ${F('state')}(v_ws));
END
$fn$;

CREATE OR REPLACE FUNCTION ${F('reserve')}(c jsonb, pending jsonb) RETURNS jsonb LANGUAGE plpgsql AS $fn$
DECLARE
  p jsonb := c->'reply';
  v_id text := c->'reply'->>'replyId';
  v_ws text := c->'reply'->>'workspaceId';
  v_amount bigint := (c->'reply'->>'amount')::bigint;
  v_expires bigint := (c->'reply'->>'expiresAt')::bigint;
  v_now bigint := (c->>'now')::bigint;
  v_available bigint := 0;
  v_left bigint;
  v_part bigint;
  v_grant text;
  v_alloc jsonb;
  g record;
  r ${R};
  w ${W};
BEGIN
  SELECT * INTO r FROM ${R} WHERE reply_id = v_id;
  IF FOUND THEN
    RETURN jsonb_build_object('status', 'exists', 'reply', ${F('reply_json')}(r));
  END IF;
  IF (c->>'requireWorkspace')::boolean AND pending IS NOT NULL THEN
    -- Deferred fast path (see run()): decide from the row plus the batch's pending changes,
    -- write only the reply, and hand the counter changes back as a delta. Anything unusual
    -- asks run() to flush the pending changes and call again without 'pending'.
    SELECT * INTO w FROM ${W} WHERE workspace_id = v_ws;
    IF NOT FOUND THEN
      RETURN jsonb_build_object('status', 'workspace_not_found');
    END IF;
    v_available := w.available + COALESCE((pending->>'a')::bigint, 0);
    IF v_now < w.period_end AND v_now < LEAST(w.sweep_at, COALESCE((pending->>'s')::bigint, ${MAX_MICROS_SQL}))
       AND v_available >= v_amount THEN
      IF v_amount = 0 THEN
        INSERT INTO ${R} (reply_id, workspace_id, agent_id, conversation_id, model, route, amount, price_version,
                          status, created_at, expires_at)
        VALUES (v_id, v_ws, p->>'agentId', p->>'conversationId', p->>'model', p->>'route', 0,
                p->>'priceVersion', 'held', (p->>'createdAt')::bigint, v_expires);
        RETURN jsonb_build_object('status', 'reserved', 'available', v_available);
      END IF;
      SELECT grant_id, remaining INTO g FROM ${G} WHERE workspace_id = v_ws AND live AND remaining > 0
        ORDER BY ${SPENDING_ORDER} LIMIT 1;
      IF FOUND AND g.remaining + COALESCE((pending->'g'->>g.grant_id)::bigint, 0) >= v_amount THEN
        INSERT INTO ${R} (reply_id, workspace_id, agent_id, conversation_id, model, route, amount, price_version,
                          status, created_at, expires_at, allocations)
        VALUES (v_id, v_ws, p->>'agentId', p->>'conversationId', p->>'model', p->>'route', v_amount,
                p->>'priceVersion', 'held', (p->>'createdAt')::bigint, v_expires,
                jsonb_build_array(jsonb_build_object('grantId', g.grant_id, 'amount', v_amount)));
        RETURN jsonb_build_object('status', 'reserved', 'available', v_available - v_amount,
          '_delta', jsonb_build_object('a', -v_amount, 'h', v_amount, 's', v_expires, 'g', g.grant_id));
      END IF;
    END IF;
    RETURN jsonb_build_object('_flush', true);
  END IF;
  IF (c->>'requireWorkspace')::boolean THEN
    -- The batch holds the workspace's lock (run() locks every workspace it touches).
    -- Fast path, one statement: the period is current, nothing can lapse or expire yet, and
    -- the balance covers the amount.
    UPDATE ${W} SET available = available - v_amount, held = held + v_amount,
                    sweep_at = CASE WHEN v_amount > 0 THEN LEAST(sweep_at, v_expires) ELSE sweep_at END
      WHERE workspace_id = v_ws AND v_now < period_end AND v_now < sweep_at AND available >= v_amount
      RETURNING available INTO v_available;
    IF NOT FOUND THEN
      SELECT * INTO w FROM ${W} WHERE workspace_id = v_ws;
      IF NOT FOUND THEN
        RETURN jsonb_build_object('status', 'workspace_not_found');
      END IF;
      IF v_now >= w.period_end THEN
        RETURN jsonb_build_object('status', 'renewal_due', 'workspace', ${F('ws_json')}(w));
      END IF;
      IF v_now >= w.sweep_at THEN
        PERFORM ${F('sweep')}(v_ws, v_now, w.sweep_at);
        SELECT * INTO w FROM ${W} WHERE workspace_id = v_ws;
      END IF;
      IF w.available < v_amount THEN
        INSERT INTO ${R} (reply_id, workspace_id, agent_id, conversation_id, model, route, amount, price_version,
                          status, created_at, expires_at, finished_at)
        VALUES (v_id, v_ws, p->>'agentId', p->>'conversationId', p->>'model', p->>'route', v_amount,
                p->>'priceVersion', 'refused', (p->>'createdAt')::bigint, v_expires, v_now)
        RETURNING * INTO r;
        RETURN jsonb_build_object('status', 'insufficient', 'reply', ${F('reply_json')}(r),
                                  'available', w.available, 'workspace', ${F('ws_json')}(w));
      END IF;
      UPDATE ${W} SET available = available - v_amount, held = held + v_amount,
                      sweep_at = CASE WHEN v_amount > 0 THEN LEAST(sweep_at, v_expires) ELSE sweep_at END
        WHERE workspace_id = v_ws
        RETURNING available INTO v_available;
    END IF;
    IF v_amount > 0 THEN
      -- Usually the first grant in spending order covers it all: one statement.
      UPDATE ${G} SET remaining = remaining - v_amount
        WHERE workspace_id = v_ws AND remaining >= v_amount AND grant_id = (
          SELECT grant_id FROM ${G} WHERE workspace_id = v_ws AND live AND remaining > 0
          ORDER BY ${SPENDING_ORDER} LIMIT 1)
        RETURNING grant_id INTO v_grant;
      IF FOUND THEN
        v_alloc := jsonb_build_array(jsonb_build_object('grantId', v_grant, 'amount', v_amount));
      ELSE
        v_left := v_amount;
        v_alloc := '[]'::jsonb;
        FOR g IN
          SELECT grant_id, remaining FROM ${G}
          WHERE workspace_id = v_ws AND live AND remaining > 0
          ORDER BY ${SPENDING_ORDER}
        LOOP
          v_part := LEAST(g.remaining, v_left);
          UPDATE ${G} SET remaining = remaining - v_part WHERE workspace_id = v_ws AND grant_id = g.grant_id;
          v_alloc := v_alloc || jsonb_build_array(jsonb_build_object('grantId', g.grant_id, 'amount', v_part));
          v_left := v_left - v_part;
          EXIT WHEN v_left = 0;
        END LOOP;
        IF v_left > 0 THEN
          RAISE EXCEPTION 'the grants of workspace % do not cover its available balance', v_ws;
        END IF;
      END IF;
    END IF;
  END IF;
  INSERT INTO ${R} (reply_id, workspace_id, agent_id, conversation_id, model, route, amount, price_version,
                    status, created_at, expires_at, allocations)
  VALUES (v_id, v_ws, p->>'agentId', p->>'conversationId', p->>'model', p->>'route', v_amount,
          p->>'priceVersion', 'held', (p->>'createdAt')::bigint, v_expires, v_alloc);
  -- The held record is the command's reply as given: the adapter builds it, saving the JSON here.
  RETURN jsonb_build_object('status', 'reserved', 'available', v_available);
END
$fn$;

CREATE OR REPLACE FUNCTION ${F('settle')}(c jsonb, pending jsonb) RETURNS jsonb LANGUAGE plpgsql AS $fn$
DECLARE
  v_now bigint := (c->>'now')::bigint;
  v_entry bigint;
  v_delta jsonb;
  r ${R};
  w ${W};
  l ${L};
BEGIN
  -- No row lock needed: every write of a reply runs under its workspace's batch lock.
  SELECT * INTO r FROM ${R} WHERE reply_id = c->>'replyId';
  IF NOT FOUND OR r.workspace_id <> c->>'workspaceId' THEN
    RETURN jsonb_build_object('status', 'not_found');
  END IF;
  IF r.status = 'settled' THEN
    SELECT * INTO l FROM ${L} WHERE id = r.entry_id;
    IF NOT FOUND THEN
      RAISE EXCEPTION 'ledger row % of reply % is missing', r.entry_id, r.reply_id;
    END IF;
    SELECT * INTO w FROM ${W} WHERE workspace_id = r.workspace_id;
    w.used_this_period := w.used_this_period + COALESCE((pending->>'u')::bigint, 0);
    RETURN jsonb_build_object('status', 'settled', 'reply', ${F('reply_json')}(r), 'entry', ${F('ledger_json')}(l),
                              'replayed', true, 'workspace', CASE WHEN w.workspace_id IS NOT NULL THEN ${F('ws_json')}(w) END);
  ELSIF r.status <> 'held' THEN
    RETURN jsonb_build_object('status', r.status, 'reply', ${F('reply_json')}(r));
  ELSIF r.expires_at <= v_now THEN
    RETURN jsonb_build_object('status', 'expired', 'reply', ${F('finish_hold')}(r, 'expired', v_now));
  END IF;
  INSERT INTO ${L} (workspace_id, kind, amount, at, reply_id, agent_id, conversation_id, model, route, price_version)
  VALUES (r.workspace_id, 'reply', -r.amount, v_now, r.reply_id, r.agent_id, r.conversation_id, r.model,
          r.route, r.price_version)
  RETURNING id INTO v_entry;
  UPDATE ${R} SET status = 'settled', finished_at = v_now, entry_id = v_entry WHERE reply_id = r.reply_id;
  r.status := 'settled';
  r.finished_at := v_now;
  r.entry_id := v_entry;
  IF pending IS NOT NULL THEN
    -- Deferred (see run()): the counter changes go back as a delta, applied once per batch.
    SELECT * INTO w FROM ${W} WHERE workspace_id = r.workspace_id;
    IF FOUND THEN
      w.used_this_period := w.used_this_period + COALESCE((pending->>'u')::bigint, 0);
      IF r.amount > 0 THEN
        w.used_this_period := w.used_this_period + r.amount;
        v_delta := jsonb_build_object('h', -r.amount, 'u', r.amount);
      END IF;
    END IF;
  ELSIF r.amount > 0 THEN
    UPDATE ${W} SET held = held - r.amount, used_this_period = used_this_period + r.amount
      WHERE workspace_id = r.workspace_id RETURNING * INTO w;
  ELSE
    SELECT * INTO w FROM ${W} WHERE workspace_id = r.workspace_id;
  END IF;
  RETURN jsonb_build_object(
    'status', 'settled', 'reply', ${F('reply_json')}(r), 'replayed', false, '_delta', v_delta,
    'workspace', CASE WHEN w.workspace_id IS NOT NULL THEN ${F('ws_json')}(w) END,
    'entry', jsonb_build_object(
      'id', v_entry::text, 'workspaceId', r.workspace_id, 'kind', 'reply', 'amount', -r.amount, 'at', v_now,
      'replyId', r.reply_id, 'agentId', r.agent_id, 'conversationId', r.conversation_id, 'model', r.model,
      'route', r.route, 'priceVersion', r.price_version, 'grantId', NULL, 'plan', NULL));
END
$fn$;

CREATE OR REPLACE FUNCTION ${F('release')}(c jsonb) RETURNS jsonb LANGUAGE plpgsql AS $fn$
DECLARE
  v_now bigint := (c->>'now')::bigint;
  r ${R};
BEGIN
  SELECT * INTO r FROM ${R} WHERE reply_id = c->>'replyId';
  IF NOT FOUND OR r.workspace_id <> c->>'workspaceId' THEN
    RETURN jsonb_build_object('status', 'not_found');
  END IF;
  IF r.status = 'released' THEN
    RETURN jsonb_build_object('status', 'released', 'reply', ${F('reply_json')}(r), 'replayed', true);
  ELSIF r.status <> 'held' THEN
    RETURN jsonb_build_object('status', r.status, 'reply', ${F('reply_json')}(r));
  ELSIF r.expires_at <= v_now THEN
    RETURN jsonb_build_object('status', 'expired', 'reply', ${F('finish_hold')}(r, 'expired', v_now));
  END IF;
  RETURN jsonb_build_object('status', 'released', 'reply', ${F('finish_hold')}(r, 'released', v_now), 'replayed', false);
END
$fn$;

CREATE OR REPLACE FUNCTION ${F('renew')}(c jsonb) RETURNS jsonb LANGUAGE plpgsql AS $fn$
DECLARE
  v_ws text := c->>'workspaceId';
  v_now bigint := (c->>'now')::bigint;
  v_cap bigint := (c->>'rolloverCap')::bigint;
  gr jsonb := c->'grant';
  v_ending bigint;
  v_carried bigint;
  v_to_carry bigint;
  v_kept bigint;
  v_remaining bigint;
  g record;
  w ${W};
BEGIN
  SELECT * INTO w FROM ${W} WHERE workspace_id = v_ws;
  IF NOT FOUND THEN
    RETURN jsonb_build_object('status', 'workspace_not_found');
  END IF;
  IF w.version <> (c->>'expectedVersion')::bigint THEN
    RETURN jsonb_build_object('status', 'stale', 'workspace', ${F('ws_json')}(w));
  END IF;
  PERFORM ${F('lapse_holds')}(v_ws, v_now);
  SELECT COALESCE(sum(remaining), 0) INTO v_ending FROM ${G} WHERE workspace_id = v_ws AND live AND kind = 'allotment';
  v_carried := LEAST(v_ending, v_cap);
  v_to_carry := v_carried;
  FOR g IN
    SELECT grant_id, remaining FROM ${G}
    WHERE workspace_id = v_ws AND live AND kind = 'allotment' AND remaining > 0
    ORDER BY ${SPENDING_ORDER}
  LOOP
    v_kept := LEAST(g.remaining, v_to_carry);
    v_to_carry := v_to_carry - v_kept;
    PERFORM ${F('expire')}(v_ws, g.grant_id, g.remaining - v_kept, v_now);
  END LOOP;
  UPDATE ${G} SET remaining = 0, live = false WHERE workspace_id = v_ws AND live AND kind = 'allotment';
  UPDATE ${W} SET available = available - v_ending WHERE workspace_id = v_ws;
  PERFORM ${F('expire_grants')}(v_ws, v_now);
  v_remaining := (gr->>'remaining')::bigint + v_carried;
  INSERT INTO ${G} (workspace_id, grant_id, kind, amount, remaining, expires_at, created_at)
  VALUES (v_ws, gr->>'grantId', gr->>'kind', (gr->>'amount')::bigint + v_carried, v_remaining,
          (gr->>'expiresAt')::bigint, (gr->>'createdAt')::bigint)
  ON CONFLICT (workspace_id, grant_id) DO UPDATE SET
    kind = EXCLUDED.kind, amount = EXCLUDED.amount, remaining = EXCLUDED.remaining,
    expires_at = EXCLUDED.expires_at, created_at = EXCLUDED.created_at, live = true;
  UPDATE ${W} SET available = available + v_remaining WHERE workspace_id = v_ws;
  PERFORM ${F('set_ws')}(v_ws, c->'workspace');
  PERFORM ${F('reset_sweep_at')}(v_ws);
  PERFORM ${F('append')}(c->'entry');
  RETURN jsonb_build_object('status', 'renewed', 'state', ${F('state')}(v_ws),
                            'expired', v_ending - v_carried, 'carried', v_carried);
END
$fn$;

CREATE OR REPLACE FUNCTION ${F('change_plan')}(c jsonb) RETURNS jsonb LANGUAGE plpgsql AS $fn$
DECLARE
  v_ws text := c->>'workspaceId';
  v_now bigint := (c->>'now')::bigint;
  v_increase bigint := (c->>'allotmentIncrease')::bigint;
  w ${W};
BEGIN
  SELECT * INTO w FROM ${W} WHERE workspace_id = v_ws;
  IF NOT FOUND THEN
    RETURN jsonb_build_object('status', 'workspace_not_found');
  END IF;
  IF w.version <> (c->>'expectedVersion')::bigint THEN
    RETURN jsonb_build_object('status', 'stale', 'workspace', ${F('ws_json')}(w));
  END IF;
  IF w.available + w.held + v_increase > ${MAX_MICROS_SQL} THEN
    RETURN jsonb_build_object('status', 'overflow');
  END IF;
  IF v_increase > 0 THEN
    UPDATE ${G} SET amount = amount + v_increase, remaining = remaining + v_increase
      WHERE workspace_id = v_ws AND grant_id = 'period:' || w.period_index AND live;
    IF NOT FOUND THEN
      INSERT INTO ${G} (workspace_id, grant_id, kind, amount, remaining, expires_at, created_at)
      VALUES (v_ws, 'period:' || w.period_index, 'allotment', v_increase, v_increase, w.period_end, v_now)
      ON CONFLICT (workspace_id, grant_id) DO UPDATE SET
        kind = EXCLUDED.kind, amount = EXCLUDED.amount, remaining = EXCLUDED.remaining,
        expires_at = EXCLUDED.expires_at, created_at = EXCLUDED.created_at, live = true;
    END IF;
    UPDATE ${W} SET available = available + v_increase, sweep_at = LEAST(sweep_at, w.period_end) WHERE workspace_id = v_ws;
  END IF;
  PERFORM ${F('set_ws')}(v_ws, c->'workspace');
  PERFORM ${F('append')}(c->'entry');
  RETURN jsonb_build_object('status', 'changed', 'state', ${F('state')}(v_ws));
END
$fn$;

CREATE OR REPLACE FUNCTION ${F('add_grant')}(c jsonb) RETURNS jsonb LANGUAGE plpgsql AS $fn$
DECLARE
  v_ws text := c->>'workspaceId';
  gr jsonb := c->'grant';
  w ${W};
  g ${G};
BEGIN
  SELECT * INTO w FROM ${W} WHERE workspace_id = v_ws;
  IF NOT FOUND THEN
    RETURN jsonb_build_object('status', 'workspace_not_found');
  END IF;
  SELECT * INTO g FROM ${G} WHERE workspace_id = v_ws AND grant_id = gr->>'grantId';
  IF FOUND THEN
    RETURN jsonb_build_object('status', 'exists', 'grant', ${F('grant_json')}(g));
  END IF;
  IF w.available + w.held + (gr->>'amount')::bigint > ${MAX_MICROS_SQL} THEN
    RETURN jsonb_build_object('status', 'overflow');
  END IF;
  INSERT INTO ${G} (workspace_id, grant_id, kind, amount, remaining, expires_at, created_at)
  VALUES (v_ws, gr->>'grantId', gr->>'kind', (gr->>'amount')::bigint, (gr->>'remaining')::bigint,
          (gr->>'expiresAt')::bigint, (gr->>'createdAt')::bigint);
  UPDATE ${W} SET available = available + (gr->>'remaining')::bigint,
                  sweep_at = LEAST(sweep_at, COALESCE((gr->>'expiresAt')::bigint, ${MAX_MICROS_SQL}))
    WHERE workspace_id = v_ws;
  PERFORM ${F('append')}(c->'entry');
  RETURN jsonb_build_object('status', 'granted', 'state', ${F('state')}(v_ws));
END
$fn$;

CREATE OR REPLACE FUNCTION ${F('claim_alert')}(c jsonb) RETURNS jsonb LANGUAGE plpgsql AS $fn$
BEGIN
  PERFORM 1 FROM ${W} WHERE workspace_id = c->>'workspaceId';
  IF NOT FOUND THEN
    RETURN 'false'::jsonb;
  END IF;
  INSERT INTO ${A} (workspace_id, period_index, threshold)
  VALUES (c->>'workspaceId', (c->>'periodIndex')::bigint, (c->>'threshold')::double precision)
  ON CONFLICT DO NOTHING;
  RETURN to_jsonb(FOUND);
END
$fn$;

CREATE OR REPLACE FUNCTION ${F('dispatch')}(c jsonb, pending jsonb) RETURNS jsonb LANGUAGE plpgsql AS $fn$
BEGIN
  CASE c->>'op'
    WHEN 'reserve' THEN RETURN ${F('reserve')}(c, pending);
    WHEN 'settle' THEN RETURN ${F('settle')}(c, pending);
    WHEN 'release' THEN RETURN ${F('release')}(c);
    WHEN 'getWorkspace' THEN RETURN ${F('get_workspace')}(c);
    WHEN 'createWorkspace' THEN RETURN ${F('create_workspace')}(c);
    WHEN 'renew' THEN RETURN ${F('renew')}(c);
    WHEN 'changePlan' THEN RETURN ${F('change_plan')}(c);
    WHEN 'grant' THEN RETURN ${F('add_grant')}(c);
    WHEN 'claimAlert' THEN RETURN ${F('claim_alert')}(c);
    ELSE RAISE EXCEPTION 'unknown credits operation %', c->>'op';
  END CASE;
END
$fn$;

-- Applies a batch's pending counter changes to one workspace and its grants.
CREATE OR REPLACE FUNCTION ${F('flush')}(p_ws text, p_a bigint, p_h bigint, p_u bigint, p_s bigint, p_g jsonb)
RETURNS void LANGUAGE plpgsql AS $fn$
DECLARE
  v_grant record;
BEGIN
  UPDATE ${W} SET available = available + p_a, held = held + p_h, used_this_period = used_this_period + p_u,
                  sweep_at = LEAST(sweep_at, p_s)
    WHERE workspace_id = p_ws;
  FOR v_grant IN SELECT key, value FROM jsonb_each_text(p_g) LOOP
    UPDATE ${G} SET remaining = remaining + v_grant.value::bigint WHERE workspace_id = p_ws AND grant_id = v_grant.key;
  END LOOP;
END
$fn$;

-- One group-commit batch: locks every workspace it touches in a fixed order (so batches on
-- other connections never deadlock; every write of a workspace goes through here), then
-- runs each operation in its own subtransaction (a savepoint), so a failing operation rolls
-- back alone and its neighbours still commit.
--
-- Reserve and settle on the fast path do not update the workspace and grant rows: they
-- return their counter changes, which are summed here and written once per workspace at the
-- end (or before any other operation on that workspace reads the row). Updating one row
-- many times in one transaction makes every later read walk all its versions; once per
-- batch keeps an operation's cost flat with the batch size.
CREATE OR REPLACE FUNCTION ${F('run')}(p_ops jsonb, p_lock text[]) RETURNS jsonb LANGUAGE plpgsql AS $fn$
DECLARE
  v_op jsonb;
  v_res jsonb;
  v_delta jsonb;
  v_ws text;
  v_kind text;
  v_tries int;
  v_key int;
  v_deferred boolean;
  -- The pending changes of the one workspace this batch defers (the first one charged).
  v_pws text;
  v_pa bigint := 0;
  v_ph bigint := 0;
  v_pu bigint := 0;
  v_ps bigint := ${MAX_MICROS_SQL};
  v_pg jsonb := '{}';
  v_out jsonb[] := '{}';
BEGIN
  -- Transaction-scoped advisory locks on the workspace ids, taken in ascending key order.
  -- Unlike row locks they need no row (a workspace created in this batch is covered too),
  -- and an update in an operation's subtransaction of a row its parent locked would cost a
  -- MultiXact per update.
  FOR v_key IN SELECT DISTINCT hashtext(id) FROM unnest(p_lock) AS id ORDER BY 1 LOOP
    PERFORM pg_advisory_xact_lock(${LOCK_SPACE}, v_key);
  END LOOP;
  FOR v_op IN SELECT e.value FROM jsonb_array_elements(p_ops) WITH ORDINALITY AS e(value, n) ORDER BY e.n LOOP
    v_kind := v_op->>'op';
    v_ws := COALESCE(v_op->>'workspaceId', v_op->'reply'->>'workspaceId', v_op->'workspace'->>'workspaceId');
    v_deferred := v_kind IN ('reserve', 'settle') AND (v_pws IS NULL OR v_pws = v_ws);
    IF v_deferred THEN
      v_pws := v_ws;
    ELSIF v_pws = v_ws THEN
      -- Any other operation on the deferred workspace reads the row: apply what is pending.
      PERFORM ${F('flush')}(v_pws, v_pa, v_ph, v_pu, v_ps, v_pg);
      v_pa := 0; v_ph := 0; v_pu := 0; v_ps := ${MAX_MICROS_SQL}; v_pg := '{}';
    END IF;
    v_res := NULL;
    v_tries := 0;
    WHILE v_res IS NULL LOOP
      BEGIN
        v_res := ${F('dispatch')}(v_op, CASE WHEN v_deferred THEN
          jsonb_build_object('a', v_pa, 's', v_ps, 'u', v_pu, 'g', v_pg) END);
      EXCEPTION
        -- These abort the whole batch; the adapter runs it again.
        WHEN deadlock_detected OR serialization_failure THEN RAISE;
        -- A racing transaction inserted the same id and has committed now: run the operation
        -- again, it sees the row (a replay).
        WHEN unique_violation THEN
          v_tries := v_tries + 1;
          IF v_tries > 1 THEN
            v_res := jsonb_build_object('error', SQLERRM, 'code', SQLSTATE);
          END IF;
        WHEN OTHERS THEN
          v_res := jsonb_build_object('error', SQLERRM, 'code', SQLSTATE);
      END;
      IF v_res ? '_flush' THEN
        PERFORM ${F('flush')}(v_pws, v_pa, v_ph, v_pu, v_ps, v_pg);
        v_pa := 0; v_ph := 0; v_pu := 0; v_ps := ${MAX_MICROS_SQL}; v_pg := '{}';
        v_deferred := false;
        v_res := NULL;
      END IF;
    END LOOP;
    IF v_res ? '_delta' THEN
      v_delta := v_res->'_delta';
      IF jsonb_typeof(v_delta) = 'object' THEN
        v_pa := v_pa + COALESCE((v_delta->>'a')::bigint, 0);
        v_ph := v_ph + COALESCE((v_delta->>'h')::bigint, 0);
        v_pu := v_pu + COALESCE((v_delta->>'u')::bigint, 0);
        v_ps := LEAST(v_ps, COALESCE((v_delta->>'s')::bigint, v_ps));
        IF v_delta ? 'g' THEN
          -- The fast path takes the whole amount (-a) from one grant.
          v_pg := v_pg || jsonb_build_object(v_delta->>'g',
            COALESCE((v_pg->>(v_delta->>'g'))::bigint, 0) + (v_delta->>'a')::bigint);
        END IF;
      END IF;
      v_res := v_res - '_delta';
    END IF;
    v_out := array_append(v_out, v_res);
  END LOOP;
  IF v_pws IS NOT NULL AND (v_pa <> 0 OR v_ph <> 0 OR v_pu <> 0 OR v_ps < ${MAX_MICROS_SQL} OR v_pg <> '{}') THEN
    PERFORM ${F('flush')}(v_pws, v_pa, v_ph, v_pu, v_ps, v_pg);
  END IF;
  RETURN to_jsonb(v_out);
END
$fn$;
`;
  // v2: a batch's reserves and settles on the fast path run set-based (one statement each for
  // all of them) instead of one PL/pgSQL call and one subtransaction per operation.
  const v2 = /* sql */ `
-- The fast path of a whole batch, set-based. Settles of live holds first (one INSERT into the
-- ledger, one UPDATE of the replies, one UPDATE per workspace), then reserves that the
-- balance and the first grant in spending order cover, in batch order, up to the first that
-- does not fit (one INSERT, one UPDATE per workspace and per grant). Everything runs under
-- the batch's workspace locks, in one subtransaction: if any statement fails, nothing of
-- it stays and every operation goes through the one-by-one path. Returns (n, outcome) for
-- the operations it ran; the others are left to run().
-- Planned on every call (plan_cache_mode): a plan cached while the tables were small would
-- keep scanning them whole once they have grown.
CREATE OR REPLACE FUNCTION ${F('fast')}(p_settles jsonb, p_reserves jsonb) RETURNS TABLE (n int, outcome jsonb)
LANGUAGE plpgsql SET plan_cache_mode = force_custom_plan AS $fn$
DECLARE
  v_sweep record;
  v_seq regclass := pg_get_serial_sequence('${L}', 'id')::regclass;
BEGIN
  -- The replies are updated first, taking their ledger ids from the ledger's sequence, so
  -- every later step reads what the UPDATE returned (no join between intermediate results).
  -- A reply id twice in the batch is updated once: the other settle is a replay, answered
  -- by the one-by-one path.
  RETURN QUERY
  WITH s AS (
    SELECT x.n::int AS n, x.rid, x.ws, x.now
      FROM ROWS FROM (jsonb_to_recordset(p_settles) AS ("replyId" text, "workspaceId" text, now bigint))
           WITH ORDINALITY AS x(rid, ws, now, n)
  ), upd AS (
    UPDATE ${R} r SET status = 'settled', finished_at = s.now, entry_id = nextval(v_seq)
      FROM s JOIN ${W} w ON w.workspace_id = s.ws
     WHERE r.reply_id = s.rid AND r.workspace_id = s.ws AND r.status = 'held' AND r.expires_at > s.now
    RETURNING s.n, r.reply_id, r.workspace_id, r.agent_id, r.conversation_id, r.model, r.route, r.amount,
              r.price_version, r.created_at, r.expires_at, r.finished_at, r.entry_id, w AS wr
  ), ins AS (
    INSERT INTO ${L} (id, workspace_id, kind, amount, at, reply_id, agent_id, conversation_id, model, route, price_version)
    OVERRIDING SYSTEM VALUE
    SELECT u.entry_id, u.workspace_id, 'reply', -u.amount, u.finished_at, u.reply_id, u.agent_id, u.conversation_id,
           u.model, u.route, u.price_version
      FROM upd u ORDER BY u.entry_id
    RETURNING 1
  ), wu AS (
    UPDATE ${W} w SET held = w.held - t.total, used_this_period = w.used_this_period + t.total
      FROM (SELECT u.workspace_id, sum(u.amount) AS total FROM upd u WHERE u.amount > 0 GROUP BY 1) t
     WHERE w.workspace_id = t.workspace_id
    RETURNING 1
  )
  SELECT u.n, jsonb_build_object(
    'status', 'settled', 'replayed', false,
    'reply', jsonb_build_object(
      'replyId', u.reply_id, 'workspaceId', u.workspace_id, 'agentId', u.agent_id,
      'conversationId', u.conversation_id, 'model', u.model, 'route', u.route, 'amount', u.amount,
      'priceVersion', u.price_version, 'status', 'settled', 'createdAt', u.created_at,
      'expiresAt', u.expires_at, 'finishedAt', u.finished_at, 'entryId', u.entry_id::text),
    'workspace', ${F('ws_json')}(u.wr) || jsonb_build_object('usedThisPeriod', (u.wr).used_this_period
      + sum(GREATEST(u.amount, 0)) OVER (PARTITION BY u.workspace_id ORDER BY u.entry_id)),
    'entry', jsonb_build_object(
      'id', u.entry_id::text, 'workspaceId', u.workspace_id, 'kind', 'reply', 'amount', -u.amount, 'at', u.finished_at,
      'replyId', u.reply_id, 'agentId', u.agent_id, 'conversationId', u.conversation_id, 'model', u.model,
      'route', u.route, 'priceVersion', u.price_version, 'grantId', NULL, 'plan', NULL))
    FROM upd u;

  -- A reserve sweeps first when a hold may have lapsed or a grant expired: do it once per
  -- workspace, as of the earliest 'now' among the batch's reserves (a later one that still
  -- finds something due goes through the one-by-one path).
  FOR v_sweep IN
    SELECT w.workspace_id, w.sweep_at, min(x.now) AS now
      FROM ROWS FROM (jsonb_to_recordset(p_reserves) AS (reply jsonb, now bigint)) AS x(reply, now)
      JOIN ${W} w ON w.workspace_id = x.reply->>'workspaceId'
     GROUP BY w.workspace_id, w.sweep_at, w.period_end
    HAVING min(x.now) >= w.sweep_at AND min(x.now) < w.period_end
     ORDER BY 1
  LOOP
    PERFORM ${F('sweep')}(v_sweep.workspace_id, v_sweep.now, v_sweep.sweep_at);
  END LOOP;

  RETURN QUERY
  WITH x AS (
    SELECT x.n::int + jsonb_array_length(p_settles) AS n, x.reply AS p, x.now, x.reply->>'replyId' AS rid, x.reply->>'workspaceId' AS ws,
           (x.reply->>'amount')::bigint AS amount, (x.reply->>'expiresAt')::bigint AS expires
      FROM ROWS FROM (jsonb_to_recordset(p_reserves) AS (reply jsonb, now bigint)) WITH ORDINALITY AS x(reply, now, n)
  ), f AS (
    -- A reply id seen before, or twice in the batch, is a replay: the one-by-one path answers it.
    SELECT DISTINCT ON (x.rid) x.* FROM x
     WHERE NOT EXISTS (SELECT 1 FROM ${R} r WHERE r.reply_id = x.rid)
     ORDER BY x.rid, x.n
  ), gw AS (
    SELECT w.workspace_id, w.available, w.period_end, w.sweep_at, g.grant_id, g.remaining
      FROM ${W} w
      LEFT JOIN LATERAL (
        SELECT g.grant_id, g.remaining FROM ${G} g
         WHERE g.workspace_id = w.workspace_id AND g.live AND g.remaining > 0
         ORDER BY ${SPENDING_ORDER.split(', ').map((column) => 'g.' + column).join(', ')} LIMIT 1) g ON true
     WHERE w.workspace_id IN (SELECT f.ws FROM f)
  ), k AS (
    SELECT f.*, gw.available, gw.period_end, gw.sweep_at, gw.grant_id, gw.remaining,
           sum(f.amount) OVER (PARTITION BY f.ws ORDER BY f.n) AS cum,
           min(CASE WHEN f.amount > 0 THEN f.expires END)
             OVER (PARTITION BY f.ws ORDER BY f.n ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS prev_expires
      FROM f JOIN gw ON gw.workspace_id = f.ws
  ), ok AS (
    -- Reserves fit in batch order up to the first one that does not.
    SELECT k.*, bool_and(k.now < k.period_end AND k.now < LEAST(k.sweep_at, COALESCE(k.prev_expires, ${MAX_MICROS_SQL}))
                         AND k.cum <= k.available AND (k.amount = 0 OR k.cum <= COALESCE(k.remaining, -1)))
                  OVER (PARTITION BY k.ws ORDER BY k.n) AS fits
      FROM k
  ), a AS (
    SELECT * FROM ok WHERE ok.fits
  ), ins AS (
    INSERT INTO ${R} (reply_id, workspace_id, agent_id, conversation_id, model, route, amount, price_version,
                      status, created_at, expires_at, allocations)
    SELECT a.rid, a.ws, a.p->>'agentId', a.p->>'conversationId', a.p->>'model', a.p->>'route', a.amount,
           a.p->>'priceVersion', 'held', (a.p->>'createdAt')::bigint, a.expires,
           CASE WHEN a.amount > 0 THEN jsonb_build_array(jsonb_build_object('grantId', a.grant_id, 'amount', a.amount)) END
      FROM a ORDER BY a.n
    RETURNING 1
  ), wu AS (
    UPDATE ${W} w SET available = w.available - t.total, held = w.held + t.total, sweep_at = LEAST(w.sweep_at, t.expires)
      FROM (SELECT a.ws, sum(a.amount) AS total,
                   COALESCE(min(a.expires) FILTER (WHERE a.amount > 0), ${MAX_MICROS_SQL}) AS expires
              FROM a GROUP BY 1 HAVING sum(a.amount) > 0) t
     WHERE w.workspace_id = t.ws
    RETURNING 1
  ), gu AS (
    UPDATE ${G} g SET remaining = g.remaining - t.total
      FROM (SELECT a.ws, a.grant_id, sum(a.amount) AS total FROM a WHERE a.amount > 0 GROUP BY 1, 2) t
     WHERE g.workspace_id = t.ws AND g.grant_id = t.grant_id
    RETURNING 1
  )
  SELECT a.n, jsonb_build_object('status', 'reserved', 'available', a.available - a.cum) FROM a;
END
$fn$;

-- One group-commit batch, v2: the adapter sends its settles, its reserves that need a
-- workspace, and every other operation as three arrays; the outcomes come back in that
-- order. It locks every workspace it touches in a fixed order (so batches on other
-- connections never deadlock; every write of a workspace goes through here), runs the fast
-- path of the settles and reserves set-based (fast() above), then each remaining operation in
-- its own subtransaction (a savepoint), so a failing operation rolls back alone and its
-- neighbours still commit. The operations of one batch are concurrent (none has been answered
-- yet), so running the fast ones first is a valid serial order. (The two-argument run() of
-- v1 stays for servers of the previous release during a rolling deploy.)
CREATE OR REPLACE FUNCTION ${F('run')}(p_settles jsonb, p_reserves jsonb, p_others jsonb, p_lock text[])
RETURNS jsonb LANGUAGE plpgsql AS $fn$
DECLARE
  v_settles int := jsonb_array_length(p_settles);
  v_reserves int := jsonb_array_length(p_reserves);
  v_count int := v_settles + v_reserves + jsonb_array_length(p_others);
  v_out jsonb[];
  v_op jsonb;
  v_res jsonb;
  v_i int;
  v_tries int;
  v_key int;
BEGIN
  -- Transaction-scoped advisory locks on the workspace ids, taken in ascending key order.
  FOR v_key IN SELECT DISTINCT hashtext(id) FROM unnest(p_lock) AS id ORDER BY 1 LOOP
    PERFORM pg_advisory_xact_lock(${LOCK_SPACE}, v_key);
  END LOOP;
  v_out := array_fill(NULL::jsonb, ARRAY[v_count]);
  IF v_settles + v_reserves > 0 THEN
    BEGIN
      FOR v_i, v_res IN SELECT f.n, f.outcome FROM ${F('fast')}(p_settles, p_reserves) f LOOP
        v_out[v_i] := v_res;
      END LOOP;
    EXCEPTION
      WHEN deadlock_detected OR serialization_failure THEN RAISE;
      -- Nothing of the fast path stays: every operation runs one by one below.
      WHEN OTHERS THEN v_out := array_fill(NULL::jsonb, ARRAY[v_count]);
    END;
  END IF;
  FOR v_i IN 1 .. v_count LOOP
    CONTINUE WHEN v_out[v_i] IS NOT NULL;
    v_op := CASE
      WHEN v_i <= v_settles THEN p_settles->(v_i - 1) || '{"op":"settle"}'
      WHEN v_i <= v_settles + v_reserves THEN p_reserves->(v_i - v_settles - 1) || '{"op":"reserve","requireWorkspace":true}'
      ELSE p_others->(v_i - v_settles - v_reserves - 1) END;
    v_res := NULL;
    v_tries := 0;
    WHILE v_res IS NULL LOOP
      BEGIN
        v_res := ${F('dispatch')}(v_op, NULL);
      EXCEPTION
        -- These abort the whole batch; the adapter runs it again.
        WHEN deadlock_detected OR serialization_failure THEN RAISE;
        -- A racing transaction inserted the same id and has committed now: run the operation
        -- again, it sees the row (a replay).
        WHEN unique_violation THEN
          v_tries := v_tries + 1;
          IF v_tries > 1 THEN
            v_res := jsonb_build_object('error', SQLERRM, 'code', SQLSTATE);
          END IF;
        WHEN OTHERS THEN
          v_res := jsonb_build_object('error', SQLERRM, 'code', SQLSTATE);
      END;
    END LOOP;
    v_out[v_i] := CASE WHEN jsonb_typeof(v_res) = 'object' THEN v_res - '_delta' ELSE v_res END;
  END LOOP;
  RETURN to_jsonb(v_out);
END
$fn$;
`;
  return [v1, v2];
}
