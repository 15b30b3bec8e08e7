--[[ reset_shard: make a shard run that never started inactive again, for a new home epoch.
  A shard run (shards.py) that its home run cancelled before activating it
  ends cancelled with every node cancelled, its input placeholders too. When
  a retry of the home run reopens the shard node, this puts every node back
  to pending, so activate.lua can start the shard as if it were new.
  A shard that was activated is reopened with reopen.lua instead.
  KEYS[1] run hash                (partition tag)
  KEYS[2] run graph hash          (partition tag)
  KEYS[3] run node-state hash     (partition tag)
  KEYS[4] run values hash         (partition tag)
  KEYS[5] run errors hash         (partition tag)
  KEYS[6] run state-count hash    (partition tag)
  KEYS[7] lifecycle event stream  (partition tag)
  ARGV[1] shard run id
  ARGV[2] the home run's new epoch
  Returns {1} when the shard was reset, {0} when it belongs to that home
  epoch already, {-1} for an unknown run and {-4, status} when it is
  running or was activated, so it cannot be reset (nothing changed).
  Writes no stream entries. Visits every node of the shard, which is at
  most shard_size members and the placeholders.
]]
-- luacheck: globals KEYS ARGV redis
local rcall = redis.call
local run_key = KEYS[1]
local graph_key = KEYS[2]
local nodes_key = KEYS[3]
local values_key = KEYS[4]
local errors_key = KEYS[5]
local counts_key = KEYS[6]
local events_key = KEYS[7]
local run_id = ARGV[1]

--- @include "lifecycle"

local run = rcall("HMGET", run_key, "status", "active", "home_epoch", "nodes")
if not run[1] then
  return {-1}
end
if run[3] == ARGV[2] then
  return {0}
end
if run[1] == "running" or run[2] == "1" then
  return {-4, run[1]}
end
local open_main = 0
for node in string.gmatch(run[4], "[^,]+") do
  local state = rcall("HGET", nodes_key, node)
  if state ~= "pending" then
    count_move(node, state, "pending")
  end
  rcall("HSET", nodes_key, node, "pending", node .. "/attempt", "0",
    node .. "/lease", "0", node .. "/waiting", rcall("HGET", graph_key,
      node .. "/ndeps") or "0")
  rcall("HDEL", nodes_key, node .. "/cause", node .. "/ended_at")
  if rcall("HGET", graph_key, node .. "/side") ~= "1" then
    open_main = open_main + 1
  end
end
rcall("HSET", run_key, "status", "running", "open_main", open_main,
  "home_epoch", ARGV[2], "sinks_not_succeeded", "0")
rcall("HDEL", run_key, "ended_at", "error_node", "reported", "lowest_failed")
persist_run()
return {1}
