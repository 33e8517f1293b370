
local function prec(base, what, rule) return base .. ':prec:' .. what .. ':' .. rule end  -- what: n, first, closing
local function tally(base, case, id, sign)
  local f = redis.call('HMGET', case, 'status', 'outcome', 'rules', 'opened_at', 'first_action_at', 'closed_at')
  if f[1] ~= 'resolved' and f[1] ~= 'dismissed' then return end
  if f[2] == RETRACTED then return end  -- taken back by the monitor: neither right nor wrong
  for _, rule in ipairs(cjson.decode(f[3])) do
    local p = prec(base, 'n', rule)
    if f[1] == 'dismissed' then
      redis.call('HINCRBY', p, 'dismissed', sign)
      -- a dismissal judges the rule only as a false positive; the other reasons judge nothing
      if f[2] == 'false_positive' then redis.call('HINCRBY', p, 'dismissed_wrong', sign) end
    else
      redis.call('HINCRBY', p, 'resolved', sign)
      if CONFIRMING[f[2]] then redis.call('HINCRBY', p, 'confirmed', sign) end
      for _, span in ipairs({{'first', f[5]}, {'closing', f[6]}}) do
        local z, at = prec(base, span[1], rule), tonumber(span[2])
        if at and sign > 0 then redis.call('ZADD', z, at - tonumber(f[4]), id) end
        if sign < 0 then redis.call('ZREM', z, id) end
      end
    end
  end
end
