--[[ attempt_report: the checks that a worker's report of an attempt starts with.
  Included by complete, fail, retry and splice, after "run". It expects
  KEYS[2] to be the queue stream the message came from, and ARGV[1] to
  ARGV[6] to be the node id, attempt number, epoch, stream entry id to
  acknowledge ("" when there is none), consumer group name and the lease
  (fencing token) that the claim granted. The run id comes from the run
  hash's name.
]]

local stream_key = KEYS[2]
local run_id = key_run_id
local node = ARGV[1]
local attempt = ARGV[2]
local epoch = ARGV[3]
local receipt = ARGV[4]
local group = ARGV[5]
local lease = ARGV[6]

local function ack()
  if receipt ~= "" then
    rcall("XACK", stream_key, group, receipt)
    rcall("XDEL", stream_key, receipt)
  end
end

-- Check the report against the run and the node's attempt and lease.
-- Returns the run hash's "epoch", `...` and "single" fields when the report applies,
-- and the caller acknowledges the message. Otherwise returns nil and the
-- reply: {-1} for an unknown run, {-2} for a stale attempt, epoch or lease,
-- {0} when the node is no longer running. Every one of those replies but a
-- stale lease acknowledges the message here.
local function check_report(...)
  -- A late report must not recreate the keys of a run that expired or was
  -- deleted. The node's fields are read with the run's, for a run of one
  -- node kept in its run hash (include/single.lua), whose "single" field
  -- follows the caller's fields in the reply.
  local names = {"epoch", ...}
  local requested = #names
  for _, name in ipairs({"single", node .. "/attempt", node, node .. "/lease"}) do
    names[#names + 1] = name
  end
  local run = rcall("HMGET", run_key, unpack(names))
  if not run[1] then
    ack()
    return nil, {-1}
  end
  local current
  if run[requested + 1] then
    current = {run[requested + 2], run[requested + 3], run[requested + 4]}
  else
    current = rcall("HMGET", nodes_key, node .. "/attempt", node, node .. "/lease")
  end
  if run[1] ~= epoch or current[1] ~= attempt then
    ack()
    return nil, {-2}
  end
  local state = current[2]
  -- A fenced worker must not acknowledge the entry that the new holder runs.
  if state == "running" and current[3] ~= lease then
    return nil, {-2}
  end
  if state ~= "running" then
    ack()
    return nil, {0}
  end
  return run
end
