--[[ splice: put a compiled canvas in place of a running node, release what it unblocks, ack its message.
  KEYS[1] run hash                (partition tag); the run id, the run's
          other keys and the partition's delayed set and event stream are
          built from its name (include/run.lua)
  KEYS[2] queue stream the message came from (partition tag)
  ARGV[1] node id of the replaced node
  ARGV[2] attempt number
  ARGV[3] epoch
  ARGV[4] stream entry id to acknowledge, or "" when there is none
  ARGV[5] consumer group name
  ARGV[6] lease (fencing token) the claim granted
  ARGV[7] spec_version the new spec was computed from
  ARGV[8] new graph spec, JSON text kept opaque
  ARGV[9] node ids of the new spec in spec order, comma-separated
  ARGV[10] sink node ids of the new spec, comma-separated
  ARGV[11] nodes of the new spec whose failure reaches a sink, in node order
  ARGV[12] number of main-path nodes added
  ARGV[13] nodes that depended on the replaced node before, comma-separated
  ARGV[14] errbacks that covered the replaced node before, comma-separated
  ARGV[15] added node ids in spec order, comma-separated
  ARGV[16] value recorded for the replaced node, JSON text kept opaque, or ""
          to record none (an ignore_result node, which nothing reads now)
  ARGV[17] g, the number of graph hash field/value pairs that follow
  ARGV[18] s, the number of node-state field/value pairs after them
  ARGV[19 .. 18+2g] graph hash fields and values for every node of the new spec
  ARGV[19+2g .. 18+2g+2s] node-state fields and values of the added nodes
  ARGV[19+2g+2s ..] triples: node id, change of /waiting, change of /open_covers
          for each older node whose dependencies or covered nodes changed
  Time comes from TIME inside the script.
  Returns {1} when the canvas was spliced in, {0} for a duplicate or late report
  (nothing changed), {-1} for an unknown run, {-2} for a stale attempt, epoch
  or lease, {-3} when the run's spec changed since ARGV[7] (nothing changed,
  so recompute and call again). The message is acknowledged and deleted on
  every reply but {-3} and a stale lease, whose message the worker that took
  the lease over now holds.
  Adds one stream entry to <base>q:<queue> per node that became ready (a
  delayed-set member instead when it has a countdown or eta), a "replaced"
  event, and an "ended" event if the run ended.
]]
-- luacheck: globals KEYS ARGV redis cjson
--- @include "run"
--- @include "attempt_report"
local expected_version = ARGV[7]
local spec = ARGV[8]
local node_list = ARGV[9]
local sinks = ARGV[10]
local reaching = ARGV[11]
local added_main = tonumber(ARGV[12])
local old_dependents = ARGV[13]
local old_errbacks = ARGV[14]
local added = ARGV[15]
local replaced_value = ARGV[16]
local graph_pairs = tonumber(ARGV[17])
local state_pairs = tonumber(ARGV[18])

--- @include "lifecycle"
--- @include "graph"
--- @include "single"

-- A run of one node kept in its run hash goes to the usual keys first.
expand_single()
local run, reply = check_report("spec_version")
if not run then
  return reply
end
-- The caller rewrote the spec it read. A splice of another node in between
-- would be lost, so the caller must read the spec again.
if run[2] ~= expected_version then
  return {-3}
end
ack()

-- HSET in slices, because unpack has a stack limit of a few thousand values.
local SLICE = 1000
local function hset_range(key, first, last)
  local index = first
  while index <= last do
    local stop = math.min(index + SLICE - 1, last)
    rcall("HSET", key, unpack(ARGV, index, stop))
    index = stop + 1
  end
end

rcall("HSET", run_key, "spec", spec, "nodes", node_list, "sinks", sinks,
  "reaching", reaching)
rcall("HINCRBY", run_key, "spec_version", 1)
rcall("HINCRBY", run_key, "open_main", added_main)
local graph_last = 18 + 2 * graph_pairs
local state_last = graph_last + 2 * state_pairs
if graph_pairs > 0 then
  hset_range(graph_key, 19, graph_last)
end
if state_pairs > 0 then
  hset_range(nodes_key, graph_last + 1, state_last)
end
for index = state_last + 1, #ARGV, 3 do
  local changed = ARGV[index]
  rcall("HINCRBY", nodes_key, changed .. "/waiting", tonumber(ARGV[index + 1]))
  rcall("HINCRBY", nodes_key, changed .. "/open_covers", tonumber(ARGV[index + 2]))
end
rcall("HSET", nodes_key, node .. "/replaced", "1")
if replaced_value ~= "" then
  rcall("HSET", values_key, node, replaced_value)
end

-- The same steps as the Python `splice`, in the same order.
for _, new_node in ipairs(split(added)) do
  count_move(new_node, nil, "pending")
  if attr(new_node, "ignore") == "1" then
    count_open_readers(new_node)
  end
end
for _, new_node in ipairs(split(added)) do
  local info = rcall("HMGET", graph_key, new_node .. "/role",
    new_node .. "/ncovers", new_node .. "/ndeps")
  local role = info[1]
  if role == "errback" and (tonumber(info[2]) or 0) == 0 then
    end_node(new_node, "skipped")
  elseif (tonumber(info[3]) or 0) == 0 and role ~= "errback" then
    enqueue(new_node)
  end
end
-- The replaced node ends as succeeded. Its old dependents now wait on the
-- canvas, and are released here because that canvas may have no nodes.
end_node(node, "succeeded")
for _, dependent in ipairs(split(old_dependents)) do
  local waiting = tonumber(rcall("HGET", nodes_key, dependent .. "/waiting")) or 0
  if state_of(dependent) == "pending" and waiting <= 0 then
    enqueue(dependent)
  end
end
for _, errback in ipairs(split(old_errbacks)) do
  local open = tonumber(rcall("HGET", nodes_key, errback .. "/open_covers")) or 0
  if state_of(errback) == "pending" and open <= 0 then
    end_node(errback, "skipped")
  end
end
emit("replaced", node, attempt)
maybe_finish()
return {1}
