--[[ cancel: end a running run on request; nothing more of it runs and no errback fires.
  KEYS[1] run hash                (partition tag)
  KEYS[2] run graph hash          (partition tag)
  KEYS[3] run node-state hash     (partition tag)
  Time comes from TIME inside the script.
  Returns {1} when the run was cancelled, {0} when it had already ended,
  {-1} for an unknown run.
  Writes no stream entries: messages already queued are dropped when claimed,
  because their nodes are no longer queued.
]]
-- luacheck: globals KEYS ARGV redis
local rcall = redis.call
local run_key = KEYS[1]
local graph_key = KEYS[2]
local nodes_key = KEYS[3]
local clock = rcall("TIME")
local now_text = string.format("%.6f", tonumber(clock[1]) + tonumber(clock[2]) / 1000000)

local run = rcall("HMGET", run_key, "status", "nodes")
if not run[1] then
  return {-1}
end
if run[1] ~= "running" then
  return {0}
end
local TERMINAL = {succeeded = true, failed = true, cancelled = true, skipped = true}
-- NOTE: this visits every node of the run, as the Python `cancel` does.
for node in string.gmatch(run[2], "[^,]+") do
  local state = rcall("HGET", nodes_key, node)
  if not TERMINAL[state] then
    local role = rcall("HGET", graph_key, node .. "/role")
    local pending_side = (role == "link" or role == "errback") and state == "pending"
    rcall("HSET", nodes_key, node, pending_side and "skipped" or "cancelled",
      node .. "/ended_at", now_text)
  end
end
rcall("HSET", run_key, "status", "cancelled", "open_main", "0", "ended_at", now_text)
return {1}
