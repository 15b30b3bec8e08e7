--[[ complete: record a node's value, release the nodes it made ready, ack its message.
  KEYS[1] run hash                (partition tag); the run id, the run's
          other keys and the partition's delayed set and event stream are
          built from its name (include/run.lua)
  KEYS[2] queue stream the message came from (partition tag)
  ARGV[1] node id
  ARGV[2] attempt number
  ARGV[3] epoch
  ARGV[4] stream entry id to acknowledge, or "" when there is none
  ARGV[5] consumer group name
  ARGV[6] lease (fencing token) the claim granted
  ARGV[7] value, JSON text kept opaque
  Time comes from TIME inside the script.
  Returns {1} when the outcome was recorded, {0} for a duplicate or late report
  (nothing changed), {-1} for an unknown run, {-2} for a stale attempt, epoch
  or lease. The message is acknowledged and deleted on every reply but a stale
  lease: that message is now held by the worker that took the lease over.
  Adds one stream entry to <base>q:<queue> per node that became ready (a
  delayed-set member instead when it has a countdown or eta), a "succeeded"
  event, and an "ended" event if the run ended. An ignore_result node's value
  is stored only while a node that reads it has not ended.
]]
-- luacheck: globals KEYS ARGV redis cjson
--- @include "run"
--- @include "attempt_report"
local value = ARGV[7]

--- @include "lifecycle"
--- @include "queue"
--- @include "single"

local run, reply = check_report("retention_ms", "events_max_len", "status",
  "open_main", "home")
if not run then
  return reply
end
ack()
use_settings(run[2], run[3])

-- A run of one node kept in its run hash (include/single.lua), the shape
-- of most delay() calls, ends here with one HSET of that hash. Its node is
-- its only sink and has no other node to release or read. Its
-- "single" field (run[7], after check_report's own) gives the node's
-- ignore_result flag: an ignore_result node has no reader, so its value is
-- not stored. A run kept in its run hash has not retried, so it has no
-- error to delete.
if run[4] == "running" and run[5] == "1" and not run[6] and run[7] then
  local fields = {node, "succeeded", node .. "/ended_at", now_text,
    "status", "succeeded", "ended_at", now_text, "open_main", 0}
  if string.sub(run[7], 1, 1) ~= "1" then
    fields[#fields + 1] = "value"
    fields[#fields + 1] = value
  end
  rcall("HSET", run_key, unpack(fields))
  emit("succeeded", node, attempt)
  run_ended("succeeded", nil, nil, true)
  return {1}
end
-- A marked run that takes the long path goes to the usual keys first.
if run[7] then
  expand_single()
end

--- @include "graph"

-- maybe_finish below writes the count of open main-path nodes, with the
-- run's status when the run ends.
open_main_left = tonumber(run[5]) or 0
defer_open_main = true
store_value(node, value, info_of(node).ignore)
-- An earlier attempt's error goes: a succeeded node has no error. A first
-- attempt has none, because fail, retry and dead_letter write a node's
-- error only after an attempt, and reopen deletes it when it resets the
-- node's attempt to 0.
if attempt ~= "1" then
  rcall("HDEL", errors_key, node)
end
end_node(node, "succeeded", "running")
emit("succeeded", node, attempt)
maybe_finish(run[4])
return {1}
