"""Script calls on a single node: each thread keeps one pooled connection.

The calls skip redis-py's per-command pool checkout, so these check what
the pool used to guarantee: a dropped connection is replaced, an error
reply leaves the connection usable, and a thread that ends returns its
connection to the pool.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from stem import App
from stem.canvas.compiler import compile_canvas
from stem.drivers.redis import RedisDriver
from stem.engine.errors import DriverError


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    plain = redis.Redis.from_url(redis_url, decode_responses=True)
    yield plain
    plain.close()


def _named_driver(redis_url: str) -> tuple[RedisDriver, str]:
    """Return a driver whose connections carry a unique client name, and the name."""
    name = f"stem-test-{uuid.uuid4().hex[:12]}"
    driver = RedisDriver(f"{redis_url}?client_name={name}", prefix=f"{name}:")
    return driver, name


def _connections_named(client: redis.Redis, name: str) -> list[dict[str, Any]]:
    return [entry for entry in client.client_list() if entry.get("name") == name]


def _promote_call(
    driver: RedisDriver,
) -> tuple[str, list[str], list[str | int | float]]:
    partition = driver._keys.partitions[0]
    return ("promote", [partition.delayed], ["10"])


def test_script_calls_reuse_thread_connection(redis_url: str) -> None:
    driver, _ = _named_driver(redis_url)
    pool = driver._client.connection_pool
    checkouts: list[object] = []
    get_connection = pool.get_connection

    def counted(*args: Any, **kwargs: Any) -> Any:
        checkouts.append(args)
        return get_connection(*args, **kwargs)

    try:
        name, keys, args = _promote_call(driver)
        driver._scripts.call(name, keys, args)
        pool.get_connection = counted  # type: ignore[method-assign]
        replies = [driver._scripts.call(name, keys, args) for _ in range(20)]
        batches = [
            driver._scripts.call_many([(name, keys, args)] * 3) for _ in range(5)
        ]
    finally:
        pool.get_connection = get_connection  # type: ignore[method-assign]
        driver.close()

    assert replies == [0] * 20
    assert batches == [[0, 0, 0]] * 5
    assert checkouts == []


def test_script_call_after_connection_killed(
    redis_url: str, client: redis.Redis
) -> None:
    driver, name = _named_driver(redis_url)
    call = _promote_call(driver)
    try:
        first = driver._scripts.call(*call)
        killed = _connections_named(client, name)
        for entry in killed:
            client.client_kill_filter(_id=entry["id"])
        again = driver._scripts.call(*call)
        for entry in _connections_named(client, name):
            client.client_kill_filter(_id=entry["id"])
        batch = driver._scripts.call_many([call, call])
    finally:
        driver.close()

    assert first == 0
    assert killed
    assert again == 0
    assert batch == [0, 0]


def test_script_error_keeps_connection_usable(
    redis_url: str, client: redis.Redis
) -> None:
    driver, _ = _named_driver(redis_url)
    good = _promote_call(driver)
    # promote reads its key as a sorted set, so a string there is WRONGTYPE.
    wrong_key = f"{driver._keys.partitions[0].delayed}-string"
    client.set(wrong_key, "x")
    bad = ("promote", [wrong_key], ["10"])
    try:
        batch = driver._scripts.call_many([bad, good, bad, good])
        with pytest.raises(DriverError, match="WRONGTYPE"):
            driver._scripts.call(*bad)
        after = driver._scripts.call(*good)
    finally:
        client.delete(wrong_key)
        driver.close()

    assert isinstance(batch[0], redis.ResponseError)
    assert batch[1] == 0
    assert isinstance(batch[2], redis.ResponseError)
    assert batch[3] == 0
    assert after == 0


def test_ended_threads_return_connections(redis_url: str, client: redis.Redis) -> None:
    driver, name = _named_driver(redis_url)
    call = _promote_call(driver)
    replies: list[Any] = []
    try:
        for _ in range(10):
            thread = threading.Thread(
                target=lambda: replies.append(driver._scripts.call(*call))
            )
            thread.start()
            thread.join()
        open_connections = _connections_named(client, name)
    finally:
        driver.close()

    assert replies == [0] * 10
    # The pool hands the connection of an ended thread to the next one.
    assert 1 <= len(open_connections) <= 2


def test_concurrent_threads_get_own_replies(
    redis_url: str, client: redis.Redis
) -> None:
    driver, name = _named_driver(redis_url)
    errors: list[BaseException] = []
    moved: dict[int, list[Any]] = {}

    def work(index: int) -> None:
        # Each thread queues index + 1 due delayed messages under its own key
        # before each promote, so a reply read on another thread's connection
        # would show the wrong count.
        delayed = f"{name}:t{index}:delayed"
        counts: list[Any] = []
        try:
            for round_number in range(30):
                members = {
                    json.dumps(["q", "run", f"n{round_number}-{k}", "1", "1", "t"]): 0
                    for k in range(index + 1)
                }
                client.zadd(delayed, members)
                counts += driver._scripts.call_many([("promote", [delayed], ["100"])])
            moved[index] = counts
        except BaseException as err:
            errors.append(err)

    try:
        threads = [threading.Thread(target=work, args=(index,)) for index in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        for index in range(6):
            client.delete(f"{name}:t{index}:delayed", f"{name}:t{index}:q:q")
        driver.close()

    assert errors == []
    assert sorted(moved) == list(range(6))
    for index, counts in moved.items():
        assert counts == [index + 1] * 30, index


def test_fetch_reuses_thread_connection(redis_url: str) -> None:
    driver, _ = _named_driver(redis_url)
    pool = driver._client.connection_pool
    add = App("memory://").task(name="add")(lambda x, y: x + y)
    spec = compile_canvas(add.s(1, 1))
    checkouts: list[object] = []
    get_connection = pool.get_connection

    def counted(*args: Any, **kwargs: Any) -> Any:
        checkouts.append(args)
        return get_connection(*args, **kwargs)

    try:
        # The first fetch creates the consumer groups and sweeps for stalled
        # messages through redis-py; later ones only read and promote.
        assert driver.fetch(["default"], 10, 0.0) == []
        driver.submit("run-1", spec)
        driver.submit("run-2", spec)
        pool.get_connection = counted  # type: ignore[method-assign]
        messages = driver.fetch(["default"], 10, 1.0)
        empty = driver.fetch(["default"], 10, 0.01)
    finally:
        pool.get_connection = get_connection  # type: ignore[method-assign]
        driver.close()

    assert sorted(message.run_id for message in messages) == ["run-1", "run-2"]
    assert all(message.headers == {"task": "add"} for message in messages)
    assert all(message.attempt == 1 for message in messages)
    assert empty == []
    assert checkouts == []


def test_pipelined_replies_kept_in_order(redis_url: str, client: redis.Redis) -> None:
    driver, name = _named_driver(redis_url)
    connections = driver._scripts.connections
    assert connections is not None
    text_key, missing_key = f"{name}:text", f"{name}:missing"
    client.set(text_key, "x")
    # About 2 MB of replies, more than one socket read returns, so some
    # replies are read before later ones have arrived.
    big = "y" * 20_000
    commands: list[tuple[Any, ...]] = []
    for index in range(100):
        commands += [
            ("EVAL", "return ARGV[1] .. ARGV[2]", 0, big, str(index)),
            ("GET", missing_key),
            ("INCR", text_key),
            ("EVAL", "return {tonumber(ARGV[1]), false}", 0, str(index)),
        ]
    try:
        replies = connections.send(commands)
        after = connections.send([("GET", text_key)])
    finally:
        client.delete(text_key)
        driver.close()

    assert len(replies) == 400
    for index in range(100):
        value, nothing, error, pair = replies[4 * index : 4 * index + 4]
        assert value == big + str(index)
        assert nothing is None
        assert isinstance(error, redis.ResponseError)
        assert pair == [index, None]
    assert after == ["x"]
