"""Bulk submit and bulk reads on Redis: pipelines per batch and partial failures.

What every driver does is tested in tests/conformance/test_bulk_runs.py.
These tests run on each Redis configuration of the session (`redis_target`).
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from stem import App, ResultSet
from stem.drivers.redis import RedisDriver
from stem.drivers.redis import driver as driver_module
from stem.errors import DriverError, PartialSubmitError, RunNotFound

TIMEOUT_S = 10.0


@pytest.fixture
def app(redis_target: Any) -> Iterator[App]:
    bulk_app = App(
        redis_target.url,
        prefix=f"test-{uuid.uuid4().hex[:12]}:",
        **redis_target.settings,
    )

    @bulk_app.task(name="add")
    def add(x: int, y: int) -> int:
        return x + y

    yield bulk_app
    bulk_app.close()


def _driver(app: App) -> RedisDriver:
    driver = app.driver
    assert isinstance(driver, RedisDriver)
    return driver


class _CountedPipelines:
    """Count the script pipelines a driver sends, and fail chosen calls in them."""

    def __init__(self, driver: RedisDriver) -> None:
        self.pipelines = 0
        self.fail_calls: set[int] = set()
        self.raise_error: Exception | None = None
        self._call_many = driver._scripts.call_many
        self._sent = 0

    def __call__(self, calls: list[Any]) -> list[Any]:
        self.pipelines += 1
        if self.raise_error is not None:
            raise self.raise_error
        replies = self._call_many(calls)
        for index in range(len(replies)):
            if self._sent + index in self.fail_calls:
                replies[index] = redis.ResponseError("planned failure")
        self._sent += len(calls)
        return replies


def _count_pipelines(app: App, monkeypatch: pytest.MonkeyPatch) -> _CountedPipelines:
    driver = _driver(app)
    counted = _CountedPipelines(driver)
    monkeypatch.setattr(driver._scripts, "call_many", counted)
    return counted


def test_submit_many_pipelines_per_batch(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(driver_module, "_PIPELINE_BATCH", 4)
    counted = _count_pipelines(app, monkeypatch)
    results = app.tasks["add"].apply_many([(i, 1) for i in range(10)])
    assert counted.pipelines == 3
    with app.worker(concurrency=4):
        assert results.get(TIMEOUT_S) == [i + 1 for i in range(10)]


def test_apply_many_lays_out_once(app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(driver_module, "_PIPELINE_BATCH", 4)
    laid_out: list[int] = []
    graph_fields = driver_module.layout.graph_fields

    def counted(spec: Any, *, defaults: bool = True) -> list[str]:
        laid_out.append(len(spec.nodes))
        return graph_fields(spec, defaults=defaults)

    monkeypatch.setattr(driver_module.layout, "graph_fields", counted)
    add = app.tasks["add"]
    results = add.apply_many([(i, 1) for i in range(10)])
    # The copies of one compiled spec share its layout, across batches.
    assert laid_out == [1]
    compiled = app.submit_many([add.s(i, 2) for i in range(3)])
    assert laid_out == [1, 1, 1, 1]
    with app.worker(concurrency=4):
        assert results.get(TIMEOUT_S) == [i + 1 for i in range(10)]
        assert compiled.get(TIMEOUT_S) == [i + 2 for i in range(3)]


def test_result_set_reads_ended_runs_in_batches(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    results = app.tasks["add"].apply_many([(i, 1) for i in range(10)])
    with app.worker(concurrency=4):
        for result in results:
            result.get(TIMEOUT_S)
    monkeypatch.setattr(driver_module, "_PIPELINE_BATCH", 4)
    counted = _count_pipelines(app, monkeypatch)
    # A new set, so no handle has cached anything: every run is read again.
    again = ResultSet([app.AsyncResult(run_id) for run_id in results.ids])
    assert again.get(TIMEOUT_S) == [i + 1 for i in range(10)]
    assert counted.pipelines == 3


def test_partial_submit_failure(app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    counted = _count_pipelines(app, monkeypatch)
    counted.fail_calls = {1}
    ids = ["bulk-0", "bulk-1", "bulk-2"]
    add = app.tasks["add"]
    with pytest.raises(PartialSubmitError) as caught:
        app.submit_many([add.s(i, 1) for i in range(3)], run_ids=ids)
    error = caught.value
    assert error.submitted == ["bulk-0", "bulk-2"]
    assert list(error.failed) == ["bulk-1"]
    assert isinstance(error.failed["bulk-1"], DriverError)
    assert "1 of 3 runs failed to submit" in str(error)
    assert "run bulk-1" in str(error)
    # The failure was injected after the script ran, so the run exists: a
    # second submit with the same ids stores nothing twice.
    counted.fail_calls = set()
    again = app.submit_many([add.s(i, 1) for i in range(3)], run_ids=ids)
    with app.worker(concurrency=2):
        assert again.get(TIMEOUT_S) == [1, 2, 3]


def test_failed_pipeline_fails_its_runs(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    counted = _count_pipelines(app, monkeypatch)
    counted.raise_error = DriverError("Running a pipeline of scripts failed: down")
    add = app.tasks["add"]
    with pytest.raises(PartialSubmitError) as caught:
        app.submit_many([add.s(1, 1), add.s(2, 2)], run_ids=["down-0", "down-1"])
    assert caught.value.submitted == []
    assert sorted(caught.value.failed) == ["down-0", "down-1"]
    assert "2 of 2 runs failed to submit" in str(caught.value)


class _StatusReads:
    """Record the status reads of a waiting set: single HGETs and full passes."""

    def __init__(self, driver: RedisDriver) -> None:
        #: The run id of each single status read, in order.
        self.single: list[str] = []
        #: The number of runs of each pass over every pending run.
        self.passes: list[int] = []
        self._read_status = driver._read_status
        self._read_changed = driver._read_changed

    def read_status(self, run_id: str) -> str | None:
        self.single.append(run_id)
        return self._read_status(run_id)

    def read_changed(self, run_ids: Any, pending: list[int]) -> list[int]:
        self.passes.append(len(pending))
        return self._read_changed(run_ids, pending)


def _count_status_reads(
    driver: RedisDriver, monkeypatch: pytest.MonkeyPatch
) -> _StatusReads:
    reads = _StatusReads(driver)
    monkeypatch.setattr(driver, "_read_status", reads.read_status)
    monkeypatch.setattr(driver, "_read_changed", reads.read_changed)
    return reads


def test_waiting_set_reads_one_status_per_poll(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    driver = _driver(app)
    monkeypatch.setattr(driver, "_poll_interval_s", 0.005)
    reads = _count_status_reads(driver, monkeypatch)
    results = app.tasks["add"].apply_many([(i, 1) for i in range(40)])
    # No worker runs, so nothing ends: every poll reads the first run only.
    with pytest.raises(TimeoutError):
        results.get(0.3)
    assert reads.single, "the set never polled"
    assert set(reads.single) == {results.ids[0]}
    assert reads.passes == []
    with app.worker(concurrency=4):
        assert results.get(TIMEOUT_S) == [i + 1 for i in range(40)]


def test_set_before_failure_reads_one_status(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    driver = _driver(app)
    monkeypatch.setattr(driver, "_poll_interval_s", 0.005)
    gate = threading.Event()

    @app.task(name="wait_gate")
    def wait_gate() -> str:
        gate.wait(TIMEOUT_S)
        return "opened"

    @app.task(name="fail")
    def fail() -> None:
        raise ValueError("planned failure")

    with app.worker(concurrency=2):
        results = app.submit_many([wait_gate.s(), fail.s()])
        results[1].get(TIMEOUT_S, propagate=False)
        reads = _count_status_reads(driver, monkeypatch)
        # The failure waits for the run before it, which is the only run
        # each poll reads.
        with pytest.raises(TimeoutError):
            results.get(0.3)
        assert reads.single, "the set never polled"
        assert set(reads.single) == {results.ids[0]}
        assert reads.passes == []
        gate.set()
        with pytest.raises(ValueError, match="planned failure"):
            results.get(TIMEOUT_S)


class _ScriptNames:
    """Record the names of the scripts a driver calls, one call or many."""

    def __init__(self, driver: RedisDriver, monkeypatch: pytest.MonkeyPatch) -> None:
        self.names: list[str] = []
        call, call_many = driver._scripts.call, driver._scripts.call_many

        def one(name: str, *args: Any, **kwargs: Any) -> Any:
            self.names.append(name)
            return call(name, *args, **kwargs)

        def many(calls: list[Any]) -> list[Any]:
            self.names += [name for name, _, _ in calls]
            return call_many(calls)

        monkeypatch.setattr(driver._scripts, "call", one)
        monkeypatch.setattr(driver._scripts, "call_many", many)


def test_get_reads_only_values_of_successes(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    @app.task(name="fail")
    def fail(x: int) -> None:
        raise ValueError(f"planned failure {x}")

    results = app.tasks["add"].apply_many([(i, 1) for i in range(5)])
    failed = app.tasks["fail"].delay(7)
    with app.worker(concurrency=4):
        ResultSet([*results, failed]).get(TIMEOUT_S, propagate=False)
    scripts = _ScriptNames(_driver(app), monkeypatch)

    assert results.get(TIMEOUT_S) == [1, 2, 3, 4, 5]
    assert results.results[0].get(TIMEOUT_S) == 1
    assert scripts.names == ["read_value"] * 6

    # A run that ended otherwise is read again in full, for its error.
    scripts.names.clear()
    with pytest.raises(ValueError, match="planned failure 7"):
        failed.get(TIMEOUT_S)
    assert scripts.names == ["read_value", "read_ended"]
    errors = ResultSet([results.results[1], failed]).get(TIMEOUT_S, propagate=False)
    assert errors[0] == 2
    assert isinstance(errors[1], ValueError)


def test_get_reads_run_in_full_without_its_spec(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    results = app.tasks["add"].apply_many([(i, 1) for i in range(3)])
    with app.worker(concurrency=2):
        results.get(TIMEOUT_S)
    other = App(app.url, prefix=app.settings["prefix"])
    try:
        scripts = _ScriptNames(_driver(other), monkeypatch)
        again = ResultSet([other.AsyncResult(run_id) for run_id in results.ids])
        assert again.get(TIMEOUT_S) == [1, 2, 3]
        # The second read finds the specs that the first one parsed.
        assert again.get(TIMEOUT_S) == [1, 2, 3]
        assert scripts.names == ["read_ended"] * 3 + ["read_value"] * 3
    finally:
        other.close()


def test_get_of_deleted_run_is_not_found(app: App, redis_target: Any) -> None:
    result = app.tasks["add"].delay(1, 2)
    with app.worker(concurrency=1):
        assert result.get(TIMEOUT_S) == 3
    client = redis_target.client()
    try:
        client.delete(_driver(app)._keys.run(result.id).run)
    finally:
        client.close()
    with pytest.raises(RunNotFound, match=result.id):
        result.get(TIMEOUT_S)
    with pytest.raises(RunNotFound, match=result.id):
        ResultSet([result]).get(TIMEOUT_S)


def test_status_reads_stop_at_running_run(
    app: App, monkeypatch: pytest.MonkeyPatch, redis_target: Any
) -> None:
    monkeypatch.setattr(driver_module, "_FIRST_STATUS_CHUNK", 2)
    driver = _driver(app)
    ids = app.tasks["add"].apply_many([(i, 1) for i in range(10)]).ids
    client = redis_target.client()
    try:
        for index in [0, 1, 2, 3, 4, 6, 7, 8, 9]:
            client.hset(driver._keys.run(ids[index]).run, "status", "succeeded")
        # Chunks of 2, then 4: the second contains run 5, which is running.
        assert driver._read_changed(ids, list(range(10))) == [0, 1, 2, 3, 4]
        assert driver._read_changed(ids, [6, 7, 8, 9]) == [6, 7, 8, 9]
        client.delete(driver._keys.run(ids[7]).run)
        with pytest.raises(RunNotFound, match=ids[7]):
            driver._read_changed(ids, [6, 7, 8, 9])
    finally:
        client.close()
