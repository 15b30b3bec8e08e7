--[[ cancel: end a running run on request; nothing more of it runs and no errback fires.
  KEYS[1] run hash                (partition tag)
  KEYS[2] run graph hash          (partition tag)
  KEYS[3] run node-state hash     (partition tag)
  KEYS[4] run values hash         (partition tag)
  KEYS[5] run errors hash         (partition tag)
  KEYS[6] run state-count hash    (partition tag)
  KEYS[7] lifecycle event stream  (partition tag)
  KEYS[8] outbox stream           (partition tag)
  ARGV[1] run id
  ARGV[2] for a shard run (shards.py), the home epoch that the "cancel"
          outbox entry was written in, or "" to cancel in any epoch. A shard
          that a retry of its home run opened for a later epoch is left
          alone, so a late entry never cancels the new epoch's work.
  Time comes from TIME inside the script.
  Returns {1} when the run was cancelled, {0} when it had already ended or
  belongs to a later home epoch than ARGV[2], {-1} for an unknown run.
  Writes no queue entries: messages already queued are dropped when claimed,
  because their nodes are no longer queued. A queued or retrying node's
  message that waits in the delayed set (countdown, eta or retry backoff) is
  removed from it, so a far-off one does not stay until it is due, with its
  field in <base>deferred when a worker deferred it. Adds an
  "ended" event and starts the run's retention. Adds a "cancel" outbox entry
  per shard node that had not ended, a "retain" outbox entry for a home run
  of shards, and a "report" outbox entry when the run is a shard run.
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
local outbox_key = KEYS[8]
-- The partition's key base (keys.py): the outbox key less "outbox".
local base = string.sub(outbox_key, 1, -7)
local delayed_key = base .. "delayed"
local run_id = ARGV[1]
local clock = rcall("TIME")
local now_text = string.format("%.6f", tonumber(clock[1]) + tonumber(clock[2]) / 1000000)

--- @include "lifecycle"
--- @include "single"

-- A run of one node kept in its run hash goes to the usual keys first.
expand_single()
local run = rcall("HMGET", run_key, "status", "nodes", "home", "home_node",
  "home_epoch", "epoch", "shards_version")
if not run[1] then
  return {-1}
end
if run[1] ~= "running" then
  return {0}
end
if ARGV[2] and ARGV[2] ~= "" and run[5]
    and tonumber(run[5]) > tonumber(ARGV[2]) then
  return {0}
end
local TERMINAL = {succeeded = true, failed = true, cancelled = true, skipped = true}
-- NOTE: this visits every node of the run, as the Python `cancel` does.
for node in string.gmatch(run[2], "[^,]+") do
  local state = rcall("HGET", nodes_key, node)
  if not TERMINAL[state] then
    local info = rcall("HMGET", graph_key, node .. "/role", node .. "/task",
      node .. "/queue")
    local role = info[1]
    if state == "queued" or state == "retrying" then
      -- The member that `send` in graph.lua writes for this attempt; ZREM of
      -- a member that was never delayed, or was already moved, does nothing.
      local attempt = rcall("HGET", nodes_key, node .. "/attempt")
      local member = cjson.encode({info[3] or "default", run_id, node, attempt,
        run[6], info[2]})
      rcall("ZREM", delayed_key, member)
      -- The first-queued time of a message that a worker deferred (defer.lua).
      rcall("HDEL", base .. "deferred", member)
    end
    local pending_side = (role == "link" or role == "errback") and state == "pending"
    local ended = pending_side and "skipped" or "cancelled"
    rcall("HSET", nodes_key, node, ended, node .. "/ended_at", now_text)
    count_move(node, state, ended)
    release_reads(node)
    -- shards.SHARD_TASK: the shard run, active or not, is cancelled too.
    if info[2] == "stem.shard" then
      rcall("XADD", outbox_key, "*", "kind", "cancel", "run", run_id, "node", node,
        "epoch", run[6])
      mark_shard_home()
      run[7] = run[7] or "0"
    end
  end
end
rcall("HSET", run_key, "status", "cancelled", "open_main", "0", "ended_at", now_text)
rcall("ZREM", base .. "sharded", run_id)
run_ended("cancelled", run[3], run[7])
if run[3] then
  rcall("XADD", outbox_key, "*", "kind", "report", "run", run[3], "node", run[4],
    "epoch", run[5], "shard", run_id, "outcome", "cancelled", "cause", "")
end
return {1}
