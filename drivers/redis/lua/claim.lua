--[[ claim: start an attempt, or acknowledge and drop a duplicate or stale message.
  KEYS[1] run hash                (partition tag)
  KEYS[2] run graph hash          (partition tag)
  KEYS[3] run node-state hash     (partition tag)
  KEYS[4] run values hash         (partition tag)
  KEYS[5] run errors hash         (partition tag)
  KEYS[6] queue stream the message came from (partition tag)
  KEYS[7] run state-count hash    (partition tag)
  KEYS[8] lifecycle event stream  (partition tag)
  ARGV[1] node id
  ARGV[2] attempt number
  ARGV[3] epoch
  ARGV[4] stream entry id of the message, or "" when there is none
  ARGV[5] consumer group name
  ARGV[6] "1" when the message was reclaimed from a consumer that held it past
          the visibility timeout, so a running attempt is taken over; else "0"
  ARGV[7] run id
  ARGV[8] longest <node>/reads field, in characters, whose values the reply
          carries; a node that reads more (a large chord's callback) gets no
          triples, and the driver reads its inputs in pages
  Time comes from TIME inside the script.
  Returns {1, cause, spec_version, lease, state, value, error, state, value,
  error, ...} with one state/value/error triple ("" when missing) per node the
  input reads, in the order of the graph's <node>/reads field, or no triples
  when the field is longer than ARGV[8]. The lease is 1
  for the first claim of an attempt, and a takeover raises it by one and
  restarts <node>/started_at, so reports with an older lease change nothing.
  Returns {0} for a duplicate or a message whose node is no longer queued (or
  running, for a takeover), {-1} for an unknown run and {-2} for a message of
  another epoch or attempt. Every reply but {1} acknowledges and deletes the
  message, so it is not delivered again.
  Adds a "started" event when it returns {1}.
]]
-- luacheck: globals KEYS ARGV redis
local rcall = redis.call
local run_key = KEYS[1]
local graph_key = KEYS[2]
local nodes_key = KEYS[3]
local values_key = KEYS[4]
local errors_key = KEYS[5]
local stream_key = KEYS[6]
local counts_key = KEYS[7]
local events_key = KEYS[8]
local node = ARGV[1]
local attempt = ARGV[2]
local epoch = ARGV[3]
local receipt = ARGV[4]
local group = ARGV[5]
local takeover = ARGV[6] == "1"
local run_id = ARGV[7]
local inline_chars = tonumber(ARGV[8])
local clock = rcall("TIME")
local now_text = string.format("%.6f", tonumber(clock[1]) + tonumber(clock[2]) / 1000000)

--- @include "lifecycle"

local function drop(code)
  if receipt ~= "" then
    rcall("XACK", stream_key, group, receipt)
    rcall("XDEL", stream_key, receipt)
  end
  return {code}
end

local run = rcall("HMGET", run_key, "epoch", "spec_version")
if not run[1] then
  return drop(-1)
end
if run[1] ~= epoch or rcall("HGET", nodes_key, node .. "/attempt") ~= attempt then
  return drop(-2)
end
local state = rcall("HGET", nodes_key, node)
local lease
if state == "queued" or state == "retrying" then
  lease = 1
  rcall("HSET", nodes_key, node .. "/lease", lease)
  count_move(node, state, "running")
elseif state == "running" and takeover then
  -- The worker holding the lease is presumed dead; raising the lease fences
  -- its late report, if it is alive after all.
  lease = rcall("HINCRBY", nodes_key, node .. "/lease", 1)
else
  return drop(0)
end
rcall("HSET", nodes_key, node, "running", node .. "/started_at", now_text)
emit("started", node, attempt)

local reply = {1, rcall("HGET", nodes_key, node .. "/cause") or "", run[2], lease}
local reads = rcall("HGET", graph_key, node .. "/reads")
if reads and reads ~= "" and (not inline_chars or #reads <= inline_chars) then
  for read in string.gmatch(reads, "[^,]+") do
    reply[#reply + 1] = rcall("HGET", nodes_key, read) or ""
    reply[#reply + 1] = rcall("HGET", values_key, read) or ""
    reply[#reply + 1] = rcall("HGET", errors_key, read) or ""
  end
end
return reply
