--[[ submit: store a whole run and queue its roots, or do nothing if it exists.
  KEYS[1] run hash                (partition tag); the run id, the run's
          other keys and the partition's delayed set, event stream and runs
          index are built from its name (include/run.lua)
  ARGV[1] the run's roots, comma-separated in node order: errbacks that
          cover nothing, which start skipped, and the other nodes without
          dependencies, which start queued (driver.py, _queued_at_start)
  ARGV[2] epoch
  ARGV[3] graph spec, JSON text kept opaque
  ARGV[4] node ids in spec order, comma-separated
  ARGV[5] sink node ids, comma-separated
  ARGV[6] nodes whose failure reaches a sink through fail_fast edges, in node order
  ARGV[7] number of main-path nodes
  ARGV[8] n, the number of graph hash field/value pairs that follow
  ARGV[9 .. 8+2n] graph hash fields and values. When the first field is
          "submitter_activates", its value lists the shard nodes that start
          running without an "activate" outbox entry, because the submitter
          writes their shard runs active after this call (shard_runs.py)
  ARGV[9+2n] retention after the run ends, in milliseconds; "0" keeps it
  ARGV[10+2n] lifecycle events kept in the stream, about; "0" writes none
  ARGV[11+2n] c, the number of state-count field/value pairs that follow
  ARGV[12+2n .. 11+2n+2c] state-count hash fields and values
  ARGV[12+2n+2c ..] node-state hash fields and values (every node pending,
          and each ignore_result node's /open_readers is its number of readers)
  Time comes from TIME inside the script.
  Returns {1} when the run was stored, {0} when a run with this id exists.
  Adds one stream entry per root node to <base>q:<queue>, or a delayed-set
  member for a root with a countdown or eta, the run id to the runs index
  <base>runs scored by the creation time, and a "submitted" event (then
  "ended" if the run has no main-path node).
]]
-- luacheck: globals KEYS ARGV redis cjson
--- @include "run"
local run_id = key_run_id
local roots = ARGV[1]
local epoch = ARGV[2]
local spec = ARGV[3]
local node_list = ARGV[4]
local sinks = ARGV[5]
local reaching = ARGV[6]
local open_main = ARGV[7]
local graph_pairs = tonumber(ARGV[8])

--- @include "lifecycle"
--- @include "queue"

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

local graph_last = 8 + 2 * graph_pairs
local retention_ms = ARGV[graph_last + 1]
local events_max_len = ARGV[graph_last + 2]
use_settings(retention_ms, events_max_len)
local count_pairs = tonumber(ARGV[graph_last + 3])
local counts_last = graph_last + 3 + 2 * count_pairs

-- Write the state-count hash: the initial counts in ARGV plus the changes
-- that the start pass kept in `count_deltas`.
local function write_counts()
  local counts = {}
  for index = graph_last + 4, counts_last, 2 do
    counts[ARGV[index]] = tonumber(ARGV[index + 1])
  end
  for field, delta in pairs(count_deltas) do
    counts[field] = (counts[field] or 0) + delta
  end
  count_deltas = nil
  local count_fields = {}
  for field, count in pairs(counts) do
    count_fields[#count_fields + 1] = field
    count_fields[#count_fields + 1] = count
  end
  for first = 1, #count_fields, SLICE do
    rcall("HSET", counts_key, unpack(count_fields, first,
      math.min(first + SLICE - 1, #count_fields)))
  end
end

-- A run of one main-path node that starts queued (a single task, the shape
-- of most delay() calls) is kept in its run hash alone (include/single.lua):
-- its graph fields and its node's state fields join the run hash's, and no
-- state-count hash is written. Its graph fields come from ARGV, not an
-- HMGET, and the graph functions are not defined. The run hash field
-- "single" marks it: "1" for an ignore_result node, else "0", followed by
-- the node's group ("-" for none).
local single = nil
if roots ~= "" and roots == node_list and open_main == "1"
    and not string.find(roots, ",", 1, true) then
  single = {}
  for index = 9, graph_last, 2 do
    single[ARGV[index]] = ARGV[index + 1]
  end
  local prefix = roots .. "/"
  if single[prefix .. "role"] == "errback"
      or single[prefix .. "task"] == SHARD_TASK then
    single = nil
  end
end

local run_fields = {"status", "running", "epoch", epoch, "created_at", now_text,
  "open_main", open_main, "spec", spec, "spec_version", "1", "nodes", node_list,
  "sinks", sinks, "reaching", reaching, "sinks_not_succeeded", "0",
  "retention_ms", retention_ms, "events_max_len", events_max_len}

if single then
  local node = roots
  local prefix = node .. "/"
  local group = single[prefix .. "group"]
  if not group or group == "" then
    group = "-"
  end
  local ignore = single[prefix .. "ignore"] == "1" and "1" or "0"
  run_fields[#run_fields + 1] = "single"
  run_fields[#run_fields + 1] = ignore .. group
  -- The node's initial fields, then its queued state (graph's `enqueue`
  -- for a first attempt): a later pair of one HSET overwrites an earlier one.
  for index = counts_last + 1, #ARGV do
    run_fields[#run_fields + 1] = ARGV[index]
  end
  for _, item in ipairs({node, "queued", prefix .. "queued_at", now_text,
      prefix .. "attempt", 1}) do
    run_fields[#run_fields + 1] = item
  end
  -- The graph fields, each named with a "g:" in front.
  for index = 9, graph_last, 2 do
    run_fields[#run_fields + 1] = "g:" .. ARGV[index]
    run_fields[#run_fields + 1] = ARGV[index + 1]
  end
  rcall("HSET", run_key, unpack(run_fields))
  rcall("ZADD", base .. "runs", now_text, run_id)
  emit("submitted")
  send(node, 1, delay_of(single[prefix .. "countdown"], single[prefix .. "eta"]),
    single[prefix .. "queue"], single[prefix .. "task"])
  -- The run's open main-path node keeps it running, so graph's
  -- `maybe_finish` would change nothing.
  return {1}
end

rcall("HSET", run_key, unpack(run_fields))
rcall("ZADD", base .. "runs", now_text, run_id)
if graph_pairs > 0 then
  hset_range(graph_key, 9, graph_last)
end

--- @include "graph"

if graph_pairs > 0 and ARGV[9] == "submitter_activates" then
  for _, node in ipairs(split(ARGV[10])) do
    submitter_activates[node] = true
  end
end
if #ARGV > counts_last then
  hset_range(nodes_key, counts_last + 1, #ARGV)
end
emit("submitted")
open_main_left = tonumber(open_main)

-- The same pass as the Python `start` over the roots that the caller
-- found. Its state-count changes are added to the initial counts, which
-- one HSET then writes.
count_deltas = {}
for _, node in ipairs(split(roots)) do
  if info_of(node).role == "errback" then
    end_node(node, "skipped")
  else
    -- A new node has no attempt yet.
    enqueue(node, 0)
  end
end
write_counts()
-- The counts hash exists before maybe_finish, which may set its TTL.
maybe_finish("running")
return {1}
