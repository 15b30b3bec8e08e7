--[[ promote: move delayed messages that are due onto their queue streams.
  KEYS[1] delayed sorted set      (partition tag); the partition's key base is
          its name minus "delayed"
  ARGV[1] maximum number of messages to move in this call
  Time comes from TIME inside the script.
  Returns the number of messages moved.
  Adds one stream entry to <base>q:<queue> per message moved. A member that
  defer.lua handed back has a field in the hash <base>deferred: the time the
  message first entered a queue, in milliseconds, which the entry keeps as
  its enqueued_ms field and which is then deleted. A due member
  that is not the JSON array of six strings this driver writes moves to
  <base>dead instead, with empty ids, attempt and epoch 0, and a reason that
  quotes it, because left in place it would fail every later call.
]]
-- luacheck: globals KEYS ARGV redis cjson
local rcall = redis.call
local delayed_key = KEYS[1]
local limit = tonumber(ARGV[1])
local base = string.sub(delayed_key, 1, -8)
local clock = rcall("TIME")
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
-- Characters of a malformed member quoted in its dead-letter reason.
local MAX_SHOWN = 500

-- Return the decoded member, or nil when it is not the array that
-- graph.lua's send writes: queue, run, node, attempt, epoch and task.
local function parse(member)
  local ok, message = pcall(cjson.decode, member)
  if not ok or type(message) ~= "table" then
    return nil
  end
  for index = 1, 6 do
    if type(message[index]) ~= "string" then
      return nil
    end
  end
  return message
end

local due = rcall("ZRANGEBYSCORE", delayed_key, "-inf", string.format("%.6f", now),
  "LIMIT", 0, limit)
local moved = 0
for _, member in ipairs(due) do
  -- The member contains ids and names written by this driver, never user values.
  local message = parse(member)
  if message then
    -- "v" is the envelope version, ENVELOPE_VERSION in driver.py.
    local enqueued_ms = rcall("HGET", base .. "deferred", member)
    if enqueued_ms then
      rcall("HDEL", base .. "deferred", member)
      rcall("XADD", base .. "q:" .. message[1], "*", "v", "1", "run", message[2],
        "node", message[3], "attempt", message[4], "epoch", message[5],
        "task", message[6], "enqueued_ms", enqueued_ms)
    else
      rcall("XADD", base .. "q:" .. message[1], "*", "v", "1", "run", message[2],
        "node", message[3], "attempt", message[4], "epoch", message[5],
        "task", message[6])
    end
    moved = moved + 1
  else
    -- Bytes outside printable ASCII become "?", so the reason is valid text.
    local quoted = string.gsub(string.sub(member, 1, MAX_SHOWN), "[^\32-\126]", "?")
    if #member > MAX_SHOWN then
      quoted = quoted .. "..."
    end
    rcall("XADD", base .. "dead", "*", "run", "", "node", "", "attempt", "0",
      "epoch", "0", "queue", "", "task", "",
      "reason", "Malformed delayed message " .. quoted .. ": Stem writes the JSON " ..
      "array [queue, run, node, attempt, epoch, task] of strings.")
  end
  rcall("ZREM", delayed_key, member)
end
return moved
