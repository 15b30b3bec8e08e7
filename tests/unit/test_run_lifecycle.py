"""Run lifecycle in the engine and the in-process driver, without threads.

The machine's ``ignore_result`` rule and state counts, the in-process
driver's retention under an injected clock, and the worker's size check.
"""

from __future__ import annotations

from typing import Any

import pytest

from stem import chain, group
from stem.canvas.compiler import compile_canvas
from stem.canvas.primitives import Signature
from stem.canvas.spec import GraphSpec
from stem.canvas.values import dumps
from stem.drivers.memory import MemoryDriver
from stem.engine import machine, settings
from stem.engine.execution import Outcome
from stem.engine.ports import Claim, Message
from stem.engine.records import ErrorInfo, RunState
from stem.engine.worker import _check_value_size
from stem.errors import RunNotFound


def _spec(canvas: Any) -> GraphSpec:
    return compile_canvas(canvas)


def _run_node(run: RunState, node_id: str, value: Any, now: float) -> None:
    attempt, epoch = run.nodes[node_id].attempt, run.epoch
    assert machine.claim(run, node_id, attempt, now, epoch=epoch)
    done = machine.complete(run, node_id, attempt, dumps(value), now, epoch=epoch)
    assert done is not None


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- ignore_result in the machine ------------------------------------------------------


def test_ignored_value_dropped_after_reader() -> None:
    spec = _spec(chain(Signature("a").set(ignore_result=True), Signature("b")))
    run, _ = machine.start("run", spec, 0.0)
    _run_node(run, "0", 5, 1.0)
    assert run.nodes["0"].value == "5"
    assert machine.resolve_input(run, spec.node("1")) == (True, 5)
    _run_node(run, "1", 6, 2.0)
    assert run.nodes["0"].value is None
    assert run.status == "succeeded"
    assert run.value == "6"


def test_ignored_value_kept_through_retry() -> None:
    spec = _spec(chain(Signature("a").set(ignore_result=True), Signature("b")))
    run, _ = machine.start("run", spec, 0.0)
    _run_node(run, "0", 5, 1.0)
    assert machine.claim(run, "1", 1, 2.0)
    error = ErrorInfo.from_exception(ValueError("again"))
    assert machine.retry(run, "1", 1, error, 0.0, 3.0) is not None
    assert run.nodes["0"].value == "5"
    assert machine.claim(run, "1", 2, 4.0)
    assert machine.resolve_input(run, spec.node("1")) == (True, 5)


def test_ignored_value_without_reader_never_stored() -> None:
    spec = _spec(group(Signature("a").set(ignore_result=True), Signature("b")))
    run, _ = machine.start("run", spec, 0.0)
    _run_node(run, "0", 5, 1.0)
    assert run.nodes["0"].value is None
    _run_node(run, "1", 6, 2.0)
    assert machine.run_value(run) == [None, 6]


def test_ignored_value_dropped_by_cancel() -> None:
    spec = _spec(chain(Signature("a").set(ignore_result=True), Signature("b")))
    run, _ = machine.start("run", spec, 0.0)
    _run_node(run, "0", 5, 1.0)
    machine.cancel(run, 2.0)
    assert run.nodes["0"].value is None
    assert run.open_readers == {"0": 0}


def test_ignored_value_waits_for_every_reader() -> None:
    readers = group(Signature("b"), Signature("c"))
    spec = _spec(chain(Signature("a").set(ignore_result=True), readers))
    run, _ = machine.start("run", spec, 0.0)
    _run_node(run, "0", 5, 1.0)
    assert run.open_readers == {"0": 2}
    _run_node(run, "1", 6, 2.0)
    assert run.nodes["0"].value == "5"
    _run_node(run, "2", 7, 3.0)
    assert run.nodes["0"].value is None


def test_replaced_ignored_node_keeps_no_value() -> None:
    spec = _spec(chain(Signature("a").set(ignore_result=True), Signature("b")))
    run, _ = machine.start("run", spec, 0.0)
    assert machine.claim(run, "0", 1, 1.0)
    sub = _spec(Signature("c"))
    assert machine.splice(run, "0", 1, sub, 2.0) is not None
    assert run.nodes["0"].state == "succeeded"
    assert run.nodes["0"].value is None
    _run_node(run, "0.0", 5, 3.0)
    assert machine.resolve_input(run, run.spec.node("1")) == (True, 5)


def _fail_node(run: RunState, node_id: str, now: float) -> None:
    attempt = run.nodes[node_id].attempt
    assert machine.claim(run, node_id, attempt, now)
    error = ErrorInfo.from_exception(ValueError("planned failure"))
    assert machine.fail(run, node_id, attempt, error, now) is not None


def test_reopen_reruns_ignored_node_whose_value_was_dropped() -> None:
    spec = _spec(chain(Signature("a").set(ignore_result=True), Signature("b")))
    run, _ = machine.start("run", spec, 0.0)
    _run_node(run, "0", 5, 1.0)
    _fail_node(run, "1", 2.0)
    assert run.status == "failed"
    assert run.nodes["0"].value is None
    assert machine.nodes_to_reopen(run) == {"0", "1"}
    effects = machine.reopen(run, 3.0)
    assert [effect.node for effect in effects if isinstance(effect, machine.Enqueue)]
    assert run.nodes["0"].state == "queued"
    assert run.open_readers == {"0": 1}
    _run_node(run, "0", 7, 4.0)
    assert run.nodes["0"].value == "7"
    assert machine.resolve_input(run, spec.node("1")) == (True, 7)
    _run_node(run, "1", 8, 5.0)
    assert run.nodes["0"].value is None
    assert run.status == "succeeded"
    assert machine.group_counts(run) == {None: {"succeeded": 2}}


def test_reopen_reruns_succeeded_readers_of_a_rerun_ignored_node() -> None:
    readers = group(Signature("b"), Signature("c"))
    spec = _spec(chain(Signature("a").set(ignore_result=True), readers))
    run, _ = machine.start("run", spec, 0.0)
    _run_node(run, "0", 5, 1.0)
    _run_node(run, "1", 6, 2.0)
    _fail_node(run, "2", 3.0)
    assert run.nodes["0"].value is None
    assert machine.nodes_to_reopen(run) == {"0", "1", "2"}
    machine.reopen(run, 4.0)
    assert run.open_readers == {"0": 2}


# -- state counts ---------------------------------------------------------------------


def test_group_counts_of_new_run() -> None:
    spec = _spec(chain(group(Signature("a"), Signature("b")), Signature("c")))
    run, _ = machine.start("run", spec, 0.0)
    assert machine.group_counts(run) == {0: {"queued": 2}, None: {"pending": 1}}


# -- the in-process driver -----------------------------------------------------------


def test_memory_run_expires_after_retention() -> None:
    clock = _Clock()
    driver = MemoryDriver(clock=clock, retention_s=60.0)
    spec = _spec(Signature("a"))
    assert driver.submit("run", spec)
    clock.now += 3600.0
    assert driver.snapshot("run").status == "running"
    driver.cancel("run")
    clock.now += 59.0
    assert driver.snapshot("run").status == "cancelled"
    clock.now += 1.0
    with pytest.raises(RunNotFound, match=r"retention_s \(60.0 s\)"):
        driver.snapshot("run")
    assert driver.runs() == []
    assert driver.submit("run", spec)


def test_memory_reopened_run_does_not_expire_while_running() -> None:
    clock = _Clock()
    driver = MemoryDriver(clock=clock, retention_s=60.0)
    assert driver.submit("run", _spec(Signature("a")))
    driver.cancel("run")
    clock.now += 59.0
    assert driver.retry_run("run") == 2
    clock.now += 3600.0
    assert driver.snapshot("run").status == "running"
    driver.cancel("run")
    clock.now += 59.0
    assert driver.snapshot("run").status == "cancelled"
    clock.now += 1.0
    with pytest.raises(RunNotFound):
        driver.snapshot("run")
    kinds = [(event.kind, event.status) for event in driver.events()]
    assert kinds == [
        ("submitted", ""),
        ("ended", "cancelled"),
        ("reopened", ""),
        ("ended", "cancelled"),
    ]


def test_memory_event_ids_grow() -> None:
    clock = _Clock()
    driver = MemoryDriver(clock=clock)
    for index in range(3):
        driver.submit(f"run-{index}", _spec(Signature("a")))
    ids = [event.id for event in driver.events()]
    assert ids == ["1000000-0", "1000000-1", "1000000-2"]
    with pytest.raises(ValueError, match="Event id 'x-y' is invalid"):
        driver.events(after="x-y")


# -- settings and the worker's size check ------------------------------------------


def test_settings_defaults_are_valid() -> None:
    assert settings.check_retention_s(settings.DEFAULT_RETENTION_S) == 604800.0
    assert settings.check_max_value_bytes(settings.DEFAULT_MAX_VALUE_BYTES) == 2**21
    assert settings.check_events_max_len(settings.DEFAULT_EVENTS_MAX_LEN) == 10_000


@pytest.mark.parametrize("value", [0, -1, 1.0, None, True])
def test_invalid_events_max_len(value: Any) -> None:
    with pytest.raises(ValueError, match=r"events_max_len .* is invalid"):
        settings.check_events_max_len(value)


def test_events_flag_must_be_bool() -> None:
    with pytest.raises(ValueError, match="pass True or False"):
        MemoryDriver(events=1)  # type: ignore[arg-type]


def _claim() -> Claim:
    return Claim(
        Message("run", "0", 1),
        "big",
        "run-0",
        [],
        {},
        _spec(Signature("a")).nodes[0].options,
    )


@pytest.mark.parametrize(
    ("payload", "limit", "fails"),
    [
        ('"ab"', 4, False),
        ('"abc"', 4, True),
        ('"é"', 4, False),
        ('"éé"', 5, True),
        ('"' + "x" * 100 + '"', None, False),
    ],
)
def test_value_size_check(payload: str, limit: int | None, fails: bool) -> None:
    outcome = _check_value_size(Outcome("succeeded", payload), _claim(), limit)
    assert (outcome.kind == "failed") is fails
    if fails:
        assert outcome.error is not None
        assert outcome.error.qualname == "ValueTooLarge"
        assert f"more than max_value_bytes ({limit:,} bytes)" in outcome.error.message
