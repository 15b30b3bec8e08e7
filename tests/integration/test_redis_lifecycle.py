"""Run lifecycle paths only Redis has: key TTLs and the cost of the scripts.

Behaviour shared with memory:// (expiry, counts, events, ignore_result) is
tested in tests/conformance/test_run_lifecycle.py.
"""

from __future__ import annotations

import hashlib
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from stem import App, chain, group
from stem.canvas.compiler import compile_canvas
from stem.drivers.redis import RedisDriver
from stem.drivers.redis.scripts import SCRIPT_NAMES, load_source
from stem.errors import RunNotFound

from .script_helpers import flush_scripts, has_library, script_command

TIMEOUT_S = 10.0
#: A retention long enough that no key expires while a test reads it.
LONG_RETENTION_S = 3600.0


def _prefix() -> str:
    return f"test-{uuid.uuid4().hex[:12]}:"


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    """Yield a plain client of the private server."""
    plain = redis.Redis.from_url(redis_url, decode_responses=True)
    yield plain
    plain.close()


def _run_keys(client: redis.Redis, prefix: str, run_id: str) -> dict[str, int]:
    """Return every key of a run that exists, with its TTL in milliseconds."""
    keys = client.keys(f"{prefix}*run:{run_id}*")
    return {key: client.pttl(key) for key in keys}


def test_ended_run_keys_all_expire(redis_url: str, client: redis.Redis) -> None:
    prefix = _prefix()
    app = App(redis_url, prefix=prefix, retention_s=LONG_RETENTION_S)

    @app.task(name="fail")
    def fail() -> None:
        raise ValueError("planned failure")

    @app.task(name="record")
    def record(task_id: str) -> str:
        return task_id

    try:
        # The run fails before any value exists, so the errback that runs
        # after the end creates the values hash.
        result = fail.s().apply_async(link_error=record.s())
        running = _run_keys(client, prefix, result.id)
        assert running
        assert all(ttl == -1 for ttl in running.values())
        with app.worker(concurrency=1):
            with pytest.raises(ValueError, match="planned failure"):
                result.get(TIMEOUT_S)
            _wait_for_state(result, "1", "succeeded")
        ended = _run_keys(client, prefix, result.id)
        assert any(key.endswith(":values") for key in ended)
        assert set(ended) >= set(running)
        for key, ttl in ended.items():
            assert 0 < ttl <= LONG_RETENTION_S * 1000, key
    finally:
        app.close()


def test_running_run_has_no_ttl(redis_url: str, client: redis.Redis) -> None:
    prefix = _prefix()
    driver = RedisDriver(redis_url, prefix=prefix, retention_s=0.001)
    app = App("memory://")
    add = app.task(name="add")(lambda x, y: x + y)
    try:
        assert driver.submit("run", compile_canvas(chain(add.s(1, 1), add.s(2))))
        [message] = driver.fetch(["default"], 1, TIMEOUT_S)
        claim = driver.claim(message)
        assert claim is not None
        driver.complete(claim.message, "2")
        ttls = _run_keys(client, prefix, "run")
        assert ttls
        assert all(ttl == -1 for ttl in ttls.values())
        assert driver.snapshot("run").status == "running"
    finally:
        driver.close()


def test_reopened_run_keys_lose_their_ttl(redis_url: str, client: redis.Redis) -> None:
    prefix = _prefix()
    driver = RedisDriver(redis_url, prefix=prefix, retention_s=LONG_RETENTION_S)
    app = App("memory://")
    add = app.task(name="add")(lambda x, y: x + y)
    try:
        assert driver.submit("run", compile_canvas(chain(add.s(1, 1), add.s(2))))
        [message] = driver.fetch(["default"], 1, TIMEOUT_S)
        claim = driver.claim(message)
        assert claim is not None
        driver.complete(claim.message, "2")
        driver.cancel("run")
        ended = _run_keys(client, prefix, "run")
        assert any(key.endswith(":counts") for key in ended)
        assert all(ttl > 0 for ttl in ended.values())
        assert driver.retry_run("run") == 2
        reopened = _run_keys(client, prefix, "run")
        assert set(reopened) == set(ended)
        assert all(ttl == -1 for ttl in reopened.values())
    finally:
        driver.close()


def _wait_for_state(result: Any, node_id: str, state: str) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while result.node(node_id).state != state:
        assert time.monotonic() < deadline, f"node {node_id} never became {state}"
        time.sleep(0.02)


def _script_calls(client: redis.Redis) -> int:
    """Return how many commands scripts and clients have run on the server.

    EVALSHA or FCALL, SCRIPT or FUNCTION commands (loading the scripts) and
    INFO are left out, so the count is the script's own commands.
    """
    stats: dict[str, Any] = client.info("commandstats")
    skipped = (
        "cmdstat_info",
        "cmdstat_evalsha",
        "cmdstat_eval",
        "cmdstat_script",
        "cmdstat_fcall",
        "cmdstat_function",
    )
    return sum(
        int(entry["calls"])
        for name, entry in stats.items()
        if not name.startswith(skipped)
    )


def _complete_one_member(driver: RedisDriver, size: int, client: redis.Redis) -> int:
    """Run one member of a group of ``size`` and count the commands of its report."""
    app = App("memory://")
    add = app.task(name="add")(lambda x, y: x + y)
    run_id = f"run-{size}"
    spec = compile_canvas(group(add.s(i, i) for i in range(size)))
    assert driver.submit(run_id, spec)
    [message] = driver.fetch(["default"], 1, TIMEOUT_S)
    claim = driver.claim(message)
    assert claim is not None
    before = _script_calls(client)
    driver.complete(claim.message, "0")
    return _script_calls(client) - before


def test_report_cost_independent_of_group_size(
    redis_url: str, client: redis.Redis
) -> None:
    driver = RedisDriver(redis_url, prefix=_prefix())
    try:
        small = _complete_one_member(driver, 5, client)
        large = _complete_one_member(driver, 2000, client)
    finally:
        driver.close()
    assert small > 0
    assert small == large


def test_events_after_clock_steps_back(redis_url: str, client: redis.Redis) -> None:
    # An event id an hour ahead is what a clock that stepped back leaves
    # behind, so XADD rejects the scripts' own time as too small.
    prefix = _prefix()
    driver = RedisDriver(redis_url, prefix=prefix)
    app = App("memory://")
    add = app.task(name="add")(lambda x, y: x + y)
    try:
        events_key = driver._keys.partition_of("run").events
        ahead_micros = (time.time() + 3600) * 1_000_000
        ahead = f"{ahead_micros:.0f}-0"
        client.xadd(events_key, {"run": "other", "event": "submitted"}, id=ahead)
        assert driver.submit("run", compile_canvas(add.s(1, 1)))
        [message] = driver.fetch(["default"], 1, TIMEOUT_S)
        claim = driver.claim(message)
        assert claim is not None
        driver.complete(claim.message, "2")
        events = driver.events(after=ahead)
        assert [event.kind for event in events] == [
            "submitted",
            "started",
            "succeeded",
            "ended",
        ]
        assert all(event.id.startswith(f"{ahead_micros:.0f}-") for event in events)
    finally:
        driver.close()


def _commands_since(client: redis.Redis, before: dict[str, Any]) -> dict[str, int]:
    """Return the calls of each command since ``before``, INFO left out."""
    after: dict[str, Any] = client.info("commandstats")
    calls = {
        name[len("cmdstat_") :]: int(entry["calls"])
        - int(before.get(name, {"calls": 0})["calls"])
        for name, entry in after.items()
        if name != "cmdstat_info"
    }
    return {name: count for name, count in calls.items() if count}


@pytest.mark.parametrize(("steps", "hashes_read"), [(1, 1), (2, 3)])
def test_wait_reads_ended_run_once(
    redis_url: str, client: redis.Redis, steps: int, hashes_read: int
) -> None:
    # A run of one node keeps its node's fields and value in its run hash,
    # so it reads one hash where a chain reads the three node hashes.
    prefix = _prefix()
    driver = RedisDriver(redis_url, prefix=prefix)
    # A second driver has no parsed spec, as when another process waits.
    reader = RedisDriver(redis_url, prefix=prefix)
    app = App("memory://")
    add = app.task(name="add")(lambda x, y: x + y)
    canvas = add.s(1, 1) if steps == 1 else chain(add.s(1, 0), add.s(1))
    try:
        assert driver.submit("run", compile_canvas(canvas))
        for step in range(steps):
            [message] = driver.fetch(["default"], 1, TIMEOUT_S)
            claim = driver.claim(message)
            assert claim is not None
            driver.complete(claim.message, "2" if step == steps - 1 else "1")
        before = client.info("commandstats")
        snapshot = reader.wait("run", TIMEOUT_S)
        calls = _commands_since(client, before)
    finally:
        driver.close()
        reader.close()
    assert snapshot.status == "succeeded"
    assert snapshot.value == "2"
    assert snapshot.nodes["0"].state == "succeeded"
    assert calls == {script_command(reader): 1, "hmget": 1, "hgetall": hashes_read}


def test_wait_times_out_on_running_run(redis_url: str) -> None:
    driver = RedisDriver(redis_url, prefix=_prefix())
    reader = RedisDriver(redis_url, prefix=driver._keys.prefix)
    app = App("memory://")
    add = app.task(name="add")(lambda x, y: x + y)
    try:
        assert driver.submit("run", compile_canvas(add.s(1, 1)))
        snapshot = reader.wait("run", 0.05)
        with pytest.raises(RunNotFound):
            reader.wait("missing", 0.05)
    finally:
        driver.close()
        reader.close()
    assert snapshot.status == "running"
    assert snapshot.nodes["0"].state == "queued"


def test_wait_polls_running_run_with_hget(redis_url: str, client: redis.Redis) -> None:
    prefix = _prefix()
    driver = RedisDriver(redis_url, prefix=prefix, poll_interval_s=0.01)
    app = App("memory://")
    add = app.task(name="add")(lambda x, y: x + y)
    try:
        assert driver.submit("run", compile_canvas(add.s(1, 1)))
        [message] = driver.fetch(["default"], 1, TIMEOUT_S)
        claim = driver.claim(message)
        assert claim is not None
        completer = threading.Timer(0.2, driver.complete, (claim.message, "2"))
        polls: list[tuple[Any, ...]] = []
        hget = driver._client.hget

        def counted_hget(*args: Any) -> Any:
            polls.append(args)
            return hget(*args)

        driver._client.hget = counted_hget  # type: ignore[method-assign]
        before = client.info("commandstats")
        completer.start()
        snapshot = driver.wait("run", TIMEOUT_S)
        completer.join()
        calls = _commands_since(client, before)
    finally:
        driver.close()
    assert snapshot.status == "succeeded"
    assert snapshot.value == "2"
    # One script call before the polls, the complete, and one after them.
    assert calls[script_command(driver)] == 3
    assert len(polls) >= 2
    assert all(args[1] == "status" for args in polls)
    assert "multi" not in calls


def test_new_driver_loads_only_missing_scripts(
    redis_url: str, client: redis.Redis
) -> None:
    prefix = _prefix()
    RedisDriver(redis_url, prefix=prefix).close()
    complete_sha = hashlib.sha1(load_source("complete").encode("utf-8")).hexdigest()
    before = client.info("commandstats")
    driver = RedisDriver(redis_url, prefix=prefix)
    driver.close()
    cached = _commands_since(client, before)

    # Another program may have flushed the cache, so this checks the reload
    # of what is missing, here every script.
    flush_scripts(client)
    before = client.info("commandstats")
    RedisDriver(redis_url, prefix=prefix).close()
    flushed = _commands_since(client, before)

    if driver._scripts.use_functions:
        assert cached["function|list"] == 1
        assert "function|load" not in cached
        assert flushed["function|load"] == 1
        assert has_library(client)
    else:
        assert cached["script|exists"] == 1
        assert "script|load" not in cached
        assert flushed["script|load"] == len(SCRIPT_NAMES)
        assert client.script_exists(complete_sha) == [True]
