--[[ activate: give an inactive shard run its input and start releasing its roots.
  A shard run (shards.py) is sealed inactive. When its home run reaches the
  shard node, a worker drains the home partition's "activate" outbox entry,
  reads the values of the home nodes that the members read, and calls this
  script on the shard's partition. Then it queues the roots with release.lua,
  a slice per call, and only then acknowledges the home outbox entry, so a
  crash in between leaves the entry pending and the next try is harmless.
  KEYS[1] run hash                (partition tag); the run's other keys and
          the partition's delayed set, event stream and set of runs whose
          roots are being released are built from its name (include/run.lua)
  ARGV[1] shard run id
  ARGV[2] the home run's epoch that the activation is for
  ARGV[3 ..] input placeholder node ids and their values (opaque JSON text),
          in pairs
  Time comes from TIME inside the script.
  Removes the TTL of the shard's keys (persist_run).
  Returns {1} when the shard was activated, {0} when it was active already
  or it ended (cancelled before it started), {-1} for an unknown run and
  {-2} when the shard belongs to another home epoch. Writes no stream
  entries: release.lua queues the roots.
]]
-- luacheck: globals KEYS ARGV redis cjson
--- @include "run"
local run_id = ARGV[1]
local releasing_key = base .. "releasing"

local run = rcall("HMGET", run_key, "status", "active", "home_epoch", "epoch")
if not run[1] then
  return {-1}
end
-- The graph functions put the shard's epoch on every message they queue.
local epoch = run[4]

--- @include "lifecycle"
--- @include "graph"

-- A shard of an older home epoch is reopened or reset first (driver.py).
if run[3] ~= ARGV[2] then
  return {-2}
end
if run[2] == "1" or run[1] ~= "running" then
  return {0}
end
for index = 3, #ARGV - 1, 2 do
  local node = ARGV[index]
  if state_of(node) == "pending" then
    rcall("HSET", values_key, node, ARGV[index + 1])
    set_terminal(node, "succeeded")
  end
end
rcall("HSET", run_key, "active", "1", "released", "0")
-- The submitter persists the keys after it wrote the home run, but it may
-- have died first.
persist_run()
-- Scored by the time of the latest progress, so the reconciler finds a
-- shard whose release stopped.
rcall("ZADD", releasing_key, now_text, run_id)
return {1}
