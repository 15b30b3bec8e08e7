"""The `Operations` port on every driver: runs, queues, dead letters, heartbeats."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import pytest

from stem import chain, chord, group
from stem.canvas.primitives import Signature
from stem.engine.ports import PurgedQueue, WorkerBeat
from stem.errors import DeadLettered, RunNotFound

from .conftest import TIMEOUT_S, Kit


def _beat(name: str, in_flight: int = 0) -> WorkerBeat:
    now = time.time()
    return WorkerBeat(
        name=name,
        host="host",
        pid=123,
        queues=["default"],
        concurrency=2,
        pool="threads",
        in_flight=in_flight,
        processed=0,
        failed=0,
        started_at=now,
        last_seen=now,
    )


def test_runs_listed_newest_first_in_pages(kit: Kit) -> None:
    ids = [kit.add.delay(i, i).id for i in range(3)]
    driver = kit.app.driver

    first = driver.list_runs(limit=2)
    assert first.cursor is not None
    second = driver.list_runs(limit=2, cursor=first.cursor)

    assert [run.run_id for run in first.runs] == [ids[2], ids[1]]
    assert [run.run_id for run in second.runs] == [ids[0]]
    assert second.cursor is None
    assert {run.status for run in first.runs} == {"running"}


@pytest.mark.parametrize("cursor", ["x", "nan", "inf", "1e999|r"])
def test_runs_bad_cursor_rejected(kit: Kit, cursor: str) -> None:
    kit.add.delay(1, 1)

    with pytest.raises(ValueError, match=r"Cursor .* is invalid"):
        kit.app.driver.list_runs(limit=2, cursor=cursor)


def test_runs_filtered_by_status_and_age(kit: Kit) -> None:
    with kit.app.worker(concurrency=1):
        done = kit.add.delay(1, 1)
        failed = kit.fail.delay()
        assert done.get(TIMEOUT_S) == 2
        failed.get(TIMEOUT_S, propagate=False)
    waiting = kit.add.delay(2, 2)
    driver = kit.app.driver

    failed_only = driver.list_runs(statuses=["failed"])
    running_only = driver.list_runs(statuses=["running"])
    newer = driver.list_runs(created_after=time.time() + 3600)
    older = driver.list_runs(created_before=time.time() + 3600)

    assert [run.run_id for run in failed_only.runs] == [failed.id]
    assert [run.run_id for run in running_only.runs] == [waiting.id]
    assert newer.runs == []
    assert len(older.runs) == 3
    assert failed_only.runs[0].ended_at is not None


def test_expired_runs_not_listed(make_kit: Callable[..., Kit]) -> None:
    kit = make_kit(retention_s=0.2)
    driver = kit.app.driver
    ended = kit.add.delay(1, 1)
    ended.cancel()
    running = kit.add.delay(2, 2)
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        try:
            ended.snapshot()
        except RunNotFound:
            break
        assert time.monotonic() < deadline, f"Run {ended.id} never expired"
        time.sleep(0.05)

    page = driver.list_runs()

    assert [run.run_id for run in page.runs] == [running.id]
    assert page.cursor is None


def test_replayed_run_kept_while_running(make_kit: Callable[..., Kit]) -> None:
    # Long enough to replay the failed run before it expires on a busy host.
    kit = make_kit(retention_s=2.0)
    driver = kit.app.driver
    with kit.app.worker(concurrency=1, unknown_task_grace_s=0):
        result = kit.app.submit(chain(Signature("late_task"), kit.wait_gate.s()))
        result.get(TIMEOUT_S, propagate=False)
        [dead], _ = driver.list_dead_letters()
        kit.app.task(name="late_task")(lambda: "value")

        assert driver.replay_dead_letter(dead.id) == "replayed"
        _wait(lambda: bool(kit.called("wait_gate")), "wait_gate to start")
        # More than a retention passes while the replayed run runs again.
        time.sleep(3.0)
        assert result.state == "running"
        kit.gate.set()
        assert result.get(TIMEOUT_S) == "opened"


def test_queue_stats_and_purge(kit: Kit) -> None:
    result = kit.app.submit(group(kit.add.s(1, 1), kit.add.s(2, 2), kit.add.s(3, 3)))
    other = kit.app.submit(kit.add.s(4, 4))
    driver = kit.app.driver

    stats = {item.name: item for item in driver.queue_stats()}
    purged = driver.purge_queue("default")
    after = {item.name: item for item in driver.queue_stats()}

    assert stats["default"].ready == 4
    assert stats["default"].unacked == 0
    assert purged.count == 4
    # Each run once. Runs in different partitions may come in either order.
    assert sorted(purged.run_ids) == sorted([result.id, other.id])
    assert after.get("default") is None or after["default"].ready == 0
    assert result.state == "running"
    assert driver.purge_queue("no-such-queue") == PurgedQueue(0, [])


def test_dead_letter_replay_completes_run(kit: Kit) -> None:
    canvas = chain(kit.echo.s(5), Signature("late_task"), kit.add.s(100))
    driver = kit.app.driver
    with kit.app.worker(concurrency=1, unknown_task_grace_s=0):
        result = kit.app.submit(canvas)
        assert isinstance(result.get(TIMEOUT_S, propagate=False), DeadLettered)
        page, cursor = driver.list_dead_letters()
        assert cursor is None
        [dead] = page
        assert driver.get_dead_letter(dead.id) == dead
        assert dead.message.node_id == "1"
        assert result.node("2").state == "cancelled"

        kit.app.task(name="late_task")(lambda value: value * 2)
        outcome = driver.replay_dead_letter(dead.id)

        assert outcome == "replayed"
        assert result.get(TIMEOUT_S) == 110
    assert driver.list_dead_letters() == ([], None)
    assert result.node("1").state == "succeeded"
    assert driver.snapshot(result.id).nodes["1"].attempt == 2
    assert driver.replay_dead_letter(dead.id) == "not_found"


def test_replay_reopens_chord_callback(kit: Kit) -> None:
    canvas = chord([kit.add.s(1, 1), Signature("late_task", (3,))], kit.total.s())
    with kit.app.worker(concurrency=1, unknown_task_grace_s=0):
        result = kit.app.submit(canvas)
        result.get(TIMEOUT_S, propagate=False)
        [(message, _reason)] = kit.app.driver.dead_letters()
        [dead], _ = kit.app.driver.list_dead_letters()
        assert dead.message.node_id == message.node_id
        kit.app.task(name="late_task")(lambda value: value * 10)

        assert kit.app.driver.replay_dead_letter(dead.id) == "replayed"
        assert result.get(TIMEOUT_S) == 32
    assert kit.called("total") == [([2, 30],)]


def test_replay_rejects_node_no_longer_failed(kit: Kit) -> None:
    driver = kit.app.driver
    with kit.app.worker(concurrency=1, unknown_task_grace_s=0):
        result = kit.app.submit(chain(Signature("late_task"), kit.add.s(1)))
        result.get(TIMEOUT_S, propagate=False)
        [dead], _ = driver.list_dead_letters()
        kit.app.task(name="late_task")(lambda: 1)
        assert driver.replay_dead_letter(dead.id) == "replayed"
        assert result.get(TIMEOUT_S) == 2
        # A second dead letter of the same attempt, as a duplicate delivery
        # makes; without a receipt, Redis has no stream entry to acknowledge.
        driver.dead_letter(dataclasses.replace(dead.message, receipt=""), "duplicate")
    [again], _ = driver.list_dead_letters()

    assert driver.replay_dead_letter(again.id) == "not_failed"
    assert driver.get_dead_letter(again.id) is not None
    assert driver.purge_dead_letters([again.id]) == 1
    assert driver.purge_dead_letters() == 0


def test_replay_rejects_cancelled_run(kit: Kit) -> None:
    driver = kit.app.driver
    with kit.app.worker(concurrency=1, unknown_task_grace_s=0):
        result = kit.app.submit(group(Signature("late_task"), kit.wait_gate.s()))
        _wait(lambda: bool(driver.dead_letters()), "a dead letter")
        result.cancel()
        kit.gate.set()
    [dead], _ = driver.list_dead_letters()

    assert driver.replay_dead_letter(dead.id) == "run_cancelled"


def test_replay_rejects_dead_letter_of_earlier_epoch(kit: Kit) -> None:
    driver = kit.app.driver
    with kit.app.worker(concurrency=1, unknown_task_grace_s=0):
        result = kit.app.submit(chain(Signature("late_task"), kit.add.s(1)))
        result.get(TIMEOUT_S, propagate=False)
        [dead], _ = driver.list_dead_letters()
        # The retry's attempt 1 fails as the dead letter's attempt 1 did, so
        # only the epoch tells them apart.
        result.retry()
        result.get(TIMEOUT_S, propagate=False)
    node_id = dead.message.node_id
    snapshot = driver.snapshot(result.id)
    assert snapshot.epoch == 2
    assert snapshot.nodes[node_id].state == "failed"
    assert snapshot.nodes[node_id].attempt == dead.message.attempt

    assert driver.replay_dead_letter(dead.id) == "other_epoch"
    assert driver.get_dead_letter(dead.id) is not None
    assert driver.snapshot(result.id).nodes[node_id].state == "failed"


def test_dead_letters_paged(kit: Kit) -> None:
    driver = kit.app.driver
    with kit.app.worker(concurrency=1, unknown_task_grace_s=0):
        for _ in range(3):
            kit.app.submit(Signature("late_task")).get(TIMEOUT_S, propagate=False)

    first, cursor = driver.list_dead_letters(limit=2)
    rest, end = driver.list_dead_letters(limit=2, cursor=cursor)

    assert len(first) == 2
    assert len(rest) == 1
    assert end is None
    assert driver.purge_dead_letters() == 3


def test_heartbeats_list_expire_and_forget(kit: Kit) -> None:
    driver = kit.app.driver
    driver.heartbeat(_beat("b-worker", in_flight=1), ttl_s=TIMEOUT_S)
    driver.heartbeat(_beat("a-worker"), ttl_s=TIMEOUT_S)
    driver.heartbeat(_beat("short"), ttl_s=0.05)

    _wait(lambda: len(driver.workers()) == 2, "the short heartbeat expired")
    names = [beat.name for beat in driver.workers()]
    driver.forget_worker("a-worker")

    assert names == ["a-worker", "b-worker"]
    assert [beat.name for beat in driver.workers()] == ["b-worker"]
    assert driver.workers()[0].in_flight == 1


def test_worker_heartbeats_while_running(kit: Kit) -> None:
    worker = kit.app.worker(concurrency=1, name="beating")
    with worker:
        [beat] = kit.app.driver.workers()
        assert beat.name == "beating"
        assert beat.queues == ["default"]
    assert kit.app.driver.workers() == []


def _wait(condition: object, what: str) -> None:
    assert callable(condition)
    deadline = time.monotonic() + TIMEOUT_S
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"Timed out waiting for {what}.")
        time.sleep(0.02)


def test_replay_makes_settled_join_wait_again(kit: Kit) -> None:
    header = [Signature("late_task", (3,)), kit.wait_gate.s()]
    canvas = chord(header, kit.echo.s(), join="all_settled")
    driver = kit.app.driver
    with kit.app.worker(concurrency=2, unknown_task_grace_s=0):
        result = kit.app.submit(canvas)
        _wait(lambda: bool(driver.dead_letters()), "a dead letter")
        [dead], _ = driver.list_dead_letters()
        kit.app.task(name="late_task")(lambda value: value * 10)

        assert driver.replay_dead_letter(dead.id) == "replayed"
        _wait(lambda: result.node("0").state == "succeeded", "the replayed node")
        assert result.node("2").state == "pending"
        kit.gate.set()

        assert result.get(TIMEOUT_S) == [30, "opened"]


def test_default_worker_names_unique(kit: Kit) -> None:
    first = kit.app.worker(concurrency=1)
    second = kit.app.worker(concurrency=1)
    with first, second:
        names = sorted(beat.name for beat in kit.app.driver.workers())
        alive = kit.app.driver.workers_alive()

    assert names == sorted([first.name, second.name])
    assert first.name != second.name
    assert alive == 2


def test_cancel_drops_delayed_messages(kit: Kit) -> None:
    driver = kit.app.driver
    cancelled = kit.app.submit(
        group(kit.add.s(1, 1).set(countdown=3600), kit.add.s(2, 2).set(countdown=7200))
    )
    other = kit.app.submit(kit.add.s(3, 3).set(countdown=3600))
    assert driver.delayed_count() == 3

    cancelled.cancel()

    assert cancelled.state == "cancelled"
    assert driver.delayed_count() == 1
    assert other.state == "running"


def test_cancel_drops_retry_backoff(kit: Kit) -> None:
    @kit.app.task(name="retry_later", bind=True, max_retries=1)
    def retry_later(task: Any) -> None:
        task.retry(countdown=3600, exc=ValueError("not yet"))

    driver = kit.app.driver
    result = kit.app.submit(retry_later.s())
    with kit.app.worker(concurrency=1):
        _wait(lambda: driver.delayed_count() == 1, "the retry to wait its backoff")

    result.cancel()

    assert result.state == "cancelled"
    assert driver.delayed_count() == 0
