--[[ read_ended: read a run's fields, and its node hashes too once it has ended.
  KEYS[1] run hash                (partition tag)
  KEYS[2] run node-state hash     (partition tag)
  KEYS[3] run values hash         (partition tag)
  KEYS[4] run errors hash         (partition tag)
  ARGV[1 ..] run hash fields to read; the first must be "status"
  Returns {fields} while the run is running or when it is not found, and
  {fields, nodes, values, errors} once it has ended, where fields holds the
  values of ARGV in order (nil when missing) and the others are the flat
  field/value lists of HGETALL. A waiting client thus gets a finished run's
  snapshot in one round trip, and a running run costs one small read, however
  many nodes it has. Writes nothing.
]]
-- luacheck: globals KEYS ARGV redis
local rcall = redis.call
local fields = rcall("HMGET", KEYS[1], unpack(ARGV))
if not fields[1] or fields[1] == "running" then
  return {fields}
end
return {fields, rcall("HGETALL", KEYS[2]), rcall("HGETALL", KEYS[3]),
  rcall("HGETALL", KEYS[4])}
