"""``stem worker`` as a separate process against a private Redis server."""

from __future__ import annotations

import importlib.util
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import ModuleType

import pytest

FLOWS = """
import time

from stem import App, chord

app = App()


@app.task
def add(x, y):
    return x + y


@app.task
def slow_add(x, y):
    time.sleep(1.0)
    return x + y


@app.task
def total(values):
    return sum(values)


def pipeline():
    return chord([add.s(i, i) for i in range(10)], total.s())
"""

#: A database of the private server that no other test uses.
DATABASE = 9


@pytest.fixture
def flows(tmp_path: Path, redis_url: str) -> ModuleType:
    path = tmp_path / "cliflows.py"
    path.write_text(textwrap.dedent(FLOWS))
    spec = importlib.util.spec_from_file_location("cliflows", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.app.url = _database_url(redis_url)
    return module


def _database_url(redis_url: str) -> str:
    return redis_url.rsplit("/", 1)[0] + f"/{DATABASE}"


def start_worker(flows: ModuleType, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "stem",
            "-l",
            "info",
            "worker",
            "-A",
            flows.__file__,
            "--url",
            flows.app.url,
            "--pool",
            "threads",
            "-c",
            "2",
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


def test_worker_process_runs_chord(flows: ModuleType) -> None:
    process = start_worker(flows)
    try:
        value = flows.pipeline().apply_async().get(timeout=30)
    finally:
        code, stderr = stop(process)

    assert value == 90
    assert code == 0, stderr
    assert "stopped: 11 tasks processed, 0 failed, 0 abandoned." in stderr


def test_sigterm_finishes_task_in_progress(flows: ModuleType) -> None:
    process = start_worker(flows)
    try:
        result = flows.slow_add.delay(2, 3)
        _wait_until_running(result)
        code, stderr = stop(process)
    finally:
        if process.poll() is None:
            process.kill()

    assert code == 0, stderr
    assert "Warm stop" in stderr
    assert result.get(timeout=1) == 5


def test_worker_rejects_memory_url(tmp_path: Path) -> None:
    path = tmp_path / "memflows.py"
    path.write_text("from stem import App\n\napp = App()\n")

    completed = subprocess.run(
        [sys.executable, "-m", "stem", "worker", "-A", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert completed.returncode == 2
    assert "a separate worker would never see them" in completed.stderr


def _wait_until_running(result: object) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if result.node("0").state == "running":  # type: ignore[attr-defined]
            return
        time.sleep(0.02)
    raise AssertionError("the task never started running")


@pytest.mark.slow
def test_wordcount_through_separate_worker(redis_url: str, tmp_path: Path) -> None:
    examples = Path(__file__).resolve().parents[2] / "examples"
    url = redis_url.rsplit("/", 1)[0] + "/10"
    sys.path.insert(0, str(examples))
    try:
        import wordcount

        expected = wordcount.count_directly()
    finally:
        sys.path.remove(str(examples))
    script = str(examples / "wordcount.py")
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "stem",
            "-l",
            "info",
            "worker",
            "-A",
            script,
            "--url",
            url,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    try:
        completed = subprocess.run(
            [
                sys.executable,
                "-m",
                "stem",
                "run",
                script,
                "--url",
                url,
                "--timeout",
                "120",
            ],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=tmp_path,
            check=False,
        )
    finally:
        code, stderr = stop(worker)

    assert completed.returncode == 0, completed.stderr + stderr
    assert completed.stdout.splitlines() == [f"{w} {c}" for w, c in expected]
    assert code == 0, stderr
