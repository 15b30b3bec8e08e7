--[[ report: record on a home run how one of its shard runs ended.
  A shard run writes a "report" entry to its own partition's outbox when its
  first node fails and when it ends. A worker drains it and calls this
  script on the home run's partition. It is idempotent: only a shard node
  that is still running in the same epoch changes, once.
  KEYS[1] run hash                (partition tag); the run's other keys and
          the partition's delayed set and event stream are built from its
          name (include/run.lua)
  ARGV[1] home run id
  ARGV[2] shard node id
  ARGV[3] home epoch the shard was activated in
  ARGV[4] outcome: "succeeded", "failed" or "cancelled"
  ARGV[5] for "failed", the shard's failed node, else ""
  ARGV[6] for "failed", that node's error, JSON text kept opaque, else ""
  Time comes from TIME inside the script.
  Returns {1} when the shard node ended, {0} for a repeated or late report
  (the node ended already, the run ended or moved to another epoch), and
  {-1} for an unknown run.
  A success can queue the callback, as complete.lua does. A failure cancels
  what the shard node decides (the callback), ends the chord's other shard
  nodes as cancelled, and adds a "cancel" outbox entry for each shard run
  still going, this shard's included. Adds an "ended" event if the run ended.
]]
-- luacheck: globals KEYS ARGV redis cjson
--- @include "run"
local run_id = ARGV[1]
local node = ARGV[2]
local epoch = ARGV[3]
local outcome = ARGV[4]
local cause = ARGV[5]

--- @include "lifecycle"
--- @include "graph"

local run = rcall("HMGET", run_key, "status", "epoch")
if not run[1] then
  return {-1}
end
if run[1] ~= "running" or run[2] ~= epoch or state_of(node) ~= "running" then
  return {0}
end
if outcome == "succeeded" then
  end_node(node, "succeeded")
  maybe_finish()
  return {1}
end
if outcome == "failed" then
  rcall("HSET", errors_key, node, ARGV[6])
  -- Without a failed member (the shard run is missing) the node is its own cause.
  if cause ~= "" then
    rcall("HSET", nodes_key, node .. "/cause", cause)
  end
  set_terminal(node, "failed")
  -- The failed shard's other members need not run on.
  rcall("XADD", base .. "outbox", "*", "kind", "cancel", "run", run_id,
    "node", node, "epoch", epoch)
else
  set_terminal(node, "cancelled")
end
local work = {node}
-- Under fail_fast the chord fails, so its other shards stop too. The
-- callback's /shards field lists the chord's shard nodes.
for _, callback in ipairs(split(attr(node, "dependents"))) do
  for _, sibling in ipairs(split(attr(callback, "shards"))) do
    local state = state_of(sibling)
    if state == "pending" or state == "running" then
      set_terminal(sibling, "cancelled")
      rcall("HSET", nodes_key, sibling .. "/cause", cause_of(node))
      work[#work + 1] = sibling
    end
  end
end
settle(work)
maybe_finish()
if rcall("HGET", run_key, "status") == "running" then
  rcall("ZADD", base .. "sharded", now_text, run_id)
end
return {1}
