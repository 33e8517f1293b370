
-- The Idempotency-Key's record first: a retry is answered before anything is decided.
if ARGV[2] ~= '' then
  local prior = redis.call('GET', KEYS[3])
  if prior then return {2, prior} end
end
local commenting = ARGV[9] ~= '0'
if commenting then  -- a comment: no compare-and-set, only what it needs to hold still
  if redis.call('EXISTS', KEYS[1]) == 0 then return {6, ''} end
  local assignee = redis.call('HGET', KEYS[1], 'assignee') or ''
  if ARGV[8] ~= '' and assignee ~= '' and assignee ~= ARGV[8] then return {5, assignee} end
  local held = tonumber(redis.call('HGET', KEYS[1], 'comments') or '0')
  if held >= tonumber(ARGV[9]) then return {4, held} end
elseif (redis.call('HGET', KEYS[1], 'v') or '') ~= ARGV[1] then
  return {0, ''}
end
if ARGV[4] == 'claim' then
  local holder = redis.call('HGET', KEYS[4], ARGV[5])
  if holder and holder ~= ARGV[6] then return {3, holder} end
  redis.call('HSET', KEYS[4], ARGV[5], ARGV[6])
elseif ARGV[4] == 'release' then
  if redis.call('HGET', KEYS[4], ARGV[5]) == ARGV[6] then redis.call('HDEL', KEYS[4], ARGV[5]) end
end
local base = ARGV[7]
local a = 10
local n = tonumber(ARGV[a])
local moving = false  -- the status changes: the rules' precision tallies follow (once they exist)
for i = a + 1, a + 2 * n, 2 do if ARGV[i] == 'status' then moving = true end end
if moving and redis.call('EXISTS', base .. ':prec:built') == 0 then  -- the tallies are being made
  moving = tonumber(ARGV[6]) <= tonumber(redis.call('GET', base .. ':prec:upto') or '0')
end
if moving then tally(base, KEYS[1], ARGV[6], -1) end
for i = a + 1, a + 2 * n, 2 do
  -- a comment keeps the first action that came before it (no compare-and-set to say it is still empty)
  if not (commenting and ARGV[i] == 'first_action_at' and (redis.call('HGET', KEYS[1], ARGV[i]) or '') ~= '') then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  end
end
if moving then tally(base, KEYS[1], ARGV[6], 1) end
if commenting then redis.call('HINCRBY', KEYS[1], 'comments', 1) else redis.call('HINCRBY', KEYS[1], 'v', 1) end
a = a + 2 * n + 1
local m = tonumber(ARGV[a])
for i = a + 1, a + m do redis.call('RPUSH', KEYS[2], ARGV[i]) end
if commenting then redis.call('RPUSH', KEYS[5], ARGV[a + 1]) end  -- the comment's entry, first of the m
for i = a + m + 1, #ARGV, 2 do
  local key = base .. ':' .. ARGV[i + 1]
  if ARGV[i] == 'zadd' then redis.call('ZADD', key, ARGV[6], ARGV[6]) else redis.call('ZREM', key, ARGV[6]) end
end
if ARGV[2] ~= '' then redis.call('SET', KEYS[3], ARGV[2], 'EX', ARGV[3]) end
return {1, ''}
