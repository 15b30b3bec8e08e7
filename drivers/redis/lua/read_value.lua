--[[ read_value: read a run's fields, and its output node's value once it has succeeded.
  KEYS[1] run hash                (partition tag)
  KEYS[2] run values hash         (partition tag)
  ARGV[1] the node whose value is the run's value
  ARGV[2 ..] run hash fields to read; the first must be "status"
  Returns {fields} unless the run has succeeded, and {fields, value} once it
  has, where fields holds the values of ARGV[2 ..] in order (nil when
  missing) and value is the node's stored value (nil when none is stored).
  A run of one node keeps its value in its run hash (include/single.lua),
  read with the fields. `get()` of a run whose value is one node's value
  thus reads two fields' worth instead of read_ended's three hashes.
  Writes nothing.
]]
-- luacheck: globals KEYS ARGV redis
local rcall = redis.call
local names = {unpack(ARGV, 2)}
local count = #names
names[count + 1] = "single"
names[count + 2] = "value"
local found = rcall("HMGET", KEYS[1], unpack(names))
-- HMGET gives false, not nil, for a missing field, so unpack keeps every one.
local fields = {unpack(found, 1, count)}
if fields[1] ~= "succeeded" then
  return {fields}
end
if found[count + 1] then
  return {fields, found[count + 2]}
end
return {fields, rcall("HGET", KEYS[2], ARGV[1])}
