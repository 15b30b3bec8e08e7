"""Shared pieces of the profiling scripts: a private Redis server and timers.

Each script starts its own ``redis-server`` on a free loopback port, with no
persistence, and stops it by pid when it ends. Pass ``--profile FILE`` to
write a cProfile dump of the timed part (read it with ``python -m pstats``).
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import time
from collections.abc import Iterator

import redis
import redis.connection

from stem.local_redis import LocalRedis, LocalRedisError


@contextlib.contextmanager
def private_redis() -> Iterator[str]:
    """Start a redis-server on a free loopback port and yield its URL."""
    server = LocalRedis()
    try:
        server.start()
    except LocalRedisError as err:
        server.stop()
        raise SystemExit(str(err)) from None
    try:
        yield server.url
    finally:
        server.stop()


class RoundTrips:
    """Count the requests this process sends to Redis: a pipeline counts once.

    Creating one patches redis-py's connection class for the whole process.
    """

    def __init__(self) -> None:
        self.count = 0
        connection = redis.connection.AbstractConnection
        original = connection.send_packed_command

        def counted(conn: object, command: object, check_health: bool = True) -> None:
            self.count += 1
            original(conn, command, check_health)  # type: ignore[arg-type]

        connection.send_packed_command = counted  # type: ignore[method-assign,assignment]


def command_stats(url: str) -> dict[str, int]:
    """Return the number of calls of each Redis command so far."""
    return {name: calls for name, (calls, _) in command_usage(url).items()}


def command_usage(url: str) -> dict[str, tuple[int, int]]:
    """Return the calls and microseconds of each Redis command so far.

    Calls made inside scripts count too. A script call's microseconds include
    those of the commands it calls.
    """
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        info = client.info("commandstats")
    finally:
        client.close()
    return {
        name[len("cmdstat_") :]: (int(stats["calls"]), int(stats["usec"]))
        for name, stats in info.items()
    }


def server_cpu_s(url: str) -> float:
    """Return the CPU seconds the Redis server has used, user and system."""
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        info = client.info("cpu")
    finally:
        client.close()
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def arguments(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--profile", help="write a cProfile dump of the timed part")
    return parser


class Phase:
    """Time named phases and print them, optionally under one profiler."""

    def __init__(self, profile_path: str | None) -> None:
        self.profiler = cProfile.Profile() if profile_path else None
        self.profile_path = profile_path
        self.times: dict[str, float] = {}
        self.cpu_times: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        if self.profiler is not None:
            self.profiler.enable()
        start = time.perf_counter()
        start_cpu = time.process_time()
        try:
            yield
        finally:
            self.times[name] = time.perf_counter() - start
            self.cpu_times[name] = time.process_time() - start_cpu
            if self.profiler is not None:
                self.profiler.disable()
            # CPU time of this process, all threads: steadier than wall time
            # on a machine shared with other work.
            wall, cpu = self.times[name], self.cpu_times[name]
            print(f"{name:>28}: {wall:8.3f} s, {cpu:8.3f} s CPU", flush=True)

    def save(self) -> None:
        if self.profiler is not None and self.profile_path:
            self.profiler.dump_stats(self.profile_path)
