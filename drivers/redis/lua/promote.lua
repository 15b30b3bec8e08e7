--[[ promote: move delayed messages that are due onto their queue streams.
  KEYS[1] delayed sorted set      (partition tag); the partition's key base is
          its name minus "delayed"
  ARGV[1] maximum number of messages to move in this call
  Time comes from TIME inside the script.
  Returns the number of messages moved.
  Adds one stream entry to <base>q:<queue> per message moved.
]]
-- luacheck: globals KEYS ARGV redis cjson
local rcall = redis.call
local delayed_key = KEYS[1]
local limit = tonumber(ARGV[1])
local base = string.sub(delayed_key, 1, -8)
local clock = rcall("TIME")
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000

local due = rcall("ZRANGEBYSCORE", delayed_key, "-inf", string.format("%.6f", now),
  "LIMIT", 0, limit)
for _, member in ipairs(due) do
  -- The member contains ids and names written by this driver, never user values.
  local message = cjson.decode(member)
  rcall("XADD", base .. "q:" .. message[1], "*", "run", message[2], "node", message[3],
    "attempt", message[4], "epoch", message[5], "task", message[6])
  rcall("ZREM", delayed_key, member)
end
return #due
