--[[ lifecycle: group state counts, lifecycle events, run expiry and ignore_result values.
  Included by scripts.py in place of a `--- @include "lifecycle"` line, before
  "graph" where a script includes both. It expects these locals in the
  including script:
    rcall        redis.call
    run_key      run hash; its "retention_ms" and "events_max_len" fields,
                 written at submit, hold the run's settings ("0" is off)
    graph_key    run graph hash
    nodes_key    run node-state hash
    values_key   run values hash
    errors_key   run errors hash
    counts_key   run state-count hash: "<group>/<state>" to a number of nodes,
                 where the group "-" counts nodes outside every group
    events_key   the partition's lifecycle event stream, "<base>events"; an
                 event id is "<microseconds>-<sequence>".
                 `send_shard_retention` writes to "<base>outbox"
    run_id       the run's id
    clock        the reply of the TIME call that starts the script
  Every function does a fixed number of commands, apart from `release_reads`
  and `count_open_readers`, which visit one node's reads or readers.
]]

local LIFECYCLE_TERMINAL = {succeeded = true, failed = true, cancelled = true,
  skipped = true}
local run_settings = nil
-- This script call's event id, "<microseconds>-*", built at its first event.
local event_id = nil

-- Keep the run's "retention_ms" and "events_max_len" fields for this script
-- call. A script that reads the run hash anyway reads them with it and calls
-- this, so `settings` needs no command of its own.
local function use_settings(retention_ms, events_max_len)
  run_settings = {retention_ms = tonumber(retention_ms) or 0,
    events_max_len = tonumber(events_max_len) or 0}
end

-- The run's retention and event cap, read once per script call.
local function settings()
  if not run_settings then
    local fields = rcall("HMGET", run_key, "retention_ms", "events_max_len")
    use_settings(fields[1], fields[2])
  end
  return run_settings
end

-- State-count changes kept back in this script call, by field, or nil to
-- write each change at once. submit sets it to a table, because it writes
-- the whole state-count hash after its start pass.
local count_deltas = nil

local function count_add(field, delta)
  if count_deltas then
    count_deltas[field] = (count_deltas[field] or 0) + delta
  else
    rcall("HINCRBY", counts_key, field, delta)
  end
end

-- Move one node from state `from` (nil for a new node) to state `to` in the
-- counts of its innermost group. `group` is the node's /group field when the
-- caller read it already (false when missing), or nil to read it here.
local function count_move(node, from, to, group)
  if group == nil then
    group = rcall("HGET", graph_key, node .. "/group")
  end
  if not group or group == "" then
    group = "-"
  end
  if from then
    count_add(group .. "/" .. from, -1)
  end
  count_add(group .. "/" .. to, 1)
end

-- Add one event with the id `id`, and return XADD's reply or its error. One
-- XADD per shape of event, without a table of fields to unpack.
local function add_event(id, kind, node, attempt, status)
  local max_len = run_settings.events_max_len
  if node then
    return redis.pcall("XADD", events_key, "MAXLEN", "~", max_len, id,
      "run", run_id, "event", kind, "node", node, "attempt", tostring(attempt))
  elseif status then
    return redis.pcall("XADD", events_key, "MAXLEN", "~", max_len, id,
      "run", run_id, "event", kind, "status", status)
  end
  return redis.pcall("XADD", events_key, "MAXLEN", "~", max_len, id,
    "run", run_id, "event", kind)
end

-- Append one event to the partition's stream, trimmed to about the run's cap.
local function emit(kind, node, attempt, status)
  local max_len = settings().events_max_len
  if max_len <= 0 then
    return
  end
  -- The id's first part is the time in microseconds from the script's TIME
  -- call, not the milliseconds of an automatic id, so that events of
  -- different partitions (streams) written on one server merge into the
  -- order they were written in. Later events of the same call reuse it: the
  -- script is atomic, and the id's sequence part keeps them in order. The
  -- id is built from TIME's two parts as text, which costs less than
  -- formatting a number.
  if not event_id then
    event_id = clock[1] .. string.sub("00000" .. clock[2], -6) .. "-*"
  end
  local added = add_event(event_id, kind, node, attempt, status)
  if type(added) == "table" and added.err then
    -- XADD rejects an id below the stream's last one, which happens when
    -- the clock steps back, so the id takes the last one's time instead.
    -- Any other error is raised below.
    local last = rcall("XREVRANGE", events_key, "+", "-", "COUNT", 1)[1]
    if last then
      local last_micros = string.match(last[1], "^(%d+)")
      -- Both are decimal texts of microseconds without leading zeros.
      local mine = string.sub(event_id, 1, -3)
      if #last_micros > #mine or (#last_micros == #mine and last_micros > mine) then
        event_id = last_micros .. "-*"
      end
    end
    added = add_event(event_id, kind, node, attempt, status)
    if type(added) == "table" and added.err then
      error(added)
    end
  end
end

-- Every key of the run: each one expires with the run and is kept again
-- when the run is reopened. The first list has the keys that every run
-- writes. The second has those that many runs never write: the errors hash
-- (no node failed or retried), a large run's spec string, and its roots
-- list until its roots are all released. Their names are the run hash's
-- plus ":spec" and ":roots" (keys.py), in the run hash's slot. PEXPIRE and
-- PERSIST ignore a missing key.
local function run_keys()
  return {run_key, graph_key, nodes_key, values_key, counts_key},
    {errors_key, run_key .. ":spec", run_key .. ":roots"}
end

local function expire_run(ttl_ms)
  local written, optional = run_keys()
  for _, key in ipairs(written) do
    rcall("PEXPIRE", key, ttl_ms)
  end
  -- One EXISTS in place of three PEXPIREs when none of them was written.
  if rcall("EXISTS", unpack(optional)) > 0 then
    for _, key in ipairs(optional) do
      rcall("PEXPIRE", key, ttl_ms)
    end
  end
end

-- The run runs again (a new epoch), so none of its keys may expire.
local function persist_run()
  local written, optional = run_keys()
  for _, keys in ipairs({written, optional}) do
    for _, key in ipairs(keys) do
      rcall("PERSIST", key)
    end
  end
end

-- Mark a home run whose shard node leaves "pending" (it is activated or
-- cancelled), so its end hands its retention on to the shards (`run_ended`).
-- The mark is the run hash field "shards_version", which the scripts that
-- end a run read anyway, so a run without shards pays no command for it.
local function mark_shard_home()
  rcall("HSETNX", run_key, "shards_version", 0)
end

-- A home run of sharded chords has the graph field "shard_nodes", its shard
-- nodes comma-separated (shards.py). Add one outbox entry that hands the
-- home run's retention on to all of its shard runs: kind "retain" when the
-- home run ended, or "keep" when it runs again. A worker applies it to each
-- shard with shard_retention.lua, so this does not grow with the shards.
-- The home run's "shards_version", raised by each entry, orders them, so a
-- late entry never undoes a later one. Nothing is sent when the run never
-- expires, because its shards never expire either.
local function send_shard_retention(kind)
  if settings().retention_ms <= 0 then
    return
  end
  local shard_nodes = rcall("HGET", graph_key, "shard_nodes")
  if not shard_nodes then
    return
  end
  local version = rcall("HINCRBY", run_key, "shards_version", 1)
  -- The partition's keys share the event stream's <base>.
  local outbox_key = string.sub(events_key, 1, -#"events" - 1) .. "outbox"
  rcall("XADD", outbox_key, "*", "kind", kind, "run", run_id,
    "shards", shard_nodes, "version", version)
end

-- The run just ended: note it, and start its retention. `home` and
-- `shards_version` are the run hash's fields of those names, false when
-- missing, and `single` is true for a run of one node kept in its run hash: `home` is set for a shard run, and `shards_version` for a home
-- run that marked itself (`mark_shard_home`). A shard run's keys do not
-- expire while its home run runs, whose callback reads them: they expire
-- only once shard_retention.lua marked the home run as ended ("home_ended").
local function run_ended(status, home, shards_version, single)
  emit("ended", nil, nil, status)
  local retention_ms = settings().retention_ms
  if retention_ms <= 0 then
    return
  end
  if single then
    -- A run of one node kept in its run hash has no other key (single.lua).
    rcall("PEXPIRE", run_key, retention_ms)
    return
  end
  if home then
    if rcall("HGET", run_key, "home_ended") == "1" then
      expire_run(retention_ms)
    end
    return
  end
  expire_run(retention_ms)
  if shards_version then
    send_shard_retention("retain")
  end
end

-- A write to a run that already ended (a link or errback runs after it) may
-- have created a key, so give every key the run hash's remaining time.
local function keep_expiry()
  local ttl_ms = rcall("PTTL", run_key)
  if ttl_ms > 0 then
    expire_run(ttl_ms)
  end
end

-- Store a node's value, unless it is an ignore_result node with no open reader.
-- `ignore` is the node's /ignore field when the caller read it already
-- (false when missing), or nil to read it here.
local function store_value(node, value, ignore)
  if ignore == nil then
    ignore = rcall("HGET", graph_key, node .. "/ignore")
  end
  if ignore == "1" then
    local open = tonumber(rcall("HGET", nodes_key, node .. "/open_readers")) or 0
    if open <= 0 then
      return
    end
  end
  rcall("HSET", values_key, node, value)
end

-- Count the readers of an ignore_result node that have not ended.
local function count_open_readers(node)
  local open = 0
  local readers = rcall("HGET", graph_key, node .. "/readers")
  if readers and readers ~= "" then
    for reader in string.gmatch(readers, "[^,]+") do
      if not LIFECYCLE_TERMINAL[rcall("HGET", nodes_key, reader)] then
        open = open + 1
      end
    end
  end
  rcall("HSET", nodes_key, node .. "/open_readers", open)
end

-- A node ended, so it reads no value again: drop the value of each
-- ignore_result node it read whose last open reader it was. `drops` is the
-- node's /drops field when the caller read it already, or nil.
local function release_reads(node, drops)
  if drops == nil then
    drops = rcall("HGET", graph_key, node .. "/drops")
  end
  if not drops or drops == "" then
    return
  end
  for read in string.gmatch(drops, "[^,]+") do
    if rcall("HINCRBY", nodes_key, read .. "/open_readers", -1) <= 0 then
      rcall("HDEL", values_key, read)
    end
  end
end
