
local base = ARGV[1]
if redis.call('EXISTS', base .. ':prec:built') == 1 then return -1 end
local upto = tonumber(redis.call('GET', base .. ':prec:upto') or '-1')
if upto < 0 then  -- the first step (of all, or after prec:built was dropped to make them again): from nothing
  for _, rule in ipairs(redis.call('HKEYS', base .. ':rules')) do
    redis.call('DEL', prec(base, 'n', rule), prec(base, 'first', rule), prec(base, 'closing', rule))
  end
  upto = 0
end
local to = upto + tonumber(ARGV[2])
for _, status in ipairs({'resolved', 'dismissed'}) do
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', base .. ':ix:status:' .. status, '(' .. upto, to)) do
    tally(base, base .. ':case:' .. id, id, 1)
  end
end
if to >= tonumber(redis.call('GET', base .. ':seq') or '0') then
  redis.call('SET', base .. ':prec:built', 1)
  redis.call('DEL', base .. ':prec:upto')
  return -1
end
redis.call('SET', base .. ':prec:upto', to)
return to
