--[[ graph: the node transitions shared by the scripts that change node states.
  Included by scripts.py in place of a `--- @include "graph"` line. It mirrors
  the Python state machine (`start`, `_end`, `_settle`, `_react`,
  `_react_errback`, `_release`, `_maybe_finish`) and expects these locals in
  the including script (include/run.lua defines them all):
    rcall        redis.call
    run_key      run hash
    graph_key    run graph hash
    nodes_key    run node-state hash
    delayed_key  delayed sorted set
    base         the partition's key base: delayed_key's name minus "delayed"
    run_id, epoch (strings), now (seconds, number), now_text (now as a string)
  Writes stream entries to <base>q:<queue> for every node it queues without
  delay, and members of the delayed set for the others, and adds each
  queue's name to the set <base>queues ("queue", which this includes
  unless the script did before). The including script includes
  "lifecycle" first, whose state counts, events and expiry this uses.
  Sharded chords (shards.py): a shard node is never queued. "Queuing" it
  starts it running and adds an "activate" entry to <base>outbox, and the
  home run's id to the set <base>sharded scored by the time. A shard node
  that is cancelled adds a "cancel" entry for its shard run, with the epoch. A shard run
  (its run hash has "home") adds a "report" entry when its first node fails
  and when it ends. A home run that activated or cancelled a shard node adds
  a "retain" entry for its shards when it ends.
  To save commands, a script call keeps the graph fields it read of each
  node (`info_of`), the node states that these functions wrote
  (`written_states`), and the run's "open_main" count after their last
  change to it (`open_main_left`). So a script must write the graph hash
  before it calls any of these functions, and once it has called one, it
  must set node states only through them or update `written_states` too.
  `maybe_finish` uses `open_main_left` only when the caller passes the
  run's status, so a script that writes "open_main" itself passes none or
  sets `open_main_left` (submit).
]]

local TERMINAL = {succeeded = true, failed = true, cancelled = true, skipped = true}
local SETTLED = {succeeded = true, failed = true, cancelled = true}
local SUCCEEDED = {succeeded = true}
--- @include "queue"

local function split(text)
  local items = {}
  -- HGET returns false for a missing field.
  if text and text ~= "" then
    for item in string.gmatch(text, "[^,]+") do
      items[#items + 1] = item
    end
  end
  return items
end

local function attr(node, name)
  return rcall("HGET", graph_key, node .. "/" .. name)
end

-- The graph fields that a node's transitions read, fetched with one HMGET.
local INFO_FIELDS = {"side", "group", "drops", "task", "ignore", "dependents",
  "errbacks", "settled", "triggers", "join", "role", "countdown", "eta", "queue",
  "end_role"}
local infos = {}

-- Return a table of the node's INFO_FIELDS, each false when missing. A node
-- without "/end_role" takes the run's "end_role" field (layout.py writes it
-- when most nodes are sinks, as in a shard run), else "reaching".
local function info_of(node)
  local info = infos[node]
  if not info then
    local fields = {}
    for index, name in ipairs(INFO_FIELDS) do
      fields[index] = node .. "/" .. name
    end
    fields[#fields + 1] = "end_role"
    local found = rcall("HMGET", graph_key, unpack(fields))
    info = {}
    for index, name in ipairs(INFO_FIELDS) do
      info[name] = found[index]
    end
    info.end_role = info.end_role or found[#fields]
    infos[node] = info
  end
  return info
end

-- Node states that this script call wrote, by node id.
local written_states = {}
-- Shard nodes whose shard runs the submitter writes active itself, after
-- the home run (submit.lua fills it, shard_runs.py): starting one at submit
-- adds no "activate" outbox entry, because its shard may not exist yet.
local submitter_activates = {}
-- The run's "open_main" field after this call's last change of it, or nil.
local open_main_left = nil
-- When true, `set_terminal` lowers `open_main_left` in Lua only and
-- `maybe_finish` writes it, with the run's status when the run ends. A
-- script that sets it has read "open_main" into `open_main_left` and
-- calls `maybe_finish` with the run's status before it returns.
local defer_open_main = false
local open_main_changed = false

local function state_of(node)
  local state = written_states[node]
  if state then
    return state
  end
  return rcall("HGET", nodes_key, node)
end

-- Tell the home run of a shard run how the shard ended. Reports are keyed
-- by home node, kind and home epoch, so the home applies each one once.
local function report_shard(outcome, cause)
  local home = rcall("HMGET", run_key, "home", "home_node", "home_epoch")
  if not home[1] then
    return
  end
  rcall("XADD", base .. "outbox", "*", "kind", "report", "run", home[1],
    "node", home[2], "epoch", home[3], "shard", run_id, "outcome", outcome,
    "cause", cause or "")
end

-- Under fail_fast a shard reports its first failed node at once, so the
-- home run need not wait for the shard's other members.
local function report_failure(node)
  local home = rcall("HMGET", run_key, "home", "reported")
  if home[1] and not home[2] then
    rcall("HSET", run_key, "reported", node)
    report_shard("failed", node)
  end
end

-- Queue a pending node: every caller releases a node from "pending".
-- `last_attempt` is the node's /attempt field when the caller knows it
-- (submit: 0 for every node), or nil to raise it with HINCRBY.
local function enqueue(node, last_attempt)
  local attempt
  -- The /attempt field and its value when the state's HSET writes it.
  local attempt_pair = {}
  if last_attempt then
    attempt = last_attempt + 1
    attempt_pair = {node .. "/attempt", attempt}
  else
    attempt = rcall("HINCRBY", nodes_key, node .. "/attempt", 1)
  end
  local info = info_of(node)
  if info.task == SHARD_TASK then
    -- The shard's members run in their own run, maybe in another partition,
    -- so a worker activates it from the outbox (driver.py, _activate).
    rcall("HSET", nodes_key, node, "running", node .. "/queued_at", now_text,
      node .. "/started_at", now_text, unpack(attempt_pair))
    written_states[node] = "running"
    count_move(node, "pending", "running", info.group)
    if not submitter_activates[node] then
      rcall("XADD", base .. "outbox", "*", "kind", "activate", "run", run_id,
        "node", node, "epoch", epoch)
    end
    mark_shard_home()
    rcall("ZADD", base .. "sharded", now_text, run_id)
    return
  end
  rcall("HSET", nodes_key, node, "queued", node .. "/queued_at", now_text,
    unpack(attempt_pair))
  written_states[node] = "queued"
  count_move(node, "pending", "queued", info.group)
  send(node, attempt, delay_of(info.countdown, info.eta), info.queue, info.task)
end

-- Tell whether node id `a` comes before `b` in node order: the ids are
-- dot-separated integers, compared part by part as canvas.spec.node_order does.
local function sorts_before(a, b)
  local left, right = {}, {}
  for part in string.gmatch(a, "%d+") do
    left[#left + 1] = tonumber(part)
  end
  for part in string.gmatch(b, "%d+") do
    right[#right + 1] = tonumber(part)
  end
  for index = 1, math.min(#left, #right) do
    if left[index] ~= right[index] then
      return left[index] < right[index]
    end
  end
  return #left < #right
end

-- Keep the run's "lowest_failed" field, the failed node lowest in node order
-- whose failure reaches a sink, so `maybe_finish` reads the error node at once.
local function note_failed(node, info)
  if info.end_role == "none" then
    return
  end
  local lowest = rcall("HGET", run_key, "lowest_failed")
  if not lowest or sorts_before(node, lowest) then
    rcall("HSET", run_key, "lowest_failed", node)
  end
end

-- End a node. `current` is its state when the caller read it already, or
-- nil to read it here.
local function set_terminal(node, state, current)
  current = current or state_of(node)
  if TERMINAL[current] then
    error("STEM_INTERNAL run " .. run_id .. ": node " .. node .. " is already "
      .. current .. " and cannot become " .. state .. ". This is a bug in Stem.")
  end
  rcall("HSET", nodes_key, node, state, node .. "/ended_at", now_text)
  written_states[node] = state
  local info = info_of(node)
  count_move(node, current, state, info.group)
  if info.end_role == "sink" and state ~= "succeeded" then
    rcall("HINCRBY", run_key, "sinks_not_succeeded", 1)
  end
  if info.side ~= "1" then
    if defer_open_main then
      open_main_left = open_main_left - 1
      open_main_changed = true
    else
      open_main_left = rcall("HINCRBY", run_key, "open_main", -1)
    end
  end
  release_reads(node, info.drops)
  if state == "cancelled" and info.task == SHARD_TASK then
    -- Also a shard never activated: cancelling it ends it, so it expires
    -- with the home run.
    rcall("XADD", base .. "outbox", "*", "kind", "cancel", "run", run_id,
      "node", node, "epoch", epoch)
    mark_shard_home()
  elseif state == "failed" then
    note_failed(node, info)
    report_failure(node)
  end
end

local function listed(node, name, dep)
  local items = "," .. (info_of(node)[name] or "") .. ","
  return string.find(items, "," .. dep .. ",", 1, true) ~= nil
end

local function accepted(node, dep)
  local info = info_of(node)
  local settled = "," .. (info.settled or "") .. ","
  if string.find(settled, "," .. dep .. ",", 1, true) then
    return SETTLED
  end
  local triggers = "," .. (info.triggers or "") .. ","
  if string.find(triggers, "," .. dep .. ",", 1, true) then
    -- A link runs only after its canvas succeeded.
    return SUCCEEDED
  end
  if info.join == "all_settled" and info.role ~= "link" then
    return SETTLED
  end
  return SUCCEEDED
end

local function cause_of(node)
  local cause = rcall("HGET", nodes_key, node .. "/cause")
  if not cause then
    return node
  end
  -- A failed shard node names the failed member of its shard as its cause.
  if state_of(node) == "failed" and info_of(node).task ~= SHARD_TASK then
    return node
  end
  return cause
end

local function react(dep, outcome, node, work)
  if state_of(node) ~= "pending" then
    return
  end
  if accepted(node, dep)[outcome] then
    -- Every dependency edge ends once, so the counter reaches zero exactly
    -- when all of them were accepted, as the Python `_release` checks.
    local waiting = rcall("HINCRBY", nodes_key, node .. "/waiting", -1)
    if waiting <= 0 then
      enqueue(node)
    end
    return
  end
  if outcome == "skipped" or info_of(node).role == "link"
      or listed(node, "triggers", dep) then
    set_terminal(node, "skipped")
  else
    set_terminal(node, "cancelled")
    rcall("HSET", nodes_key, node .. "/cause", cause_of(dep))
  end
  work[#work + 1] = node
end

local function react_errback(covered, outcome, errback, work)
  if state_of(errback) ~= "pending" then
    return
  end
  local open = rcall("HINCRBY", nodes_key, errback .. "/open_covers", -1)
  if outcome == "failed" or outcome == "cancelled" then
    rcall("HSET", nodes_key, errback .. "/cause", cause_of(covered))
    enqueue(errback)
    return
  end
  if open <= 0 then
    set_terminal(errback, "skipped")
    work[#work + 1] = errback
  end
end

-- Settle everything that the nodes on the work list decide, now that they
-- ended. The work list is a stack, as in the Python transitions, so causes
-- come out the same.
local function settle(work)
  while #work > 0 do
    local current = table.remove(work)
    local outcome = state_of(current)
    local info = info_of(current)
    for _, dependent in ipairs(split(info.dependents)) do
      react(current, outcome, dependent, work)
    end
    for _, errback in ipairs(split(info.errbacks)) do
      react_errback(current, outcome, errback, work)
    end
  end
end

-- Move a node to a terminal state and settle everything it decides.
-- `current` is the node's state when the caller read it already, or nil.
local function end_node(node, state, current)
  set_terminal(node, state, current)
  settle({node})
end

-- Set the run's "sinks_not_succeeded" and "lowest_failed" from the states of
-- the nodes on its "sinks" and "reaching" lists, after a script moved nodes
-- back to pending. It reads every sink, so only scripts that visit every node
-- anyway call it. cancel.lua leaves both fields stale, because it ends the
-- run and only reopen.lua or reset_shard.lua start a cancelled run again.
local function recount_run_end()
  local lists = rcall("HMGET", run_key, "sinks", "reaching")
  local not_succeeded = 0
  for _, sink in ipairs(split(lists[1])) do
    local state = state_of(sink)
    if TERMINAL[state] and state ~= "succeeded" then
      not_succeeded = not_succeeded + 1
    end
  end
  rcall("HSET", run_key, "sinks_not_succeeded", not_succeeded)
  -- `reaching` is sorted by node order, so the first failed node is the lowest.
  for _, node in ipairs(split(lists[2])) do
    if state_of(node) == "failed" then
      rcall("HSET", run_key, "lowest_failed", node)
      return
    end
  end
  rcall("HDEL", run_key, "lowest_failed")
end

-- End the run when no main-path node is open. `status` is the run's status
-- when the caller read it in this call, or nil to read it here.
local function maybe_finish(status)
  -- The run's end reads two counters that `set_terminal` keeps, not the
  -- node lists: a chord's "reaching" list names every header member, and
  -- checking each sink would make the last completion as large as the run.
  local open_main = open_main_left
  -- Run hash fields to write with the status, or at once if the run goes on.
  local changed = {}
  if open_main_changed then
    changed = {"open_main", open_main_left}
    open_main_changed = false
  end
  if not status then
    local run = rcall("HMGET", run_key, "status", "open_main")
    status = run[1]
    if #changed == 0 then
      open_main = run[2]
    end
  elseif not open_main then
    open_main = rcall("HGET", run_key, "open_main")
  end
  if status ~= "running" or tonumber(open_main) > 0 then
    if #changed > 0 then
      rcall("HSET", run_key, unpack(changed))
    end
    if status ~= "running" then
      keep_expiry()
    end
    return
  end
  local lists = rcall("HMGET", run_key, "sinks_not_succeeded", "lowest_failed",
    "home", "reported", "shards_version")
  rcall("ZREM", base .. "sharded", run_id)
  -- A run submitted before these counters existed has no
  -- "sinks_not_succeeded" field and no /end_role graph fields: count its
  -- sinks and failures once, the way a run retry does.
  if not lists[1] then
    recount_run_end()
    lists = rcall("HMGET", run_key, "sinks_not_succeeded", "lowest_failed",
      "home", "reported", "shards_version")
  end
  -- Every sink is a main-path node, so every sink has ended here.
  if tonumber(lists[1]) == 0 then
    rcall("HSET", run_key, "status", "succeeded", "ended_at", now_text,
      unpack(changed))
    run_ended("succeeded", lists[3], lists[5])
    if lists[3] then
      report_shard("succeeded")
    end
    return
  end
  local error_node = nil
  if lists[2] then
    error_node = lists[2]
    changed[#changed + 1] = "error_node"
    changed[#changed + 1] = error_node
  end
  rcall("HSET", run_key, "status", "failed", "ended_at", now_text, unpack(changed))
  run_ended("failed", lists[3], lists[5])
  if lists[3] and not lists[4] then
    report_shard("failed", error_node)
  end
end
