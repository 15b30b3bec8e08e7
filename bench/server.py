"""A private redis-server for one benchmark run, and the counters read from it."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

import redis

from stem.local_redis import LocalRedis, LocalRedisError

#: Redis commands that run a script; the commands they call are counted apart.
SCRIPT_COMMANDS = ("evalsha", "eval", "evalsha_ro", "eval_ro", "fcall", "fcall_ro")


class RedisServer:
    """A redis-server on a free loopback port, with persistence off.

    The slow log keeps every command slower than ``slowlog_us`` so that the
    slowest script call of a scenario can be read back exactly.
    """

    def __init__(self, slowlog_us: int = 100) -> None:
        options = [
            "--slowlog-log-slower-than", str(slowlog_us),
            "--slowlog-max-len", "100000",
            "--latency-tracking", "yes",
            "--latency-tracking-info-percentiles", "50 99 99.9",
        ]  # fmt: skip
        self._server = LocalRedis(options=options)
        self.restarts = 0
        self.port = self._server.port
        self.url = self._server.url
        try:
            self._server.start()
        except LocalRedisError as err:
            raise SystemExit(str(err)) from None
        self._connect()

    def _connect(self) -> None:
        # redis-py's default 5 s socket timeout is shorter than the longest
        # scripts measured here; a wedged server still ends the run.
        self.client = redis.Redis(
            port=self.port, decode_responses=True, socket_timeout=120
        )
        self.version = self.client.info("server")["redis_version"]

    def wait_while_busy(self, timeout_s: float = 180.0) -> float:
        """Wait until no script is running; return the seconds waited.

        A script that runs past ``lua-time-limit`` makes every other command
        fail with BUSY until it ends, and a request of gigabytes keeps the
        server from replying while it reads it. Past ``timeout_s`` the
        server is restarted on the same port, because a script that has
        written cannot be killed.
        """
        started = time.monotonic()
        probe = redis.Redis(port=self.port, socket_timeout=5)
        while True:
            try:
                probe.ping()
                probe.close()
                return time.monotonic() - started
            except redis.ResponseError as err:
                if "BUSY" not in str(err):
                    raise
            except (redis.TimeoutError, redis.ConnectionError):
                # Still reading a huge request, or running a script that
                # has not reached lua-time-limit yet.
                pass
            if time.monotonic() - started > timeout_s:
                probe.close()
                self.restart()
                return time.monotonic() - started
            time.sleep(0.5)

    def restart(self) -> None:
        """Kill the server and start a new one on the same port."""
        self.client.close()
        self._server.restart()
        self.restarts += 1
        self._connect()

    def reset(self) -> None:
        """Empty the server and zero its statistics between two scenarios."""
        self.wait_while_busy()
        self.client.flushall()
        self.client.script_flush()
        self.client.slowlog_reset()
        self.client.config_resetstat()
        # Wait until memory freed by FLUSHALL is returned, so the next
        # baseline is not taken mid-release.
        last = -1
        for _ in range(50):
            used = int(self.client.info("memory")["used_memory"])
            if used == last:
                break
            last = used
            time.sleep(0.02)

    def pid(self) -> int:
        return self._server.pid

    def stop(self) -> None:
        """Stop the server by its pid and remove its folder."""
        self.client.close()
        self._server.stop()


@dataclass
class Counters:
    """The server's counters at one moment."""

    cpu_s: float
    reads: int
    net_input: int
    commands: dict[str, int]
    usec: dict[str, int]
    used_memory: int
    taken_at: float = field(default_factory=time.monotonic)

    @classmethod
    def read(cls, client: redis.Redis) -> Counters:
        info: dict[str, Any] = client.info("all")
        commands = {
            key.removeprefix("cmdstat_"): int(value["calls"])
            for key, value in info.items()
            if key.startswith("cmdstat_")
        }
        usec = {
            key.removeprefix("cmdstat_"): int(value["usec"])
            for key, value in info.items()
            if key.startswith("cmdstat_")
        }
        return cls(
            cpu_s=float(info["used_cpu_user"]) + float(info["used_cpu_sys"]),
            reads=int(info["total_reads_processed"]),
            net_input=int(info["total_net_input_bytes"]),
            commands=commands,
            usec=usec,
            used_memory=int(info["used_memory"]),
        )


def counter_delta(
    before: Counters, after: Counters, own_reads: int = 0
) -> dict[str, Any]:
    """Return what the server did between two readings.

    INFO is left out of the command counts, because the harness reads it
    and the peers call it only when they connect. ``own_reads`` is the
    number of requests that the harness itself sent in between (memory
    samples). They and the second reading are taken out of the read count.
    """
    commands = {
        name: after.commands.get(name, 0) - before.commands.get(name, 0)
        for name in after.commands
        if name != "info"
    }
    commands = {name: count for name, count in commands.items() if count > 0}
    # A script's time includes the commands it calls, which are also listed.
    usec = {
        name: after.usec.get(name, 0) - before.usec.get(name, 0) for name in commands
    }
    return {
        "usec": usec,
        "cpu_s": after.cpu_s - before.cpu_s,
        "reads": after.reads - before.reads - 1 - own_reads,
        "net_input": after.net_input - before.net_input,
        "commands": commands,
        "memory_delta": after.used_memory - before.used_memory,
        "elapsed_s": after.taken_at - before.taken_at,
    }


def script_latency(client: redis.Redis) -> dict[str, Any]:
    """Return per-command latency percentiles of script calls and the slowest.

    Percentiles come from ``INFO latencystats`` (reset with CONFIG
    RESETSTAT); the slowest call comes from the slow log, which keeps every
    command over its threshold.
    """
    stats = client.info("latencystats")
    percentiles: dict[str, dict[str, float]] = {}
    for key, value in stats.items():
        name = key.removeprefix("latency_percentiles_usec_")
        if name in SCRIPT_COMMANDS and isinstance(value, dict):
            percentiles[name] = {k: float(v) for k, v in value.items()}
    slowest_us = 0
    slowest_command = ""
    entries = client.slowlog_get(100000)
    for entry in entries:
        command = entry["command"]
        if isinstance(command, bytes):
            command = command.decode(errors="replace")
        name = str(command).split(" ", 1)[0].lower()
        if name in SCRIPT_COMMANDS and int(entry["duration"]) > slowest_us:
            slowest_us = int(entry["duration"])
            slowest_command = str(command)[:120]
    threshold = int(
        client.config_get("slowlog-log-slower-than")["slowlog-log-slower-than"]
    )
    return {
        "percentiles_us": percentiles,
        "slowest_us": slowest_us,
        "slowest_command": slowest_command,
        "slowlog_threshold_us": threshold,
        "slowlog_entries": len(entries),
    }


def process_tree_cpu_s(root: int) -> float:
    """Return user plus system CPU seconds of a process and its live descendants."""
    ticks = os.sysconf("SC_CLK_TCK")
    parents: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                text = handle.read()
        except OSError:
            continue
        fields = text.rsplit(")", 1)[1].split()
        parents[int(entry)] = int(fields[1])
        cpu[int(entry)] = (int(fields[11]) + int(fields[12])) / ticks
    total = 0.0
    for pid in cpu:
        walk = pid
        while walk > 1:
            if walk == root:
                total += cpu[pid]
                break
            walk = parents.get(walk, 0)
    return total
