/**
 * The Lua behind {@link RedisStorage}. No script decides a credit rule: `commit` checks the
 * version and writes what it is given, the others only read. Every key a script touches is
 * one workspace's, under its hash tag, so each script runs on one Redis Cluster node.
 *
 * Numbers cross as strings; Lua compares them as doubles, exact up to 2^53. A number built in
 * Lua is written through `fmt`, since Lua's own conversion keeps only 14 digits.
 */

const HELPERS = /* lua */ `
local function fmt(n) return string.format('%.0f', n) end
local function pad(n) return string.format('%016.0f', n) end
local function hmget(key, fields)
  local out = {}
  for c = 1, #fields, 4000 do
    for _, v in ipairs(redis.call('HMGET', key, unpack(fields, c, math.min(c + 3999, #fields)))) do out[#out + 1] = v end
  end
  return out
end
`;

/**
 * KEYS: state, records, holds. ARGV: now, record keys...
 * Returns [version | nil, state JSON | nil, records asked for (nil when absent), lapsed records,
 * earliest hold expiry | nil].
 */
export const LOAD = /* lua */ `${HELPERS}
local keys = {}
for j = 2, #ARGV do keys[j - 1] = ARGV[j] end
local s = redis.call('HMGET', KEYS[1], 'v', 'd')
local earliest = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
return { s[1], s[2], hmget(KEYS[2], keys), hmget(KEYS[2], redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', ARGV[1])), earliest[2] or false }
`;

/**
 * KEYS: state, records, holds, ledger, at index, days, then one rollup hash per (day, group).
 * ARGV: expected version, new version, state JSON, then counted groups:
 * record keys that must be absent; record (key, JSON) pairs; hold (expiry, key) pairs; keys to drop from the holds;
 * ledger (padded seq, JSON) pairs; at-index (at, padded seq) pairs; day (day, day) pairs;
 * then first row's at, last row's at and padded seq ('' without rows), whether the rows are
 * in time order; then per rollup hash a count and (field, increment) pairs, added with one
 * read and one write per hash (a call per field would cost more than all the rest).
 * Returns 1 when written, 0 (and writes nothing) when the version moved or a record that must
 * be absent exists.
 */
export const COMMIT = /* lua */ `${HELPERS}
local head = redis.call('HMGET', KEYS[1], 'v', 'a')
if (head[1] or '0') ~= ARGV[1] then return 0 end
for j = 5, 4 + tonumber(ARGV[4]) do
  if redis.call('HEXISTS', KEYS[2], ARGV[j]) == 1 then return 0 end
end
local i = 5 + tonumber(ARGV[4])
local function bulk(cmd, key, width)
  local n = tonumber(ARGV[i])
  local s = i + 1
  i = s + n * width
  for c = s, i - 1, 4000 do redis.call(cmd, key, unpack(ARGV, c, math.min(c + 3999, i - 1))) end
end
bulk('HSET', KEYS[2], 2)
bulk('ZADD', KEYS[3], 2)
bulk('ZREM', KEYS[3], 1)
bulk('HSET', KEYS[4], 2)
bulk('ZADD', KEYS[5], 2)
bulk('ZADD', KEYS[6], 2)
local state = { 'v', ARGV[2], 'd', ARGV[3] }
if ARGV[i] ~= '' then
  -- A row earlier than one already kept (a clock went back) turns off seq-range paging for good.
  if ARGV[i + 3] == '0' or (head[2] and tonumber(ARGV[i]) < tonumber(head[2])) then
    state[#state + 1] = 'o'; state[#state + 1] = '1'
  end
  state[#state + 1] = 'a'; state[#state + 1] = ARGV[i + 1]
  state[#state + 1] = 'n'; state[#state + 1] = ARGV[i + 2]
end
redis.call('HSET', KEYS[1], unpack(state))
i = i + 4
for k = 7, #KEYS do
  local n = tonumber(ARGV[i])
  local fields, sums = {}, {}
  for j = 1, n do fields[j] = ARGV[i + 2 * j - 1] end
  local current = redis.call('HMGET', KEYS[k], unpack(fields))
  for j = 1, n do
    sums[2 * j - 1] = fields[j]
    sums[2 * j] = fmt((tonumber(current[j]) or 0) + tonumber(ARGV[i + 2 * j]))
  end
  redis.call('HSET', KEYS[k], unpack(sums))
  i = i + 1 + 2 * n
end
return 1
`;

/**
 * KEYS: state, ledger, at index. ARGV: afterSeq, from | '', to | '', '=' agentId | '',
 * ',kind,kind,' | '', limit. Returns the rows' JSON in seq order.
 */
export const LEDGER = /* lua */ `${HELPERS}
local after, from, to, agent, kinds, limit = tonumber(ARGV[1]), ARGV[2], ARGV[3], ARGV[4], ARGV[5], tonumber(ARGV[6])
local out = {}
local function take(seqs)
  for _, json in ipairs(hmget(KEYS[2], seqs)) do
    if #out >= limit then return end
    local r = json and cjson.decode(json)
    if r and (from == '' or r.at >= tonumber(from)) and (to == '' or r.at < tonumber(to))
      and (agent == '' or r.agentId == string.sub(agent, 2))
      and (kinds == '' or string.find(kinds, ',' .. r.kind .. ',', 1, true)) then
      out[#out + 1] = json
    end
  end
end
local head = redis.call('HMGET', KEYS[1], 'o', 'n')
if head[1] ~= '1' or (from == '' and to == '') then
  -- Rows in time order: the window is one run of seqs, its ends found through the at index.
  local lo, hi = after + 1, tonumber(head[2] or '0')
  if head[1] ~= '1' and from ~= '' then
    local first = redis.call('ZRANGEBYSCORE', KEYS[3], from, '+inf', 'LIMIT', 0, 1)[1]
    lo = first and math.max(lo, tonumber(first)) or hi + 1
  end
  if head[1] ~= '1' and to ~= '' then
    local last = redis.call('ZREVRANGEBYSCORE', KEYS[3], '(' .. to, '-inf', 'LIMIT', 0, 1)[1]
    hi = last and math.min(hi, tonumber(last)) or 0
  end
  while #out < limit and lo <= hi do
    local stop = math.min(hi, lo + math.min(math.max(limit - #out, 16), 1024) - 1)
    local seqs = {}
    for n = lo, stop do seqs[#seqs + 1] = pad(n) end
    take(seqs)
    lo = stop + 1
  end
else
  -- A clock went back once: every row of the window through the at index, then in seq order.
  local seqs = {}
  for _, s in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], from == '' and '-inf' or from, to == '' and '+inf' or '(' .. to)) do
    if tonumber(s) > after then seqs[#seqs + 1] = s end
  end
  table.sort(seqs)
  for c = 1, #seqs, 1024 do
    if #out < limit then take({ unpack(seqs, c, math.min(c + 1023, #seqs)) }) end
  end
end
return out
`;

/**
 * KEYS: days. ARGV: rollup key prefix, group letter, whole days [from, to). Returns
 * [day, HGETALL of its rollup]... (the window's part days are read row by row through LEDGER).
 */
export const USAGE = /* lua */ `
local days = {}
for _, day in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[3], '(' .. ARGV[4])) do
  days[#days + 1] = day
  days[#days + 1] = redis.call('HGETALL', ARGV[1] .. day .. ':' .. ARGV[2])
end
return days
`;

/** KEYS: the schema key. ARGV: this layout's version. Writes it when absent; returns what is there. */
export const MIGRATE = /* lua */ `
local current = redis.call('GET', KEYS[1])
if current then return current end
redis.call('SET', KEYS[1], ARGV[1])
return ARGV[1]
`;

/**
 * KEYS: state, records, holds, ledger, at index, days. ARGV: the workspace's key base,
 * '1' to keep the ledger, then (when keeping it) the version read, and ledger rows and
 * rollups rewritten without agent and conversation ids: n, (seq, row JSON)×n, then per
 * rollup hash: name, m, (field, value)×m. Returns 0 (nothing written) when the version moved.
 * Either way the version goes up by one and stays: without the ledger, it is all the state
 * hash keeps. A workspace never committed is left alone.
 */
export const ERASE = /* lua */ `${HELPERS}
local version = redis.call('HGET', KEYS[1], 'v')
if not version then return 1 end
local days = redis.call('ZRANGE', KEYS[6], 0, -1)
if ARGV[2] ~= '1' then
  for _, day in ipairs(days) do
    for _, g in ipairs({ 'a', 'm', 'c' }) do redis.call('DEL', ARGV[1] .. 'day:' .. day .. ':' .. g) end
  end
  redis.call('DEL', KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6])
  redis.call('HDEL', KEYS[1], 'd', 'a', 'n', 'o')
  redis.call('HSET', KEYS[1], 'v', fmt(tonumber(version) + 1))
  return 1
end
if version ~= ARGV[3] then return 0 end
redis.call('HSET', KEYS[1], 'v', fmt(tonumber(version) + 1))
redis.call('DEL', KEYS[2], KEYS[3])
local i = 4
local n = tonumber(ARGV[i])
for c = i + 1, i + 2 * n, 4000 do redis.call('HSET', KEYS[4], unpack(ARGV, c, math.min(c + 3999, i + 2 * n))) end
i = i + 1 + 2 * n
for _, day in ipairs(days) do
  for _, g in ipairs({ 'a', 'c' }) do redis.call('DEL', ARGV[1] .. 'day:' .. day .. ':' .. g) end
end
while i <= #ARGV do
  local name, m = ARGV[i], tonumber(ARGV[i + 1])
  redis.call('HSET', name, unpack(ARGV, i + 2, i + 1 + 2 * m))
  i = i + 2 + 2 * m
end
return 1
`;
