--[[ seal: make a large run live once stage.lua wrote its graph, node states and roots.
  KEYS[1] run hash                (partition tag)
  KEYS[2] run graph hash          (partition tag)
  KEYS[3] run node-state hash     (partition tag)
  KEYS[4] run roots list          (partition tag)
  KEYS[5] outbox stream           (partition tag)
  KEYS[6] staged graph spec string (partition tag)
  KEYS[7] run graph spec string   (partition tag); the run hash gets no "spec"
  KEYS[8] sorted set of runs whose roots are being released (partition tag)
  KEYS[9] run state-count hash    (partition tag)
  KEYS[10] lifecycle event stream (partition tag)
  ARGV[1] run id
  ARGV[2] epoch
  ARGV[3] node ids in spec order, comma-separated
  ARGV[4] sink node ids, comma-separated
  ARGV[5] nodes whose failure reaches a sink through fail_fast edges, in node order
  ARGV[6] number of main-path nodes
  ARGV[7] number of fields the staged graph hash must hold
  ARGV[8] number of fields the staged node-state hash must hold
  ARGV[9] number of items the staged roots list must hold
  ARGV[10] retention after the run ends, in milliseconds; "0" keeps it
  ARGV[11] lifecycle events kept in the stream, about; "0" writes none
  ARGV[12] number of fields the staged state-count hash must hold
  ARGV[13] for a shard run (shards.py): its home run's id, else ""
  ARGV[14] for a shard run: its shard node's id in the home run
  ARGV[15] for a shard run: the home run's epoch
  ARGV[16] for a shard run: milliseconds until its keys expire unless the
          submitter or activate.lua persists them
  The spec is staged with a plain SET, because a script argument of a few
  megabytes blocks Redis for tens of ms, and RENAME moves it without a copy.
  Time comes from TIME inside the script.
  Returns {1, entry} when the run was sealed, with the id of the outbox
  entry that asks for its roots to be released (release.lua), {0} when the
  run exists already, {-5} when a staged key is missing or incomplete (it
  expired before the seal), so nothing was written.
  Adds one entry to the outbox: kind "release", run, epoch, a "submitted"
  event, and the run id to the runs index <base>runs scored by the creation
  time, as submit.lua does. A shard run is sealed inactive instead: no
  entry, no event, not in the runs index, and no root is released until
  activate.lua runs. Its keys keep a TTL, so the shards of a home run that
  was never written expire; it returns {1, ""}.
]]
-- luacheck: globals KEYS ARGV redis
local rcall = redis.call
local run_key = KEYS[1]
local graph_key = KEYS[2]
local nodes_key = KEYS[3]
local roots_key = KEYS[4]
local outbox_key = KEYS[5]
-- The partition's key base is the outbox key's name minus "outbox".
local base = string.sub(outbox_key, 1, -7)
local staged_spec_key = KEYS[6]
local spec_key = KEYS[7]
local counts_key = KEYS[9]
local events_key = KEYS[10]
local run_id = ARGV[1]
local epoch = ARGV[2]
local clock = rcall("TIME")
local now_text = string.format("%.6f", tonumber(clock[1]) + tonumber(clock[2]) / 1000000)

-- Of the lifecycle functions only emit runs here, which needs run_key,
-- run_id and events_key.
--- @include "lifecycle"

if rcall("EXISTS", run_key) == 1 then
  return {0}
end
if rcall("EXISTS", staged_spec_key) == 0
    or rcall("HLEN", graph_key) ~= tonumber(ARGV[7])
    or rcall("HLEN", nodes_key) ~= tonumber(ARGV[8])
    or rcall("LLEN", roots_key) ~= tonumber(ARGV[9])
    or rcall("HLEN", counts_key) ~= tonumber(ARGV[12]) then
  return {-5}
end
rcall("RENAME", staged_spec_key, spec_key)
rcall("PERSIST", spec_key)
rcall("PERSIST", graph_key)
rcall("PERSIST", nodes_key)
rcall("PERSIST", roots_key)
rcall("PERSIST", counts_key)
if ARGV[13] ~= "" then
  rcall("HSET", run_key, "status", "running", "epoch", epoch, "created_at", now_text,
    "open_main", ARGV[6], "spec_version", "1", "nodes", ARGV[3],
    "sinks", ARGV[4], "reaching", ARGV[5], "sinks_not_succeeded", "0",
    "retention_ms", ARGV[10],
    "events_max_len", ARGV[11], "home", ARGV[13], "home_node", ARGV[14],
    "home_epoch", ARGV[15], "active", "0")
  for _, key in ipairs({run_key, graph_key, nodes_key, roots_key, spec_key,
      counts_key}) do
    rcall("PEXPIRE", key, ARGV[16])
  end
  return {1, ""}
end
-- Scored by the time of the latest progress, so the reconciler finds a run
-- whose release stopped.
rcall("ZADD", KEYS[8], now_text, run_id)
local entry = rcall("XADD", outbox_key, "*", "kind", "release", "run", run_id,
  "epoch", epoch)
rcall("HSET", run_key, "status", "running", "epoch", epoch, "created_at", now_text,
  "open_main", ARGV[6], "spec_version", "1", "nodes", ARGV[3],
  "sinks", ARGV[4], "reaching", ARGV[5], "sinks_not_succeeded", "0",
  "released", "0", "release_entry", entry,
  "retention_ms", ARGV[10], "events_max_len", ARGV[11])
rcall("ZADD", base .. "runs", now_text, run_id)
emit("submitted")
return {1, entry}
