--[[ dead_letter: move a message aside with a reason, fail its node, ack it.
  KEYS[1] run hash                (partition tag)
  KEYS[2] run graph hash          (partition tag)
  KEYS[3] run node-state hash     (partition tag)
  KEYS[4] run values hash         (partition tag)
  KEYS[5] run errors hash         (partition tag)
  KEYS[6] delayed sorted set      (partition tag)
  KEYS[7] queue stream the message came from (partition tag)
  KEYS[8] dead-letter stream      (partition tag)
  KEYS[9] run state-count hash    (partition tag)
  KEYS[10] lifecycle event stream (partition tag)
  ARGV[1] run id
  ARGV[2] node id
  ARGV[3] attempt number
  ARGV[4] epoch
  ARGV[5] stream entry id to acknowledge, or "" when there is none
  ARGV[6] consumer group name
  ARGV[7] lease the message carries (not checked: a dead letter ends every lease)
  ARGV[8] error recorded on the node, JSON text kept opaque
  ARGV[9] reason
  ARGV[10] queue name
  ARGV[11] task name
  ARGV[12] "1" when the message was delivered too many times, so its workers
           are presumed dead and a running node fails too; else "0"
  Time comes from TIME inside the script.
  Returns {1} when the node failed, {0} when the delivery was already
  acknowledged or the node is not queued (a worker runs it, unless ARGV[12] is
  "1", or it ended), {-1} for an unknown run, {-2} for a stale attempt or
  epoch. Only {1} changes run state.
  Adds one entry to the dead-letter stream, unless the delivery was already
  acknowledged, and then the entries and events that fail.lua adds.
]]
-- luacheck: globals KEYS ARGV redis cjson
local rcall = redis.call
local run_key = KEYS[1]
local graph_key = KEYS[2]
local nodes_key = KEYS[3]
local values_key = KEYS[4]
local errors_key = KEYS[5]
local delayed_key = KEYS[6]
local base = string.sub(delayed_key, 1, -8)
local stream_key = KEYS[7]
local run_id = ARGV[1]
local node = ARGV[2]
local attempt = ARGV[3]
local epoch = ARGV[4]
local receipt = ARGV[5]
local group = ARGV[6]
local clock = rcall("TIME")
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local now_text = string.format("%.6f", now)
local error_text = ARGV[8]
local reason = ARGV[9]
local queue = ARGV[10]
local task = ARGV[11]
local abandoned = ARGV[12] == "1"
local dead_key = KEYS[8]
local counts_key = KEYS[9]
local events_key = KEYS[10]

--- @include "lifecycle"
--- @include "graph"
--- @include "single"

-- A run of one node kept in its run hash goes to the usual keys first.
expand_single()
-- XACK returns 0 for an entry that is not pending, so a re-sent call, or a
-- second dead-lettering of the same delivery, writes nothing.
if receipt ~= "" then
  if rcall("XACK", stream_key, group, receipt) == 0 then
    return {0}
  end
  rcall("XDEL", stream_key, receipt)
end
rcall("XADD", dead_key, "*", "run", run_id, "node", node, "attempt", attempt,
  "epoch", epoch, "queue", queue, "task", task, "reason", reason)

-- A late report must not recreate the keys of a run that expired or was deleted.
local run = rcall("HMGET", run_key, "epoch", "retention_ms", "events_max_len")
local run_epoch = run[1]
if not run_epoch then
  return {-1}
end
use_settings(run[2], run[3])
if run_epoch ~= epoch or rcall("HGET", nodes_key, node .. "/attempt") ~= attempt then
  return {-2}
end
-- Only a message that no worker runs fails its node: a dead-lettered
-- duplicate must not fail the attempt that another worker is running. An
-- abandoned message's node is running only because its worker died.
local state = state_of(node)
local running_failed = abandoned and state == "running"
if state ~= "queued" and state ~= "retrying" and not running_failed then
  return {0}
end
rcall("HSET", errors_key, node, error_text)
end_node(node, "failed")
emit("failed", node, attempt)
maybe_finish()
return {1}
