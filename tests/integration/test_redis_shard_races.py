"""Races of a sharded chord's submit with the end of its home run."""

from __future__ import annotations

from typing import Any

from stem.drivers.redis.shards import shard_run_id

from .shard_helpers import chord_spec, make_driver
from .test_redis_shards import _apply_outbox_once, _drain


def test_cancel_during_submit_runs_no_member(
    redis_target: Any, monkeypatch: Any
) -> None:
    driver = make_driver(redis_target, shard_size=5, submitter_starts=True)
    try:
        original = driver._scripts.call
        sealed: list[str] = []

        def call(name: str, *args: Any, **kwargs: Any) -> Any:
            if name == "seal":
                sealed.append(kwargs["run_id"])
            if name == "stage" and len(sealed) == 1 and not cancelled:
                # The submitter read the home run as running just before.
                cancelled.append(True)
                driver.cancel("race")
                # A worker applies the home run's outbox entries at once.
                _apply_outbox_once(driver)
            return original(name, *args, **kwargs)

        cancelled: list[bool] = []
        monkeypatch.setattr(driver._scripts, "call", call)
        driver.submit("race", chord_spec(12))
        monkeypatch.undo()
        assert cancelled
        assert driver.snapshot("race").status == "cancelled"
        ran = _drain(driver)
        for first in ("5", "10"):
            keys = driver._keys.run(shard_run_id("race", first))
            status = driver._client.hget(keys.run, "status")
            assert status in (None, "cancelled"), (first, status)
        assert [task for task, _ in ran if task == "add"] == []
        home_ttl = driver._client.ttl(driver._keys.run("race").run)
        late_ttl = driver._client.ttl(driver._keys.run(shard_run_id("race", "5")).run)
        assert home_ttl > 0
        assert late_ttl > 0
    finally:
        driver.close()
