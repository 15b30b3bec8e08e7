"""Poison input for the Redis driver and worker: data no worker can process.

Each case must fail or dead-letter one message or node with its reason, and
leave every other message deliverable. None may stop a worker's fetches or
make it run a task again and again.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from redis.cluster import RedisCluster

from stem import App
from stem.canvas import NotSerializable
from stem.canvas.compiler import compile_canvas
from stem.drivers.redis import RedisDriver

TIMEOUT_S = 10.0


def _prefix() -> str:
    return f"poison-{uuid.uuid4().hex[:12]}:"


def _driver(target: Any, **settings: Any) -> RedisDriver:
    return RedisDriver(target.url, prefix=_prefix(), **target.settings, **settings)


@pytest.fixture
def client(redis_target: Any) -> Iterator[Any]:
    """Yield a plain client of the target, replies decoded to str."""
    plain = redis_target.client()
    yield plain
    plain.close()


@pytest.fixture
def raw_client(redis_target: Any) -> Iterator[Any]:
    """Yield a client of the target whose replies stay bytes, to write any bytes."""
    client: Any
    if redis_target.cluster:
        plain = "redis://" + redis_target.url.removeprefix("redis+cluster://")
        client = RedisCluster.from_url(plain)
    else:
        client = redis.Redis.from_url(redis_target.url)
    yield client
    client.close()


def test_surrogate_return_value_fails_node(redis_target: Any) -> None:
    app = App(redis_target.url, prefix=_prefix(), **redis_target.settings)
    runs: list[int] = []

    @app.task(name="list_files")
    def list_files() -> list[str]:
        runs.append(1)
        # What os.listdir returns for a file name that is not UTF-8.
        return [b"report-\xff.csv".decode("utf-8", "surrogateescape")]

    try:
        result = list_files.delay()
        with (
            app.worker(concurrency=1),
            pytest.raises(NotSerializable, match="lone surrogate"),
        ):
            result.get(TIMEOUT_S)

        assert result.node("0").state == "failed"
        assert len(runs) == 1
    finally:
        app.close()


def test_entry_not_utf8_is_dead_lettered(redis_target: Any, raw_client: Any) -> None:
    driver = _driver(redis_target, visibility_timeout_s=0.0)
    app = App("memory://")
    add = app.task(name="add")(lambda x, y: x + y)
    try:
        assert driver.submit("good", compile_canvas(add.s(1, 1)))
        stream = driver._keys.partition_of("good").queue("default")
        driver._ensure_groups(["default"])
        fields = {"v": "1", "node": "0", "attempt": "1", "epoch": "1", "task": "add"}
        raw_client.xadd(stream, {**fields, "run": b"bad-\xff"})
        raw_client.xadd(stream, {**fields, "run": "stalled", "task": b"\xfe"})
        # Another consumer read all three and died before acknowledging them,
        # so the fetch takes them over.
        raw_client.xreadgroup("stem", "dead-consumer", {stream: ">"}, count=3)
        raw_client.xadd(stream, {**fields, "run": b"new-\xff"})

        [taken] = driver.fetch(["default"], 5, 0.1)
        assert driver.claim(taken) is not None
        driver.complete(taken, "2")
        assert driver.fetch(["default"], 5, 0.1) == []

        assert taken.run_id == "good"
        dead = sorted(driver.dead_letters(), key=lambda item: item[0].run_id)
        runs = [message.run_id for message, _ in dead]
        assert runs == ["bad-\ufffd", "new-\ufffd", "stalled"]
        assert "field 'run' is not valid UTF-8" in dead[0][1]
        assert "field 'run' is not valid UTF-8" in dead[1][1]
        assert "field 'task' is not valid UTF-8" in dead[2][1]
        assert dead[2][0].headers["task"] == "\ufffd"
        assert raw_client.xpending(stream, "stem")["pending"] == 0
        assert raw_client.xlen(stream) == 0
    finally:
        driver.close()


def test_non_ascii_digit_attempt_dead_lettered(redis_target: Any, client: Any) -> None:
    driver = _driver(redis_target)
    try:
        stream = driver._keys.first.queue("default")
        driver._ensure_groups(["default"])
        # str.isdigit() accepts "²", but int() does not parse it.
        client.xadd(
            stream,
            {
                "v": "1",
                "run": "r",
                "node": "0",
                "attempt": "²",
                "epoch": "1",
                "task": "add",
            },
        )

        assert driver.fetch(["default"], 5, 0.1) == []

        [(message, reason)] = driver.dead_letters()
        assert message.attempt == 0
        assert message.epoch == 1
        assert "bad number" in reason
    finally:
        driver.close()


_BAD_DELAYED = [
    "not json",
    '["default", "r"]',
    '{"queue": "default"}',
    '["default", "r", "0", 1, "1", "add"]',
    "[" * 2000 + "]" * 2000,
]


def test_malformed_delayed_member_dead_lettered(redis_target: Any, client: Any) -> None:
    driver = _driver(redis_target)
    app = App("memory://")
    add = app.task(name="add")(lambda x, y: x + y)
    try:
        spec = compile_canvas(add.s(1, 1).set(countdown=0.05))
        assert driver.submit("later", spec)
        delayed = driver._keys.partition_of("later").delayed
        client.zadd(delayed, dict.fromkeys(_BAD_DELAYED, 0))
        time.sleep(0.1)

        taken = driver.fetch(["default"], 5, TIMEOUT_S)

        assert [message.run_id for message in taken] == ["later"]
        assert client.zcard(delayed) == 0
        reasons = [reason for _, reason in driver.dead_letters()]
        assert len(reasons) == len(_BAD_DELAYED)
        assert all(reason.startswith("Malformed delayed message") for reason in reasons)
        assert any("not json" in reason for reason in reasons)
    finally:
        driver.close()


def test_outbox_entry_not_utf8_deleted(redis_target: Any, raw_client: Any) -> None:
    driver = _driver(redis_target, visibility_timeout_s=0.0)
    app = App("memory://")
    add = app.task(name="add")(lambda x, y: x + y)
    try:
        assert driver.submit("good", compile_canvas(add.s(1, 1)))
        outbox = driver._keys.partition_of("good").outbox
        driver._ensure_groups(["default"])
        raw_client.xadd(outbox, {"kind": "release", "run": b"\xff", "epoch": "1"})

        taken = [m for _ in range(3) for m in driver.fetch(["default"], 5, 0.1)]

        assert "good" in [message.run_id for message in taken]
        assert raw_client.xpending(outbox, "stem")["pending"] == 0
    finally:
        driver.close()


@pytest.mark.parametrize("forged_node", ["unknown-run", "unknown-node"])
def test_entry_without_task_spares_batch(
    redis_target: Any, client: Any, forged_node: str
) -> None:
    app = App(
        redis_target.url,
        prefix=_prefix(),
        visibility_timeout_s=0.5,
        max_deliveries=2,
        **redis_target.settings,
    )
    add = app.task(name="add")(lambda x, y: x + y)
    try:
        results = [add.delay(i, 1) for i in range(4)]
        first = results[0].id
        run_id, node_id = (
            ("ghost", "0") if forged_node == "unknown-run" else (first, "7")
        )
        driver = app.driver
        assert isinstance(driver, RedisDriver)
        stream = driver._keys.partition_of(run_id).queue("default")
        driver._ensure_groups(["default"])
        # An empty task field makes the worker look the task up in the run.
        client.xadd(
            stream,
            {
                "v": "1",
                "run": run_id,
                "node": node_id,
                "attempt": "1",
                "epoch": "1",
                "task": "",
            },
        )

        with app.worker(concurrency=4):
            values = [result.get(TIMEOUT_S) for result in results]

        assert values == [1, 2, 3, 4]
        [(message, reason)] = driver.dead_letters()
        assert (message.run_id, message.node_id) == (run_id, node_id)
        assert "not found" in reason
    finally:
        app.close()
