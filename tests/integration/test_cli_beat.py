"""``stem beat`` as a separate process, with a worker, against a private Redis."""

from __future__ import annotations

import importlib.util
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import ModuleType

import pytest
import redis
from click.testing import CliRunner

from stem.cli import main

SCHEDULES = """
from stem import App

app = App()


@app.periodic(1.0)
@app.task(name="beatflows.tick")
def tick():
    return "tock"
"""

#: A database of the private server that no other test uses.
DATABASE = 8

#: Seconds the test waits for the first fire; generous for a loaded machine.
FIRST_FIRE_TIMEOUT_S = 60.0

#: The run id in a beat's log line for one fire.
FIRED = re.compile(r"Fired beatflows\.tick .*: run (\S+)\.$", re.MULTILINE)


@pytest.fixture
def schedules(tmp_path: Path, redis_url: str) -> ModuleType:
    path = tmp_path / "beatflows.py"
    path.write_text(textwrap.dedent(SCHEDULES))
    spec = importlib.util.spec_from_file_location("beatflows", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.app.url = redis_url.rsplit("/", 1)[0] + f"/{DATABASE}"
    with redis.Redis.from_url(module.app.url) as client:
        client.flushdb()
    return module


def start(schedules: ModuleType, command: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "stem",
            command,
            "-A",
            schedules.__file__,
            "--url",
            schedules.app.url,
            *args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def stop(process: subprocess.Popen[str]) -> tuple[int, str]:
    process.send_signal(signal.SIGTERM)
    try:
        _, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    return process.returncode, stderr


def fired_run_ids(beat_log: str) -> list[str]:
    """Return the run ids in the beat's "Fired ..." lines."""
    return FIRED.findall(beat_log)


def test_beat_and_worker_processes_run_entry(schedules: ModuleType) -> None:
    beat = start(schedules, "beat", "-l", "info")
    worker = start(schedules, "worker", "--pool", "threads", "-c", "1")
    started = time.monotonic()
    try:
        # Wait for the first claimed fire time instead of a fixed sleep, so a
        # slow start on a loaded machine cannot fail the test.
        deadline = started + FIRST_FIRE_TIMEOUT_S
        while schedules.app.driver.last_fire("beatflows.tick") is None:
            assert time.monotonic() < deadline, "beat fired nothing"
            time.sleep(0.1)
        time.sleep(1.5)
    finally:
        beat_code, beat_log = stop(beat)
        worker_code, worker_log = stop(worker)
    ran_for_s = time.monotonic() - started

    assert beat_code == 0, beat_log
    assert worker_code == 0, worker_log
    assert "Beat stopped:" in beat_log
    run_ids = fired_run_ids(beat_log)
    # Generous bounds: at least one fire, and at most one a second.
    assert 1 <= len(run_ids) <= ran_for_s + 2, beat_log
    assert len(set(run_ids)) == len(run_ids)
    for run_id in run_ids:
        assert run_id.startswith("beat:beatflows.tick:")
        snapshot = schedules.app.AsyncResult(run_id).snapshot()
        assert snapshot.spec.nodes[0].task == "beatflows.tick"
    # The worker ran at least the first; later ones may still be queued.
    assert schedules.app.AsyncResult(run_ids[0]).get(timeout=30) == "tock"


def test_beat_rejects_memory_url(schedules: ModuleType) -> None:
    result = CliRunner().invoke(
        main, ["beat", "-A", schedules.__file__, "--url", "memory://"]
    )

    assert result.exit_code == 2
    assert "memory:// keeps runs inside the process that made them" in result.output


def test_beat_rejects_app_without_entries(tmp_path: Path, redis_url: str) -> None:
    path = tmp_path / "noentries.py"
    path.write_text("from stem import App\n\napp = App()\n")

    result = CliRunner().invoke(main, ["beat", "-A", str(path), "--url", redis_url])

    assert result.exit_code == 2
    assert "has no schedule entries" in result.output
