-- Records pushes held at delivery, once per finding id however often the relay sees it.
-- KEYS: the held stream, then per push its once-mark (the same hash tag). ARGV: the marks' ttl (s),
-- the stream's approximate cap, then per push its entry (JSON). Returns per push 1 (new) or 0 (held before).
local new = {}
for i = 2, #KEYS do
  if redis.call('SET', KEYS[i], '1', 'NX', 'EX', tonumber(ARGV[1])) then
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', tonumber(ARGV[2]), '*', 'v', ARGV[i + 1])
    new[#new + 1] = 1
  else
    new[#new + 1] = 0
  end
end
return new
