/**
 * The Lua behind {@link RedisStorage}. No script decides a credit rule: `commit` checks the
 * version and writes what it is given, the others only read. Every key a script touches is
 * one workspace's, under its hash tag, so each script runs on one Redis Cluster node.
 *
 * Numbers cross as strings; Lua compares them as doubles, exact up to 2^53. A number built in
 * Lua is written through `fmt`, since Lua's own conversion keeps only 14 digits.
 */
import { createHash } from 'node:crypto';
import { LEDGER_COLUMNS } from '../../core/ledger-row.js';

/** The Lua index (1-based) of a field in a packed ledger row. */
const column = (field: string) => LEDGER_COLUMNS.findIndex((c) => c.field === field) + 1;

/** A script with the SHA1 that `EVALSHA` calls it by. */
const script = (source: string) => ({ source, sha: createHash('sha1').update(source).digest('hex') });

const HELPERS = /* lua */ `
local function fmt(n) return string.format('%.0f', n) end
local function pad(n) return string.format('%016.0f', n) end
-- HMGET of fields[first], fields[first + 1], ..., a few thousand per call.
local function hmget(key, fields, first)
  local out = {}
  for c = first or 1, #fields, 4000 do
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
export const load = script(/* lua */ `${HELPERS}
local s = redis.call('HMGET', KEYS[1], 'v', 'd')
local earliest = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
return { s[1], s[2], hmget(KEYS[2], ARGV, 2), hmget(KEYS[2], redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', ARGV[1])), earliest[2] or false }
`);

/**
 * KEYS: state, records, holds, ledger, at index, days, then one rollup hash per (day, group).
 * ARGV: expected version, new version, state JSON, '1' when the rows are in time order, then
 * groups, each a count and that many items: record keys that must be absent; record (key, JSON)
 * pairs; hold (expiry, key) pairs; keys to drop from the holds; ledger (padded seq, JSON) pairs;
 * at-index (at, padded seq) pairs in seq order; day (day, day) pairs; then per rollup hash its
 * (field, increment) pairs, added with one read and one write per hash (a call per field would
 * cost more than all the rest). Returns 1 when written, 0 (and writes nothing) when the version
 * moved or a record that must be absent exists.
 */
export const commit = script(/* lua */ `${HELPERS}
local head = redis.call('HMGET', KEYS[1], 'v', 'a')
if (head[1] or '0') ~= ARGV[1] then return 0 end
local i = 5
local function group()
  local first = i + 1
  i = first + tonumber(ARGV[i])
  return first, i - 1
end
local function bulk(cmd, key)
  local first, last = group()
  for c = first, last, 4000 do redis.call(cmd, key, unpack(ARGV, c, math.min(c + 3999, last))) end
  return first, last
end
local first, last = group()
for j = first, last do
  if redis.call('HEXISTS', KEYS[2], ARGV[j]) == 1 then return 0 end
end
bulk('HSET', KEYS[2])
bulk('ZADD', KEYS[3])
bulk('ZREM', KEYS[3])
bulk('HSET', KEYS[4])
first, last = bulk('ZADD', KEYS[5])
bulk('ZADD', KEYS[6])
redis.call('HSET', KEYS[1], 'v', ARGV[2], 'd', ARGV[3])
if last > first then
  redis.call('HSET', KEYS[1], 'a', ARGV[last - 1], 'n', fmt(tonumber(ARGV[last])))
  -- A row earlier than one already kept (a clock went back) turns off seq-range paging for good.
  if ARGV[4] ~= '1' or (head[2] and tonumber(ARGV[first]) < tonumber(head[2])) then redis.call('HSET', KEYS[1], 'o', '1') end
end
for k = 7, #KEYS do
  first, last = group()
  -- Past 64 fields the '~' marker, longer than hash-max-listpack-value's default, turns the hash
  -- into a hash table for good. A listpack is scanned per field: at 512 fields (some servers keep
  -- that many in one) the rollups took a third of the commit, and a charge 4 µs of Redis time.
  if redis.call('HLEN', KEYS[k]) > 64 then redis.call('HSETNX', KEYS[k], '~', string.rep('~', 65)) end
  local fields = {}
  for j = first, last, 2 do fields[#fields + 1] = ARGV[j] end
  -- Each increment in ARGV becomes the field's new total, then all are written at once.
  for f, current in ipairs(redis.call('HMGET', KEYS[k], unpack(fields))) do
    local j = first + 2 * f - 1
    ARGV[j] = fmt((tonumber(current) or 0) + tonumber(ARGV[j]))
  end
  redis.call('HSET', KEYS[k], unpack(ARGV, first, last))
end
return 1
`);

/**
 * KEYS: state, ledger, at index. ARGV: afterSeq, from | '', to | '', '=' agentId | '',
 * ',kind,kind,' | '', limit. Returns the rows' JSON in seq order.
 */
export const ledger = script(/* lua */ `${HELPERS}
local after, from, to, agent, kinds, limit = tonumber(ARGV[1]), ARGV[2], ARGV[3], ARGV[4], ARGV[5], tonumber(ARGV[6])
local out = {}
local function take(seqs)
  for _, json in ipairs(hmget(KEYS[2], seqs)) do
    if #out >= limit then return end
    local r = json and cjson.decode(json)
    -- A packed row is an array in LEDGER_COLUMNS order; a row stored whole, before packing, has names.
    if r and r[1] then r = { at = r[${column('at')}], agentId = r[${column('agentId')}], kind = r[${column('kind')}] } end
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
  if from ~= '' then
    local first = redis.call('ZRANGEBYSCORE', KEYS[3], from, '+inf', 'LIMIT', 0, 1)[1]
    lo = first and math.max(lo, tonumber(first)) or hi + 1
  end
  if to ~= '' then
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
`);

/**
 * KEYS: days, state. ARGV: rollup key prefix, group letter, whole days [from, to), the window's
 * end. Returns [1 when the last day is taken whole too, [day, HGETALL of its rollup] per day]: it
 * is when no row of it can be at or after the end (rows in time order, the last one before it).
 * The window's other part days are read row by row through `ledger`.
 */
export const usage = script(/* lua */ `
local head = redis.call('HMGET', KEYS[2], 'a', 'o')
local whole = head[2] ~= '1' and tonumber(head[1] or '0') < tonumber(ARGV[5])
local days = {}
for _, day in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[3], '(' .. (whole and ARGV[5] or ARGV[4]))) do
  days[#days + 1] = { day, redis.call('HGETALL', ARGV[1] .. day .. ':' .. ARGV[2]) }
end
return { whole and 1 or 0, days }
`);

/** KEYS: the schema key. ARGV: this layout's version. Writes it when absent; returns what is there. */
export const migrate = script(/* lua */ `
redis.call('SET', KEYS[1], ARGV[1], 'NX')
return redis.call('GET', KEYS[1])
`);

/**
 * KEYS: state, records, holds, ledger, at index, days. ARGV: rollup key prefix, then '' to drop
 * the ledger too, or the version read and the ledger's (padded seq, JSON) pairs rewritten without
 * agent and conversation ids. Either way the version goes up by one and stays: without the
 * ledger it is all the state hash keeps. A workspace never committed is left alone. Returns 0
 * (and writes nothing) when the version moved.
 */
export const erase = script(/* lua */ `
local version = redis.call('HGET', KEYS[1], 'v')
if not version then return 1 end
if ARGV[2] ~= '' and ARGV[2] ~= version then return 0 end
redis.call('HINCRBY', KEYS[1], 'v', 1)
redis.call('DEL', KEYS[2], KEYS[3])
local days = redis.call('ZRANGE', KEYS[6], 0, -1)
if ARGV[2] == '' then
  redis.call('HDEL', KEYS[1], 'd', 'a', 'n', 'o')
  redis.call('DEL', KEYS[4], KEYS[5], KEYS[6])
  for _, day in ipairs(days) do redis.call('DEL', ARGV[1] .. day .. ':a', ARGV[1] .. day .. ':m', ARGV[1] .. day .. ':c') end
  return 1
end
for c = 3, #ARGV, 4000 do redis.call('HSET', KEYS[4], unpack(ARGV, c, math.min(c + 3999, #ARGV))) end
-- Without agent and conversation ids, a day's agent and conversation rollups are one '' entry
-- each, the total of its model rollup: fields 's<model>' add up to 's', 'n<model>' to 'n' ('~' is no sum).
for _, day in ipairs(days) do
  local byModel = redis.call('HGETALL', ARGV[1] .. day .. ':m')
  redis.call('DEL', ARGV[1] .. day .. ':a', ARGV[1] .. day .. ':c')
  for j = 1, #byModel, 2 do
    for _, g in ipairs(byModel[j] == '~' and {} or { ':a', ':c' }) do redis.call('HINCRBY', ARGV[1] .. day .. g, string.sub(byModel[j], 1, 1), byModel[j + 1]) end
  end
end
return 1
`);
