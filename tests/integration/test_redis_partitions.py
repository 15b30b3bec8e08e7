"""Partitions of the Redis driver on a single node and on a 3-primary Cluster.

The stored partition list, how runs spread over it, where the Cluster puts
the partitions, the ``partitions`` URL option, fetching across partitions,
and reloading scripts that a pipeline finds missing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from typing import Any

import pytest
from redis.cluster import RedisCluster

from stem import App
from stem.canvas.compiler import compile_canvas
from stem.drivers.redis import RedisDriver
from stem.drivers.redis.connection import parse_url
from stem.drivers.redis.keys import partition_index, partition_list
from stem.drivers.redis.partitions import primary_of, slot_owners
from stem.drivers.redis.scripts import SCRIPT_NAMES, is_missing_script, load_source

from .script_helpers import flush_scripts, has_library, primaries

TIMEOUT_S = 10.0


def _prefix() -> str:
    return f"test-{uuid.uuid4().hex[:12]}:"


def _driver(target: Any, **settings: Any) -> RedisDriver:
    return RedisDriver(target.url, **{**target.settings, **settings})


def _add_spec() -> Any:
    add = App("memory://").task(name="add")(lambda x, y: x + y)
    return compile_canvas(add.s(1, 1))


def test_every_primary_holds_partition(redis_cluster_url: str) -> None:
    driver = RedisDriver(redis_cluster_url, prefix=_prefix())
    client = RedisCluster.from_url(
        redis_cluster_url.replace("redis+cluster://", "redis://"),
        decode_responses=True,
    )
    try:
        tags = driver._keys.tags
        primaries = set(slot_owners(client).values())
        holders = [primary_of(client, tag) for tag in tags]

        assert len(primaries) == 3
        assert set(holders) == primaries
        assert len(tags) == 6
        assert all(holders.count(primary) == 2 for primary in primaries)
    finally:
        client.close()
        driver.close()


def test_cluster_partitions_below_primaries_rejected(redis_cluster_url: str) -> None:
    with pytest.raises(ValueError, match="partitions is 2, but the Cluster has 3"):
        RedisDriver(redis_cluster_url, prefix=_prefix(), partitions=2)


def test_partition_list_stored_once(
    redis_target: Any, caplog: pytest.LogCaptureFixture
) -> None:
    prefix = _prefix()
    first = _driver(redis_target, prefix=prefix)
    caplog.set_level(logging.WARNING, logger="stem.drivers.redis.partitions")
    second = _driver(redis_target, prefix=prefix, partitions=9)
    client = redis_target.client()
    try:
        stored = json.loads(client.get(partition_list(prefix)))

        assert stored == first._keys.tags
        assert second._keys.tags == stored
        assert len(set(stored)) == len(stored)
        [record] = caplog.records
        assert f"Using the {len(stored)} partitions stored under" in record.message
        assert "ignoring the requested count of 9" in record.message
    finally:
        client.close()
        first.close()
        second.close()


def test_url_option_sets_partitions(redis_url: str) -> None:
    driver = RedisDriver(f"{redis_url}?partitions=3", prefix=_prefix())
    try:
        assert driver._keys.tags == ["{stem:p0}", "{stem:p1}", "{stem:p2}"]
    finally:
        driver.close()


@pytest.mark.parametrize("value", ["0", "-1", "three", "2.5", ""])
def test_invalid_url_partitions_rejected(value: str) -> None:
    with pytest.raises(ValueError, match=f"partitions={value!r} in the URL"):
        parse_url(f"redis://127.0.0.1:1/0?partitions={value}")


def test_url_and_setting_must_agree() -> None:
    with pytest.raises(ValueError, match="give the count in one place"):
        parse_url("redis://127.0.0.1:1/0?partitions=3", 4)


def test_cluster_url_read_for_redis_py() -> None:
    target = parse_url("redis+cluster://127.0.0.1:7000?partitions=6&socket_timeout=2")

    assert target.cluster
    assert target.partitions == 6
    assert target.client_url == "redis://127.0.0.1:7000?socket_timeout=2"


def test_runs_spread_over_partitions(redis_target: Any) -> None:
    driver = _driver(redis_target, prefix=_prefix(), partitions=3)
    client = redis_target.client()
    spec = _add_spec()
    run_ids = [f"spread-{number}" for number in range(24)]
    try:
        count = len(driver._keys.tags)
        for run_id in run_ids:
            assert driver.submit(run_id, spec)
        used = {partition_index(run_id, count) for run_id in run_ids}
        for run_id in run_ids:
            home = driver._keys.partition_of(run_id)
            others = [keys for keys in driver._keys.partitions if keys != home]
            assert client.exists(home.run(run_id).run) == 1
            assert all(client.exists(keys.run(run_id).run) == 0 for keys in others)

        done = 0
        while done < len(run_ids):
            batch = driver.fetch(["default"], 8, TIMEOUT_S)
            assert batch, "No message was fetched while runs were still queued."
            for message in batch:
                claim = driver.claim(message)
                assert claim is not None
                driver.complete(message, "2")
                done += 1

        assert len(used) == count
        assert all(driver.snapshot(run_id).status == "succeeded" for run_id in run_ids)
    finally:
        client.close()
        driver.close()


def test_fetch_keeps_limit_across_queues(redis_target: Any) -> None:
    prefix = _prefix()
    first = _driver(redis_target, prefix=prefix)
    second = _driver(redis_target, prefix=prefix)
    app = App("memory://")
    add = app.task(name="add")(lambda x, y: x + y)
    high = compile_canvas(add.s(1, 1).set(queue="high"))
    low = compile_canvas(add.s(2, 2).set(queue="low"))
    try:
        # Both runs in one partition, so one XREADGROUP returns both messages.
        count = len(first._keys.tags)
        home = partition_index("limit-high", count)
        run_low = next(
            f"limit-low-{number}"
            for number in range(1000)
            if partition_index(f"limit-low-{number}", count) == home
        )
        assert first.submit(run_low, low)
        assert first.submit("limit-high", high)

        [taken] = first.fetch(["high", "low"], 1, TIMEOUT_S)
        first.close()
        [handed_back] = second.fetch(["high", "low"], 1, TIMEOUT_S)

        assert taken.run_id == "limit-high"
        assert handed_back.run_id == run_low
        assert handed_back.reclaimed
        assert second.claim(handed_back) is not None
    finally:
        first.close()
        second.close()


def test_stale_buffered_message_reclaimed(redis_target: Any) -> None:
    driver = _driver(redis_target, prefix=_prefix(), visibility_timeout_s=0.0)
    app = App("memory://")
    add = app.task(name="add")(lambda x, y: x + y)
    try:
        count = len(driver._keys.tags)
        home = partition_index("stale-high", count)
        run_low = next(
            f"stale-low-{number}"
            for number in range(1000)
            if partition_index(f"stale-low-{number}", count) == home
        )
        assert driver.submit(run_low, compile_canvas(add.s(2, 2).set(queue="low")))
        assert driver.submit(
            "stale-high", compile_canvas(add.s(1, 1).set(queue="high"))
        )

        [taken] = driver.fetch(["high", "low"], 1, TIMEOUT_S)
        claim = driver.claim(taken)
        assert claim is not None
        driver.complete(claim.message, "2")
        [again] = driver.fetch(["high", "low"], 1, TIMEOUT_S)

        assert taken.run_id == "stale-high"
        assert again.run_id == run_low
        assert again.reclaimed
        assert driver.claim(again) is not None
    finally:
        driver.close()


def test_scripts_preloaded_on_every_primary(redis_target: Any) -> None:
    client = redis_target.client()
    nodes = primaries(client)
    shas = [
        hashlib.sha1(load_source(name).encode("utf-8")).hexdigest()
        for name in SCRIPT_NAMES
    ]
    try:
        for node in nodes:
            flush_scripts(node)

        driver = _driver(redis_target, prefix=_prefix())
        driver.close()

        for node in nodes:
            if driver._scripts.use_functions:
                assert has_library(node), node
                assert node.script_exists(*shas) == [False] * len(shas)
            else:
                assert node.script_exists(*shas) == [True] * len(shas)
                assert not has_library(node), node
    finally:
        client.close()


def test_pipeline_reloads_flushed_scripts(redis_target: Any) -> None:
    driver = _driver(redis_target, prefix=_prefix())
    client = redis_target.client()
    calls: list[tuple[str, list[str], list[str | int | float]]] = [
        ("promote", [partition.delayed], ["10"])
        for partition in driver._keys.partitions
    ]
    try:
        for node in primaries(client):
            flush_scripts(node)

        missing = driver._scripts._pipeline(calls)
        replies = driver._scripts.call_many(calls)

        assert all(is_missing_script(reply) for reply in missing), missing
        assert replies == [0] * len(calls)
    finally:
        client.close()
        driver.close()
