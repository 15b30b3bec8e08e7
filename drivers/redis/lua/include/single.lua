--[[ single: a run of one node kept in its run hash, and its move to the usual keys.
  Included by scripts.py in place of a `--- @include "single"` line. A run of
  one main-path node that starts queued (submit.lua) is written to its run
  hash alone. Besides the run's fields, that hash holds the graph hash's
  fields, each named with "g:" in front, the node's state fields ("<node>",
  "<node>/attempt", "<node>/lease" and the rest that other runs keep in the
  node-state hash) and, once the node succeeded, its value in the field
  "value". It has no state-count hash, because its one node is the only one
  counted: the counts follow from the node's state. The run hash field
  "single" marks such a run: "1" or "0" for the node's ignore_result flag,
  then its group ("-" for none).
  claim, complete, renew, read_value and read_ended read this layout.
  Every other script that changes a run calls `expand_single` first, which
  moves a marked run to the keys of every other run, so the rest of that
  script runs as it does for any run. A run thus stays in one key only on
  its way from submit to success.
  It expects these locals in the including script:
    rcall        redis.call
    run_key      run hash
    graph_key    run graph hash
    nodes_key    run node-state hash
    values_key   run values hash
    counts_key   run state-count hash
]]

-- The states that the node of a marked run went through before each state
-- it can be in, as the state-count hash of any other run lists them (0 for
-- each state left, 1 for the current one).
local SINGLE_PASSED = {queued = {"pending"}, running = {"pending", "queued"},
  succeeded = {"pending", "queued", "running"}}

-- Return whether a run hash field is one of the node's state fields.
local function is_node_field(field, node, prefix)
  return field == node or string.sub(field, 1, #prefix) == prefix
end

-- Move a marked run to the keys of every other run. Its graph fields go to
-- the graph hash, its node's state fields to the node-state hash and its
-- value to the values hash, and a new state-count hash gets its counts.
-- The new keys expire with the run hash when it has a TTL. Does nothing
-- for a run that is not marked or does not exist.
local function expand_single()
  local found = rcall("HMGET", run_key, "single", "nodes")
  local single, node = found[1], found[2]
  if not single then
    return
  end
  local prefix = node .. "/"
  local flat = rcall("HGETALL", run_key)
  local graph_fields = {}
  local node_fields = {}
  local moved = {"single"}
  local state = nil
  local value = nil
  for index = 1, #flat, 2 do
    local field = flat[index]
    if string.sub(field, 1, 2) == "g:" then
      graph_fields[#graph_fields + 1] = string.sub(field, 3)
      graph_fields[#graph_fields + 1] = flat[index + 1]
      moved[#moved + 1] = field
    elseif is_node_field(field, node, prefix) then
      node_fields[#node_fields + 1] = field
      node_fields[#node_fields + 1] = flat[index + 1]
      moved[#moved + 1] = field
      if field == node then
        state = flat[index + 1]
      end
    elseif field == "value" then
      value = flat[index + 1]
      moved[#moved + 1] = field
    end
  end
  local passed = SINGLE_PASSED[state]
  if not passed then
    error("STEM_INTERNAL run hash " .. run_key .. " is marked single but its node "
      .. node .. " is " .. tostring(state) .. ". This is a bug in Stem.")
  end
  if #graph_fields > 0 then
    rcall("HSET", graph_key, unpack(graph_fields))
  end
  rcall("HSET", nodes_key, unpack(node_fields))
  if value then
    rcall("HSET", values_key, node, value)
  end
  local group = string.sub(single, 2)
  local counts = {}
  for _, earlier in ipairs(passed) do
    counts[#counts + 1] = group .. "/" .. earlier
    counts[#counts + 1] = 0
  end
  counts[#counts + 1] = group .. "/" .. state
  counts[#counts + 1] = 1
  rcall("HSET", counts_key, unpack(counts))
  rcall("HDEL", run_key, unpack(moved))
  -- An ended run's keys expire together. PEXPIRE ignores a missing key.
  local ttl_ms = rcall("PTTL", run_key)
  if ttl_ms > 0 then
    rcall("PEXPIRE", graph_key, ttl_ms)
    rcall("PEXPIRE", nodes_key, ttl_ms)
    rcall("PEXPIRE", values_key, ttl_ms)
    rcall("PEXPIRE", counts_key, ttl_ms)
  end
end
