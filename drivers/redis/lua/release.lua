--[[ release: queue the next slice of a sealed large run's roots.
  The same pass as the start of submit.lua, a slice at a time: an errback
  that covers nothing is skipped, and any other root is queued. Called by
  the submitter right after the seal, and by a worker that drains the
  outbox entry of the seal when the submitter did not finish.
  KEYS[1] run hash                (partition tag)
  KEYS[2] run graph hash          (partition tag)
  KEYS[3] run node-state hash     (partition tag)
  KEYS[4] run roots list          (partition tag)
  KEYS[5] delayed sorted set      (partition tag)
  KEYS[6] outbox stream           (partition tag)
  KEYS[7] sorted set of runs whose roots are being released (partition tag)
  KEYS[8] run values hash         (partition tag)
  KEYS[9] run errors hash         (partition tag)
  KEYS[10] run state-count hash   (partition tag)
  KEYS[11] lifecycle event stream (partition tag)
  ARGV[1] run id
  ARGV[2] epoch, or "" for the run's current epoch (the reconciler)
  ARGV[3] most roots to release in this call
  ARGV[4] consumer group name
  ARGV[5] id of the outbox entry being applied, or "" for the submitter
  Time comes from TIME inside the script.
  Returns {1, remaining} after a slice, with the number of roots still to
  release; at 0 the outbox entry is acknowledged and deleted, the roots
  list removed and the run taken off the releasing set. Returns {0, 0} when the run ended or moved to another epoch
  (the entry is acknowledged, nothing is queued) and {-1} for an unknown run.
  Adds one stream entry to <base>q:<queue> per root queued, or a delayed-set
  member for a root with a countdown or eta. The last slice adds an "ended"
  event and starts the run's retention if the run ends there (it has no
  main-path node).
]]
-- luacheck: globals KEYS ARGV redis cjson
local rcall = redis.call
local run_key = KEYS[1]
local graph_key = KEYS[2]
local nodes_key = KEYS[3]
local roots_key = KEYS[4]
local delayed_key = KEYS[5]
local base = string.sub(delayed_key, 1, -8)
local outbox_key = KEYS[6]
local releasing_key = KEYS[7]
local values_key = KEYS[8]
local errors_key = KEYS[9]
local counts_key = KEYS[10]
local events_key = KEYS[11]
local run_id = ARGV[1]
local epoch = ARGV[2]
local slice = tonumber(ARGV[3])
local group = ARGV[4]
local receipt = ARGV[5]
local clock = rcall("TIME")
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local now_text = string.format("%.6f", now)

--- @include "lifecycle"
--- @include "graph"

local function ack(entry)
  if entry and entry ~= "" then
    rcall("XACK", outbox_key, group, entry)
    rcall("XDEL", outbox_key, entry)
  end
end

local function finish_release(entry)
  ack(receipt)
  ack(entry)
  rcall("DEL", roots_key)
  rcall("HDEL", run_key, "released", "release_entry")
  rcall("ZREM", releasing_key, run_id)
end

local run = rcall("HMGET", run_key, "status", "epoch", "released", "release_entry")
if not run[1] then
  ack(receipt)
  rcall("ZREM", releasing_key, run_id)
  return {-1}
end
if not run[3] then
  -- Every root of this run was released already.
  ack(receipt)
  rcall("ZREM", releasing_key, run_id)
  return {1, 0}
end
if run[1] ~= "running" or (epoch ~= "" and run[2] ~= epoch) then
  finish_release(run[4])
  return {0, 0}
end
-- The graph functions put the epoch on every message they queue.
epoch = run[2]
local first = tonumber(run[3])
local total = rcall("LLEN", roots_key)
local roots = rcall("LRANGE", roots_key, first, first + slice - 1)
for _, node in ipairs(roots) do
  -- A root that is no longer pending was released by an earlier call.
  if state_of(node) == "pending" then
    if attr(node, "role") == "errback" then
      end_node(node, "skipped")
    else
      enqueue(node)
    end
  end
end
local released = first + #roots
if released < total then
  rcall("HSET", run_key, "released", tostring(released))
  -- The score is the time of the latest progress, for the reconciler.
  rcall("ZADD", releasing_key, now_text, run_id)
  return {1, total - released}
end
finish_release(run[4])
maybe_finish()
return {1, 0}
