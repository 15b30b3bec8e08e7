"""Every path of a one-node run kept in its run hash, against the usual keys.

submit.lua keeps a run of one node in its run hash alone, and every change
other than a claim, a renewal or a success first moves it to the usual keys
(lua/include/single.lua). Each case runs the same steps on a driver with
the scripts as shipped and on one whose submit.lua never keeps a run that
way. It then compares every key that each driver wrote, the snapshot, the
state counts and the events. A run still in one key is moved to the usual
keys in Python before the keys are compared. A run that ended must have a
TTL on every key it has.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis

from stem import App, chord, group
from stem.canvas import Canvas
from stem.canvas.compiler import compile_canvas
from stem.drivers.redis import RedisDriver
from stem.drivers.redis import scripts as scripts_module
from stem.engine.errors import RunNotRetryable
from stem.engine.ports import Message, RunSnapshot
from stem.engine.records import ErrorInfo

from .test_redis_one_node_path import _long_path_source, _state

TIMEOUT_S = 5.0
#: Visibility timeout of the cases that take a message over, in seconds.
SHORT_VISIBILITY_S = 0.3
RETENTION_S = 600.0
ERROR = ErrorInfo("builtins", "RuntimeError", "planned failure")

_app = App("memory://")
_add = _app.task(name="add")(lambda x, y: x + y)
_total = _app.task(name="total")(sum)


def _next_message(driver: RedisDriver) -> Message:
    [message] = driver.fetch(["default"], 1, TIMEOUT_S)
    return message


def _claimed(driver: RedisDriver) -> Message:
    claim = driver.claim(_next_message(driver))
    assert claim is not None
    return claim.message


def _run_once(driver: RedisDriver, run_id: str) -> None:
    driver.complete(_claimed(driver), "2")


def _cancel_queued(driver: RedisDriver, run_id: str) -> None:
    driver.cancel(run_id)


def _cancel_running(driver: RedisDriver, run_id: str) -> None:
    message = _claimed(driver)
    driver.cancel(run_id)
    driver.complete(message, "2")


def _cancel_succeeded(driver: RedisDriver, run_id: str) -> None:
    _run_once(driver, run_id)
    driver.cancel(run_id)


def _late_fail(driver: RedisDriver, run_id: str) -> None:
    message = _claimed(driver)
    driver.complete(message, "2")
    driver.fail(message, ERROR)


def _late_dead_letter(driver: RedisDriver, run_id: str) -> None:
    message = _claimed(driver)
    driver.complete(message, "2")
    driver.dead_letter(message, "late")


def _dead_letter_queued(driver: RedisDriver, run_id: str) -> None:
    driver.dead_letter(_next_message(driver), "poison")


def _dead_letter_running(driver: RedisDriver, run_id: str) -> None:
    driver.dead_letter(_claimed(driver), "poison")


def _defer_then_run(driver: RedisDriver, run_id: str) -> None:
    assert driver.defer(_next_message(driver), 0.0)
    _run_once(driver, run_id)


def _retry_then_run(driver: RedisDriver, run_id: str) -> None:
    driver.retry(_claimed(driver), ERROR, 0.0)
    _run_once(driver, run_id)


def _replay_dead_letter(driver: RedisDriver, run_id: str) -> None:
    driver.dead_letter(_next_message(driver), "poison")
    [entry], _ = driver.list_dead_letters()
    assert driver.replay_dead_letter(entry.id) == "replayed"
    _run_once(driver, run_id)


def _retry_dead_lettered_run(driver: RedisDriver, run_id: str) -> None:
    driver.dead_letter(_next_message(driver), "poison")
    driver.retry_run(run_id)
    _run_once(driver, run_id)


def _retry_succeeded_run(driver: RedisDriver, run_id: str) -> None:
    _run_once(driver, run_id)
    with pytest.raises(RunNotRetryable):
        driver.retry_run(run_id)


def _take_over(driver: RedisDriver) -> tuple[Message, Message]:
    """Claim the message, let its visibility timeout pass and claim it again."""
    first = _claimed(driver)
    time.sleep(SHORT_VISIBILITY_S * 2)
    second = _claimed(driver)
    assert second.lease == first.lease + 1
    return first, second


def _take_over_and_run(driver: RedisDriver, run_id: str) -> None:
    first, second = _take_over(driver)
    assert not driver.renew(first)
    assert driver.renew(second)
    driver.complete(first, "1")
    driver.complete(second, "2")


def _take_over_with_fenced_fail(driver: RedisDriver, run_id: str) -> None:
    first, second = _take_over(driver)
    driver.fail(first, ERROR)
    driver.complete(second, "2")


def _abandon_running(driver: RedisDriver, run_id: str) -> None:
    # The second delivery is one more than max_deliveries allows, so fetch
    # dead-letters the message of the running node, and the late report of
    # its first holder finds the node failed.
    message = _claimed(driver)
    time.sleep(SHORT_VISIBILITY_S * 2)
    assert driver.fetch(["default"], 1, SHORT_VISIBILITY_S) == []
    driver.complete(message, "2")


def _submit_only(driver: RedisDriver, run_id: str) -> None:
    return None


def _claim_only(driver: RedisDriver, run_id: str) -> None:
    _claimed(driver)


Steps = Callable[[RedisDriver, str], None]
#: Case name: the canvas, the steps and the driver settings of the case.
CASES: dict[str, tuple[Canvas, Steps, dict[str, Any]]] = {
    "submitted": (_add.s(1, 1), _submit_only, {}),
    "claimed": (_add.s(1, 1), _claim_only, {}),
    "succeeded": (_add.s(1, 1), _run_once, {}),
    "succeeded without retention": (_add.s(1, 1), _run_once, {"retention_s": None}),
    "succeeded without events": (_add.s(1, 1), _run_once, {"events": False}),
    "cancel succeeded without retention": (
        _add.s(1, 1),
        _cancel_succeeded,
        {"retention_s": None},
    ),
    "chord without header": (chord([], _total.s()), _run_once, {}),
    "nested groups": (group(group(_add.s(1, 1))), _run_once, {}),
    "nested groups cancelled": (group(group(_add.s(1, 1))), _cancel_succeeded, {}),
    "cancel eta": (
        _add.s(1, 1).set(eta=datetime.now(UTC) + timedelta(minutes=5)),
        _cancel_queued,
        {},
    ),
    "cancel queued": (_add.s(1, 1), _cancel_queued, {}),
    "cancel delayed": (_add.s(1, 1).set(countdown=60), _cancel_queued, {}),
    "cancel running": (_add.s(1, 1), _cancel_running, {}),
    "cancel succeeded": (_add.s(1, 1), _cancel_succeeded, {}),
    "cancel group of one": (group(_add.s(1, 1)), _cancel_succeeded, {}),
    "late fail": (_add.s(1, 1), _late_fail, {}),
    "late dead letter": (_add.s(1, 1), _late_dead_letter, {}),
    "late dead letter ignore_result": (
        _add.s(1, 1).set(ignore_result=True),
        _late_dead_letter,
        {},
    ),
    "dead letter queued": (_add.s(1, 1), _dead_letter_queued, {}),
    "dead letter running": (_add.s(1, 1), _dead_letter_running, {}),
    "defer": (_add.s(1, 1), _defer_then_run, {}),
    "retry group of one": (group(_add.s(1, 1)), _retry_then_run, {}),
    "retry ignore_result": (
        _add.s(1, 1).set(ignore_result=True),
        _retry_then_run,
        {},
    ),
    "replay dead letter": (_add.s(1, 1), _replay_dead_letter, {}),
    "retry dead-lettered run": (_add.s(1, 1), _retry_dead_lettered_run, {}),
    "retry succeeded run": (_add.s(1, 1), _retry_succeeded_run, {}),
    "takeover": (
        _add.s(1, 1),
        _take_over_and_run,
        {"visibility_timeout_s": SHORT_VISIBILITY_S},
    ),
    "abandoned while running": (
        _add.s(1, 1),
        _abandon_running,
        {"visibility_timeout_s": SHORT_VISIBILITY_S, "max_deliveries": 1},
    ),
    "takeover fenced fail": (
        _add.s(1, 1),
        _take_over_with_fenced_fail,
        {"visibility_timeout_s": SHORT_VISIBILITY_S},
    ),
}


def _snapshot_view(snapshot: RunSnapshot) -> dict[str, Any]:
    """Return what a snapshot shows, with each time replaced by whether it is set."""
    nodes = {
        node_id: (
            record.state,
            record.attempt,
            record.lease,
            record.value,
            record.error,
            record.cause,
            record.replaced,
            record.queued_at is None,
            record.started_at is None,
            record.ended_at is None,
        )
        for node_id, record in snapshot.nodes.items()
    }
    return {
        "status": snapshot.status,
        "value": snapshot.value,
        "error_node": snapshot.error_node,
        "epoch": snapshot.epoch,
        "ended": snapshot.ended_at is not None,
        "nodes": nodes,
    }


def _event_view(driver: RedisDriver, run_id: str) -> list[tuple[str, str, int, str]]:
    return [
        (event.kind, event.node_id, event.attempt, event.status)
        for event in driver.events(limit=1000)
        if event.run_id == run_id
    ]


def _run_ttls(client: Any, prefix: str, run_id: str) -> dict[str, int]:
    """Return each key of a run with its TTL in milliseconds (-1 for none)."""
    return {
        key: client.pttl(key)
        for key in client.scan_iter(match=f"{prefix}*run:{run_id}*")
    }


#: Cases also run on a Redis Cluster, where every script runs on the
#: primary of the run's partition.
CLUSTER_CASES = ("succeeded", "cancel succeeded", "late dead letter", "takeover")


def _compare_paths(
    url: str, client: Any, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    """Run one case on both drivers and compare what they wrote and read."""
    canvas, steps, settings = CASES[case]
    spec = compile_canvas(canvas)
    assert len(spec.nodes) == 1
    short_prefix = f"test-{uuid.uuid4().hex[:12]}:"
    long_prefix = f"test-{uuid.uuid4().hex[:12]}:"
    settings = {"retention_s": RETENTION_S, **settings}
    short = RedisDriver(url, prefix=short_prefix, **settings)
    monkeypatch.setattr(scripts_module, "load_source", _long_path_source)
    long = RedisDriver(url, prefix=long_prefix, **settings)
    try:
        for driver in (short, long):
            assert driver.submit("one", spec)
            steps(driver, "one")
        short_state = _state(client, short_prefix)
        assert any(key.endswith(":run:one") for key in short_state)
        assert short_state == _state(client, long_prefix)
        short_snapshot = short.snapshot("one")
        assert _snapshot_view(short_snapshot) == _snapshot_view(long.snapshot("one"))
        assert short.group_counts("one") == long.group_counts("one")
        assert _event_view(short, "one") == _event_view(long, "one")
        # A second driver has no spec cached, so it reads the run another way.
        reader = RedisDriver(url, prefix=short_prefix)
        try:
            assert _snapshot_view(reader.snapshot("one")) == _snapshot_view(
                short_snapshot
            )
        finally:
            reader.close()
        ttls = _run_ttls(client, short_prefix, "one")
        assert ttls
        if short_snapshot.status == "running" or settings["retention_s"] is None:
            for key, ttl in ttls.items():
                assert ttl == -1, key
        else:
            for key, ttl in ttls.items():
                assert 0 < ttl <= RETENTION_S * 1000, key
    finally:
        short.close()
        long.close()


@pytest.mark.parametrize("case", CASES)
def test_single_layout_matches_usual_keys(
    redis_url: str, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        _compare_paths(redis_url, client, monkeypatch, case)
    finally:
        client.close()


@pytest.mark.parametrize("case", CLUSTER_CASES)
def test_single_layout_on_cluster(
    redis_targets: Callable[[str], Any], monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    target = redis_targets("cluster")
    client = target.client()
    try:
        _compare_paths(target.url, client, monkeypatch, case)
    finally:
        client.close()
