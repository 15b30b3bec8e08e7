"""Probes that watch the server while a scenario runs."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import redis

HERE = Path(__file__).resolve().parent


class MemorySampler:
    """Read ``used_memory`` every ``interval_s`` and keep the highest value."""

    def __init__(self, port: int, interval_s: float = 0.05) -> None:
        self._client = redis.Redis(port=port, decode_responses=True)
        self._interval_s = interval_s
        self._stop = threading.Event()
        self.peak = 0
        self.requests = 0
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                used = int(self._client.info("memory")["used_memory"])
            except redis.RedisError:
                continue
            self.requests += 1
            self.peak = max(self.peak, used)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._client.close()


class Pinger:
    """A separate process that pings the server in a tight loop (pinger.py)."""

    def __init__(self, port: int) -> None:
        self._process = subprocess.Popen(
            [sys.executable, str(HERE / "pinger.py"), str(port)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self._process.stderr is not None
        self._process.stderr.readline()  # "ready"

    def stop(self) -> dict[str, Any]:
        out, _ = self._process.communicate(timeout=30)
        return dict(json.loads(out))


_LINE = re.compile(r'^\+[\d.]+ \[\d+ ([^\]]+)\] "([^"]*)"')


class Census:
    """Count every command by who sent it, with MONITOR.

    MONITOR names the source of each command: a client address, or ``lua``
    for a command that a script called. It slows the server, so the census
    runs in a scenario of its own and only its counts are used.
    """

    def __init__(self, port: int) -> None:
        self._sock = socket.create_connection(("127.0.0.1", port))
        self._sock.sendall(b"*1\r\n$7\r\nMONITOR\r\n")
        self._sock.settimeout(0.2)
        self._stop = threading.Event()
        self.by_source: Counter[str] = Counter()
        self.by_command: Counter[str] = Counter()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        buffer = b""
        while not self._stop.is_set():
            try:
                chunk = self._sock.recv(1 << 20)
            except TimeoutError:
                continue
            if not chunk:
                return
            buffer += chunk
            *lines, buffer = buffer.split(b"\r\n")
            for line in lines:
                self._count(line.decode(errors="replace"))

    def _count(self, line: str) -> None:
        match = _LINE.match(line)
        if match is None:
            return
        source, command = match.group(1), match.group(2).lower()
        if command in ("info", "monitor", "ping"):
            return
        kind = "script" if source == "lua" else "client"
        self.by_source[kind] += 1
        self.by_command[f"{kind}:{command}"] += 1

    def stop(self) -> dict[str, Any]:
        # Commands sent before the client ended can still be on their way;
        # a worker's idle polling after that is not part of the count.
        time.sleep(0.2)
        self._stop.set()
        self._thread.join()
        self._sock.close()
        return {
            "client_commands": self.by_source["client"],
            "script_commands": self.by_source["script"],
            "by_command": dict(self.by_command.most_common()),
        }
