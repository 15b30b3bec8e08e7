--[[ release_lock: delete a lock only if the given token still holds it.
  KEYS[1] lock string key         (partition tag)
  ARGV[1] holder token returned when the lock was acquired
  Returns 1 when the lock was released, 0 when another token or nobody holds it.
  Writes no stream entries.
]]
-- luacheck: globals KEYS ARGV redis
local rcall = redis.call
local lock_key = KEYS[1]
local token = ARGV[1]

if rcall("GET", lock_key) == token then
  rcall("DEL", lock_key)
  return 1
end
return 0
