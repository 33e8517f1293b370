-- Merges consent records into the customers' packed consent (contact.model.Consent.apply, the
-- same bytes: flags, then the push, sms, all and complaint times and the source, big-endian).
-- KEYS: the bucket hashes the records name, then (when ARGV[1] ~= '') the customer's audit list.
-- ARGV: the audit entry (JSON, '' = none: an import); the records' numbers, 12 bytes each (big-
-- endian: the index of the record's bucket in KEYS (16 bits), kind (8: 0 opt_in, 1 opt_out,
-- 2 complaint), scope (8: 1 push, 2 sms, 3 all), at (32: Unix seconds), source (32: 0 the API,
-- N import N)); then each record's customer id, in the same order.
-- Returns {records that changed a state, records that changed nothing}.
local FMT = '>BIIIII'
local changed, same = 0, 0
local numbers = ARGV[2]
for i = 3, #ARGV do
  local cust = ARGV[i]
  local index, kind, scope, at, source = struct.unpack('>HBBII', numbers, (i - 3) * 12 + 1)
  local key = KEYS[index]
  local raw = redis.call('HGET', key, cust)
  local s = {0, 0, 0, 0, 0, 0}
  if raw then s = {struct.unpack(FMT, raw)} end
  local new = false
  if kind == 2 then
    if at > s[5] then s[5] = at; new = true end
  else
    local bit = ({1, 2, 4})[scope]
    local was_out = (s[1] % (bit * 2)) >= bit
    local out = kind == 1
    if at > s[scope + 1] or (at == s[scope + 1] and out and not was_out) then
      s[scope + 1] = at
      if out and not was_out then s[1] = s[1] + bit elseif was_out and not out then s[1] = s[1] - bit end
      new = true
    end
  end
  if new then
    redis.call('HSET', key, cust, struct.pack(FMT, s[1], s[2], s[3], s[4], s[5], source))
    changed = changed + 1
  else
    same = same + 1
  end
end
if ARGV[1] ~= '' then
  local entry = cjson.decode(ARGV[1])
  entry.changed = changed > 0
  redis.call('RPUSH', KEYS[#KEYS], cjson.encode(entry))
end
return {changed, same}
