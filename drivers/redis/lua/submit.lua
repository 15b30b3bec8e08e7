--[[ submit: store a whole run and queue its roots, or do nothing if it exists.
  KEYS[1] run hash                (partition tag)
  KEYS[2] run graph hash          (partition tag)
  KEYS[3] run node-state hash     (partition tag)
  KEYS[4] run values hash         (partition tag)
  KEYS[5] run errors hash         (partition tag)
  KEYS[6] delayed sorted set      (partition tag)
  ARGV[1] run id
  ARGV[2] epoch
  ARGV[3] graph spec, JSON text kept opaque
  ARGV[4] node ids in spec order, comma-separated
  ARGV[5] sink node ids, comma-separated
  ARGV[6] nodes whose failure reaches a sink through fail_fast edges, in node order
  ARGV[7] number of main-path nodes
  ARGV[8] n, the number of graph hash field/value pairs that follow
  ARGV[9 .. 8+2n] graph hash fields and values
  ARGV[9+2n ..] node-state hash fields and values (every node pending)
  Time comes from TIME inside the script.
  Returns {1} when the run was stored, {0} when a run with this id exists.
  Adds one stream entry per root node to <base>q:<queue>, or a delayed-set
  member for a root with a countdown or eta.
]]
-- luacheck: globals KEYS ARGV redis cjson
local rcall = redis.call
local run_key = KEYS[1]
local graph_key = KEYS[2]
local nodes_key = KEYS[3]
local delayed_key = KEYS[6]
local run_id = ARGV[1]
local epoch = ARGV[2]
local spec = ARGV[3]
local node_list = ARGV[4]
local sinks = ARGV[5]
local reaching = ARGV[6]
local open_main = ARGV[7]
local graph_pairs = tonumber(ARGV[8])
local clock = rcall("TIME")
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local now_text = string.format("%.6f", now)

--- @include "graph"

-- Idempotent on the run id: a re-sent call finds the run and changes nothing.
if rcall("EXISTS", run_key) == 1 then
  return {0}
end

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

rcall("HSET", run_key, "status", "running", "epoch", epoch, "created_at", now_text,
  "open_main", open_main, "spec", spec, "spec_version", "1", "nodes", node_list,
  "sinks", sinks, "reaching", reaching)
local graph_last = 8 + 2 * graph_pairs
if graph_pairs > 0 then
  hset_range(graph_key, 9, graph_last)
end
if #ARGV > graph_last then
  hset_range(nodes_key, graph_last + 1, #ARGV)
end

-- The same pass as the Python `start`: errbacks that cover nothing are
-- skipped, and nodes without dependencies are queued.
for _, node in ipairs(split(node_list)) do
  local info = rcall("HMGET", graph_key, node .. "/role", node .. "/ncovers",
    node .. "/ndeps")
  local role = info[1]
  if role == "errback" and (tonumber(info[2]) or 0) == 0 then
    end_node(node, "skipped")
  elseif (tonumber(info[3]) or 0) == 0 and role ~= "errback" then
    enqueue(node)
  end
end
maybe_finish()
return {1}
