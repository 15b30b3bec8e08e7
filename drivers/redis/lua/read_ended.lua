--[[ read_ended: read a run's fields, and its node hashes too once it has ended.
  KEYS[1] run hash                (partition tag)
  KEYS[2] run node-state hash     (partition tag)
  KEYS[3] run values hash         (partition tag)
  KEYS[4] run errors hash         (partition tag)
  ARGV[1 ..] run hash fields to read; the first must be "status"
  Returns {fields} while the run is running or when it is not found, and
  {fields, nodes, values, errors} once it has ended, where fields holds the
  values of ARGV in order (nil when missing) and the others are the flat
  field/value lists of HGETALL. A run of one node keeps its node's fields
  and its value in its run hash (include/single.lua): they are returned in
  the same lists. A waiting client thus gets a finished run's snapshot in
  one round trip, and a running run costs one small read, however many
  nodes it has. Writes nothing.
]]
-- luacheck: globals KEYS ARGV redis
local rcall = redis.call
local names = {unpack(ARGV)}
local count = #names
names[count + 1] = "single"
names[count + 2] = "nodes"
local found = rcall("HMGET", KEYS[1], unpack(names))
-- HMGET gives false, not nil, for a missing field, so unpack keeps every one.
local fields = {unpack(found, 1, count)}
if not fields[1] or fields[1] == "running" then
  return {fields}
end
if not found[count + 1] then
  return {fields, rcall("HGETALL", KEYS[2]), rcall("HGETALL", KEYS[3]),
    rcall("HGETALL", KEYS[4])}
end
local node = found[count + 2]
local prefix = node .. "/"
local flat = rcall("HGETALL", KEYS[1])
local nodes = {}
local values = {}
for index = 1, #flat, 2 do
  local field = flat[index]
  if field == node or string.sub(field, 1, #prefix) == prefix then
    nodes[#nodes + 1] = field
    nodes[#nodes + 1] = flat[index + 1]
  elseif field == "value" then
    values = {node, flat[index + 1]}
  end
end
return {fields, nodes, values, {}}
