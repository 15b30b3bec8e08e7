--[[ read_value: read a run's fields, and its output node's value once it has succeeded.
  KEYS[1] run hash                (partition tag)
  KEYS[2] run values hash         (partition tag)
  ARGV[1] the node whose value is the run's value
  ARGV[2 ..] run hash fields to read; the first must be "status"
  Returns {fields} unless the run has succeeded, and {fields, value} once it
  has, where fields holds the values of ARGV[2 ..] in order (nil when
  missing) and value is the node's stored value (nil when none is stored).
  `get()` of a run whose value is one node's value thus reads two fields'
  worth instead of read_ended's three hashes. Writes nothing.
]]
-- luacheck: globals KEYS ARGV redis
local rcall = redis.call
local fields = rcall("HMGET", KEYS[1], unpack(ARGV, 2))
if fields[1] ~= "succeeded" then
  return {fields}
end
return {fields, rcall("HGET", KEYS[2], ARGV[1])}
