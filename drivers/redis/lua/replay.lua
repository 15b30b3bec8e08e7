--[[ replay: queue a new attempt of a dead letter's failed node and undo its failure.
  KEYS[1] run hash                (partition tag)
  KEYS[2] run graph hash          (partition tag)
  KEYS[3] run node-state hash     (partition tag)
  KEYS[4] run values hash         (partition tag)
  KEYS[5] run errors hash         (partition tag)
  KEYS[6] delayed sorted set      (partition tag)
  KEYS[7] dead-letter stream      (partition tag)
  KEYS[8] run state-count hash    (partition tag)
  KEYS[9] lifecycle event stream  (partition tag)
  ARGV[1] dead-letter entry id
  ARGV[2] spec_version that the lists below were computed from
  ARGV[3] run id
  ARGV[4] node id of the dead letter
  ARGV[5] attempt of the dead letter
  ARGV[6] epoch of the dead letter
  ARGV[7] "1" when the node is on a side branch, else "0"
  ARGV[8] n, the number of candidates that follow, 3 values each: a node that
          was cancelled or skipped downstream of the node, in node order,
          "1" or "0" for a side node, and its dependencies as a
          comma-separated list of <dep>=S (it accepts every settled state of
          the dependency) or <dep>=s (it accepts only success)
  then m, the number of pending dependents that follow, 2 values each: the
          node and its dependencies in the same form
  then k, the number of errbacks that follow, 2 values each: the errback and
          the comma-separated nodes it covers
  Time comes from TIME inside the script.
  The candidates reopen as the Python `machine.replay_node` decides: passes
  over them repeat until one adds nothing, and a candidate reopens when each
  dependency reopened, has not ended, or ended in a state it accepts.
  Reopened nodes are pending with their waiting counters recomputed, so are
  the pending dependents, and pending errbacks get their open_covers
  recomputed. The run is running again when a main-path node reopens, and
  then its keys lose their expiry until it ends again. The replay stays in
  the run's epoch, which the new messages carry. The state counts follow the
  reopened nodes, and each ignore_result node's open readers are counted
  again, as the Python `replay_node` does.
  Returns {1} when the node was queued and the dead letter deleted, {0} when
  the dead letter is gone (replayed or purged before), {-1} for an unknown
  run, {-2, "not_failed"} when the node is not failed at that attempt,
  {-2, "run_cancelled"} for a cancelled run, {-2, "other_epoch"} when the
  dead letter is of an earlier epoch than the run's, {-3} when the run's spec
  changed since the lists were computed.
  Adds the stream entry (or delayed-set member) of the node's new attempt,
  and of any reopened node whose dependencies all ended as it accepts.
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
local dead_key = KEYS[7]
local counts_key = KEYS[8]
local events_key = KEYS[9]
local dead_id = ARGV[1]
local version = ARGV[2]
local run_id = ARGV[3]
local node = ARGV[4]
local attempt = ARGV[5]
local dead_epoch = ARGV[6]
local node_side = ARGV[7] == "1"
local clock = rcall("TIME")
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local now_text = string.format("%.6f", now)

if #rcall("XRANGE", dead_key, dead_id, dead_id) == 0 then
  return {0}
end
local run = rcall("HMGET", run_key, "status", "epoch", "spec_version")
if not run[1] then
  return {-1}
end
if run[3] ~= version then
  return {-3}
end
if run[1] == "cancelled" then
  return {-2, "run_cancelled"}
end
local epoch = run[2]
-- Attempt numbers restart in each epoch, so an older epoch's attempt may
-- name a newer attempt of the node.
if dead_epoch ~= epoch then
  return {-2, "other_epoch"}
end

--- @include "lifecycle"
--- @include "graph"
--- @include "single"

-- A run of one node kept in its run hash goes to the usual keys first.
expand_single()
if state_of(node) ~= "failed" or rcall("HGET", nodes_key, node .. "/attempt") ~= attempt then
  return {-2, "not_failed"}
end

-- Parse "<dep>=S,<dep>=s" into a list of {dep, accepts_settled}.
local function parse_deps(text)
  local deps = {}
  for _, item in ipairs(split(text)) do
    local dep, kind = string.match(item, "^(.*)=([Ss])$")
    deps[#deps + 1] = {dep, kind == "S"}
  end
  return deps
end

local position = 8
local candidates = {}
for _ = 1, tonumber(ARGV[position]) do
  candidates[#candidates + 1] = {
    ARGV[position + 1], ARGV[position + 2] == "1", parse_deps(ARGV[position + 3])}
  position = position + 3
end
position = position + 1
local dependents = {}
for _ = 1, tonumber(ARGV[position]) do
  dependents[#dependents + 1] = {ARGV[position + 1], parse_deps(ARGV[position + 2])}
  position = position + 2
end
position = position + 1
local errbacks = {}
for _ = 1, tonumber(ARGV[position]) do
  errbacks[#errbacks + 1] = {ARGV[position + 1], split(ARGV[position + 2])}
  position = position + 2
end

local function accepts(dep_state, accepts_settled)
  if accepts_settled then
    return SETTLED[dep_state] == true
  end
  return dep_state == "succeeded"
end

-- The same passes as the Python `replayed_nodes`.
local reopened = {{node, node_side}}
local chosen = {[node] = true}
local changed = true
while changed do
  changed = false
  for _, candidate in ipairs(candidates) do
    local name = candidate[1]
    local state = state_of(name)
    if not chosen[name] and (state == "cancelled" or state == "skipped") then
      local ready = true
      for _, dep in ipairs(candidate[3]) do
        local dep_state = state_of(dep[1])
        if not (chosen[dep[1]] or not TERMINAL[dep_state] or accepts(dep_state, dep[2])) then
          ready = false
          break
        end
      end
      if ready then
        reopened[#reopened + 1] = {name, candidate[2]}
        chosen[name] = true
        changed = true
      end
    end
  end
end

local main_reopened = false
for index, item in ipairs(reopened) do
  local name = item[1]
  rcall("HDEL", nodes_key, name .. "/ended_at", name .. "/cause")
  if index == 1 then
    rcall("HDEL", errors_key, name)
  end
  -- The failed node passes through pending too, because enqueue moves a
  -- node from pending to queued in the state counts.
  count_move(name, state_of(name), "pending")
  rcall("HSET", nodes_key, name, "pending")
  if not item[2] then
    rcall("HINCRBY", run_key, "open_main", 1)
    main_reopened = true
  end
end
recount_run_end()
if main_reopened and run[1] ~= "running" then
  rcall("HSET", run_key, "status", "running")
  rcall("HDEL", run_key, "ended_at", "error_node")
  -- A running run never expires; its retention starts again when it ends.
  persist_run()
  send_shard_retention("keep")
end

enqueue(node)
-- As the Python `replay_node` does: reopened readers keep the values of
-- their ignore_result inputs until they end again.
for _, name in ipairs(split(rcall("HGET", run_key, "nodes"))) do
  if attr(name, "ignore") == "1" then
    count_open_readers(name)
  end
end

-- Counters of pending nodes count the dependency edges not yet accepted.
local function recount(name, deps)
  if state_of(name) ~= "pending" then
    return nil
  end
  local waiting = 0
  for _, dep in ipairs(deps) do
    if not accepts(state_of(dep[1]), dep[2]) then
      waiting = waiting + 1
    end
  end
  rcall("HSET", nodes_key, name .. "/waiting", waiting)
  return waiting
end
for _, dependent in ipairs(dependents) do
  recount(dependent[1], dependent[2])
end
for _, errback in ipairs(errbacks) do
  if state_of(errback[1]) == "pending" then
    local open = 0
    for _, covered in ipairs(errback[2]) do
      if not TERMINAL[state_of(covered)] then
        open = open + 1
      end
    end
    rcall("HSET", nodes_key, errback[1] .. "/open_covers", open)
  end
end

local waiting_of = {}
for _, candidate in ipairs(candidates) do
  waiting_of[candidate[1]] = candidate[3]
end
for index = 2, #reopened do
  local name = reopened[index][1]
  if recount(name, waiting_of[name]) == 0 then
    enqueue(name)
  end
end
rcall("XDEL", dead_key, dead_id)
return {1}
