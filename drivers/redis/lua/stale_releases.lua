--[[ stale_releases: list the runs whose root release made no progress for a while.
  Read by the reconciler, which releases their roots again (release.lua is
  idempotent), so a run whose outbox entry was lost is not stuck.
  KEYS[1] sorted set of runs whose roots are being released (partition tag),
          scored by the time of their latest progress in seconds
  ARGV[1] seconds without progress after which a run is listed
  ARGV[2] most run ids to return
  Time comes from TIME inside the script, the clock that wrote the scores.
  Returns the run ids, oldest progress first.
  Writes nothing.
]]
-- luacheck: globals KEYS ARGV redis
local rcall = redis.call
local clock = rcall("TIME")
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local limit = string.format("%.6f", now - tonumber(ARGV[1]))
return rcall("ZRANGEBYSCORE", KEYS[1], "-inf", limit, "LIMIT", 0, tonumber(ARGV[2]))
