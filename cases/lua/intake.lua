
local base, now = ARGV[1], ARGV[2]
local RETRACTED_NOTE = '撤回 taken back by the monitor: '
local opened, joined, closed, annotated, unmatched = 0, 0, 0, 0, 0
local function ix(name, value) if value == '' then value = '-' end return base .. ':ix:' .. name .. ':' .. value end
local function index(name, value, id) redis.call('ZADD', ix(name, value), id, id) end
local function move(name, old, new, id)
  if old ~= new then redis.call('ZREM', ix(name, old), id); index(name, new, id) end
end
-- the product's own entries say so in a field no person's entry has (no token can be named 'system' either)
local function audit(case, entry) entry.by_system = true; redis.call('RPUSH', case .. ':audit', cjson.encode(entry)) end
local function text(value) if type(value) == 'string' then return value end return '' end
-- A retraction (rid) of finding fid: once per retracted finding (KEYS[6]), whatever its id or how
-- often the feed repeats it. Closes the case fid opened or joined when cases.model.on_retraction says so.
local function retract(rid, fid, rule, reason)
  if redis.call('HSETNX', KEYS[6], fid, rid) == 0 then return end
  local id = redis.call('HGET', KEYS[2], fid)
  if not id or id == '' then unmatched = unmatched + 1; return end
  local case = base .. ':case:' .. id
  local f = redis.call('HMGET', case, 'status', 'first_action_at', 'count', 'retracted', 'type', 'customer_id',
    'category')
  local gone = tonumber(f[4] or '0') + 1
  redis.call('HSET', case, 'retracted', gone, 'updated_at', now)
  redis.call('HINCRBY', case, 'v', 1)
  local at = tonumber(now)
  audit(case, {at = at, actor = 'system', action = 'finding_retracted', finding_id = fid, retraction_id = rid,
    rule = rule, reason = reason})
  if f[1] == 'open' and (f[2] or '') == '' and gone >= tonumber(f[3]) then
    local note = RETRACTED_NOTE .. (reason ~= '' and reason or 'retracted')
    redis.call('HSET', case, 'status', 'dismissed', 'outcome', RETRACTED, 'note', note, 'closed_at', now)
    move('status', 'open', 'dismissed', id)
    local slot = f[5] .. '|' .. f[6] .. '|' .. f[7]
    if redis.call('HGET', KEYS[1], slot) == id then redis.call('HDEL', KEYS[1], slot) end
    audit(case, {at = at, actor = 'system', action = 'transition', field = 'status', from = 'open', to = 'dismissed',
      outcome = RETRACTED, note = note})
    closed = closed + 1
  else
    annotated = annotated + 1
  end
end
-- A finding fid not taken before: opens or joins the open case of its slot.
local function take(fid, kind, cust, cat, rule, sev, rank, tier, prio, body, ts, history, queue)
  local slot = kind .. '|' .. cust .. '|' .. cat
  local id = redis.call('HGET', KEYS[1], slot)
  local case
  if id then
    case = base .. ':case:' .. id
    redis.call('HINCRBY', case, 'count', 1)
    redis.call('HINCRBY', case, 'v', 1)
    if tonumber(rank) > tonumber(redis.call('HGET', case, 'severity_rank')) then
      move('severity', redis.call('HGET', case, 'severity'), sev, id)
      redis.call('HSET', case, 'severity', sev, 'severity_rank', rank)
    end
    move('tier', redis.call('HGET', case, 'tier'), tier, id)
    if tonumber(prio) < tonumber(redis.call('HGET', case, 'priority')) then
      redis.call('HSET', case, 'priority', prio)
    end
    local rules = cjson.decode(redis.call('HGET', case, 'rules'))
    local known = false
    for _, r in ipairs(rules) do if r == rule then known = true end end
    if not known then
      rules[#rules + 1] = rule
      redis.call('HSET', case, 'rules', cjson.encode(rules))
      index('rule', rule, id)
    end
    redis.call('HSET', case, 'tier', tier, 'updated_at', now, 'last_finding_ts', ts)
    if history == '' then redis.call('HSET', case, 'history', '') end  -- no longer history alone
    local was = redis.call('HGET', case, 'queue') or 'analyst'
    if queue == 'rm' and was ~= 'rm' then  -- routed to the RM: it stays with the RM
      move('queue', was, 'rm', id)
      redis.call('HSET', case, 'queue', 'rm')
    end
    audit(case, {at = tonumber(now), actor = 'system', action = 'finding_added', finding_id = fid, rule = rule})
    joined = joined + 1
  else
    id = redis.call('INCR', KEYS[3])
    case = base .. ':case:' .. id
    redis.call('HSET', case, 'id', id, 'type', kind, 'customer_id', cust, 'category', cat, 'rule', rule,
      'rules', cjson.encode({rule}), 'severity', sev, 'severity_rank', rank, 'tier', tier, 'priority', prio,
      'status', 'open', 'assignee', '', 'count', 1, 'opened_at', now, 'updated_at', now,
      'first_action_at', '', 'closed_at', '', 'outcome', '', 'note', '',
      'first_finding_ts', ts, 'last_finding_ts', ts, 'v', 1, 'retracted', 0, 'history', history, 'queue', queue)
    redis.call('HSET', KEYS[1], slot, id)
    index('status', 'open', id)
    index('assignee', '-', id)
    index('customer', cust, id)
    index('rule', rule, id)
    index('category', cat, id)
    index('type', kind, id)
    index('severity', sev, id)
    index('tier', tier, id)
    index('queue', queue, id)
    index('all', 'cases', id)
    redis.call('ZADD', base .. ':ix:opened', now, id)
    audit(case, {at = tonumber(now), actor = 'system', action = 'opened', finding_id = fid, rule = rule})
    opened = opened + 1
  end
  redis.call('RPUSH', case .. ':findings', body)
  redis.call('HSET', KEYS[2], fid, id)
  redis.call('HINCRBY', KEYS[5], rule, 1)
end
for i = 4, #ARGV, 13 do
  local fid, rule, body, retracts = ARGV[i], ARGV[i + 4], ARGV[i + 9], ARGV[i + 10]
  local doc = cjson.decode(body)
  if retracts ~= '' then
    retract(fid, retracts, rule, text(doc['reason']))
  elseif redis.call('HEXISTS', KEYS[2], fid) == 0 then
    if redis.call('HEXISTS', KEYS[6], fid) == 1 then
      redis.call('HSET', KEYS[2], fid, '')  -- taken back before it arrived: it opens nothing
    else
      take(fid, ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], rule, ARGV[i + 5], ARGV[i + 6], ARGV[i + 7], ARGV[i + 8], body,
        text(doc['ts']), ARGV[i + 11], ARGV[i + 12])
    end
  end
end
if ARGV[3] ~= '' then
  local current = redis.call('GET', KEYS[4])
  local function parts(s) local a, b = string.match(s, '^(%d+)-(%d+)$'); return tonumber(a), tonumber(b) end
  local newer = true
  if current then
    local cm, cs = parts(current)
    local nm, ns = parts(ARGV[3])
    newer = nm > cm or (nm == cm and ns > cs)
  end
  if newer then redis.call('SET', KEYS[4], ARGV[3]) end
end
return {opened, joined, closed, annotated, unmatched}
