"""Run retries on Redis at the script level: epochs of stream entries and leases.

The conformance suite runs retries on every driver through a worker. These
tests drive `RedisDriver` by hand, to check what only Redis has: the epoch in
each stream entry, a lease renewal from an older epoch, and a reopen script
that is sent again.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis

from stem.canvas import Signature, compile_canvas
from stem.drivers.redis import RedisDriver
from stem.engine.ports import Claim
from stem.engine.records import ErrorInfo

TIMEOUT_S = 5.0
ERROR = ErrorInfo("builtins", "RuntimeError", "planned failure")


@pytest.fixture
def driver(redis_url: str) -> Iterator[RedisDriver]:
    made = RedisDriver(redis_url, prefix=f"retry-{uuid.uuid4().hex[:12]}:")
    yield made
    made.close()


def failed_run_with_running_errback(driver: RedisDriver) -> tuple[str, Claim]:
    """Fail a task whose errback is then claimed; return the run id and that claim."""
    canvas = Signature("task").on_error(Signature("errback"))
    run_id = f"run-{uuid.uuid4().hex[:8]}"
    assert driver.submit(run_id, compile_canvas(canvas))
    [message] = driver.fetch(["default"], 1, TIMEOUT_S)
    claim = driver.claim(message)
    assert claim is not None
    driver.fail(claim.message, ERROR)
    [errback_message] = driver.fetch(["default"], 1, TIMEOUT_S)
    errback_claim = driver.claim(errback_message)
    assert errback_claim is not None
    assert driver.snapshot(run_id).status == "failed"
    return run_id, errback_claim


def test_stream_entries_carry_new_epoch(driver: RedisDriver) -> None:
    run_id, _ = failed_run_with_running_errback(driver)

    assert driver.retry_run(run_id) == 2

    [message] = driver.fetch(["default"], 1, TIMEOUT_S)
    assert message.epoch == 2
    assert message.node_id == "0"
    assert message.attempt == 1


def test_renew_from_old_epoch_fails(driver: RedisDriver) -> None:
    run_id, errback_claim = failed_run_with_running_errback(driver)
    assert driver.renew(errback_claim.message)

    driver.retry_run(run_id)
    assert not driver.renew(errback_claim.message)
    snapshot = driver.snapshot(run_id)
    assert snapshot.nodes["1"].state == "pending"
    assert snapshot.nodes["1"].attempt == 0

    # The task fails again, and the new epoch's errback runs with the same
    # attempt and lease numbers as the old one: only the epoch fences it.
    [message] = driver.fetch(["default"], 1, TIMEOUT_S)
    claim = driver.claim(message)
    assert claim is not None
    driver.fail(claim.message, ERROR)
    [errback_message] = driver.fetch(["default"], 1, TIMEOUT_S)
    new_claim = driver.claim(errback_message)
    assert new_claim is not None
    assert new_claim.message.attempt == errback_claim.message.attempt
    assert new_claim.message.lease == errback_claim.message.lease
    assert not driver.renew(errback_claim.message)
    assert driver.renew(new_claim.message)


def _reopen_keys(driver: RedisDriver, run_id: str) -> list[str]:
    """Return the keys of the reopen script for a run, in script order."""
    partition = driver._keys.partition_of(run_id)
    run_keys = partition.run(run_id)
    return [*run_keys.all(), partition.delayed, run_keys.counts, partition.events]


def test_reopen_sent_again_changes_nothing(driver: RedisDriver, redis_url: str) -> None:
    run_id, _ = failed_run_with_running_errback(driver)
    keys = _reopen_keys(driver, run_id)

    first = driver._scripts.call("reopen", keys, [run_id, "1"], run_id=run_id)
    again = driver._scripts.call("reopen", keys, [run_id, "1"], run_id=run_id)

    assert first == [1, 2]
    assert again == [0, 2]
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        entries = client.xrange(driver._keys.partition_of(run_id).queue("default"))
    finally:
        client.close()
    epochs = [entry["epoch"] for _entry_id, entry in entries]
    assert epochs.count("2") == 1


def test_reopen_reply_for_running_run(driver: RedisDriver) -> None:
    run_id = f"run-{uuid.uuid4().hex[:8]}"
    assert driver.submit(run_id, compile_canvas(Signature("task")))
    keys = _reopen_keys(driver, run_id)

    reply = driver._scripts.call("reopen", keys, [run_id, "1"], run_id=run_id)

    assert reply == [-4, "running"]
    assert driver.snapshot(run_id).epoch == 1


def test_replaced_errback_canvas_kept(driver: RedisDriver) -> None:
    canvas = Signature("task").on_error(Signature("errback"))
    run_id = f"run-{uuid.uuid4().hex[:8]}"
    assert driver.submit(run_id, compile_canvas(canvas))
    for node_id in ("0", "1", "1.0"):
        [message] = driver.fetch(["default"], 1, TIMEOUT_S)
        assert message.node_id == node_id
        claim = driver.claim(message)
        assert claim is not None
        if node_id == "1":
            driver.replace(claim.message, compile_canvas(Signature("x")))
        else:
            driver.fail(claim.message, ERROR)
    assert driver.snapshot(run_id).status == "failed"

    driver.retry_run(run_id)

    snapshot = driver.snapshot(run_id)
    states = {node_id: record.state for node_id, record in snapshot.nodes.items()}
    assert states == {"0": "queued", "1": "succeeded", "1.0": "failed"}
    [message] = driver.fetch(["default"], 1, TIMEOUT_S)
    assert (message.node_id, message.epoch) == ("0", 2)
