"""Races of a sharded chord's submit with the end of its home run."""

from __future__ import annotations

from typing import Any

from stem.canvas.values import dumps
from stem.drivers.redis import RedisDriver
from stem.drivers.redis.shards import shard_run_id

from .shard_helpers import chord_spec, make_driver
from .test_redis_shards import _apply_outbox_once, _drain


def _submit_cancelled_midway(driver: RedisDriver, monkeypatch: Any) -> None:
    """Submit run "race", cancelling it when its second shard is staged.

    The submitter has read the home run as running just before, and a
    worker applies the cancel's outbox entries at once.
    """
    original = driver._scripts.call
    sealed: list[str] = []
    cancelled: list[bool] = []

    def call(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "seal":
            sealed.append(kwargs["run_id"])
        if name == "stage" and len(sealed) == 1 and not cancelled:
            cancelled.append(True)
            driver.cancel("race")
            _apply_outbox_once(driver)
        return original(name, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(driver._scripts, "call", call)
        driver.submit("race", chord_spec(12))
    assert cancelled


def test_cancel_during_submit_runs_no_member(
    redis_target: Any, monkeypatch: Any
) -> None:
    driver = make_driver(redis_target, shard_size=5, submitter_starts=True)
    try:
        _submit_cancelled_midway(driver, monkeypatch)
        assert driver.snapshot("race").status == "cancelled"
        ran = _drain(driver)
        for first in ("5", "10"):
            keys = driver._keys.run(shard_run_id("race", first))
            status = driver._client.hget(keys.run, "status")
            assert status in (None, "cancelled"), (first, status)
        assert [task for task, _ in ran if task == "add"] == []
        assert driver.snapshot("race").status == "cancelled"
        home_ttl = driver._client.ttl(driver._keys.run("race").run)
        late_ttl = driver._client.ttl(driver._keys.run(shard_run_id("race", "5")).run)
        assert home_ttl > 0
        assert late_ttl > 0
    finally:
        driver.close()


def test_retry_after_cancel_during_submit(redis_target: Any, monkeypatch: Any) -> None:
    driver = make_driver(redis_target, shard_size=5, submitter_starts=True)
    try:
        _submit_cancelled_midway(driver, monkeypatch)
        _drain(driver)
        for first in ("0", "5", "10"):
            keys = driver._keys.run(shard_run_id("race", first))
            assert driver._client.hget(keys.run, "status") == "cancelled", first
        assert driver.retry_run("race") == 2
        _drain(driver)
        snapshot = driver.snapshot("race")
        assert snapshot.status == "succeeded"
        assert snapshot.value == dumps([2 * i for i in range(12)])
    finally:
        driver.close()
