--[[ fail: record that a node failed for good, cancel what it decides, ack its message.
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
  ARGV[7] error, JSON text kept opaque
  Time comes from TIME inside the script.
  Returns {1} when the outcome was recorded, {0} for a duplicate or late report
  (nothing changed), {-1} for an unknown run, {-2} for a stale attempt, epoch
  or lease. The message is acknowledged and deleted on every reply but a stale
  lease: that message is now held by the worker that took the lease over.
  Adds one stream entry to <base>q:<queue> per node that became ready (a
  delayed-set member instead when it has a countdown or eta).
  Errbacks that the failure fires are among those nodes. Adds a "failed"
  event, and an "ended" event if the run ended.
]]
-- luacheck: globals KEYS ARGV redis cjson
--- @include "run"
--- @include "attempt_report"
local error_text = ARGV[7]

--- @include "lifecycle"
--- @include "graph"
--- @include "single"

-- A run of one node kept in its run hash goes to the usual keys first.
expand_single()
local run, reply = check_report("retention_ms", "events_max_len", "status",
  "open_main")
if not run then
  return reply
end
ack()
use_settings(run[2], run[3])
-- maybe_finish below writes the count of open main-path nodes, with the
-- run's status when the run ends.
open_main_left = tonumber(run[5]) or 0
defer_open_main = true
rcall("HSET", errors_key, node, error_text)
end_node(node, "failed", "running")
emit("failed", node, attempt)
maybe_finish(run[4])
return {1}
