"""Price a one-node run kept in one Redis key, feature by feature.

Run from the repository root:
``python bench/profile/one_key.py [--tasks N] [--batch B] [--repeats R]``.

This script measures a minimal prototype of a one-node run kept in one
key, the layout Stem's scripts use for such a run (lua/include/single.lua),
as a floor to compare them with. The prototype writes the same state. That
is the run's fields, the node's graph fields, state, attempt, lease, times
and value, and the group's state counts. It also writes four lifecycle
events (submitted, started, succeeded, ended), the runs index, the queue
names set and the message, sends its XACK and XDEL, sets one PEXPIRE at
the end and calls TIME in each call. The scripts are a prototype for
pricing, not Stem's code: they keep the checks that decide the path (run
exists, epoch, attempt, state, lease) but no other path.

Each variant then leaves out one feature, so the difference to the full
prototype is that feature's price. Every script runs as a Redis Functions
library through FCALL, as Stem's do, pipelined in batches of B. The figures
are Redis CPU (used_cpu_user + used_cpu_sys) per call, so they include
reading the requests and writing the replies; min / median / max over R
repeats of N runs. ``bench/profile/lua_cost.py`` measures Stem's own
scripts the same way ("Redis CPU, whole call").
"""

from __future__ import annotations

import statistics
import sys
import uuid
from typing import Any

sys.path.insert(0, __file__.rsplit("/", 1)[0])

import redis
from common import arguments, private_redis

LIBRARY = r"""#!lua name=stem_one_key_prototype
-- ARGV[1] is a string of feature flags: "e" events, "d" the "ended" event,
-- "x" XDEL, "c" state counts, "i" runs index and queue names set.
local function has(flags, flag)
  return string.find(flags, flag, 1, true) ~= nil
end

local function now_parts()
  local clock = redis.call("TIME")
  return clock[1] .. "." .. string.sub("00000" .. clock[2], -6),
    clock[1] .. string.sub("00000" .. clock[2], -6) .. "-*"
end

-- KEYS: run hash, queue stream, event stream, runs index, queue names set.
-- ARGV: flags, run id, epoch, spec, task, queue, retention ms, event cap.
local function submit(keys, args)
  local flags, run_id = args[1], args[2]
  local now_text, event_id = now_parts()
  if redis.call("EXISTS", keys[1]) == 1 then
    return 0
  end
  local counts = {}
  if has(flags, "c") then
    counts = {"-/queued", 1}
  end
  redis.call("HSET", keys[1], "status", "running", "epoch", args[3],
    "created_at", now_text, "open_main", 1, "spec", args[4], "spec_version", 1,
    "nodes", "0", "sinks", "0", "reaching", "0", "sinks_not_succeeded", 0,
    "retention_ms", args[7], "events_max_len", args[8], "single", "0-",
    "0/task", args[5], "0/queue", args[6], "0/end_role", "sink",
    "0", "queued", "0/queued_at", now_text, "0/attempt", 1, unpack(counts))
  if has(flags, "i") then
    redis.call("ZADD", keys[4], now_text, run_id)
    redis.call("SADD", keys[5], args[6])
  end
  if has(flags, "e") then
    redis.call("XADD", keys[3], "MAXLEN", "~", args[8], event_id,
      "run", run_id, "event", "submitted")
  end
  redis.call("XADD", keys[2], "*", "v", "1", "run", run_id, "node", "0",
    "attempt", "1", "epoch", args[3], "task", args[5])
  return 1
end

-- KEYS: run hash, event stream. ARGV: flags, run id, epoch, attempt.
local function claim(keys, args)
  local flags, run_id = args[1], args[2]
  local now_text, event_id = now_parts()
  local run = redis.call("HMGET", keys[1], "epoch", "spec_version",
    "retention_ms", "events_max_len", "home", "single", "0/attempt", "0",
    "0/cause")
  if not run[1] or run[1] ~= args[3] or run[7] ~= args[4] or run[8] ~= "queued" then
    return {0}
  end
  local counts = {}
  if has(flags, "c") then
    counts = {"-/queued", 0, "-/running", 1}
  end
  redis.call("HSET", keys[1], "0", "running", "0/started_at", now_text,
    "0/lease", 1, unpack(counts))
  if has(flags, "e") then
    redis.call("XADD", keys[2], "MAXLEN", "~", run[4], event_id,
      "run", run_id, "event", "started", "node", "0", "attempt", args[4])
  end
  return {1, run[9] or "", run[2], 1, "", ""}
end

-- KEYS: run hash, queue stream, event stream.
-- ARGV: flags, run id, epoch, attempt, entry id, group, lease, value.
local function complete(keys, args)
  local flags, run_id = args[1], args[2]
  local now_text, event_id = now_parts()
  local run = redis.call("HMGET", keys[1], "epoch", "retention_ms",
    "events_max_len", "status", "open_main", "home", "single", "0/attempt",
    "0", "0/lease")
  if not run[1] or run[1] ~= args[3] or run[8] ~= args[4] or run[9] ~= "running"
      or run[10] ~= args[7] then
    return {0}
  end
  redis.call("XACK", keys[2], args[6], args[5])
  if has(flags, "x") then
    redis.call("XDEL", keys[2], args[5])
  end
  local counts = {}
  if has(flags, "c") then
    counts = {"-/running", 0, "-/succeeded", 1}
  end
  redis.call("HSET", keys[1], "0/value", args[8], "0", "succeeded",
    "0/ended_at", now_text, "status", "succeeded", "ended_at", now_text,
    "open_main", 0, unpack(counts))
  if has(flags, "e") then
    redis.call("XADD", keys[3], "MAXLEN", "~", run[3], event_id,
      "run", run_id, "event", "succeeded", "node", "0", "attempt", args[4])
    if has(flags, "d") then
      redis.call("XADD", keys[3], "MAXLEN", "~", run[3], event_id,
        "run", run_id, "event", "ended", "status", "succeeded")
    end
  end
  redis.call("PEXPIRE", keys[1], run[2])
  return {1}
end

-- KEYS: run hash. ARGV: the node's value field, then run fields.
local function read(keys, args)
  return redis.call("HMGET", keys[1], unpack(args))
end

redis.register_function("one_key_submit", submit)
redis.register_function("one_key_claim", claim)
redis.register_function("one_key_complete", complete)
redis.register_function{function_name = "one_key_read", callback = read,
  flags = {"no-writes"}}
"""

#: Variant name to its feature flags; "full" has every feature.
VARIANTS = {
    "full": "edxci",
    "no ended event": "exci",
    "no XDEL": "edci",
    "no state counts": "edxi",
    "no runs index, queue set": "edxc",
    "no events": "xci",
    "none of these": "",
}
SCRIPTS = ("submit", "claim", "complete", "read")
GROUP = "workers"
SPEC = '{"v":1,"nodes":[{"id":"0","task":"noop"}]}'


def cpu_s(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def timed(
    client: redis.Redis, calls: list[tuple[Any, ...]], batch: int
) -> tuple[float, list[Any]]:
    """Send the calls pipelined in batches; return Redis CPU us per call and replies."""
    replies: list[Any] = []
    before = cpu_s(client)
    for first in range(0, len(calls), batch):
        pipe = client.pipeline(transaction=False)
        for call in calls[first : first + batch]:
            pipe.execute_command(*call)
        replies += pipe.execute()
    return (cpu_s(client) - before) / len(calls) * 1e6, replies


def one_repeat(
    client: redis.Redis, flags: str, tasks: int, batch: int
) -> dict[str, float]:
    """Submit, claim, complete and read ``tasks`` runs; return Redis CPU us per call."""
    base = f"proto-{uuid.uuid4().hex[:8]}:{{p0}}:"
    queue, events = base + "q:default", base + "events"
    client.xgroup_create(queue, GROUP, id="0", mkstream=True)
    runs = [f"r{index}" for index in range(tasks)]
    figures: dict[str, float] = {}

    submits = [
        (
            "FCALL",
            "one_key_submit",
            5,
            f"{base}run:{run}",
            queue,
            events,
            base + "runs",
            base + "queues",
            flags,
            run,
            "1",
            SPEC,
            "noop",
            "default",
            "604800000",
            "10000",
        )
        for run in runs
    ]
    figures["submit"], _ = timed(client, submits, batch)

    # The worker's reads, which are not timed, give each message's entry id.
    entries: dict[str, str] = {}
    while len(entries) < tasks:
        reply = client.xreadgroup(GROUP, "c1", {queue: ">"}, count=1000)
        for _, found in reply:
            for entry_id, fields in found:
                entries[fields["run"]] = entry_id

    claims = [
        ("FCALL", "one_key_claim", 2, f"{base}run:{run}", events, flags, run, "1", "1")
        for run in runs
    ]
    figures["claim"], replies = timed(client, claims, batch)
    assert all(reply[0] == 1 for reply in replies), replies[:3]

    completes = [
        (
            "FCALL",
            "one_key_complete",
            3,
            f"{base}run:{run}",
            queue,
            events,
            flags,
            run,
            "1",
            "1",
            entries[run],
            GROUP,
            "1",
            "null",
        )
        for run in runs
    ]
    figures["complete"], replies = timed(client, completes, batch)
    assert all(reply[0] == 1 for reply in replies), replies[:3]

    reads = [
        (
            "FCALL",
            "one_key_read",
            1,
            f"{base}run:{run}",
            "0/value",
            "status",
            "epoch",
            "ended_at",
            "error_node",
            "spec_version",
        )
        for run in runs
    ]
    figures["read"], replies = timed(client, reads, batch)
    assert all(reply[0] == "null" for reply in replies), replies[:3]

    figures["total"] = sum(figures[name] for name in SCRIPTS)
    return figures


def main() -> None:
    parser = arguments(__doc__ or "")
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    options = parser.parse_args()
    with private_redis() as url:
        client = redis.Redis.from_url(url, decode_responses=True)
        client.function_load(LIBRARY, replace=True)
        results: dict[str, list[dict[str, float]]] = {name: [] for name in VARIANTS}
        # Variants alternate within each repeat, so drift in the machine's
        # load spreads over all of them alike.
        for _ in range(options.repeats):
            for name, flags in VARIANTS.items():
                results[name].append(
                    one_repeat(client, flags, options.tasks, options.batch)
                )
                client.flushdb()
        print(
            f"Redis CPU per call, us, median (min to max) of {options.repeats} "
            f"repeats of {options.tasks:,} runs, pipelines of {options.batch}:"
        )
        header = ["variant", *SCRIPTS, "total", "total minus full"]
        print(" | ".join(header))
        full = statistics.median(run["total"] for run in results["full"])
        for name, runs in results.items():
            cells = [name]
            for script in (*SCRIPTS, "total"):
                values = [run[script] for run in runs]
                cells.append(
                    f"{statistics.median(values):.1f} "
                    f"({min(values):.1f} to {max(values):.1f})"
                )
            total = statistics.median(run["total"] for run in runs)
            cells.append(f"{total - full:+.1f}")
            print(" | ".join(cells))
        client.close()


if __name__ == "__main__":
    main()
