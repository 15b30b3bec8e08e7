--[[ shard_retention: make a shard run's keys expire with its home run's.
  A shard run (shards.py) holds values that its home run's callback reads,
  so its keys do not expire while the home run runs, even after the shard
  ended. When the home run ends or runs again, it adds one "retain" or
  "keep" outbox entry for all of its shards (send_shard_retention in
  include/lifecycle.lua). A worker drains it and calls this script on each
  shard's partition. The submitter calls it too, once the home run exists.
  KEYS[1] run hash                (partition tag); the run's other keys and
          the partition's event stream are built from its name
          (include/run.lua)
  ARGV[1] shard run id
  ARGV[2] the home run's "shards_version" that the entry carries, or "0"
          for "submitted"
  ARGV[3] "retain": the home run ended, so the shard's retention starts
          now, or at the shard's own end if it is still running.
          "keep": the home run runs again, so the shard's keys lose their
          expiry.
          "submitted": the home run exists, so the shard's keys lose the
          TTL of stage_ttl_s that the seal gave them, unless a "retain" or
          "keep" entry was applied already (the home run ended first).
  Returns {1} when the shard changed, {0} when it has seen this version or
  a later one (a repeated or late entry), {-1} for an unknown run.
  The shard takes its own "retention_ms", which the home run's submit wrote
  with the home run's value. Writes no stream entries.
]]
-- luacheck: globals KEYS ARGV redis
--- @include "run"
local run_id = ARGV[1]
local version = tonumber(ARGV[2])
local kind = ARGV[3]

--- @include "lifecycle"

local run = rcall("HMGET", run_key, "status", "home_version", "retention_ms",
  "events_max_len")
if not run[1] then
  return {-1}
end
if kind == "submitted" then
  if run[2] then
    return {0}
  end
  persist_run()
  return {1}
end
if (tonumber(run[2]) or 0) >= version then
  return {0}
end
use_settings(run[3], run[4])
if kind == "retain" then
  rcall("HSET", run_key, "home_version", version, "home_ended", "1")
  -- A shard still running starts its retention when it ends (run_ended).
  local retention_ms = settings().retention_ms
  if run[1] ~= "running" and retention_ms > 0 then
    expire_run(retention_ms)
  end
else
  rcall("HSET", run_key, "home_version", version)
  rcall("HDEL", run_key, "home_ended")
  persist_run()
end
return {1}
