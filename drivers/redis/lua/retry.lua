--[[ retry: schedule a node's next attempt after a delay, ack its message.
  KEYS[1] run hash                (partition tag)
  KEYS[2] run graph hash          (partition tag)
  KEYS[3] run node-state hash     (partition tag)
  KEYS[4] run values hash         (partition tag)
  KEYS[5] run errors hash         (partition tag)
  KEYS[6] delayed sorted set      (partition tag)
  KEYS[7] queue stream the message came from (partition tag)
  KEYS[8] run state-count hash    (partition tag)
  KEYS[9] lifecycle event stream  (partition tag)
  ARGV[1] run id
  ARGV[2] node id
  ARGV[3] attempt number
  ARGV[4] epoch
  ARGV[5] stream entry id to acknowledge, or "" when there is none
  ARGV[6] consumer group name
  ARGV[7] lease (fencing token) the claim granted
  ARGV[8] error of this attempt, JSON text kept opaque
  ARGV[9] delay before the next attempt, in seconds
  Time comes from TIME inside the script.
  Returns {1} when the outcome was recorded, {0} for a duplicate or late report
  (nothing changed), {-1} for an unknown run, {-2} for a stale attempt, epoch
  or lease. The message is acknowledged and deleted on every reply but a stale
  lease: that message is now held by the worker that took the lease over.
  Adds one stream entry to <base>q:<queue> for the next attempt, or a
  delayed-set member when the delay is above zero, and a "retried" event.
]]
-- luacheck: globals KEYS ARGV redis cjson
local rcall = redis.call
local run_key = KEYS[1]
local graph_key = KEYS[2]
local nodes_key = KEYS[3]
local values_key = KEYS[4]
local errors_key = KEYS[5]
local delayed_key = KEYS[6]
local stream_key = KEYS[7]
local counts_key = KEYS[8]
local events_key = KEYS[9]
local run_id = ARGV[1]
local node = ARGV[2]
local attempt = ARGV[3]
local epoch = ARGV[4]
local receipt = ARGV[5]
local group = ARGV[6]
local lease = ARGV[7]
local clock = rcall("TIME")
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local now_text = string.format("%.6f", now)
local error_text = ARGV[8]
local delay = math.max(0, tonumber(ARGV[9]))

--- @include "lifecycle"
--- @include "graph"

local function ack()
  if receipt ~= "" then
    rcall("XACK", stream_key, group, receipt)
    rcall("XDEL", stream_key, receipt)
  end
end

-- A late report must not recreate the keys of a run that expired or was deleted.
local run = rcall("HMGET", run_key, "epoch", "retention_ms", "events_max_len")
local run_epoch = run[1]
if not run_epoch then
  ack()
  return {-1}
end
use_settings(run[2], run[3])
local current = rcall("HMGET", nodes_key, node .. "/attempt", node, node .. "/lease")
if run_epoch ~= epoch or current[1] ~= attempt then
  ack()
  return {-2}
end
local state = current[2]
-- A fenced worker must not acknowledge the entry that the new holder runs.
if state == "running" and current[3] ~= lease then
  return {-2}
end
ack()
if state ~= "running" then
  return {0}
end
-- Joins never see a retry: the node stays open until an attempt ends it.
local next_attempt = rcall("HINCRBY", nodes_key, node .. "/attempt", 1)
rcall("HSET", nodes_key, node, "retrying", node .. "/queued_at", now_text)
count_move(node, "running", "retrying")
rcall("HSET", errors_key, node, error_text)
send(node, next_attempt, delay)
emit("retried", node, attempt)
if rcall("HGET", run_key, "status") ~= "running" then
  keep_expiry()
end
return {1}
