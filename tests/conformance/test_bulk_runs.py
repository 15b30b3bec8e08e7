"""Bulk submit (`App.submit_many`, `Task.apply_many`) and bulk reads (`ResultSet`).

Each test runs on every driver of the conformance suite. On Redis the small
limits of the suite make a chord of five a large run, written in chunks, and
``redis-shards`` cuts it into shard runs. A bulk submit there mixes
pipelined runs with runs that are stored one at a time.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import pytest

from stem import ResultSet, chain, chord
from stem.canvas.spec import GraphSpec
from stem.engine import result as result_module
from stem.engine.result import RunCancelled
from stem.errors import (
    DriverError,
    InvalidCanvas,
    InvalidOption,
    NotSerializable,
    NoWorkerRunning,
    PartialSubmitError,
    RunNotFound,
    TimeoutError,
)

from .conftest import TIMEOUT_S, Kit


def test_apply_many_values_in_order(kit: Kit) -> None:
    with kit.app.worker(concurrency=4):
        results = kit.add.apply_many([(i, i) for i in range(50)])
        assert len(results) == 50
        assert results.get(TIMEOUT_S) == [2 * i for i in range(50)]
    assert len(kit.called("add")) == 50


def test_apply_many_gives_own_runs(kit: Kit) -> None:
    results = kit.add.apply_many([(1, 2), (3, 4)])
    ids = results.ids
    assert len(set(ids)) == 2
    assert [result.id for result in results] == ids
    assert results[1].id == ids[1]


def test_submit_many_mixed_canvases(kit: Kit) -> None:
    canvases = [
        kit.add.s(1, 1),
        chain(kit.add.s(1, 2), kit.add.s(3)),
        chord([kit.add.s(i, 1) for i in range(5)], kit.total.s()),
        kit.echo.s("text"),
    ]
    with kit.app.worker(concurrency=4):
        results = kit.app.submit_many(canvases)
        assert results.get(TIMEOUT_S) == [2, 6, 15, "text"]


def test_submit_many_shared_options(kit: Kit) -> None:
    with kit.app.worker(concurrency=4):
        results = kit.app.submit_many([kit.add.s(1, 1), kit.add.s(2, 2)], priority=3)
        assert results.get(TIMEOUT_S) == [2, 4]
    for result in results:
        spec, _ = result.graph()
        assert spec.nodes[0].options.priority == 3


def test_unserialisable_value_rejects_all(kit: Kit) -> None:
    with pytest.raises(NotSerializable) as caught:
        kit.add.apply_many([(1, 1), (2, 2), (object(), 1), (3, 3)])
    message = str(caught.value)
    assert message.startswith("args_list[2] > args[0]: ")
    assert "builtins.object is not JSON-serialisable" in message
    assert "Nothing of this apply_many() call was submitted." in message
    with pytest.raises(NotSerializable) as caught:
        kit.app.submit_many([kit.add.s(1, 1), kit.add.s(object(), 1)])
    message = str(caught.value)
    assert message.startswith("canvases[1] > args[0]: ")
    assert "Nothing of this submit_many() call was submitted." in message
    with pytest.raises(InvalidOption, match="apply_many\\(\\): run_id is not"):
        kit.add.apply_many([(1, 1)], run_id="mine")
    assert kit.app.driver.list_runs().runs == []


def test_invalid_canvas_rejects_all(kit: Kit) -> None:
    with pytest.raises(InvalidCanvas) as caught:
        kit.app.submit_many([kit.add.s(1, 1), chain()])
    assert str(caught.value).startswith("canvases[1]: ")
    assert kit.app.driver.list_runs().runs == []


def test_apply_many_item_not_tuple(kit: Kit) -> None:
    with pytest.raises(InvalidCanvas) as caught:
        kit.echo.apply_many([("a",), "b"])
    assert "item 1 is 'b'" in str(caught.value)
    assert "('b',)" in str(caught.value)
    assert kit.app.driver.list_runs().runs == []


def test_submit_many_run_ids_idempotent(kit: Kit) -> None:
    ids = ["bulk-a", "bulk-b"]
    first = kit.app.submit_many([kit.add.s(1, 1), kit.add.s(2, 2)], run_ids=ids)
    again = kit.app.submit_many([kit.add.s(5, 5), kit.add.s(6, 6)], run_ids=ids)
    assert first.ids == ids
    assert again.ids == ids
    with kit.app.worker(concurrency=2):
        assert again.get(TIMEOUT_S) == [2, 4]
    assert len(kit.called("add")) == 2


def test_submit_many_rejects_bad_ids(kit: Kit) -> None:
    with pytest.raises(InvalidOption, match="2 run_ids for 1 canvases"):
        kit.app.submit_many([kit.add.s(1, 1)], run_ids=["a", "b"])
    with pytest.raises(InvalidOption, match="pass run_ids="):
        kit.app.submit_many([kit.add.s(1, 1)], run_id="a")
    with pytest.raises(
        InvalidOption, match="canvases\\[1\\]: apply_async\\(\\): run_id"
    ):
        kit.app.submit_many([kit.add.s(1, 1), kit.add.s(2, 2)], run_ids=["a", ""])
    # Two canvases under one id would store only the first and hand back
    # its result twice.
    with pytest.raises(InvalidOption, match="run_ids\\[2\\] 'a' repeats"):
        kit.app.submit_many(
            [kit.add.s(1, 1), kit.add.s(2, 2), kit.add.s(3, 3)],
            run_ids=["a", "b", "a"],
        )
    assert kit.app.driver.list_runs().runs == []


def test_empty_bulk_submit(kit: Kit) -> None:
    results = kit.add.apply_many([])
    assert len(results) == 0
    assert results.get(TIMEOUT_S) == []
    assert results.ready()


def test_result_set_raises_first_failure(kit: Kit) -> None:
    canvases = [kit.add.s(1, 1), kit.fail.s(1), kit.fail.s(2), kit.add.s(2, 2)]
    with kit.app.worker(concurrency=4):
        results = kit.app.submit_many(canvases)
        with pytest.raises(ValueError, match="planned failure") as caught:
            results.get(TIMEOUT_S)
        notes = "\n".join(getattr(caught.value, "__notes__", []))
        assert results[1].id in notes
        values = results.get(TIMEOUT_S, propagate=False)
    assert values[0] == 2
    assert isinstance(values[1], ValueError)
    assert isinstance(values[2], ValueError)
    assert values[3] == 4


def test_result_set_cancelled_run(kit: Kit) -> None:
    results = kit.app.submit_many([kit.add.s(1, 1), kit.add.s(2, 2)])
    results[1].cancel()
    with kit.app.worker(concurrency=2):
        with pytest.raises(RunCancelled):
            results.get(TIMEOUT_S)
        values = results.join(TIMEOUT_S, propagate=False)
    assert values[0] == 2
    assert isinstance(values[1], RunCancelled)


def test_result_set_timeout(kit: Kit) -> None:
    with kit.app.worker(concurrency=4):
        results = kit.app.submit_many([kit.add.s(1, 1), kit.wait_gate.s()])
        assert results[0].get(TIMEOUT_S) == 2
        assert not results.ready()
        with pytest.raises(
            TimeoutError, match=r"1 of 2 runs did not end within 0\.3 s"
        ):
            results.get(timeout=0.3)
        kit.gate.set()
        assert results.get(TIMEOUT_S) == [2, "opened"]
        assert results.ready()


def test_result_set_failure_before_pending(kit: Kit) -> None:
    with kit.app.worker(concurrency=4):
        results = kit.app.submit_many([kit.fail.s(), kit.wait_gate.s()])
        # The failed run comes first in the set, so its error wins over the
        # timeout of the run that is still waiting.
        with pytest.raises(ValueError, match="planned failure"):
            results.get(timeout=0.5)
        kit.gate.set()


def test_result_set_without_worker(kit: Kit, driver_name: str) -> None:
    results = kit.app.submit_many([kit.add.s(1, 1)])
    if driver_name == "memory":
        with pytest.raises(NoWorkerRunning, match="no worker is running"):
            results.get(timeout=5)
    else:
        with pytest.raises(TimeoutError):
            results.get(timeout=0.2)


def test_result_set_unknown_run(kit: Kit) -> None:
    known = kit.app.submit_many([kit.add.s(1, 1)])
    results = ResultSet([known[0], kit.app.AsyncResult("no-such-run")])
    with pytest.raises(RunNotFound):
        results.get(TIMEOUT_S)


def test_result_set_of_async_results(kit: Kit) -> None:
    with kit.app.worker(concurrency=4):
        handles = [kit.add.delay(i, 1) for i in range(5)]
        assert ResultSet(handles).get(TIMEOUT_S) == [1, 2, 3, 4, 5]


def test_result_set_raises_before_later_runs_end(kit: Kit) -> None:
    with kit.app.worker(concurrency=4):
        results = kit.app.submit_many(
            [kit.add.s(1, 1), kit.fail.s(), kit.wait_gate.s()]
        )
        # The gate stays shut, so the last run cannot end before get()
        # raises the failure that it reached first.
        with pytest.raises(ValueError, match="planned failure"):
            results.get(timeout=3 * TIMEOUT_S)
        assert not results[2].ready()
        kit.gate.set()
        assert results[2].get(TIMEOUT_S) == "opened"


def test_result_set_waits_for_runs_before_failure(kit: Kit) -> None:
    with kit.app.worker(concurrency=4):
        results = kit.app.submit_many([kit.wait_gate.s(), kit.fail.s()])
        assert isinstance(results[1].get(TIMEOUT_S, propagate=False), ValueError)
        # The run before the failure is still running, so the failure is not
        # reached, as in Celery's ResultSet.join.
        with pytest.raises(TimeoutError, match="1 of 2 runs did not end"):
            results.get(timeout=0.3)
        kit.gate.set()
        with pytest.raises(ValueError, match="planned failure"):
            results.join(TIMEOUT_S)


def test_result_set_slices_read_later_runs(
    kit: Kit, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Slices of 0.1 s, so a wait of 1.5 s takes many of them.
    monkeypatch.setattr(result_module, "NO_WORKER_GRACE_S", 0.2)

    @kit.app.task(name="sleep")
    def sleep(seconds: float) -> str:
        time.sleep(seconds)
        return "slept"

    with kit.app.worker(concurrency=4):
        results = kit.app.submit_many([kit.wait_gate.s(), kit.fail.s(), sleep.s(0.4)])
        # The last run ends in a later slice than the first one, and is
        # still read: only the gated run did not end.
        with pytest.raises(TimeoutError, match="1 of 3 runs did not end"):
            results.get(timeout=1.5)
        kit.gate.set()
        with pytest.raises(ValueError, match="planned failure"):
            results.get(TIMEOUT_S)


def test_result_set_state_counts(kit: Kit) -> None:
    with kit.app.worker(concurrency=4):
        results = kit.app.submit_many(
            [kit.add.s(1, 1), kit.fail.s(), kit.wait_gate.s()]
        )
        results[0].get(TIMEOUT_S)
        results[1].get(TIMEOUT_S, propagate=False)
        assert results.completed_count() == 1
        assert results.failed()
        assert not results.successful()
        assert results.waiting()
        assert not results.ready()
        kit.gate.set()
        results[2].get(TIMEOUT_S)
        assert results.completed_count() == 2
        assert not results.waiting()
        assert results.ready()
        assert not results.successful()
        succeeded = kit.app.submit_many([kit.add.s(1, 1), kit.add.s(2, 2)])
        succeeded.get(TIMEOUT_S)
    assert succeeded.completed_count() == 2
    assert succeeded.successful()
    assert not succeeded.failed()
    assert succeeded.results == list(succeeded)


def test_result_set_revoke(kit: Kit) -> None:
    with kit.app.worker(concurrency=2):
        results = kit.app.submit_many([kit.add.s(1, 1), kit.wait_gate.s()])
        results[0].get(TIMEOUT_S)
        results.revoke()
        kit.gate.set()
        values = results.get(TIMEOUT_S, propagate=False)
    # The run that had ended keeps its value, and the running one is cancelled.
    assert values[0] == 2
    assert isinstance(values[1], RunCancelled)
    assert results[1].state == "cancelled"
    assert not results.failed()
    assert not results.waiting()
    queued = kit.app.submit_many([kit.add.s(1, 1), kit.add.s(2, 2)])
    queued.cancel()
    assert [result.state for result in queued] == ["cancelled", "cancelled"]
    assert kit.called("add") == [(1, 1)]


def _fail_second_run(
    kit: Kit, monkeypatch: pytest.MonkeyPatch, *, stored: bool
) -> None:
    """Make the driver report a failure for the second run of each bulk submit.

    With ``stored``, that run is written anyway, as when a pipeline's reply
    is lost after its scripts ran.
    """
    driver = kit.app.driver
    submit_many = driver.submit_many

    def submit_failing(runs: Sequence[tuple[str, GraphSpec]]) -> list[Any]:
        if stored:
            outcomes: list[Any] = submit_many(runs)
        else:
            outcomes = [*submit_many(runs[:1]), None, *submit_many(runs[2:])]
        outcomes[1] = DriverError("planned store failure")
        return outcomes

    monkeypatch.setattr(driver, "submit_many", submit_failing)


@pytest.mark.parametrize("stored", [False, True])
def test_partial_submit_retry_generated_ids(
    kit: Kit, monkeypatch: pytest.MonkeyPatch, stored: bool
) -> None:
    _fail_second_run(kit, monkeypatch, stored=stored)
    canvases = [kit.add.s(i, 1) for i in range(3)]
    with pytest.raises(PartialSubmitError) as caught:
        kit.app.submit_many(canvases)
    error = caught.value
    assert len(error.run_ids) == 3
    assert error.submitted == [error.run_ids[0], error.run_ids[2]]
    assert list(error.failed) == [error.run_ids[1]]
    assert "run_ids set to this error's .run_ids" in str(error)
    monkeypatch.undo()
    again = kit.app.submit_many(canvases, run_ids=error.run_ids)
    assert again.ids == error.run_ids
    with kit.app.worker(concurrency=2):
        assert again.get(TIMEOUT_S) == [1, 2, 3]
    # Each run ran once: the retry stored only the run that was missing.
    assert sorted(kit.called("add")) == [(0, 1), (1, 1), (2, 1)]


def test_partial_apply_many_retry(kit: Kit, monkeypatch: pytest.MonkeyPatch) -> None:
    _fail_second_run(kit, monkeypatch, stored=False)
    args_list = [(i, 1) for i in range(3)]
    with pytest.raises(PartialSubmitError) as caught:
        kit.add.apply_many(args_list)
    monkeypatch.undo()
    again = kit.add.apply_many(args_list, run_ids=caught.value.run_ids)
    assert again.ids == caught.value.run_ids
    with kit.app.worker(concurrency=2):
        assert again.get(TIMEOUT_S) == [1, 2, 3]
    assert sorted(kit.called("add")) == [(0, 1), (1, 1), (2, 1)]


def test_shared_invalid_option_blames_call(kit: Kit) -> None:
    with pytest.raises(InvalidOption) as caught:
        kit.add.apply_many([(1, 1), (2, 2)], queue=5)
    message = str(caught.value)
    assert message.startswith("apply_many() > options['queue']: ")
    assert "args_list[" not in message
    assert "Nothing of this apply_many() call was submitted." in message
    with pytest.raises(InvalidOption) as caught:
        kit.app.submit_many([kit.add.s(1, 1)], bogus=1)
    message = str(caught.value)
    assert message.startswith("submit_many(): unknown option 'bogus'")
    assert "canvases[" not in message
    with pytest.raises(InvalidCanvas) as caught:
        kit.app.submit_many([kit.add.s(1, 1)], link=5)
    message = str(caught.value)
    assert message.startswith("submit_many(): The link is 5")
    assert "canvases[" not in message
    with pytest.raises(NotSerializable) as caught:
        kit.add.apply_many([(1, 1), (2, 2)], link_error=[kit.add.s(1), kit.add.s({1})])
    message = str(caught.value)
    assert message.startswith("apply_many() > link_error[1] > args[0]: ")
    assert "args_list[" not in message
    assert "Nothing of this apply_many() call was submitted." in message
    with pytest.raises(InvalidOption, match="apply_many\\(\\): 1 run_ids for 2"):
        kit.add.apply_many([(1, 1), (2, 2)], run_ids=["only-one"])
    assert kit.app.driver.list_runs().runs == []
