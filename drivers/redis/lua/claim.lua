--[[ claim: start an attempt, or acknowledge and drop a duplicate or stale message.
  KEYS[1] run hash                (partition tag); the run id, the run's
          other keys and the partition's event stream are built from its
          name (include/run.lua)
  KEYS[2] queue stream the message came from (partition tag)
  ARGV[1] node id
  ARGV[2] attempt number
  ARGV[3] epoch
  ARGV[4] stream entry id of the message, or "" when there is none
  ARGV[5] consumer group name
  ARGV[6] "1" when the message was reclaimed from a consumer that held it past
          the visibility timeout, so a running attempt is taken over; else "0"
  ARGV[7] spec_version of the run's spec that the caller has parsed already,
          "" when it has none, or "-" when an earlier claim of the same batch
          requests the spec
  ARGV[8] longest <node>/reads field, in characters, whose values the reply
          carries; a node that reads more (a large chord's callback) gets no
          triples, and the driver reads its inputs in pages
  Time comes from TIME inside the script.
  Returns {1, cause, spec_version, lease, spec, home, state, value, error,
  state, value, error, ...} with one state/value/error triple ("" when missing) per
  node the input reads, in the order of the graph's <node>/reads field, or no
  triples when the field is longer than ARGV[8]. The
  spec is the run's graph spec JSON when its version differs from ARGV[7],
  else "", so a worker reads each spec once and a one-node run needs no
  second round trip. A large run's spec, which is not in the run hash, is
  always "": the driver reads it with a plain GET. ``home`` is the home
  run's id for a shard run (shards.py), else "". The lease is 1
  for the first claim of an attempt, and a takeover raises it by one and
  restarts <node>/started_at, so reports with an older lease change nothing.
  Returns {0} for a duplicate or a message whose node is no longer queued (or
  running, for a takeover), {-1} for an unknown run and {-2} for a message of
  another epoch or attempt. Every reply but {1} acknowledges and deletes the
  message, so it is not delivered again.
  Adds a "started" event when it returns {1}.
]]
-- luacheck: globals KEYS ARGV redis
--- @include "run"
local stream_key = KEYS[2]
local node = ARGV[1]
local attempt = ARGV[2]
local epoch = ARGV[3]
local receipt = ARGV[4]
local group = ARGV[5]
local takeover = ARGV[6] == "1"
local run_id = key_run_id
local known_version = ARGV[7]
local inline_chars = tonumber(ARGV[8])

--- @include "lifecycle"

local function drop(code)
  if receipt ~= "" then
    rcall("XACK", stream_key, group, receipt)
    rcall("XDEL", stream_key, receipt)
  end
  return {code}
end

-- A caller that has parsed no spec of the run gets the "spec" field with
-- the run's other fields, which saves an HGET for a run's first claim. The
-- node's fields are read too, for a run of one node kept in its run hash
-- (include/single.lua); another run has no such fields there.
local run_fields = {"epoch", "spec_version", "retention_ms", "events_max_len",
  "home", "single", node .. "/attempt", node, node .. "/cause"}
if known_version == "" then
  run_fields[#run_fields + 1] = "spec"
end
local run = rcall("HMGET", run_key, unpack(run_fields))
if not run[1] then
  return drop(-1)
end
use_settings(run[3], run[4])
-- A run of one node reads no input, and has no state-count hash.
local single = run[6]
local state_key = nodes_key
local current
if single then
  state_key = run_key
  current = {run[7], run[8], run[9]}
else
  current = rcall("HMGET", nodes_key, node .. "/attempt", node, node .. "/cause")
end
if run[1] ~= epoch or current[1] ~= attempt then
  return drop(-2)
end
local state = current[2]
local lease
-- The node's graph fields /reads and /group.
local graph
if state == "queued" or state == "retrying" then
  lease = 1
  rcall("HSET", state_key, node, "running", node .. "/started_at", now_text,
    node .. "/lease", lease)
  if single then
    graph = {false}
  else
    graph = rcall("HMGET", graph_key, node .. "/reads", node .. "/group")
    count_move(node, state, "running", graph[2])
  end
elseif state == "running" and takeover then
  -- The worker holding the lease is presumed dead; raising the lease fences
  -- its late report, if it is alive after all.
  lease = rcall("HINCRBY", state_key, node .. "/lease", 1)
  rcall("HSET", state_key, node .. "/started_at", now_text)
  if single then
    graph = {false}
  else
    graph = {rcall("HGET", graph_key, node .. "/reads")}
  end
else
  return drop(0)
end
emit("started", node, attempt)

local spec = ""
if known_version == "" then
  -- A large run has no "spec" field until a splice writes one.
  spec = run[10] or ""
elseif known_version ~= "-" and run[2] ~= known_version then
  spec = rcall("HGET", run_key, "spec") or ""
end
local reply = {1, current[3] or "", run[2], lease, spec, run[5] or ""}
local reads_field = graph[1] or ""
local reads = {}
if not inline_chars or #reads_field <= inline_chars then
  for read in string.gmatch(reads_field, "[^,]+") do
    reads[#reads + 1] = read
  end
end
-- One HMGET per hash and slice, because a chord callback reads every header
-- member and unpack has a stack limit of a few thousand values.
local SLICE = 1000
for first = 1, #reads, SLICE do
  local last = math.min(first + SLICE - 1, #reads)
  local states = rcall("HMGET", nodes_key, unpack(reads, first, last))
  local values = rcall("HMGET", values_key, unpack(reads, first, last))
  local errors = rcall("HMGET", errors_key, unpack(reads, first, last))
  for index = 1, last - first + 1 do
    reply[#reply + 1] = states[index] or ""
    reply[#reply + 1] = values[index] or ""
    reply[#reply + 1] = errors[index] or ""
  end
end
return reply
