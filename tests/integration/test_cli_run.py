"""``stem run`` as a user runs it: a real subprocess on a file of tasks."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

FLOWS = """
import threading
import time
from stem import App, group, signature

app = App()
release = threading.Event()


@app.task
def add(x, y):
    return x + y


@app.task
def boom(x):
    raise ValueError("boom on purpose")


@app.task
def slow_report(task_id):
    time.sleep(0.5)
    return task_id


@app.task
def hang(x):
    release.wait(60)
    return x


def pipeline():
    return add.s(1, 2) | add.s(3)


CONSTANT = add.s(5, 5)


def routed():
    return add.s(2, 3).set(queue="cpu") | add.s(1)


def fails():
    return add.s(1, 1) | boom.s()


def fails_with_errback():
    return boom.s(1).on_error(slow_report.s())


def needs_argument(n):
    return add.s(n, n)


def unserialisable():
    return add.s({1, 2}, 1)


def hangs():
    return group(hang.s(1), hang.s(2))


def unknown_task():
    return add.s(1, 1) | signature("flows.not_registered")
"""

OTHER_APP = """
from stem import App

other = App()
"""


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "flows.py").write_text(textwrap.dedent(FLOWS))
    (tmp_path / "second.py").write_text(FLOWS + OTHER_APP)
    without_default = textwrap.dedent(FLOWS).replace("def pipeline(", "def numbers(")
    (tmp_path / "nofactory.py").write_text(without_default)
    return tmp_path


def stem_run(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stem", "run", *args, "--pool", "threads"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=folder,
        check=False,
    )


def test_default_factory_prints_value(folder: Path) -> None:
    completed = stem_run(folder, "flows.py")

    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "6"


def test_unknown_task_fails_run_at_once(folder: Path) -> None:
    # The timeout is below the worker's default grace period of 60 s, so
    # the run must fail without waiting for another worker.
    completed = stem_run(folder, "flows.py:unknown_task", "--timeout", "30")

    assert completed.returncode == 1, completed.stderr
    assert "'flows.not_registered' is not registered" in completed.stderr


def test_canvas_constant_runs(folder: Path) -> None:
    completed = stem_run(folder, "flows.py:CONSTANT")

    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "10"


def test_routed_queue_is_read(folder: Path) -> None:
    completed = stem_run(folder, "flows.py:routed", "--timeout", "60")

    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "6"


def test_failed_run_shows_traceback(folder: Path) -> None:
    completed = stem_run(folder, "flows.py:fails")

    assert completed.returncode == 1
    assert "ValueError: boom on purpose" in completed.stderr
    assert 'raise ValueError("boom on purpose")' in completed.stderr


def test_failed_run_traceback_once(folder: Path) -> None:
    # The in-process worker logs the traceback of each failed task, so the
    # summary must not print the failed node's traceback a second time.
    completed = stem_run(folder, "flows.py:fails")

    assert completed.returncode == 1
    assert completed.stderr.count('raise ValueError("boom on purpose")') == 1
    assert completed.stderr.count("Traceback (most recent call last)") == 1


def test_failed_run_traceback_unwrapped(folder: Path) -> None:
    # stderr is a pipe here, where rich assumes 80 columns. The traceback
    # must keep each frame's path on one line.
    completed = stem_run(folder, "flows.py:fails")

    assert completed.returncode == 1
    assert f'File "{folder / "flows.py"}", line' in completed.stderr


def test_summary_shows_finished_errback(folder: Path) -> None:
    # The errback starts once the run has failed, and the in-process worker
    # finishes it before it stops, so the summary must show it ended.
    completed = stem_run(folder, "flows.py:fails_with_errback")
    rows = [line for line in completed.stderr.splitlines() if "slow_report" in line]

    assert completed.returncode == 1
    assert len(rows) == 1
    assert "1 succeeded" in rows[0]


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("flows.py:needs_argument", "could not be called without arguments"),
        ("flows.py:unserialisable", "args[0]: a set is not JSON-serialisable"),
        ("flows.py:", "which is not a Python name"),
        ("flows.py:pipelin", "Did you mean pipeline?"),
        ("second.py", "defines several apps"),
        ("nofactory.py", "as nofactory.py:FACTORY. Functions it defines: "),
    ],
)
def test_usage_error_exits_2(folder: Path, target: str, message: str) -> None:
    completed = stem_run(folder, target)

    assert completed.returncode == 2
    assert message in completed.stderr
    assert "Traceback" not in completed.stderr


def test_app_by_module_and_attribute(folder: Path) -> None:
    completed = stem_run(folder, "second.py", "-A", "second:app")

    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "6"


def test_no_worker_on_memory_rejected(folder: Path) -> None:
    completed = stem_run(folder, "flows.py", "--no-worker")

    assert completed.returncode == 2
    assert "--no-worker would wait forever" in completed.stderr


def test_timeout_abandons_running_tasks(folder: Path) -> None:
    completed = stem_run(folder, "flows.py:hangs", "--timeout", "0.5")

    assert completed.returncode == 3
    assert "still running; stopped waiting" in completed.stderr


def test_interrupt_exits_130(folder: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "stem", "run", "flows.py:hangs", "--pool", "threads"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=folder,
    )
    try:
        _wait_for_submit(process)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()

    assert process.returncode == 130, stderr
    assert "Interrupted; stopping the worker." in stderr


def _wait_for_submit(process: subprocess.Popen[str]) -> None:
    """Block until the command printed that it submitted the run."""
    assert process.stderr is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if "submitted to" in line:
            return
    raise AssertionError("stem run never reported submitting the run")
