
local base = ARGV[1]
local out = {}
local rules = redis.call('HGETALL', base .. ':rules')
for i = 1, #rules, 2 do
  local rule = rules[i]
  local c = redis.call('HMGET', prec(base, 'n', rule), 'resolved', 'confirmed', 'dismissed', 'dismissed_wrong')
  local cases = redis.call('ZCARD', base .. ':ix:rule:' .. rule)
  local row = {rule, rules[i + 1], cases, c[1] or '0', c[2] or '0', c[3] or '0'}
  for _, span in ipairs({'first', 'closing'}) do
    local z = prec(base, span, rule)
    local n = redis.call('ZCARD', z)
    if n == 0 then
      row[#row + 1], row[#row + 2] = '', ''
    else
      row[#row + 1] = redis.call('ZRANGE', z, math.floor((n - 1) / 2), math.floor((n - 1) / 2), 'WITHSCORES')[2]
      row[#row + 1] = redis.call('ZRANGE', z, math.floor(n / 2), math.floor(n / 2), 'WITHSCORES')[2]
    end
  end
  row[#row + 1] = c[4] or '0'
  out[#out + 1] = row
end
return out
