"""The operator commands as real processes against a private Redis server.

The cases: a worker process runs a submitted run that ``graph show`` draws.
``dlq replay`` lets a dead-lettered run complete. A worker that lacks a task
hands its message to the worker that replaces it. A SIGTERM in the middle of
a run loses nothing. ``graph show`` on a 100,000-node run sends as many
commands as on a small one. No output contains a URL's password.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from stem.drivers.redis.driver import RedisDriver
from stem.engine.errors import DriverError
from stem.engine.result import AsyncResult
from stem.local_redis import LocalRedis

from .conftest import (
    TIMEOUT_S,
    database_url,
    load_flows,
    start_stem,
    stem,
    stop_process,
    wait_for_status,
    write_flows,
)

#: A database of the private server that only these tests use.
DATABASE = 12
#: Password of the password-protected server these tests start.
PASSWORD = "s3cret-PaSs"


@pytest.fixture
def url(redis_url: str) -> str:
    return database_url(redis_url, DATABASE)


def worker_args(flows: Path, url: str, name: str, *extra: str) -> list[str]:
    return [
        "worker", "-A", str(flows), "--url", url, "-n", name,
        "--pool", "threads", "-c", "2", *extra,
    ]  # fmt: skip


def wait_until(condition: object, what: str) -> None:
    assert callable(condition)
    deadline = time.monotonic() + TIMEOUT_S
    while not condition():
        assert time.monotonic() < deadline, f"Timed out waiting until {what}."
        time.sleep(0.1)


def test_worker_submit_and_graph_show(tmp_path: Path, url: str) -> None:
    flows = write_flows(tmp_path, url)
    worker = start_stem(*worker_args(flows, url, "proc-1"))
    try:
        submitted = stem("submit", "-A", str(flows), f"{flows}:pipeline", "12")
        assert submitted.returncode == 0, submitted.stderr
        run_id = submitted.stdout.strip()
        wait_for_status(url, run_id, "succeeded")
        drawn = stem("graph", "show", run_id, "--url", url)
        inspected = stem("inspect", "--url", url)
    finally:
        code, _, stderr = stop_process(worker)

    assert "submitted to" in submitted.stderr
    assert drawn.returncode == 0, drawn.stderr
    assert f"run {run_id}: succeeded" in drawn.stdout
    assert "add \N{MULTIPLICATION SIGN}12  12 ✓" in drawn.stdout
    assert "total" in drawn.stdout
    assert inspected.returncode == 0, inspected.stderr
    assert "proc-1" in inspected.stdout
    assert code == 0, stderr
    assert "Worker proc-1 started on" in stderr
    assert "Worker proc-1 warm stop: 13 tasks processed, 0 failed" in stderr


def test_dlq_replay_completes_run(tmp_path: Path, url: str) -> None:
    flows = write_flows(tmp_path, url)
    first = start_stem(
        *worker_args(flows, url, "without-extra", "--unknown-task-grace", "0")
    )
    try:
        submitted = stem(
            "submit", "-A", str(flows), f"{flows}:with_extra", env={"WITH_EXTRA": "1"}
        )
        run_id = submitted.stdout.strip()
        wait_for_status(url, run_id, "failed")
    finally:
        stop_process(first)
    listed = stem("dlq", "ls", "--url", url, "--json")
    [dead] = json.loads(listed.stdout)["dead_letters"]

    second = start_stem(*worker_args(flows, url, "with-extra"), env={"WITH_EXTRA": "1"})
    try:
        replayed = stem("dlq", "replay", dead["id"], "--url", url)
        data = wait_for_status(url, run_id, "succeeded")
    finally:
        stop_process(second)

    assert dead["run"] == run_id
    assert dead["task"] == "extra"
    assert replayed.returncode == 0, replayed.stderr
    assert data["value"] == 103
    assert data["states"] == {"succeeded": 5}
    assert json.loads(stem("dlq", "ls", "--url", url, "--json").stdout) == {
        "dead_letters": [],
        "cursor": None,
    }


def test_rolling_deploy_runs_new_task(tmp_path: Path, url: str) -> None:
    flows = write_flows(tmp_path, url)
    driver = RedisDriver(url)
    old = start_stem(*worker_args(flows, url, "old", "--unknown-task-grace", "60"))
    try:
        submitted = stem(
            "submit", "-A", str(flows), f"{flows}:with_extra", env={"WITH_EXTRA": "1"}
        )
        run_id = submitted.stdout.strip()
        wait_until(lambda: driver.delayed_count() == 1, "the old worker deferred")
    finally:
        _, _, old_stderr = stop_process(old)
    new = start_stem(*worker_args(flows, url, "new"), env={"WITH_EXTRA": "1"})
    try:
        data = wait_for_status(url, run_id, "succeeded")
    finally:
        stop_process(new)
        dead = driver.dead_letters()
        driver.close()

    assert data["value"] == 103
    assert data["states"] == {"succeeded": 5}
    assert dead == []
    assert old_stderr.count("Task 'extra' is not registered") == 1, old_stderr


def test_sigterm_mid_run_loses_nothing(tmp_path: Path, url: str) -> None:
    flows = write_flows(tmp_path, url)
    app = load_flows(flows).app
    first = start_stem(*worker_args(flows, url, "stopped", "--shutdown-timeout", "0.2"))
    try:
        result = app.submit(load_flows(flows).slow_chord(4, 3.0))
        # The worker claims up to its concurrency ahead, so its two threads
        # may hold up to four of the slow tasks: all count as running.
        wait_until(lambda: _running(result) >= 2, "two slow tasks run")
    finally:
        code, _, stderr = stop_process(first)
    assert code == 0, stderr
    warned = re.search(r"abandoning (\d+) running tasks", stderr)
    assert warned is not None, stderr
    abandoned = int(warned.group(1))
    assert 2 <= abandoned <= 4
    closing = (
        f"Worker stopped warm stop: 0 tasks processed, 0 failed, {abandoned} abandoned."
    )
    assert closing in stderr
    assert result.state == "running"

    second = start_stem(*worker_args(flows, url, "second"))
    try:
        assert result.get(TIMEOUT_S) == 6
    finally:
        stop_process(second)
    assert {node.state for node in result.nodes().values()} == {"succeeded"}
    app.close()


def test_killed_worker_leaves_no_children(tmp_path: Path, url: str) -> None:
    flows = write_flows(tmp_path, url)
    app = load_flows(flows).app
    args = worker_args(flows, url, "killed")
    args[args.index("threads")] = "processes"
    worker = start_stem(*args)
    children: list[int] = []
    try:
        result = app.submit(load_flows(flows).slow_chord(2, 30.0))
        wait_until(lambda: _running(result) >= 1, "a slow task runs")
        # A node is running from its claim on, which can come before the
        # pool has forked the child that runs its body.
        wait_until(lambda: _children(worker.pid), "the pool starts a child")
        children = _children(worker.pid)
    finally:
        worker.kill()
        worker.communicate(timeout=TIMEOUT_S)

    # A child blocked in its task, or waiting for the next one, must notice
    # that its worker is gone instead of running on as an orphan.
    try:
        wait_until(lambda: not [pid for pid in children if _alive(pid)], "no orphan")
    finally:
        for pid in children:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
    app.close()


def _children(pid: int) -> list[int]:
    """Return the pids of a process's children, read from /proc (Linux)."""
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The parent pid is the second field after the command in brackets.
        parent = int(stat.rpartition(")")[2].split()[1])
        if parent == pid:
            found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text()
    except OSError:
        return False
    # A zombie has exited and waits only to be reaped.
    return state.rpartition(")")[2].split()[0] != "Z"


def _running(result: AsyncResult) -> int:
    return sum(1 for node in result.nodes().values() if node.state == "running")


def _calls(client: redis.Redis) -> int:
    """Count the commands since the reset, but the driver's script loading.

    A driver checks and loads its scripts once when it is made, whatever the run.
    """
    stats: dict[str, dict[str, int]] = client.info("commandstats")  # type: ignore[assignment]
    skipped = (
        "cmdstat_info",
        "cmdstat_config|resetstat",
        "cmdstat_script|exists",
        "cmdstat_script|load",
        "cmdstat_function|list",
        "cmdstat_function|load",
    )
    return sum(entry["calls"] for name, entry in stats.items() if name not in skipped)


def _graph_show_calls(client: redis.Redis, url: str, run_id: str) -> tuple[int, str]:
    client.config_resetstat()
    drawn = stem("graph", "show", run_id, "--url", url)
    assert drawn.returncode == 0, drawn.stderr
    return _calls(client), drawn.stdout


@pytest.mark.slow
def test_graph_show_large_run_round_trips(tmp_path: Path, url: str) -> None:
    # redis-py 8 reads replies with a 5 s socket timeout by default, and one
    # submit.lua call that stores 100,000 nodes can take longer on a busy host.
    url = f"{url}?socket_timeout=300"
    client = redis.Redis.from_url(url, decode_responses=True)
    # Without shards, so the chord is one large run: a sharded chord's view
    # reads each of its shards.
    url += "&shard_size=0"
    module = load_flows(write_flows(tmp_path, url))
    small = module.app.submit(module.pipeline(3))
    large = module.app.submit(module.pipeline(100_000))

    small_calls, _ = _graph_show_calls(client, url, small.id)
    large_calls, drawn = _graph_show_calls(client, url, large.id)
    client.close()
    module.app.close()

    # A run too large for one script call keeps its spec under its own key.
    # That costs one more read, and neither count grows with the run's size.
    assert large_calls <= small_calls + 1
    assert large_calls <= 10
    assert "100001 nodes in 2 layers" in drawn
    assert "add \N{MULTIPLICATION SIGN}100000" in drawn
    assert max(len(line) for line in drawn.splitlines()) <= 80


@pytest.fixture
def secret_url() -> Iterator[str]:
    """Start a private redis-server that requires a password; yield a URL with it."""
    with LocalRedis(password=PASSWORD) as server:
        yield server.url


def test_no_command_prints_password(tmp_path: Path, secret_url: str) -> None:
    flows = write_flows(tmp_path, secret_url)
    outputs: list[str] = []
    worker = start_stem(
        *worker_args(flows, secret_url, "secretive", "--unknown-task-grace", "0"),
        "-l",
        "debug",
    )
    try:
        submitted = stem("submit", "-A", str(flows), f"{flows}:with_extra")
        run_id = submitted.stdout.strip()
        wait_for_status(secret_url, run_id, "failed")
        [dead] = json.loads(stem("dlq", "ls", "--url", secret_url, "--json").stdout)[
            "dead_letters"
        ]
        commands = [
            ["runs", "ls"], ["runs", "show", run_id], ["runs", "cancel", run_id],
            ["graph", "show", run_id], ["graph", "show", run_id, "--why", "3"],
            ["graph", "show", run_id, "--format", "json"], ["queues", "ls"],
            ["dlq", "ls"], ["dlq", "show", dead["id"]], ["inspect"],
            ["inspect", "--json"], ["runs", "show", "missing"],
        ]  # fmt: skip
        for command in commands:
            done = stem(*command, "--url", secret_url)
            outputs += [done.stdout, done.stderr]
        wrong = secret_url.replace(PASSWORD, PASSWORD + "-wrong")
        refused = stem("runs", "ls", "--url", wrong)
        outputs += [refused.stdout, refused.stderr]
        outputs += [submitted.stdout, submitted.stderr]
    finally:
        _, stdout, stderr = stop_process(worker)
    outputs += [stdout, stderr]

    assert refused.returncode != 0
    assert "***" in stderr
    assert "dead letter" in " ".join(outputs).lower() or dead["id"] in " ".join(outputs)
    for text in outputs:
        assert PASSWORD not in text


@pytest.mark.parametrize(
    ("password", "shown"),
    [("wrong", "redis://:***@127.0.0.1"), (None, "redis://127.0.0.1")],
)
def test_login_error_names_url_and_fix(
    secret_url: str, password: str | None, shown: str
) -> None:
    if password is None:
        url = secret_url.replace(f":{PASSWORD}@", "")
    else:
        url = secret_url.replace(PASSWORD, password)

    with pytest.raises(DriverError) as raised:
        RedisDriver(url)

    message = str(raised.value)
    assert message.startswith(f"Redis at {shown}")
    assert "rejected the login" in message
    assert "put the server's password in the URL" in message
    assert PASSWORD not in message
    assert "wrong" not in message


def test_cold_stop_on_second_signal(tmp_path: Path, url: str) -> None:
    flows = write_flows(tmp_path, url)
    module = load_flows(flows)
    worker = start_stem(*worker_args(flows, url, "cold"))
    try:
        result = module.app.submit(module.slow_chord(2, 5.0))
        wait_until(lambda: _running(result) == 2, "two slow tasks run")
        worker.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        worker.send_signal(signal.SIGTERM)
        _, stderr = worker.communicate(timeout=TIMEOUT_S)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    module.app.close()

    assert worker.returncode == 143
    assert "Worker cold cold stop: 0 tasks processed, 0 failed, 2 abandoned." in stderr


def test_graph_watch_follows_live_run(tmp_path: Path, url: str) -> None:
    flows = write_flows(tmp_path, url)
    worker = start_stem(*worker_args(flows, url, "watched"))
    try:
        # Tasks of 3 s leave the watcher, a new Python process, time to start
        # while the run still goes, on a busy host too.
        submitted = stem("submit", "-A", str(flows), f"{flows}:slow_chord", "2", "3.0")
        run_id = submitted.stdout.strip()
        watched = stem(
            "graph", "show", run_id, "--url", url, "--watch", "--interval", "0.1"
        )
    finally:
        stop_process(worker)

    drawings = watched.stdout.split("legend:")
    assert watched.returncode == 0, watched.stderr
    assert len(drawings) > 2
    assert f"run {run_id}: succeeded" in drawings[-2]
    assert f"run {run_id}: running" in drawings[0]
