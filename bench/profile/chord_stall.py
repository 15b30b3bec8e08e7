"""Find the longest script call while a chord in a chain runs, with and without shards.

The chord follows one task, so its header becomes ready in one completion:
without shards that completion's script queues every member. The server's
SLOWLOG records every command of 1 ms or more. The script runs the chord
once with ``--shard-size`` (default 5,000) and once with sharding off, and
prints for each the longest EVALSHA, how many script calls took 1 ms and
10 ms or more, and the wall time.

Run from the repository root:
``python bench/profile/chord_stall.py [--members N] [--shard-size S]``.
"""

from __future__ import annotations

import sys

sys.path.insert(0, __file__.rsplit("/", 1)[0])

import time
import uuid

import redis
from common import arguments, private_redis

from stem import App, chain, chord

#: Microseconds from which the slow log records a command.
_SLOW_US = 1000
#: Slow log entries kept. Calls of 1 ms or more are far fewer than this.
_SLOWLOG_MAX_LEN = 100_000


def run_once(url: str, members: int, shard_size: int) -> None:
    """Run the chord once and print its longest script calls."""
    client = redis.Redis.from_url(url, decode_responses=True)
    client.config_set("slowlog-log-slower-than", _SLOW_US)
    client.config_set("slowlog-max-len", _SLOWLOG_MAX_LEN)
    client.slowlog_reset()
    app = App(
        url,
        prefix=f"stall-{uuid.uuid4().hex[:8]}:",
        partitions=3,
        shard_size=shard_size,
    )
    add = app.task(name="add")(lambda x, y=0: x + y)
    count = app.task(name="count")(len)
    canvas = chain(add.s(1, 2), chord([add.s(i) for i in range(members)], count.s()))
    start = time.perf_counter()
    with app.worker(concurrency=8):
        assert canvas.apply_async().get(600) == members
    wall_s = time.perf_counter() - start
    entries = client.slowlog_get(_SLOWLOG_MAX_LEN)
    durations = sorted(
        (
            int(entry["duration"])
            for entry in entries
            if _command_name(entry["command"]) == "EVALSHA"
        ),
        reverse=True,
    )
    app.close()
    client.config_set("slowlog-log-slower-than", 10_000)
    client.close()
    longest_ms = durations[0] / 1000 if durations else 0.0
    over_10_ms = sum(1 for duration in durations if duration >= 10_000)
    print(
        f"shard_size {shard_size}: {members} members in {wall_s:.1f} s, "
        f"longest script call {longest_ms:.1f} ms, {len(durations)} calls of "
        f"1 ms or more, {over_10_ms} of 10 ms or more"
    )


def _command_name(command: bytes | str) -> str:
    """Return the first word of a slow log entry's command, upper case.

    redis-py returns the command as bytes even on a client that decodes
    replies (redis-py 8.2).
    """
    text = command.decode() if isinstance(command, bytes) else command
    return text.split(" ", 1)[0].upper()


def main() -> None:
    parser = arguments(__doc__ or "")
    parser.add_argument("--members", type=int, default=20_000)
    parser.add_argument("--shard-size", type=int, default=5_000)
    options = parser.parse_args()
    with private_redis() as url:
        run_once(url, options.members, options.shard_size)
        run_once(url, options.members, 0)


if __name__ == "__main__":
    main()
