--[[ reopen: open the next epoch of a failed or cancelled run (a run retry).
  KEYS[1] run hash                (partition tag); the run's other keys and
          the partition's delayed set and event stream are built from its
          name (include/run.lua)
  ARGV[1] run id
  ARGV[2] the epoch the caller read; the run is reopened only from this epoch,
          so a re-sent call changes nothing
  ARGV[3] for a shard run (shards.py) that its home run's retry reopens, the
          home run's new epoch, which the shard's reports then carry; else
          absent
  Time comes from TIME inside the script.
  Mirrors the Python `reopen` and `nodes_to_reopen`: the nodes that failed,
  were cancelled or had not ended, what depends on them and every errback
  covering them go back to pending with attempt and lease 0, so attempts
  count from 1 again in the new epoch; succeeded nodes keep their values.
  An ignore_result node that a reopened node reads is reopened too when its
  value was dropped. The run's keys lose their expiry, each ignore_result
  node's open readers are counted again, and the state counts follow.
  Messages of older epochs are dropped when claimed.
  Returns {1, epoch} with the new epoch when the run was reopened, {0, epoch}
  with the current epoch when it is already past ARGV[2], {-1} for an unknown
  run, {-4, status} when the run is running or succeeded (nothing changed).
  Adds one stream entry to <base>q:<queue> per reopened node that can start at
  once (a delayed-set member instead when it has a countdown or eta), and a
  "reopened" event (then "ended" if the run ends at once).
]]
-- luacheck: globals KEYS ARGV redis cjson
--- @include "run"
local run_id = ARGV[1]
local seen_epoch = ARGV[2]
-- The included transitions stamp queued messages with `epoch`, which becomes
-- the new epoch before anything is queued.
local epoch = seen_epoch

--- @include "lifecycle"
--- @include "graph"
--- @include "single"

-- A run of one node kept in its run hash goes to the usual keys first.
expand_single()
local run = rcall("HMGET", run_key, "status", "epoch", "nodes")
if not run[1] then
  return {-1}
end
if run[2] ~= seen_epoch then
  return {0, tonumber(run[2])}
end
if run[1] ~= "failed" and run[1] ~= "cancelled" then
  return {-4, run[1]}
end

local nodes = split(run[3])
local states = {}
for _, node in ipairs(nodes) do
  states[node] = state_of(node)
end

-- The same closure as the Python `nodes_to_reopen`; its docstring gives the rules.
local reopened = {}
-- Reopened errbacks and the nodes downstream of them in their canvases keep
-- no outcome, since the errback may not fire in the new epoch.
local rearmed = {}
local kept_replaced = {}
local stack = {}
for _, node in ipairs(nodes) do
  if states[node] ~= "succeeded" and states[node] ~= "skipped" then
    reopened[node] = true
    stack[#stack + 1] = node
    if attr(node, "role") == "errback" then
      rearmed[node] = true
    end
  end
end
local function visit(candidate, rearms)
  if rcall("HGET", nodes_key, candidate .. "/replaced") == "1" then
    kept_replaced[#kept_replaced + 1] = candidate
  elseif rearms and not rearmed[candidate] then
    -- Visit it again if it was reopened already, so its successes
    -- downstream reopen too.
    rearmed[candidate] = true
    reopened[candidate] = true
    stack[#stack + 1] = candidate
  elseif not reopened[candidate] then
    reopened[candidate] = true
    stack[#stack + 1] = candidate
  end
end
while #stack > 0 do
  local current = table.remove(stack)
  local current_succeeded = states[current] == "succeeded"
  local current_rearmed = rearmed[current] == true
  for _, dependent in ipairs(split(attr(current, "dependents"))) do
    if current_rearmed or current_succeeded or states[dependent] ~= "succeeded" then
      visit(dependent, current_rearmed)
    end
  end
  for _, errback in ipairs(split(attr(current, "errbacks"))) do
    visit(errback, true)
  end
  -- An ignore_result input whose value was dropped must run again.
  for _, read in ipairs(split(attr(current, "reads"))) do
    if attr(read, "ignore") == "1" and states[read] == "succeeded"
        and rcall("HEXISTS", values_key, read) == 0 then
      visit(read, false)
    end
  end
end

-- The nodes that ended in the canvas of a replaced node that is kept keep
-- their outcomes too.
for _, replaced in ipairs(kept_replaced) do
  local prefix = replaced .. "."
  for _, node in ipairs(nodes) do
    if string.sub(node, 1, #prefix) == prefix and TERMINAL[states[node]] then
      reopened[node] = nil
    end
  end
end

epoch = tostring(rcall("HINCRBY", run_key, "epoch", 1))
rcall("HSET", run_key, "status", "running")
rcall("HDEL", run_key, "ended_at", "error_node")
if ARGV[3] then
  rcall("HSET", run_key, "home_epoch", ARGV[3])
  rcall("HDEL", run_key, "reported")
end
-- A running run never expires; its retention starts again when it ends.
persist_run()
send_shard_retention("keep")
-- NOTE: this visits every node of the run, as the Python `reopen` does.
for _, node in ipairs(nodes) do
  if reopened[node] then
    if TERMINAL[states[node]] and attr(node, "side") ~= "1" then
      rcall("HINCRBY", run_key, "open_main", 1)
    end
    count_move(node, states[node], "pending")
    rcall("HSET", nodes_key, node, "pending", node .. "/attempt", "0", node .. "/lease", "0",
      node .. "/waiting", attr(node, "ndeps") or "0",
      node .. "/open_covers", attr(node, "ncovers") or "0")
    rcall("HDEL", nodes_key, node .. "/cause", node .. "/started_at", node .. "/ended_at")
    rcall("HDEL", values_key, node)
    rcall("HDEL", errors_key, node)
  end
end
recount_run_end()

-- As the Python `reopen` does after its resets: reopened readers keep the
-- values of their ignore_result inputs until they end again.
for _, node in ipairs(nodes) do
  if attr(node, "ignore") == "1" then
    count_open_readers(node)
  end
end
emit("reopened")

-- Settle the edges from kept nodes into reopened ones, as if the kept nodes
-- had just ended, in the same order as the Python `reopen`.
for _, node in ipairs(nodes) do
  if not reopened[node] then
    local outcome = states[node]
    local work = {}
    for _, dependent in ipairs(split(attr(node, "dependents"))) do
      if reopened[dependent] then
        react(node, outcome, dependent, work)
      end
    end
    for _, errback in ipairs(split(attr(node, "errbacks"))) do
      if reopened[errback] then
        react_errback(node, outcome, errback, work)
      end
    end
    settle(work)
  end
end
for _, node in ipairs(nodes) do
  local root = (tonumber(attr(node, "ndeps")) or 0) == 0
    and attr(node, "role") ~= "errback"
  if reopened[node] and root and state_of(node) == "pending" then
    enqueue(node)
  end
end
maybe_finish()
return {1, tonumber(epoch)}
