"""Leases on Redis: takeover of a killed worker's message, fencing, renewal.

The first test starts a worker in a separate Python process, lets it claim a
slow task and kills it with SIGKILL, so the takeover path runs as it does in
production: nothing in the killed process reports or cleans up.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from types import ModuleType
from typing import Any

from stem import App, chord
from stem.canvas.compiler import compile_canvas
from stem.drivers.redis import RedisDriver
from stem.errors import DeadLettered

TIMEOUT_S = 20.0

#: Tasks shared by the worker process and the test. Every call appends a line
#: to the log file, so calls are counted across processes. ``slow`` sleeps on
#: its first call only, so the worker that takes it over finishes it at once.
TASKS_MODULE = """
import sys
import time
from pathlib import Path

from stem import App


def build(url, prefix, log_path, **settings):
    app = App(url, prefix=prefix, **settings)
    log = Path(log_path)
    marker = log.with_suffix(".started")

    def note(line):
        with log.open("a", encoding="utf-8") as file:
            file.write(line + "\\n")

    @app.task(name="slow")
    def slow(x):
        note(f"slow {x}")
        if not marker.exists():
            marker.write_text("started", encoding="utf-8")
            time.sleep(120)
        return x * 10

    @app.task(name="add")
    def add(x, y):
        note(f"add {x} {y}")
        return x + y

    @app.task(name="total")
    def total(values):
        note(f"total {values}")
        return sum(values)

    @app.task(name="record")
    def record(value):
        note(f"record {value}")

    return app


if __name__ == "__main__":
    build(*sys.argv[1:4]).worker(concurrency=1).run()
"""


def _driver(target: Any, **settings: Any) -> RedisDriver:
    return RedisDriver(target.url, **target.settings, **settings)


def _prefix() -> str:
    return f"test-{uuid.uuid4().hex[:12]}:"


def _load_tasks(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"lease_tasks_{path.stem}", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _wait_for(condition: Any, what: str) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not condition():
        assert time.monotonic() < deadline, f"Timed out waiting until {what}."
        time.sleep(0.05)


def test_killed_worker_task_runs_again(redis_target: Any, tmp_path: Path) -> None:
    module_path = tmp_path / "lease_tasks.py"
    module_path.write_text(TASKS_MODULE, encoding="utf-8")
    log_path = tmp_path / "calls.log"
    prefix = _prefix()
    tasks = _load_tasks(module_path)
    app: App = tasks.build(
        redis_target.url,
        prefix,
        str(log_path),
        visibility_timeout_s=0.2,
        **redis_target.settings,
    )
    header = [app.tasks["slow"].s(1), app.tasks["add"].s(1, 1)]
    canvas = chord(header, app.tasks["total"].s())
    canvas.link(app.tasks["record"].s())
    result = app.submit(canvas)
    output = (tmp_path / "worker.out").open("wb")
    worker = subprocess.Popen(
        [sys.executable, str(module_path), redis_target.url, prefix, str(log_path)],
        stdout=output,
        stderr=subprocess.STDOUT,
    )
    try:
        _wait_for(log_path.with_suffix(".started").exists, "slow started")
        assert result.node("0").state == "running"
        os.kill(worker.pid, signal.SIGKILL)
        assert worker.wait(TIMEOUT_S) == -signal.SIGKILL

        with app.worker(concurrency=2):
            assert result.get(TIMEOUT_S) == 12
            _wait_for(lambda: result.node("3").state == "succeeded", "link ran")
        assert app.driver.snapshot(result.id).nodes["0"].lease == 2
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
        output.close()
        app.close()
    calls = log_path.read_text(encoding="utf-8").splitlines()
    assert calls.count("slow 1") == 2
    assert calls.count("add 1 1") == 1
    assert calls.count("total [10, 2]") == 1
    assert calls.count("record 12") == 1


def test_fenced_report_keeps_message(redis_target: Any) -> None:
    prefix = _prefix()
    first = _driver(redis_target, prefix=prefix, visibility_timeout_s=0.0)
    second = _driver(redis_target, prefix=prefix, visibility_timeout_s=0.0)
    client = redis_target.client()
    add = App("memory://").task(name="add")(lambda x, y: x + y)
    try:
        assert first.submit("fenced", compile_canvas(add.s(1, 1)))
        [message] = first.fetch(["default"], 1, TIMEOUT_S)
        fenced = first.claim(message)
        [again] = second.fetch(["default"], 1, TIMEOUT_S)
        taken = second.claim(again)
        assert fenced is not None
        assert taken is not None
        assert again.reclaimed
        assert taken.message.lease == 2

        first.complete(fenced.message, "99")

        stream = second._keys.partition_of("fenced").queue("default")
        pending = client.xpending_range(stream, "stem", "-", "+", 10)
        assert [entry["message_id"] for entry in pending] == [message.receipt]
        assert first.renew(fenced.message) is False
        assert second.snapshot("fenced").nodes["0"].state == "running"
        second.complete(taken.message, "2")
        snapshot = second.snapshot("fenced")
        assert snapshot.status == "succeeded"
        assert snapshot.nodes["0"].value == "2"
        assert client.xpending_range(stream, "stem", "-", "+", 10) == []
    finally:
        client.close()
        first.close()
        second.close()


def test_over_max_deliveries_dead_lettered(redis_target: Any) -> None:
    prefix = _prefix()
    settings: dict[str, Any] = {"visibility_timeout_s": 0.0, "max_deliveries": 2}
    drivers = [_driver(redis_target, prefix=prefix, **settings) for _ in range(3)]
    app = App("memory://")
    add = app.task(name="add")(lambda x, y: x + y)
    record = app.task(name="record")(lambda *args: None)
    try:
        canvas = add.s(1, 1) | add.s(2)
        canvas.link_error(record.s())
        assert drivers[0].submit("poison", compile_canvas(canvas))
        for driver in drivers[:2]:
            [message] = driver.fetch(["default"], 1, TIMEOUT_S)
            assert driver.claim(message) is not None

        [errback] = drivers[2].fetch(["default"], 1, TIMEOUT_S)

        assert errback.headers["task"] == "record"
        snapshot = drivers[2].snapshot("poison")
        assert snapshot.status == "failed"
        assert snapshot.error_node == "0"
        assert snapshot.nodes["1"].state == "cancelled"
        error = snapshot.nodes["0"].error
        assert error is not None
        assert error.qualname == DeadLettered.__qualname__
        [(dead, reason)] = drivers[2].dead_letters()
        assert dead.node_id == "0"
        assert "delivered 3 times" in reason
        assert "max_deliveries (2)" in reason
    finally:
        for driver in drivers:
            driver.close()


def test_renewal_keeps_long_task(redis_target: Any) -> None:
    prefix = _prefix()
    calls: list[int] = []
    lock = threading.Lock()
    apps = [
        App(
            redis_target.url,
            prefix=prefix,
            visibility_timeout_s=0.3,
            **redis_target.settings,
        )
        for _ in range(2)
    ]
    for app in apps:

        @app.task(name="long")
        def long(x: int) -> int:
            with lock:
                calls.append(x)
            time.sleep(1.5)
            return x

    try:
        result = apps[0].tasks["long"].apply_async((7,))
        with apps[0].worker(concurrency=1):
            _wait_for(lambda: calls == [7], "long started")
            with apps[1].worker(concurrency=1):
                assert result.get(TIMEOUT_S) == 7
        assert calls == [7]
        assert apps[0].driver.snapshot(result.id).nodes["0"].lease == 1
    finally:
        for app in apps:
            app.close()
