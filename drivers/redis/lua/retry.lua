--[[ retry: schedule a node's next attempt after a delay, ack its message.
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
  ARGV[7] error of this attempt, JSON text kept opaque
  ARGV[8] delay before the next attempt, in seconds
  Time comes from TIME inside the script.
  Returns {1} when the outcome was recorded, {0} for a duplicate or late report
  (nothing changed), {-1} for an unknown run, {-2} for a stale attempt, epoch
  or lease. The message is acknowledged and deleted on every reply but a stale
  lease: that message is now held by the worker that took the lease over.
  Adds one stream entry to <base>q:<queue> for the next attempt, or a
  delayed-set member when the delay is above zero, and a "retried" event.
]]
-- luacheck: globals KEYS ARGV redis cjson
--- @include "run"
--- @include "attempt_report"
local error_text = ARGV[7]
local delay = math.max(0, tonumber(ARGV[8]))

--- @include "lifecycle"
--- @include "graph"
--- @include "single"

-- A run of one node kept in its run hash goes to the usual keys first.
expand_single()
local run, reply = check_report("retention_ms", "events_max_len", "status")
if not run then
  return reply
end
ack()
use_settings(run[2], run[3])
-- Joins never see a retry: the node stays open until an attempt ends it.
local next_attempt = rcall("HINCRBY", nodes_key, node .. "/attempt", 1)
rcall("HSET", nodes_key, node, "retrying", node .. "/queued_at", now_text)
local info = info_of(node)
count_move(node, "running", "retrying", info.group)
rcall("HSET", errors_key, node, error_text)
send(node, next_attempt, delay, info.queue, info.task)
emit("retried", node, attempt)
if run[4] ~= "running" then
  keep_expiry()
end
return {1}
