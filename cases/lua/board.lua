
local now = tonumber(ARGV[1])
local result = {}
for i = 2, #KEYS do result[#result + 1] = redis.call('ZCARD', KEYS[i]) end
local upper = '+inf'
for i = 2, #ARGV + 1 do
  local lower = '-inf'
  if i <= #ARGV then  -- the highest number among the cases of the latest time at or before the edge
    local latest = redis.call('ZREVRANGEBYSCORE', KEYS[1], now - tonumber(ARGV[i]), '-inf', 'WITHSCORES', 'LIMIT', 0, 1)
    local last = 0
    if latest[2] then  -- one intake opens many cases at one time; members order as text ('9' > '10')
      for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], latest[2], latest[2])) do
        if tonumber(id) > last then last = tonumber(id) end
      end
    end
    lower = '(' .. last
  end
  result[#result + 1] = redis.call('ZCOUNT', KEYS[2], lower, upper) + redis.call('ZCOUNT', KEYS[3], lower, upper)
  if lower == '-inf' then upper = lower else upper = string.sub(lower, 2) end
end
return result
