--[[ run: the keys and the time that a run script starts with.
  Included by scripts.py in place of a `--- @include "run"` line, first in
  the script. The script declares the run hash as KEYS[1], and this builds
  the run's other keys and the partition's keys from its name, the way
  keys.py builds them: the run's keys add ":graph", ":nodes" and so on to
  the run hash's name, and a partition key is <base> plus its name, where
  <base> ends with the partition's hash tag and ":". The key prefix has no
  braces (keys.Keys rejects them), so the first "}:" ends <base>. Every key
  built here shares the run hash's hash tag, so it is in the run hash's
  slot, as Redis Cluster requires of every key a script touches.
  Defines rcall, run_key, graph_key, nodes_key, values_key, errors_key,
  counts_key, base, delayed_key, events_key, key_run_id (the run id in the
  run hash's name, <base>run:<run>), and clock (the reply of TIME), now
  (seconds, number) and now_text (now with six decimals).
]]

local rcall = redis.call
local run_key = KEYS[1]
local graph_key = run_key .. ":graph"
local nodes_key = run_key .. ":nodes"
local values_key = run_key .. ":values"
local errors_key = run_key .. ":errors"
local counts_key = run_key .. ":counts"
local base = string.match(run_key, "^[^}]*}:")
if not base then
  error("STEM_INTERNAL run hash key " .. run_key .. " has no hash tag followed "
    .. "by ':'. This is a bug in Stem.")
end
local key_run_id = string.sub(run_key, #base + #"run:" + 1)
local delayed_key = base .. "delayed"
local events_key = base .. "events"
local clock = rcall("TIME")
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
-- The same text as string.format("%.6f", now), which costs more in Redis.
local now_text = clock[1] .. "." .. string.sub("00000" .. clock[2], -6)
