--[[ stage: write one chunk of a large run before it is sealed.
  A run too large for one script call is written by several calls of this
  script, then made live by seal.lua. Until then the run hash does not
  exist, so no other script sees the run, and the staged keys expire.
  KEYS[1] run hash                (partition tag); only read
  KEYS[2] the key this chunk goes to: the run graph hash, the run node-state
          hash or the run roots list (partition tag)
  ARGV[1] "hash" to HSET field/value pairs, "list" to RPUSH items
  ARGV[2] "1" to delete the key first (the first chunk of the key), else "0"
  ARGV[3] milliseconds until the staged key expires unless a seal persists it
  ARGV[4 ..] the field/value pairs, or the list items
  Returns {1} when the chunk was written, {0} when the run exists already
  (sealed by this or another submit), so nothing was written.
  Writes no stream entries.
]]
-- luacheck: globals KEYS ARGV redis
local rcall = redis.call
local run_key = KEYS[1]
local target_key = KEYS[2]

if rcall("EXISTS", run_key) == 1 then
  return {0}
end
if ARGV[2] == "1" then
  rcall("DEL", target_key)
end
-- In slices, because unpack has a stack limit of a few thousand values.
local SLICE = 1000
local command = ARGV[1] == "hash" and "HSET" or "RPUSH"
local index = 4
while index <= #ARGV do
  local stop = math.min(index + SLICE - 1, #ARGV)
  rcall(command, target_key, unpack(ARGV, index, stop))
  index = stop + 1
end
rcall("PEXPIRE", target_key, ARGV[3])
return {1}
