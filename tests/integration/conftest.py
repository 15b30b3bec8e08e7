"""Helpers of the CLI integration tests: a flows module, and running stem."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path
from types import ModuleType
from typing import Any

import redis

from stem.discovery import import_target

#: Seconds a test waits for a run, a worker or a command.
TIMEOUT_S = 60.0

FLOWS = """
import os
import time

from stem import App, chain, chord, signature

app = App({url!r}, visibility_timeout_s=1.0)


@app.task(name="add")
def add(x, y):
    return x + y


@app.task(name="slow")
def slow(x, seconds):
    time.sleep(seconds)
    return x


@app.task(name="total")
def total(values):
    return sum(values)


if os.environ.get("WITH_EXTRA"):

    @app.task(name="extra")
    def extra(values):
        return len(values)


def pipeline(n=10):
    return chord([add.s(i, i) for i in range(n)], total.s())


def slow_chord(n=4, seconds=2.0):
    return chord([slow.s(i, seconds) for i in range(n)], total.s())


def with_extra():
    return chain(chord([add.s(i, i) for i in range(3)], signature("extra")), add.s(100))
"""


def write_flows(folder: Path, url: str) -> Path:
    """Write a flows module with a unique name, bound to ``url``; return its path."""
    path = folder / f"opsflows_{uuid.uuid4().hex[:8]}.py"
    path.write_text(textwrap.dedent(FLOWS.format(url=url)), encoding="utf-8")
    return path


def load_flows(path: Path) -> ModuleType:
    """Import a flows module the way ``-A PATH`` does, so both share one module."""
    return import_target(str(path))


def database_url(redis_url: str, database: int) -> str:
    """Return the URL of another database of the same server, emptied."""
    url = redis_url.rsplit("/", 1)[0] + f"/{database}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    client.close()
    return url


def stem(
    *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m stem ARGS`` and return the finished process."""
    return subprocess.run(
        [sys.executable, "-m", "stem", *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
        env={**os.environ, **(env or {})},
    )


def start_stem(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """Start ``python -m stem ARGS`` in the background."""
    return subprocess.Popen(
        [sys.executable, "-m", "stem", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


def stop_process(process: subprocess.Popen[str]) -> tuple[int, str, str]:
    """Send SIGTERM, wait for the exit, and return the code, stdout and stderr."""
    process.terminate()
    try:
        stdout, stderr = process.communicate(timeout=TIMEOUT_S)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return process.returncode, stdout, stderr


def run_json(url: str, run_id: str) -> dict[str, Any]:
    """Return ``stem runs show --json`` of a run."""
    shown = stem("runs", "show", run_id, "--url", url, "--json")
    assert shown.returncode == 0, shown.stderr
    data: dict[str, Any] = json.loads(shown.stdout)
    return data


def wait_for_status(url: str, run_id: str, status: str) -> dict[str, Any]:
    """Poll ``stem runs show`` until the run has ``status``."""
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        data = run_json(url, run_id)
        if data["status"] == status:
            return data
        assert time.monotonic() < deadline, f"Run {run_id} stayed {data['status']}."
        time.sleep(0.2)
