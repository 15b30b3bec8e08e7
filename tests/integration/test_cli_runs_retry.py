"""``stem runs retry`` in process (CliRunner) and as a real process, on Redis.

A run fails because a flag file exists, the test removes the flag and
retries the run with the command, and the run then succeeds. Tasks count
their calls in files, so the test can tell that succeeded nodes never ran
again, also when a worker in another process ran them.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import redis
from click.testing import CliRunner

from stem.commands.common import EXIT_NOT_FOUND, EXIT_REJECTED, EXIT_UNAVAILABLE
from stem.commands.runs_retry import retry

FLOWS = """
import os
from pathlib import Path

from stem import App, chord

app = App()
STATE = Path(os.environ.get("STEM_RETRY_STATE", "."))


def count(name):
    with open(STATE / f"{name}.calls", "a") as calls:
        calls.write("1\\n")


@app.task
def add(x, y):
    count("add")
    return x + y


@app.task
def flaky(x):
    count("flaky")
    if (STATE / "fail.flag").exists():
        raise RuntimeError("fail.flag exists")
    return x * 10


@app.task
def total(values):
    count("total")
    return sum(values)


def pipeline():
    return chord([add.s(1, 1), flaky.s(5), add.s(2, 2)], total.s())
"""

#: A database of the private server that no other test uses.
DATABASE = 11
TIMEOUT_S = 30.0


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "state"
    folder.mkdir()
    (folder / "fail.flag").write_text("")
    monkeypatch.setenv("STEM_RETRY_STATE", str(folder))
    return folder


@pytest.fixture
def flows(tmp_path: Path, redis_url: str, state: Path) -> Iterator[ModuleType]:
    path = tmp_path / "retryflows.py"
    path.write_text(textwrap.dedent(FLOWS))
    spec = importlib.util.spec_from_file_location("retryflows", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.app.url = redis_url.rsplit("/", 1)[0] + f"/{DATABASE}"
    # Runs that earlier tests reopened and left queued must not reach this
    # test's worker, which would count their calls here.
    client = redis.Redis.from_url(module.app.url)
    client.flushdb()
    client.close()
    yield module
    module.app.close()


def calls(state: Path, task: str) -> int:
    path = state / f"{task}.calls"
    return len(path.read_text().splitlines()) if path.exists() else 0


def failed_run(flows: ModuleType) -> str:
    """Run the pipeline with an in-process worker until it fails; return its id."""
    with flows.app.worker(concurrency=2, pool="threads"):
        result = flows.pipeline().apply_async()
        error = result.get(TIMEOUT_S, propagate=False)
    assert isinstance(error, RuntimeError)
    run_id: str = result.id
    return run_id


# -- in process ----------------------------------------------------------------


def test_retry_reopens_failed_run(flows: ModuleType, state: Path) -> None:
    run_id = failed_run(flows)
    (state / "fail.flag").unlink()

    outcome = CliRunner().invoke(retry, [run_id, "--url", flows.app.url, "--json"])

    assert outcome.exit_code == 0, outcome.output
    report = json.loads(outcome.output)
    assert report["run_id"] == run_id
    assert report["event"] == "reopened"
    assert report["epoch"] == 2
    assert report["reopened_nodes"] == ["1", "3"]
    with flows.app.worker(concurrency=2, pool="threads"):
        assert flows.app.AsyncResult(run_id).get(TIMEOUT_S) == 56
    assert calls(state, "add") == 2
    assert calls(state, "flaky") == 2
    assert calls(state, "total") == 1


def test_retry_with_app_and_wait(flows: ModuleType, state: Path) -> None:
    run_id = failed_run(flows)
    (state / "fail.flag").unlink()
    args = [run_id, "-A", flows.__file__, "--url", flows.app.url, "--wait"]

    with flows.app.worker(concurrency=2, pool="threads"):
        outcome = CliRunner().invoke(retry, args)

    assert outcome.exit_code == 0, outcome.output
    assert f"Run {run_id} reopened as epoch 2" in outcome.output
    assert "2 of its 4 nodes run again" in outcome.output
    assert f"Run {run_id} epoch 2 succeeded." in outcome.output
    # As in stem run, the value is the last line on stdout.
    assert outcome.stdout.splitlines()[-1] == "56"
    assert calls(state, "flaky") == 2


def test_retry_json_wait_has_value(flows: ModuleType, state: Path) -> None:
    run_id = failed_run(flows)
    (state / "fail.flag").unlink()
    args = [run_id, "--url", flows.app.url, "--json", "--wait"]

    with flows.app.worker(concurrency=2, pool="threads"):
        outcome = CliRunner().invoke(retry, args)

    assert outcome.exit_code == 0, outcome.output
    _, ended = (json.loads(line) for line in outcome.stdout.splitlines())
    assert ended["event"] == "ended"
    assert ended["status"] == "succeeded"
    assert ended["value"] == 56


def test_retry_failing_again_exits_1(flows: ModuleType, state: Path) -> None:
    run_id = failed_run(flows)
    args = [run_id, "--url", flows.app.url, "--wait", "--timeout", str(TIMEOUT_S)]

    with flows.app.worker(concurrency=2, pool="threads"):
        outcome = CliRunner().invoke(retry, args)

    assert outcome.exit_code == 1, outcome.output
    assert f"Run {run_id} epoch 2 failed." in outcome.output
    assert "RuntimeError: fail.flag exists" in outcome.output
    assert calls(state, "flaky") == 2


def test_retry_times_out_exits_3(flows: ModuleType, state: Path) -> None:
    run_id = failed_run(flows)
    args = [run_id, "--url", flows.app.url, "--wait", "--timeout", "0"]

    outcome = CliRunner().invoke(retry, args)

    assert outcome.exit_code == 3, outcome.output
    assert "still running; stopped waiting" in outcome.output


def test_retry_json_lines_with_wait(flows: ModuleType, state: Path) -> None:
    run_id = failed_run(flows)
    args = [run_id, "--url", flows.app.url, "--json", "--wait", "--timeout", "0"]

    outcome = CliRunner().invoke(retry, args)

    assert outcome.exit_code == 3, outcome.output
    reopened, ended = (json.loads(line) for line in outcome.output.splitlines())
    assert reopened["event"] == "reopened"
    assert reopened["reopened_nodes"] == ["1", "3"]
    assert ended == {
        "run_id": run_id,
        "event": "timed_out",
        "epoch": 2,
        "status": "running",
        "value": None,
    }


def test_retry_rejects_succeeded_run(flows: ModuleType, state: Path) -> None:
    (state / "fail.flag").unlink()
    with flows.app.worker(concurrency=2, pool="threads"):
        result = flows.pipeline().apply_async()
        assert result.get(TIMEOUT_S) == 56

    outcome = CliRunner().invoke(retry, [result.id, "--url", flows.app.url])

    assert outcome.exit_code == EXIT_REJECTED, outcome.output
    assert f"Run {result.id} cannot be retried because it succeeded" in outcome.output
    assert "Traceback" not in outcome.output


def test_retry_unknown_run(flows: ModuleType) -> None:
    outcome = CliRunner().invoke(retry, ["no-such-run", "--url", flows.app.url])

    assert outcome.exit_code == EXIT_NOT_FOUND, outcome.output
    assert "Run 'no-such-run' is not found" in outcome.output


def test_retry_rejects_memory_url() -> None:
    outcome = CliRunner().invoke(retry, ["some-run", "--url", "memory://"])

    assert outcome.exit_code == 2, outcome.output
    assert "memory:// keeps runs inside the process" in outcome.output


def test_retry_needs_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STEM_URL", raising=False)

    outcome = CliRunner().invoke(retry, ["some-run"])

    assert outcome.exit_code == 2, outcome.output
    assert "pass --url redis://host:port/db, set STEM_URL" in outcome.output


def test_retry_store_down_exits_unavailable() -> None:
    # Nothing listens on port 1 of the loopback address, so the connection fails.
    outcome = CliRunner().invoke(retry, ["some-run", "--url", "redis://127.0.0.1:1/0"])

    assert outcome.exit_code == EXIT_UNAVAILABLE, outcome.output
    # The driver connects when it is made, to load its scripts.
    assert "Could not connect to Redis at" in outcome.output
    assert "127.0.0.1:1" in outcome.output
    assert "Traceback" not in outcome.output


def test_retry_reads_stem_url(
    flows: ModuleType, state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_id = failed_run(flows)
    monkeypatch.setenv("STEM_URL", flows.app.url)

    outcome = CliRunner().invoke(retry, [run_id])

    assert outcome.exit_code == 0, outcome.output
    assert "reopened as epoch 2" in outcome.output


# -- as processes ----------------------------------------------------------------


def test_retry_process_after_injected_failure(flows: ModuleType, state: Path) -> None:
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "stem",
            "worker",
            "-A",
            flows.__file__,
            "--url",
            flows.app.url,
            "--pool",
            "threads",
            "-c",
            "2",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        result = flows.pipeline().apply_async()
        error = result.get(TIMEOUT_S, propagate=False)
        assert isinstance(error, RuntimeError)
        (state / "fail.flag").unlink()

        command = [sys.executable, "-m", "stem", "runs", "retry", result.id]
        retried = subprocess.run(
            [*command, "--url", flows.app.url, "--wait", "--timeout", str(TIMEOUT_S)],
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S * 2,
            env={**os.environ, "STEM_RETRY_STATE": str(state)},
        )
        value = result.get(TIMEOUT_S)
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.communicate(timeout=TIMEOUT_S)
        finally:
            if worker.poll() is None:
                worker.kill()

    assert retried.returncode == 0, retried.stderr
    assert f"Run {result.id} epoch 2 succeeded." in retried.stdout
    assert value == 56
    assert calls(state, "add") == 2
    assert calls(state, "flaky") == 2
    assert calls(state, "total") == 1
    nodes = result.nodes()
    assert [nodes[key].attempts for key in ("0", "1", "2", "3")] == [1, 1, 1, 1]
