/**
 * The Lua scripts behind {@link RedisStorage}: one script per contract method, each run
 * atomically by Redis. Every script starts with {@link PRELUDE}, which derives the keys of
 * one workspace from a base `<prefix>{<workspaceId>}:` passed as `ARGV[1]` (the hash tag
 * puts a workspace's keys in one cluster slot) and holds the shared arithmetic.
 *
 * Key layout under base `B` (see docs/adapters/redis.md):
 * - `B w`  hash: the workspace record plus `available` and `held` (micro-credits)
 * - `B g`  hash: every grant ever made, `grantId` → `kind|amount|remaining|expiresAt|createdAt`
 * - `B l`  sorted set of live (unexpired) grants in spending order: score `expiresAt`
 *          (`+inf` for never), member `<createdAt+10^15, 17 digits><grantId>`
 * - `B h`  sorted set of open holds: score `expiresAt`, member `replyId`
 * - `B r`  sorted set of ledger rows: score = row id, member = the row as JSON
 * - `B t`  sorted set indexing ledger rows by time: score `at`, member = 16-digit row id
 * - `B u`  string, present once a row was appended with an earlier `at` than a previous one
 * - `B a`  set of claimed alerts
 * - `B d`  sorted set of UTC days that have `reply` rows
 * - `B d:<day>:p` hash: per-day usage rollup by (agent, model) pair `K` = `<#agent>:<agent><model>`
 * - `B d:<day>:c` hash: per-day usage rollup by conversation `K`
 *          both with `s:K` micro-credits, `n:K` replies, `f:K` first row id
 * Outside the workspace slot: `<prefix>seq` (the ledger id counter, INCR) and
 * `<prefix>reply:<replyId>` (the reply record, a string holding a JSON array of strings in
 * the order of `R_*` below; also the global reply index).
 *
 * Numbers: Lua numbers are doubles, exact for integers up to 2^53. Every number written to
 * Redis or returned goes through `fmt` (`%.0f`) because Lua's own `tostring` keeps only 14
 * significant digits.
 */

const PRELUDE = /* lua */ `
local B, RP, WS, GR, LIVE, HOLDS, LEDGER, AT, UNORD, ALERTS, DAYS
-- Batch mode (the batch script only): the workspace hash and the grants read by the hot
-- operations are cached for the whole batch and written once at its end by flush().
-- Everything else is written at once.
local BATCH_MODE = false
local wc = nil        -- cached workspace hash: { t = field -> value, order = fields, dirty = set }
local gc = nil        -- cached grants: id -> grant (false for none), gdirty: ids to write
local gdirty = {}
local live_cache = nil -- the live grant set WITHSCORES, as last read
local last_at = nil   -- the latest 'at' in the time index, once read
local flush
-- Points the helpers at one workspace: base '<prefix>{<workspaceId>}:' and the reply key prefix.
local function use(base, reply_prefix)
  if B ~= base and B ~= nil then flush() end
  B, RP = base, reply_prefix
  WS, GR, LIVE, HOLDS, LEDGER, AT, UNORD, ALERTS, DAYS =
    B .. 'w', B .. 'g', B .. 'l', B .. 'h', B .. 'r', B .. 't', B .. 'u', B .. 'a', B .. 'd'
end
local SEQ = KEYS[2]
local MAX_MICROS = 9007199254740991
local DAY_MS = 86400000
local NULL = cjson.null
local OPS = {}

local function fmt(n) return string.format('%.0f', n) end
local function opt(s) if s == nil or s == '' then return nil end return s end

local function hash(key)
  local flat = redis.call('HGETALL', key)
  local t = {}
  for i = 1, #flat, 2 do t[flat[i]] = flat[i + 1] end
  return t, flat
end

-- reply records: a JSON array of strings, '' for an absent finishedAt, entryId or alloc
local R_ID, R_WS, R_AGENT, R_CONV, R_MODEL, R_ROUTE, R_AMOUNT, R_PV, R_STATUS, R_CREATED, R_EXPIRES, R_FINISHED, R_ENTRY, R_ALLOC =
  1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14
local function rput(rkey, rec)
  local s = cjson.encode(rec)
  redis.call('SET', rkey, s)
  return s
end

-- grants
local function gdecode(id, s)
  local kind, amount, remaining, exp, created = string.match(s, '^([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)$')
  local g = { id = id, kind = kind, amount = tonumber(amount), remaining = tonumber(remaining), created = tonumber(created) }
  if exp ~= '' then g.exp = tonumber(exp) end
  return g
end
local function gencode(g)
  local exp = ''
  if g.exp ~= nil then exp = fmt(g.exp) end
  return g.kind .. '|' .. fmt(g.amount) .. '|' .. fmt(g.remaining) .. '|' .. exp .. '|' .. fmt(g.created)
end
local function gmember(g) return string.format('%017.0f', g.created + 1e15) .. g.id end
local function gscore(g) if g.exp == nil then return '+inf' end return fmt(g.exp) end
local function gsave(g)
  if gc ~= nil then
    gc[g.id] = g
    gdirty[g.id] = true
  else
    redis.call('HSET', GR, g.id, gencode(g))
  end
end
local function gload(id)
  if gc ~= nil then
    local g = gc[id]
    if g == nil then
      local s = redis.call('HGET', GR, id)
      g = (s and gdecode(id, s)) or false
      gc[id] = g
    end
    return g or nil
  end
  local s = redis.call('HGET', GR, id)
  if not s then return nil end
  return gdecode(id, s)
end

-- the workspace hash as the hot operations see it: (field table, flat list)
local function ws_hash()
  if not BATCH_MODE then return hash(WS) end
  if wc == nil then
    local t, flat = hash(WS)
    local order = {}
    for i = 1, #flat, 2 do order[#order + 1] = flat[i] end
    wc = { t = t, order = order, dirty = {} }
  end
  local flat = {}
  for _, f in ipairs(wc.order) do
    flat[#flat + 1] = f
    flat[#flat + 1] = wc.t[f]
  end
  return wc.t, flat
end
-- Sets fields of the workspace hash: { field, value, ... }.
local function ws_put(kv)
  if wc == nil then
    redis.call('HSET', WS, unpack(kv))
    return
  end
  for i = 1, #kv, 2 do
    local f = kv[i]
    if wc.t[f] == nil then wc.order[#wc.order + 1] = f end
    wc.t[f] = kv[i + 1]
    wc.dirty[f] = true
  end
end
-- Writes what batch mode deferred.
flush = function()
  if wc ~= nil then
    local kv = {}
    for f in pairs(wc.dirty) do
      kv[#kv + 1] = f
      kv[#kv + 1] = wc.t[f]
    end
    if kv[1] ~= nil then redis.call('HSET', WS, unpack(kv)) end
    wc = nil
  end
  if gc ~= nil then
    local kv = {}
    for id in pairs(gdirty) do
      kv[#kv + 1] = id
      kv[#kv + 1] = gencode(gc[id])
    end
    if kv[1] ~= nil then redis.call('HSET', GR, unpack(kv)) end
    gdirty = {}
    if BATCH_MODE then gc = {} else gc = nil end
  end
  live_cache = nil
  last_at = nil
end
local function glive(g) return redis.call('ZSCORE', LIVE, gmember(g)) ~= false end

-- money of the workspace, written back by save()
local avail, held = 0, 0
local function load_money(w) avail = tonumber(w.available) or 0; held = tonumber(w.held) or 0 end
local function save_money() ws_put({ 'available', fmt(avail), 'held', fmt(held) }) end

-- ledger
-- sid, sat: the row id and its time already formatted; at: the time as a number
local function push_row(sid, sat, at, json)
  redis.call('ZADD', LEDGER, sid, json)
  if last_at == nil then
    local last = redis.call('ZREVRANGE', AT, 0, 0, 'WITHSCORES')
    last_at = -math.huge
    if last[2] ~= nil then last_at = tonumber(last[2]) end
  end
  if last_at > at then
    redis.call('SET', UNORD, '1')
  else
    last_at = at
  end
  redis.call('ZADD', AT, sat, string.rep('0', 16 - #sid) .. sid)
end
local function append_entry(json_tail, at)
  -- json_tail is the row without its id, encoded by the client: '[<workspaceId>,...]'
  local id = redis.call('INCR', SEQ)
  local sid = fmt(id)
  local json = '["' .. sid .. '",' .. string.sub(json_tail, 2)
  push_row(sid, fmt(at), at, json)
  return json
end
local function expiry_row(ws, grant_id, amount, now)
  if amount <= 0 then return end
  local id = redis.call('INCR', SEQ)
  local sid, snow = fmt(id), fmt(now)
  local json = cjson.encode({ sid, ws, 'expiry', fmt(-amount), snow, NULL, NULL, NULL, NULL, NULL, NULL, grant_id, NULL })
  push_row(sid, snow, now, json)
end

local function add_grant(g)
  gsave(g)
  redis.call('ZADD', LIVE, gscore(g), gmember(g))
  avail = avail + g.remaining
end

-- holds
local function parse_alloc(s)
  local out = {}
  local pos = 1
  while pos <= #s do
    local amount, len, start = string.match(s, '^(%d+):(%d+):()', pos)
    local stop = start + tonumber(len) - 1
    out[#out + 1] = { id = string.sub(s, start, stop), amount = tonumber(amount) }
    pos = stop + 1
  end
  return out
end

-- Ends a hold without a charge, returning its credits to the grants they came from;
-- credits of a grant that expired meanwhile expire now. ws_exists: a workspace record exists.
-- Returns the record as written.
local function finish_hold(rkey, rec, status, now, ws_exists)
  rec[R_STATUS] = status
  rec[R_FINISHED] = fmt(now)
  redis.call('ZREM', HOLDS, rec[R_ID])
  if rec[R_ALLOC] ~= '' then
    if ws_exists then
      held = held - tonumber(rec[R_AMOUNT])
      -- A lapsed hold gave its credits back when it lapsed, not when someone noticed.
      local returned_at = now
      if status == 'expired' then returned_at = math.min(now, tonumber(rec[R_EXPIRES])) end
      for _, part in ipairs(parse_alloc(rec[R_ALLOC])) do
        local g = gload(part.id)
        if g ~= nil and glive(g) and (g.exp == nil or g.exp > returned_at) then
          g.remaining = g.remaining + part.amount
          gsave(g)
          avail = avail + part.amount
        else
          expiry_row(rec[R_WS], part.id, part.amount, now)
        end
      end
    end
    rec[R_ALLOC] = ''
  end
  return rput(rkey, rec)
end

local function sweep_holds(now, ws_exists)
  local due = redis.call('ZRANGEBYSCORE', HOLDS, '-inf', fmt(now))
  for _, reply_id in ipairs(due) do
    local rkey = RP .. reply_id
    local s = redis.call('GET', rkey)
    local rec = s and cjson.decode(s)
    if rec and rec[R_STATUS] == 'held' then finish_hold(rkey, rec, 'expired', now, ws_exists)
    else redis.call('ZREM', HOLDS, reply_id) end
  end
end

-- first: the live set's first entry WITHSCORES when the caller has read it already.
local function expire_grants(ws, now, first)
  first = first or redis.call('ZRANGE', LIVE, 0, 0, 'WITHSCORES')
  if first[2] == nil or first[2] == 'inf' or tonumber(first[2]) > now then return false end
  local due = redis.call('ZRANGEBYSCORE', LIVE, '-inf', fmt(now))
  for _, member in ipairs(due) do
    local g = gload(string.sub(member, 18))
    if g ~= nil and g.remaining > 0 then
      avail = avail - g.remaining
      expiry_row(ws, g.id, g.remaining, now)
      g.remaining = 0
      gsave(g)
    end
    redis.call('ZREM', LIVE, member)
  end
  live_cache = nil
  return true
end

local function sweep(ws, now)
  sweep_holds(now, true)
  expire_grants(ws, now)
end

-- Live grants with credits left, in spending order, as a flat list id, encoded, ...
local function live_grants()
  local out = {}
  for _, member in ipairs(redis.call('ZRANGE', LIVE, 0, -1)) do
    local id = string.sub(member, 18)
    local s = redis.call('HGET', GR, id)
    if s and gdecode(id, s).remaining > 0 then
      out[#out + 1] = id
      out[#out + 1] = s
    end
  end
  return out
end

local function state()
  local _, flat = hash(WS)
  return { flat, live_grants(), fmt(avail), fmt(held) }
end

local function replace_record(A, from)
  redis.call('HDEL', WS, 'pendingPlan', 'pendingAllotment')
  local pairs_ = {}
  for i = from, #A do pairs_[#pairs_ + 1] = A[i] end
  redis.call('HSET', WS, unpack(pairs_))
end
`;

/** Loads or checks nothing: writes the schema version. KEYS: [schemaKey]. ARGV: [version]. */
const MIGRATE = /* lua */ `
local current = redis.call('GET', KEYS[1])
if current and tonumber(current) > tonumber(ARGV[1]) then
  return redis.error_reply('ERR credits schema ' .. current .. ' is newer than this library (' .. ARGV[1] .. ')')
end
if current and tonumber(current) < tonumber(ARGV[1]) then
  return redis.error_reply('ERR credits schema ' .. current .. ' under this key prefix is an older layout (reply records as hashes, ' ..
    'three rollup hashes per day) that this library (schema ' .. ARGV[1] .. ') cannot read; ' ..
    'use a new keyPrefix, or keep the data with the earlier library version')
end
redis.call('SET', KEYS[1], ARGV[1])
return ARGV[1]
`;

/**
 * KEYS: [ws, seq]. ARGV: base, replyPrefix, grantId, kind, amount, remaining, expiresAt,
 * createdAt, entryJson, entryAt, ...record pairs.
 */
const CREATE_WORKSPACE = /* lua */ `
OPS.createWorkspace = function(A)
  if redis.call('EXISTS', WS) == 1 then return { 'exists' } end
  replace_record(A, 11)
  avail, held = 0, 0
  add_grant({ id = A[3], kind = A[4], amount = tonumber(A[5]), remaining = tonumber(A[6]),
    exp = tonumber(opt(A[7])), created = tonumber(A[8]) })
  save_money()
  append_entry(A[9], tonumber(A[10]))
  return { 'created', state() }
end
`;

/** KEYS: [ws, seq]. ARGV: base, replyPrefix, workspaceId, now. */
const GET_WORKSPACE = /* lua */ `
OPS.getWorkspace = function(A)
  local w = hash(WS)
  if w.workspaceId == nil then return { 'none' } end
  load_money(w)
  local now = tonumber(A[4])
  if now < tonumber(w.periodEnd) then
    sweep(A[3], now)
    save_money()
  end
  return { 'found', state() }
end
`;

/**
 * KEYS: [ws, seq, reply]. ARGV: base, replyPrefix, requireWorkspace, now, replyId,
 * workspaceId, agentId, conversationId, model, route, amount, priceVersion, createdAt, expiresAt.
 */
const RESERVE = /* lua */ `
OPS.reserve = function(A)
  local rkey = RP .. A[5]
  local existing = redis.call('GET', rkey)
  if existing then return { 'exists', existing } end
  local now = tonumber(A[4])
  local amount = tonumber(A[11])
  local function record(status, alloc)
    local finished = ''
    if status ~= 'held' then finished = fmt(now) end
    return rput(rkey, { A[5], A[6], A[7], A[8], A[9], A[10], A[11], A[12], status, A[13], A[14], finished, '', alloc or '' })
  end
  if A[3] ~= '1' then return { 'reserved', record('held'), '0' } end
  local w, wflat = ws_hash()
  if w.workspaceId == nil then return { 'workspace_not_found' } end
  if now >= tonumber(w.periodEnd) then return { 'renewal_due', wflat } end
  load_money(w)
  sweep_holds(now, true)
  -- One read of the live grants serves the expiry check and the spending.
  local live = live_cache or redis.call('ZRANGE', LIVE, 0, -1, 'WITHSCORES')
  if expire_grants(A[6], now, live) then live = redis.call('ZRANGE', LIVE, 0, -1, 'WITHSCORES') end
  if BATCH_MODE then live_cache = live end
  if avail < amount then
    save_money()
    local r = record('refused')
    return { 'insufficient', r, fmt(avail), wflat }
  end
  local alloc = nil
  if amount > 0 then
    local left = amount
    local parts = {}
    for i = 1, #live, 2 do
      local g = gload(string.sub(live[i], 18))
      if g.remaining > 0 then
        local part = math.min(g.remaining, left)
        g.remaining = g.remaining - part
        gsave(g)
        parts[#parts + 1] = fmt(part) .. ':' .. #g.id .. ':' .. g.id
        left = left - part
        if left == 0 then break end
      end
    end
    avail = avail - amount
    held = held + amount
    alloc = table.concat(parts)
    redis.call('ZADD', HOLDS, A[14], A[5])
  end
  local r = record('held', alloc)
  save_money()
  return { 'reserved', r, fmt(avail) }
end
`;

/** KEYS: [ws, seq, reply]. ARGV: base, replyPrefix, workspaceId, now, replyId. */
const SETTLE = /* lua */ `
OPS.settle = function(A)
  local rkey = RP .. A[5]
  local s = redis.call('GET', rkey)
  if not s then return { 'not_found' } end
  local rec = cjson.decode(s)
  if rec[R_WS] ~= A[3] then return { 'not_found' } end
  local now = tonumber(A[4])
  local status = rec[R_STATUS]
  if status == 'settled' then
    local rows = redis.call('ZRANGEBYSCORE', LEDGER, rec[R_ENTRY], rec[R_ENTRY])
    local _, wflat = ws_hash()
    return { 'settled', s, rows[1], '1', wflat }
  end
  if status ~= 'held' then return { status, s } end
  if tonumber(rec[R_EXPIRES]) <= now then
    local w = ws_hash()
    local ws_exists = w.workspaceId ~= nil
    load_money(w)
    local out = finish_hold(rkey, rec, 'expired', now, ws_exists)
    if ws_exists then save_money() end
    return { 'expired', out }
  end
  local samount = rec[R_AMOUNT]
  local amount = tonumber(samount)
  local agent, model, conv = rec[R_AGENT], rec[R_MODEL], rec[R_CONV]
  local id = redis.call('INCR', SEQ)
  local sid, snow = fmt(id), A[4]
  local json = cjson.encode({ sid, rec[R_WS], 'reply', fmt(0 - amount), snow, rec[R_ID], agent,
    conv, model, rec[R_ROUTE], rec[R_PV], NULL, NULL })
  push_row(sid, snow, now, json)
  -- per-day usage rollups by (agent, model) pair and by conversation; the day is listed
  -- with its first pair
  local day = fmt(now - (now % DAY_MS))
  local prefix = B .. 'd:' .. day .. ':'
  local hk, pair = prefix .. 'p', #agent .. ':' .. agent .. model
  redis.call('HINCRBY', hk, 's:' .. pair, samount)
  if redis.call('HINCRBY', hk, 'n:' .. pair, 1) == 1 then
    redis.call('HSET', hk, 'f:' .. pair, sid)
    redis.call('ZADD', DAYS, day, day)
  end
  hk = prefix .. 'c'
  redis.call('HINCRBY', hk, 's:' .. conv, samount)
  if redis.call('HINCRBY', hk, 'n:' .. conv, 1) == 1 then redis.call('HSET', hk, 'f:' .. conv, sid) end
  local had_hold = rec[R_ALLOC] ~= ''
  rec[R_STATUS], rec[R_FINISHED], rec[R_ENTRY], rec[R_ALLOC] = 'settled', snow, sid, ''
  local out = rput(rkey, rec)
  if had_hold then redis.call('ZREM', HOLDS, rec[R_ID]) end
  local _, wflat = ws_hash()
  if wflat[1] ~= nil and amount > 0 then
    local hi, ui
    for i = 1, #wflat, 2 do
      local f = wflat[i]
      if f == 'held' then hi = i + 1 elseif f == 'usedThisPeriod' then ui = i + 1 end
    end
    local held_after = fmt(tonumber(wflat[hi]) - amount)
    local used = fmt(tonumber(wflat[ui]) + amount)
    ws_put({ 'held', held_after, 'usedThisPeriod', used })
    wflat[hi], wflat[ui] = held_after, used
  end
  return { 'settled', out, json, '0', wflat }
end
`;

/** KEYS: [ws, seq, reply]. ARGV: base, replyPrefix, workspaceId, now, replyId. */
const RELEASE = /* lua */ `
OPS.release = function(A)
  local rkey = RP .. A[5]
  local s = redis.call('GET', rkey)
  if not s then return { 'not_found' } end
  local rec = cjson.decode(s)
  if rec[R_WS] ~= A[3] then return { 'not_found' } end
  if rec[R_STATUS] == 'released' then return { 'released', s, '1' } end
  if rec[R_STATUS] ~= 'held' then return { rec[R_STATUS], s } end
  local now = tonumber(A[4])
  local w = ws_hash()
  local ws_exists = w.workspaceId ~= nil
  load_money(w)
  local status = 'released'
  if tonumber(rec[R_EXPIRES]) <= now then status = 'expired' end
  local out = finish_hold(rkey, rec, status, now, ws_exists)
  if ws_exists then save_money() end
  return { status, out, '0' }
end
`;

/**
 * KEYS: [ws, seq]. ARGV: base, replyPrefix, workspaceId, expectedVersion, rolloverCap,
 * grantId, kind, amount, remaining, expiresAt, createdAt, entryJson, entryAt, now, ...record pairs.
 */
const RENEW = /* lua */ `
OPS.renew = function(A)
  local w, wflat = hash(WS)
  if w.workspaceId == nil then return { 'workspace_not_found' } end
  if w.version ~= A[4] then return { 'stale', wflat } end
  local ws = A[3]
  local now = tonumber(A[14])
  load_money(w)
  sweep_holds(now, true)
  local allotments = {}
  local ending = 0
  for _, member in ipairs(redis.call('ZRANGE', LIVE, 0, -1)) do
    local g = gload(string.sub(member, 18))
    if g.kind == 'allotment' then
      ending = ending + g.remaining
      allotments[#allotments + 1] = { g = g, member = member }
    end
  end
  local carried = math.min(ending, tonumber(A[5]))
  local to_carry = carried
  for _, item in ipairs(allotments) do
    local g = item.g
    if g.remaining > 0 then
      local kept = math.min(g.remaining, to_carry)
      to_carry = to_carry - kept
      expiry_row(ws, g.id, g.remaining - kept, now)
      avail = avail - g.remaining
      g.remaining = 0
      gsave(g)
    end
    redis.call('ZREM', LIVE, item.member)
  end
  expire_grants(ws, now)
  replace_record(A, 15)
  add_grant({ id = A[6], kind = A[7], amount = tonumber(A[8]) + carried, remaining = tonumber(A[9]) + carried,
    exp = tonumber(opt(A[10])), created = tonumber(A[11]) })
  save_money()
  append_entry(A[12], tonumber(A[13]))
  return { 'renewed', state(), fmt(ending - carried), fmt(carried) }
end
`;

/**
 * KEYS: [ws, seq]. ARGV: base, replyPrefix, workspaceId, expectedVersion, allotmentIncrease,
 * entryJson, entryAt, now, ...record pairs.
 */
const CHANGE_PLAN = /* lua */ `
OPS.changePlan = function(A)
  local w, wflat = hash(WS)
  if w.workspaceId == nil then return { 'workspace_not_found' } end
  if w.version ~= A[4] then return { 'stale', wflat } end
  load_money(w)
  local increase = tonumber(A[5])
  if avail + held + increase > MAX_MICROS then return { 'overflow' } end
  if increase > 0 then
    local id = 'period:' .. w.periodIndex
    local g = gload(id)
    if g ~= nil and glive(g) then
      g.amount = g.amount + increase
      g.remaining = g.remaining + increase
      gsave(g)
      avail = avail + increase
    else
      if g ~= nil then redis.call('ZREM', LIVE, gmember(g)) end
      add_grant({ id = id, kind = 'allotment', amount = increase, remaining = increase,
        exp = tonumber(w.periodEnd), created = tonumber(A[8]) })
    end
  end
  replace_record(A, 9)
  save_money()
  append_entry(A[6], tonumber(A[7]))
  return { 'changed', state() }
end
`;

/**
 * KEYS: [ws, seq]. ARGV: base, replyPrefix, grantId, kind, amount, remaining, expiresAt,
 * createdAt, entryJson, entryAt.
 */
const GRANT = /* lua */ `
OPS.grant = function(A)
  local w = hash(WS)
  if w.workspaceId == nil then return { 'workspace_not_found' } end
  local existing = redis.call('HGET', GR, A[3])
  if existing then return { 'exists', A[3], existing } end
  load_money(w)
  local amount = tonumber(A[5])
  if avail + held + amount > MAX_MICROS then return { 'overflow' } end
  add_grant({ id = A[3], kind = A[4], amount = amount, remaining = tonumber(A[6]),
    exp = tonumber(opt(A[7])), created = tonumber(A[8]) })
  save_money()
  append_entry(A[9], tonumber(A[10]))
  return { 'granted', state() }
end
`;

/** KEYS: [ws, seq]. ARGV: base, replyPrefix, alertKey. */
const CLAIM_ALERT = /* lua */ `
OPS.claimAlert = function(A)
  if redis.call('EXISTS', WS) == 0 then return 0 end
  return redis.call('SADD', ALERTS, A[3])
end
`;

/** KEYS: [ws, seq]. ARGV: base, replyPrefix, afterId, from, to, agentId ('' = any), hasAgent, limit. */
const LEDGER_PAGE = /* lua */ `
OPS.ledger = function(A)
  local limit = tonumber(A[8])
  local page = {}
  if limit <= 0 then return page end
  local from, to = tonumber(opt(A[4])), tonumber(opt(A[5]))
  local agent = nil
  if A[7] == '1' then agent = A[6] end
  local ordered = redis.call('EXISTS', UNORD) == 0
  local cursor = '-inf'
  local after = tonumber(opt(A[3]))
  if after ~= nil then
    cursor = '(' .. fmt(after)
  elseif from ~= nil and ordered then
    local first = redis.call('ZRANGEBYSCORE', AT, fmt(from), '+inf', 'LIMIT', 0, 1)
    if first[1] == nil then return page end
    cursor = fmt(tonumber(first[1]))
  end
  local batch = math.max(limit, 64)
  if batch > 1000 then batch = 1000 end
  while true do
    local rows = redis.call('ZRANGEBYSCORE', LEDGER, cursor, '+inf', 'WITHSCORES', 'LIMIT', 0, batch)
    if rows[1] == nil then return page end
    for i = 1, #rows, 2 do
      local json = rows[i]
      local row = cjson.decode(json)
      local at = tonumber(row[5])
      if to ~= nil and at >= to then
        if ordered then return page end
      elseif (from == nil or at >= from) and (agent == nil or row[7] == agent) then
        page[#page + 1] = json
        if #page >= limit then return page end
      end
      cursor = '(' .. rows[i + 1]
    end
  end
end
`;

/** KEYS: [ws, seq]. ARGV: base, replyPrefix, from, to, group (a|m|c), byDay (1|0). */
const USAGE = /* lua */ `
OPS.usage = function(A)
  local from, to = tonumber(A[3]), tonumber(A[4])
  local group = A[5]
  local by_day = A[6] == '1'
  local field = 7
  if group == 'm' then field = 9 elseif group == 'c' then field = 8 end
  local groups, order = {}, {}
  local function add(key, day, amount, n, first)
    local gid = key
    if by_day then gid = fmt(day) .. '\\0' .. key end
    local e = groups[gid]
    if e == nil then
      e = { key = key, day = day, amount = 0, n = 0, first = first }
      groups[gid] = e
      order[#order + 1] = gid
    end
    e.amount = e.amount + amount
    e.n = e.n + n
    if first < e.first then e.first = first end
  end
  local ordered = redis.call('EXISTS', UNORD) == 0
  local function count(json, lo, hi)
    local row = cjson.decode(json)
    local at = tonumber(row[5])
    if row[3] == 'reply' and at >= lo and at < hi then
      local key = row[field]
      if key == nil or key == NULL then key = '' end
      add(key, at - (at % DAY_MS), -tonumber(row[4]), 1, tonumber(row[1]))
    end
  end
  -- Raw rows with lo <= at < hi. In a time-ordered ledger they are one run of ids: read the
  -- run in one call. Otherwise look each id of the time index up.
  local function scan(lo, hi)
    if lo >= hi then return end
    local slo, shi = fmt(lo), '(' .. fmt(hi)
    if ordered then
      local first = redis.call('ZRANGEBYSCORE', AT, slo, shi, 'LIMIT', 0, 1)[1]
      if first == nil then return end
      local last = redis.call('ZREVRANGEBYSCORE', AT, shi, slo, 'LIMIT', 0, 1)[1]
      for _, json in ipairs(redis.call('ZRANGEBYSCORE', LEDGER, fmt(tonumber(first)), fmt(tonumber(last)))) do
        count(json, lo, hi)
      end
      return
    end
    for _, padded in ipairs(redis.call('ZRANGEBYSCORE', AT, slo, shi)) do
      local id = fmt(tonumber(padded))
      local json = redis.call('ZRANGEBYSCORE', LEDGER, id, id)[1]
      if json ~= nil then count(json, lo, hi) end
    end
  end
  if from < to then
    local full_start = from + ((DAY_MS - (from % DAY_MS)) % DAY_MS)
    local full_end = to - (to % DAY_MS)
    if full_start >= full_end then
      scan(from, to)
    else
      scan(from, full_start)
      -- Conversations have their own hash; agents and models share one keyed by the pair
      -- '<#agent>:<agent><model>', from which the group's key is cut.
      local keys = {}
      local function key_of(field)
        if group == 'c' then return field end
        local key = keys[field]
        if key ~= nil then return key end
        local alen, astart = string.match(field, '^(%d+):()')
        local aend = astart + tonumber(alen)
        if group == 'a' then key = string.sub(field, astart, aend - 1) else key = string.sub(field, aend) end
        keys[field] = key
        return key
      end
      local suffix = 'p'
      if group == 'c' then suffix = 'c' end
      for _, day in ipairs(redis.call('ZRANGEBYSCORE', DAYS, fmt(full_start), '(' .. fmt(full_end))) do
        local flat = redis.call('HGETALL', B .. 'd:' .. day .. ':' .. suffix)
        local sums, counts, firsts, order_ = {}, {}, {}, {}
        for i = 1, #flat, 2 do
          local f, v = flat[i], flat[i + 1]
          local kind, key = string.sub(f, 1, 1), key_of(string.sub(f, 3))
          if kind == 's' then sums[key] = (sums[key] or 0) + tonumber(v)
          elseif kind == 'n' then
            if counts[key] == nil then order_[#order_ + 1] = key end
            counts[key] = (counts[key] or 0) + tonumber(v)
          else
            local first = tonumber(v)
            if firsts[key] == nil or first < firsts[key] then firsts[key] = first end
          end
        end
        local d = tonumber(day)
        for _, key in ipairs(order_) do add(key, d, sums[key] or 0, counts[key], firsts[key] or 0) end
      end
      scan(full_end, to)
    end
  end
  local out = {}
  for _, gid in ipairs(order) do
    local e = groups[gid]
    out[#out + 1] = { e.key, fmt(e.day), fmt(e.amount), fmt(e.n), fmt(e.first) }
  end
  return out
end
`;

/** KEYS: [reply]. */
const GET_REPLY = /* lua */ `
return redis.call('GET', KEYS[1])
`;

/**
 * The version written to `<prefix>schema` by `migrate()`. 2: reply records are JSON strings
 * and the usage rollups are two hashes per day, by (agent, model) pair and by conversation;
 * version 1 kept reply records as hashes and three rollup hashes per day (agent, model,
 * conversation), which this code cannot read.
 */
export const SCHEMA_VERSION = 2;

/** Runs one operation: `ARGV` is its argument list. */
function single(name: string, body: string): string {
  return `${PRELUDE}${body}\nuse(ARGV[1], ARGV[2])\nreturn OPS.${name}(ARGV)\n`;
}

/**
 * Runs several hot-path operations (reserve, settle, release) of one workspace in one call,
 * each to completion in arrival order, and returns their results in a list. The client
 * gathers the calls made in one event-loop tick into one batch (group commit): each keeps
 * its own outcome, and the batch as a whole is atomic. KEYS: [ws, seq].
 * ARGV: count, then per operation: name, argc, args...
 */
const BATCH = /* lua */ `
BATCH_MODE = true
gc = {}
local out = {}
local i = 2
for k = 1, tonumber(ARGV[1]) do
  local name, argc = ARGV[i], tonumber(ARGV[i + 1])
  local A = {}
  for j = 1, argc do A[j] = ARGV[i + 1 + j] end
  i = i + 2 + argc
  use(A[1], A[2])
  -- A failing operation still leaves the earlier ones' deferred writes in place.
  local ok, result = pcall(OPS[name], A)
  if not ok then
    flush()
    error(result)
  end
  out[k] = result
end
flush()
return out
`;

/** Every script by operation name. Scripts that share key derivation start with the prelude. */
export const SCRIPTS = {
  migrate: MIGRATE,
  createWorkspace: single('createWorkspace', CREATE_WORKSPACE),
  getWorkspace: single('getWorkspace', GET_WORKSPACE),
  reserve: single('reserve', RESERVE),
  settle: single('settle', SETTLE),
  release: single('release', RELEASE),
  renew: single('renew', RENEW),
  changePlan: single('changePlan', CHANGE_PLAN),
  grant: single('grant', GRANT),
  claimAlert: single('claimAlert', CLAIM_ALERT),
  ledger: single('ledger', LEDGER_PAGE),
  usage: single('usage', USAGE),
  getReply: GET_REPLY,
  batch: PRELUDE + RESERVE + SETTLE + RELEASE + BATCH,
} as const;

/** The name of one script. */
export type ScriptName = keyof typeof SCRIPTS;
