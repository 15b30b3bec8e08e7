--[[ queue: put one attempt of a node on its queue stream or in the delayed set.
  Included by scripts.py in place of a `--- @include "queue"` line, and by
  "graph", which uses it. It expects these locals in the including script
  (include/run.lua defines them all):
    rcall        redis.call
    base         the partition's key base, which ends with its hash tag and ":"
    delayed_key  delayed sorted set
    run_id, epoch (strings), now (seconds, number)
  Adds each queue's name to the set <base>queues.
]]

-- Task name of a shard node, shards.SHARD_TASK in Python.
local SHARD_TASK = "stem.shard"

-- Return a node's delay in seconds: its countdown, or the time left to its
-- eta when that is longer. Both are graph fields, false when missing.
local function delay_of(countdown, eta)
  local delay = tonumber(countdown) or 0
  eta = tonumber(eta)
  if eta and eta - now > delay then
    delay = eta - now
  end
  return delay
end

-- Put one attempt of a node on its queue, or in the delayed set. The caller
-- may pass the node's queue and task when it has read them already.
local function send(node, attempt, delay, queue, task)
  if not task then
    local found = rcall("HMGET", graph_key, node .. "/queue", node .. "/task")
    queue, task = found[1], found[2]
  end
  queue = queue or "default"
  -- The queue names set lets `stem queues ls` find queues without SCAN.
  rcall("SADD", base .. "queues", queue)
  if delay > 0 then
    local member = cjson.encode({queue, run_id, node, tostring(attempt), epoch, task})
    rcall("ZADD", delayed_key, string.format("%.6f", now + delay), member)
  else
    -- "v" is the envelope version, ENVELOPE_VERSION in driver.py.
    rcall("XADD", base .. "q:" .. queue, "*", "v", "1", "run", run_id, "node", node,
      "attempt", tostring(attempt), "epoch", epoch, "task", task)
  end
end
