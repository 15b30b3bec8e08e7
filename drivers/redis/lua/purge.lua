--[[ purge: delete queue messages that no worker has fetched yet.
  KEYS[1] queue stream            (partition tag)
  ARGV[1] consumer group name
  ARGV[2] most entries to delete in this call
  Returns the number of entries deleted, followed by the distinct run ids of
  those entries in the order first deleted. The caller repeats the call
  until the number is below the batch size.
  Entries delivered to a worker and not yet acknowledged stay, so no running
  task loses its message.
]]
-- luacheck: globals KEYS ARGV redis
local rcall = redis.call
local stream_key = KEYS[1]
local group = ARGV[1]
local batch = tonumber(ARGV[2])

if rcall("EXISTS", stream_key) == 0 then
  return {0}
end
-- Without the group every entry is undelivered; with it, only the entries
-- after its last-delivered-id are.
local start = "-"
for _, info in ipairs(rcall("XINFO", "GROUPS", stream_key)) do
  local fields = {}
  for index = 1, #info, 2 do
    fields[info[index]] = info[index + 1]
  end
  if fields["name"] == group then
    start = "(" .. fields["last-delivered-id"]
  end
end
local entries = rcall("XRANGE", stream_key, start, "+", "COUNT", batch)
local reply = {#entries}
local seen = {}
for _, entry in ipairs(entries) do
  rcall("XDEL", stream_key, entry[1])
  -- entry[2] is the flat field list: name, value, name, value, ...
  local fields = entry[2]
  for index = 1, #fields, 2 do
    if fields[index] == "run" then
      local run_id = fields[index + 1]
      if not seen[run_id] then
        seen[run_id] = true
        reply[#reply + 1] = run_id
      end
    end
  end
end
return reply
