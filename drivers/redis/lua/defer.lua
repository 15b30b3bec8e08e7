--[[ defer: hand back a fetched message that was not claimed, through the delayed set.
  KEYS[1] run hash                (partition tag); the run id, the node-state
          hash, the partition's delayed set and its deferred hash are built
          from its name (include/run.lua)
  KEYS[2] queue stream the message came from (partition tag)
  ARGV[1] node id
  ARGV[2] attempt number
  ARGV[3] epoch
  ARGV[4] stream entry id of the message
  ARGV[5] consumer group name
  ARGV[6] consumer name of the worker that holds the message
  ARGV[7] queue name
  ARGV[8] task name
  ARGV[9] when the message first entered a queue, in whole milliseconds since
          the epoch
  ARGV[10] delay before the message is due again, in seconds
  Time comes from TIME inside the script.
  Returns {1} when the message was deferred, {0} when the entry is not pending
  for this consumer (nothing changed), {-1} for an unknown run and {-2} when
  the attempt can no longer be claimed: another epoch or attempt, or a node
  that is not queued or retrying. On {-1} and {-2} the entry is acknowledged
  and deleted, and nothing is added.
  Adds one delayed-set member, the JSON array that graph.lua's send writes,
  and records ARGV[9] under that member in the hash <base>deferred, which
  promote reads to give the stream entry an enqueued_ms field. Changes no
  run state, so the node keeps its attempt. A run of one node kept in its
  run hash moves to the usual keys first (include/single.lua).
]]
-- luacheck: globals KEYS ARGV redis cjson
--- @include "run"
--- @include "single"
local stream_key = KEYS[2]
local node = ARGV[1]
local attempt = ARGV[2]
local epoch = ARGV[3]
local receipt = ARGV[4]
local group = ARGV[5]
local consumer = ARGV[6]
local queue = ARGV[7]
local task = ARGV[8]
local enqueued_ms = ARGV[9]
local delay = math.max(0, tonumber(ARGV[10]))

-- A worker that kept the entry past the visibility timeout may have lost it
-- to another worker, which then has the only copy.
local pending = rcall("XPENDING", stream_key, group, receipt, receipt, 1, consumer)
if #pending == 0 then
  return {0}
end
rcall("XACK", stream_key, group, receipt)
rcall("XDEL", stream_key, receipt)

-- A run of one node kept in its run hash goes to the usual keys first.
expand_single()
local run_epoch = rcall("HGET", run_key, "epoch")
if not run_epoch then
  return {-1}
end
local fields = rcall("HMGET", nodes_key, node, node .. "/attempt")
local state = fields[1]
if run_epoch ~= epoch or fields[2] ~= attempt
    or (state ~= "queued" and state ~= "retrying") then
  return {-2}
end
local member = cjson.encode({queue, key_run_id, node, attempt, epoch, task})
rcall("ZADD", delayed_key, string.format("%.6f", now + delay), member)
rcall("HSET", base .. "deferred", member, enqueued_ms)
return {1}
