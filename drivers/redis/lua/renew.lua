--[[ renew: extend a worker's lease on a claimed message by resetting its idle time.
  KEYS[1] queue stream the message came from (partition tag)
  KEYS[2] run node-state hash     (partition tag)
  KEYS[3] run hash                (partition tag)
  ARGV[1] consumer group name
  ARGV[2] consumer name of the worker that holds the message
  ARGV[3] stream entry id of the message
  ARGV[4] node id
  ARGV[5] attempt number
  ARGV[6] lease (fencing token) the claim granted
  ARGV[7] epoch of the message
  Returns 1 when the entry's idle time was reset, 0 when the lease is no longer
  this worker's: the run is in another epoch, the node is not running this
  attempt under this lease, or the entry is acknowledged or pending for
  another consumer.
  XCLAIM with JUSTID resets the idle time without counting a delivery (Redis
  5.0 and later), so renewals never push a message toward dead-lettering.
  Writes no stream entries.
]]
-- luacheck: globals KEYS ARGV redis
local rcall = redis.call
local stream_key = KEYS[1]
local nodes_key = KEYS[2]
local run_key = KEYS[3]
local group = ARGV[1]
local consumer = ARGV[2]
local receipt = ARGV[3]
local node = ARGV[4]
local attempt = ARGV[5]
local lease = ARGV[6]
local epoch = ARGV[7]

-- Attempt numbers restart in each epoch, so the attempt alone does not
-- identify the message.
-- A run of one node keeps its node's fields in its run hash
-- (include/single.lua), so they are read with the epoch.
local run = rcall("HMGET", run_key, "epoch", "single", node, node .. "/attempt",
  node .. "/lease")
if run[1] ~= epoch then
  return 0
end
local fields
if run[2] then
  fields = {run[3], run[4], run[5]}
else
  fields = rcall("HMGET", nodes_key, node, node .. "/attempt", node .. "/lease")
end
if fields[1] ~= "running" or fields[2] ~= attempt or fields[3] ~= lease then
  return 0
end
-- Claiming with min-idle 0 would take the entry from whichever consumer holds
-- it, so check that this worker still does.
local pending = rcall("XPENDING", stream_key, group, receipt, receipt, 1, consumer)
if #pending == 0 then
  return 0
end
rcall("XCLAIM", stream_key, group, consumer, 0, receipt, "JUSTID")
return 1
