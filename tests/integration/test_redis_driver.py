"""The Redis driver against a private redis-server: paths only Redis has.

Behaviour shared with memory:// is tested in tests/conformance. These tests
cover the script cache, delayed messages, stalled messages, expired runs, the
lock and schedule ports and the script files themselves. Most run on each
Redis configuration of the session (`redis_target`): one partition, three
partitions, and the 3-primary Redis Cluster.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from stem import App, chain, chord, group
from stem.canvas.compiler import compile_canvas
from stem.canvas.values import dumps
from stem.drivers.redis import RedisDriver
from stem.drivers.redis.driver import ENVELOPE_VERSION
from stem.drivers.redis.keys import Keys
from stem.drivers.redis.scripts import SCRIPT_NAMES, load_source
from stem.engine.drivers import load_driver
from stem.engine.errors import RunNotFound
from stem.engine.ports import Message
from stem.engine.records import ErrorInfo

from .script_helpers import flush_scripts, has_library, primaries

TIMEOUT_S = 10.0


def _flush_scripts_everywhere(client: Any) -> None:
    """Empty the script cache and the libraries of the node or every Cluster primary."""
    sha = hashlib.sha1(load_source("complete").encode("utf-8")).hexdigest()
    for node in primaries(client):
        # A running worker's fetch may load every script again between the
        # flush and the check (its promote pipeline reloads them when they are
        # missing), so flush until the check finds them gone.
        for _ in range(20):
            flush_scripts(node)
            if node.script_exists(sha) == [False] and not has_library(node):
                break
        else:
            raise AssertionError(f"Flushing never removed the scripts of {node}.")


def _prefix() -> str:
    return f"test-{uuid.uuid4().hex[:12]}:"


def _driver(target: Any, **settings: Any) -> RedisDriver:
    return RedisDriver(target.url, **target.settings, **settings)


@pytest.fixture
def client(redis_target: Any) -> Iterator[Any]:
    """Yield a plain client of the target, a Cluster client for the Cluster."""
    plain = redis_target.client()
    yield plain
    plain.close()


@pytest.fixture
def app(redis_target: Any) -> Iterator[App]:
    """Yield an app on the target with a few tasks, under its own prefix."""
    instance = App(redis_target.url, prefix=_prefix(), **redis_target.settings)
    gate = threading.Event()

    @instance.task(name="add")
    def add(x: int, y: int) -> int:
        return x + y

    @instance.task(name="echo")
    def echo(*args: Any) -> Any:
        return list(args)

    @instance.task(name="wait_gate")
    def wait_gate() -> str:
        gate.wait(TIMEOUT_S)
        return "opened"

    instance.gate = gate  # type: ignore[attr-defined]
    yield instance
    gate.set()
    instance.close()


def test_entry_point_finds_driver(redis_target: Any) -> None:
    driver = load_driver(redis_target.url, prefix=_prefix())
    try:
        assert isinstance(driver, RedisDriver)
    finally:
        driver.close()


def test_script_flush_mid_run(app: App, client: Any) -> None:
    tasks = app.tasks
    canvas = chord([tasks["wait_gate"].s(), tasks["add"].s(1, 1)], tasks["echo"].s())
    result = app.submit(canvas)
    with app.worker(concurrency=4):
        deadline = time.monotonic() + TIMEOUT_S
        while result.node("0").state != "running":
            assert time.monotonic() < deadline, "wait_gate never started."
            time.sleep(0.01)
        _flush_scripts_everywhere(client)
        app.gate.set()  # type: ignore[attr-defined]
        assert result.get(TIMEOUT_S) == [["opened", 2]]
    driver = app.driver
    assert isinstance(driver, RedisDriver)
    if driver._scripts.use_functions:
        # A call that found no library loads it on every primary.
        for node in primaries(client):
            assert has_library(node), node


def test_countdown_waits_in_delayed_set(app: App, client: Any) -> None:
    driver = app.driver
    assert isinstance(driver, RedisDriver)
    started = time.monotonic()
    result = app.tasks["add"].apply_async((1, 2), countdown=0.3)
    delayed = driver._keys.partition_of(result.id).delayed
    assert client.zcard(delayed) == 1
    with app.worker(concurrency=2):
        assert result.get(TIMEOUT_S) == 3
    assert time.monotonic() - started >= 0.25
    assert client.zcard(delayed) == 0


def test_scripts_build_keys_from_run_key(redis_target: Any, client: Any) -> None:
    # The scripts build a run's keys and its id from the run hash's name, so
    # "run:" in the prefix and "}:" in the run id must not mislead them.
    app = App(redis_target.url, prefix=f"{_prefix()}run:x:", **redis_target.settings)
    add = app.task(name="add")(lambda x, y: x + y)
    run_id = "a}:run:b"
    try:
        result = app.submit(chain(add.s(1, 1), add.s(2)), options={"run_id": run_id})
        assert result.id == run_id
        with app.worker(concurrency=1):
            assert result.get(TIMEOUT_S) == 4
        driver = app.driver
        assert isinstance(driver, RedisDriver)
        run_keys = driver._keys.run(run_id)
        written = [run_keys.run, run_keys.graph, run_keys.nodes, run_keys.values]
        assert client.exists(*written, run_keys.counts) == 5
        assert driver.group_counts(run_id) == {None: {"succeeded": 2}}
        events = client.xrange(driver._keys.partition_of(run_id).events)
        assert [fields["event"] for _, fields in events] == [
            "submitted",
            "started",
            "succeeded",
            "started",
            "succeeded",
            "ended",
        ]
        assert {fields["run"] for _, fields in events} == {run_id}
    finally:
        app.close()


def _commands_run(client: Any) -> int:
    """Return the number of commands the server ran, the INFO calls included."""
    stats: dict[str, Any] = client.info("commandstats")
    return sum(int(entry["calls"]) for entry in stats.values())


def test_one_node_run_script_commands(redis_url: str) -> None:
    # Every command a script calls costs Redis CPU, so the commands of a
    # one-node run's scripts are pinned, with events and state counts on.
    # Each step also runs its EVALSHA and the INFO that reads the stats.
    driver = RedisDriver(redis_url, prefix=_prefix())
    observer = redis.Redis.from_url(redis_url)
    add = App("memory://").task(name="add")(lambda x, y: x + y)
    spec = compile_canvas(add.s(1, 1))
    try:
        before = _commands_run(observer)
        assert driver.submit("one", spec)
        submitted = _commands_run(observer) - before - 2
        [message] = driver.fetch(["default"], 1, TIMEOUT_S)
        before = _commands_run(observer)
        assert driver.claim(message) is not None
        claimed = _commands_run(observer) - before - 2
        before = _commands_run(observer)
        driver.complete(message, "2")
        completed = _commands_run(observer) - before - 2
        assert driver.snapshot("one").status == "succeeded"
    finally:
        driver.close()
        observer.close()
    assert submitted == 7
    assert claimed == 4
    assert completed == 8


def test_report_after_run_deleted_writes_nothing(
    redis_target: Any, client: Any
) -> None:
    driver = _driver(redis_target, prefix=_prefix())
    app = App("memory://")
    add = app.task(name="add")(lambda x, y: x + y)
    spec = compile_canvas(chain(add.s(1, 1), add.s(2)))
    try:
        assert driver.submit("gone", spec)
        [message] = driver.fetch(["default"], 1, TIMEOUT_S)
        assert driver.claim(message) is not None
        run_keys = driver._keys.run("gone").all()
        client.delete(*run_keys)

        driver.complete(message, "2")

        assert client.exists(*run_keys) == 0
        assert driver.fetch(["default"], 5, 0.1) == []
        with pytest.raises(RunNotFound):
            driver.snapshot("gone")
        with pytest.raises(RunNotFound):
            driver.cancel("gone")
    finally:
        driver.close()


def test_error_node_is_lowest_failed_sink(redis_target: Any) -> None:
    snapshot = _run_with_failed_sinks(redis_target, before_counters=False)

    assert snapshot.status == "failed"
    assert snapshot.nodes["2"].state == "succeeded"
    assert snapshot.error_node == "9"


def test_run_from_before_end_counters_fails(redis_target: Any) -> None:
    snapshot = _run_with_failed_sinks(redis_target, before_counters=True)

    assert snapshot.status == "failed"
    assert snapshot.nodes["2"].state == "succeeded"
    assert snapshot.error_node == "9"


def _run_with_failed_sinks(redis_target: Any, *, before_counters: bool) -> Any:
    """Fail nodes 9, 11 and 0 of a run, succeed the rest; return its snapshot.

    With ``before_counters`` the run looks as an older driver wrote it: no
    "sinks_not_succeeded" field and no "end_role" or /end_role graph fields.
    """
    driver = _driver(redis_target, prefix=_prefix())
    app = App("memory://")
    add = app.task(name="add")(lambda x, y: x + y)
    fail = app.task(name="fail")(lambda: None)
    echo = app.task(name="echo")(lambda value: value)
    # Node 0 fails inside an all_settled chord (callback 2), which absorbs
    # the failure. Of the group's members, nodes 9 and 11 fail.
    members = [fail.s() if i in (6, 8) else add.s(i, i) for i in range(10)]
    absorbed = chord([fail.s(), add.s(1, 1)], echo.s(), join="all_settled")
    spec = compile_canvas(group(absorbed, *members))
    assert [node.id for node in spec.nodes if node.task == "fail"] == ["0", "9", "11"]
    error = ErrorInfo("builtins", "ValueError", "boom", [])

    try:
        assert driver.submit("lowest", spec)
        if before_counters:
            run_keys = driver._keys.run("lowest")
            client = redis_target.client()
            client.hdel(run_keys.run, "sinks_not_succeeded")
            roles = [field for field in client.hkeys(run_keys.graph)
                     if field.endswith("end_role")]  # fmt: skip
            assert roles
            client.hdel(run_keys.graph, *roles)
            client.close()
        queued = {message.node_id: message for message in _fetch_all(driver)}
        # Node 9 fails before 11, which is lower as a string but not in node
        # order, and the absorbed node 0 fails after both.
        for node_id in ("9", "11", "0"):
            message = queued.pop(node_id)
            assert driver.claim(message) is not None
            driver.fail(message, error)
        assert driver.snapshot("lowest").status == "running"

        # The callback is queued once the last of the others succeeds.
        while queued:
            for message in queued.values():
                assert driver.claim(message) is not None
                driver.complete(message, dumps(None))
            queued = {message.node_id: message for message in _fetch_all(driver)}

        return driver.snapshot("lowest")
    finally:
        driver.close()


def _fetch_all(driver: RedisDriver) -> list[Message]:
    """Fetch every message queued now, waiting a short time for the first."""
    fetched: list[Message] = []
    while messages := driver.fetch(["default"], 100, 0.2):
        fetched += messages
    return fetched


def test_complete_many_reports_each(
    redis_target: Any, client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    driver = _driver(redis_target, prefix=_prefix())
    app = App("memory://")
    add = app.task(name="add")(lambda x, y: x + y)
    try:
        for run_id in ("a", "b", "broken"):
            assert driver.submit(run_id, compile_canvas(add.s(1, 1)))
        messages: list[Any] = []
        while len(messages) < 3:
            messages += driver.fetch(["default"], 3, TIMEOUT_S)
        claims = {c.message.run_id: c for c in driver.claim_many(messages) if c}
        assert set(claims) == {"a", "b", "broken"}
        # A run hash of the wrong type makes that run's script fail.
        run_key = driver._keys.run("broken").run
        client.delete(run_key)
        client.set(run_key, "not a hash")

        driver.complete_many(
            [
                (claims["a"].message, "2"),
                (claims["broken"].message, "2"),
                (claims["b"].message, "2"),
                # A duplicate report changes nothing.
                (claims["a"].message, "3"),
            ]
        )

        for run_id in ("a", "b"):
            snapshot = driver.snapshot(run_id)
            assert snapshot.status == "succeeded", run_id
            assert snapshot.value == "2", run_id
        failed = [r for r in caplog.records if "Reporting" in r.getMessage()]
        assert len(failed) == 1
        assert "broken" in failed[0].getMessage()
    finally:
        driver.close()


def test_stalled_message_is_reclaimed(redis_target: Any) -> None:
    prefix = _prefix()
    first = _driver(redis_target, prefix=prefix, visibility_timeout_s=0.0)
    second = _driver(redis_target, prefix=prefix, visibility_timeout_s=0.0)
    app = App("memory://")
    add = app.task(name="add")(lambda x, y: x + y)
    try:
        assert first.submit("stalled", compile_canvas(add.s(1, 1)))
        [taken] = first.fetch(["default"], 1, TIMEOUT_S)

        [again] = second.fetch(["default"], 1, TIMEOUT_S)

        assert again.receipt == taken.receipt
        assert second.claim(again) is not None
        second.complete(again, "2")
        assert second.snapshot("stalled").status == "succeeded"
    finally:
        first.close()
        second.close()


def test_deferred_entry_keeps_first_queued_time(redis_target: Any, client: Any) -> None:
    driver = _driver(redis_target, prefix=_prefix())
    app = App("memory://")
    add = app.task(name="add")(lambda x, y: x + y)
    try:
        assert driver.submit("deferred", compile_canvas(add.s(1, 1)))
        [first] = driver.fetch(["default"], 1, TIMEOUT_S)
        partition = driver._keys.partition_of("deferred")

        assert driver.defer(first, 0.0) is True
        assert client.hlen(partition.deferred) == 1
        [again] = driver.fetch(["default"], 1, TIMEOUT_S)

        [(_, fields)] = client.xrange(partition.queue("default"))
        assert fields["enqueued_ms"] == first.receipt.partition("-")[0]
        assert again.receipt != first.receipt
        assert again.enqueued_at == first.enqueued_at
        assert client.hlen(partition.deferred) == 0
    finally:
        driver.close()


def test_cancel_deletes_deferred_time(redis_target: Any, client: Any) -> None:
    driver = _driver(redis_target, prefix=_prefix())
    app = App("memory://")
    add = app.task(name="add")(lambda x, y: x + y)
    try:
        assert driver.submit("cancelled", compile_canvas(add.s(1, 1)))
        [message] = driver.fetch(["default"], 1, TIMEOUT_S)
        assert driver.defer(message, 3600.0) is True
        partition = driver._keys.partition_of("cancelled")

        driver.cancel("cancelled")

        assert client.zcard(partition.delayed) == 0
        assert client.hlen(partition.deferred) == 0
    finally:
        driver.close()


def test_defer_of_message_taken_over_changes_nothing(
    redis_target: Any, client: Any
) -> None:
    prefix = _prefix()
    first = _driver(redis_target, prefix=prefix, visibility_timeout_s=0.0)
    second = _driver(redis_target, prefix=prefix, visibility_timeout_s=0.0)
    app = App("memory://")
    add = app.task(name="add")(lambda x, y: x + y)
    try:
        assert first.submit("taken", compile_canvas(add.s(1, 1)))
        [stale] = first.fetch(["default"], 1, TIMEOUT_S)
        [taken] = second.fetch(["default"], 1, TIMEOUT_S)
        assert taken.receipt == stale.receipt

        assert first.defer(stale, 0.0) is False

        partition = first._keys.partition_of("taken")
        assert client.zcard(partition.delayed) == 0
        assert client.xpending(partition.queue("default"), "stem")["pending"] == 1
        assert second.claim(taken) is not None
    finally:
        first.close()
        second.close()


_MALFORMED = [
    {"garbage": "1"},
    {"v": "1", "run": "x", "node": "0", "attempt": "one", "epoch": "0", "task": "add"},
]


def test_malformed_entry_is_dead_lettered(redis_target: Any, client: Any) -> None:
    driver = _driver(redis_target, prefix=_prefix())
    app = App("memory://")
    add = app.task(name="add")(lambda x, y: x + y)
    try:
        assert driver.submit("good", compile_canvas(add.s(1, 1)))
        stream = driver._keys.partition_of("good").queue("default")
        driver._ensure_groups(["default"])
        for fields in _MALFORMED:
            client.xadd(stream, fields)

        taken = [m for _ in range(3) for m in driver.fetch(["default"], 5, 0.1)]

        assert [message.run_id for message in taken] == ["good"]
        dead = driver.dead_letters()
        assert [message.run_id for message, _ in dead] == ["", "x"]
        assert "missing field 'v'" in dead[0][1]
        assert "'attempt': 'one'" in dead[1][1]
        assert client.xpending(stream, "stem")["pending"] == 1
    finally:
        driver.close()


def test_messages_carry_envelope_version(redis_target: Any, client: Any) -> None:
    driver = _driver(redis_target, prefix=_prefix())
    app = App("memory://")
    add = app.task(name="add")(lambda x, y: x + y)
    try:
        driver._ensure_groups(["default"])
        assert driver.submit("now", compile_canvas(add.s(1, 1)))
        assert driver.submit("later", compile_canvas(add.s(1, 2).set(countdown=0.05)))
        time.sleep(0.1)

        taken = [m for _ in range(3) for m in driver.fetch(["default"], 5, 0.2)]

        assert sorted(message.run_id for message in taken) == ["later", "now"]
        for run_id in ("now", "later"):
            stream = driver._keys.partition_of(run_id).queue("default")
            for _, fields in client.xrange(stream):
                assert fields["v"] == ENVELOPE_VERSION
    finally:
        driver.close()


@pytest.mark.parametrize("version", ["2", "", "one"])
def test_unknown_envelope_version_is_dead_lettered(
    redis_target: Any, client: Any, version: str
) -> None:
    driver = _driver(redis_target, prefix=_prefix())
    try:
        stream = driver._keys.first.queue("default")
        driver._ensure_groups(["default"])
        client.xadd(
            stream,
            {
                "v": version,
                "run": "r",
                "node": "0",
                "attempt": "1",
                "epoch": "1",
                "task": "add",
            },
        )

        assert driver.fetch(["default"], 5, 0.1) == []

        [(message, reason)] = driver.dead_letters()
        assert message.run_id == "r"
        assert f"envelope version {version!r}" in reason
        assert "upgrade" in reason
    finally:
        driver.close()


def test_malformed_stalled_entry_is_dead_lettered(
    redis_target: Any, client: Any
) -> None:
    driver = _driver(redis_target, prefix=_prefix(), visibility_timeout_s=0.0)
    try:
        stream = driver._keys.first.queue("default")
        driver._ensure_groups(["default"])
        client.xadd(stream, _MALFORMED[0])
        # Another consumer read it and died before acknowledging it.
        client.xreadgroup("stem", "dead-consumer", {stream: ">"})

        assert driver.fetch(["default"], 5, 0.1) == []

        [(_, reason)] = driver.dead_letters()
        assert "missing field 'v'" in reason
        assert client.xpending(stream, "stem")["pending"] == 0
    finally:
        driver.close()


def test_fire_time_claimed_once(redis_target: Any) -> None:
    driver = _driver(redis_target, prefix=_prefix())
    try:
        assert driver.claim_fire("nightly", 1700000000.0) is True
        assert driver.claim_fire("nightly", 1700000000.0) is False
        assert driver.claim_fire("nightly", 1700000060.0) is True
    finally:
        driver.close()


def test_last_fire_keeps_latest_claim(redis_target: Any) -> None:
    driver = _driver(redis_target, prefix=_prefix())
    try:
        assert driver.last_fire("nightly") is None
        driver.claim_fire("nightly", 1700000060.5)
        driver.claim_fire("nightly", 1700000000.0)

        assert driver.last_fire("nightly") == 1700000060.5
        assert driver.last_fire("hourly") is None
    finally:
        driver.close()


def test_lock_needs_its_token(redis_target: Any) -> None:
    driver = _driver(redis_target, prefix=_prefix())
    try:
        token = driver.acquire("reconcile", lease_s=30)
        assert token is not None
        assert driver.acquire("reconcile", lease_s=30) is None
        assert driver.release("reconcile", "not-the-token") is False
        assert driver.release("reconcile", token) is True
        assert driver.acquire("reconcile", lease_s=30) is not None
    finally:
        driver.close()


def test_lock_lease_expires(redis_target: Any) -> None:
    driver = _driver(redis_target, prefix=_prefix())
    try:
        first = driver.acquire("reconcile", lease_s=0.05)
        time.sleep(0.1)
        second = driver.acquire("reconcile", lease_s=5)
        assert first is not None
        assert second is not None
        assert driver.release("reconcile", first) is False
    finally:
        driver.close()


def test_prefix_with_braces_rejected() -> None:
    with pytest.raises(ValueError, match="must not contain braces"):
        Keys("team{a}:")


@pytest.mark.parametrize("name", SCRIPT_NAMES)
def test_script_file_is_complete(name: str) -> None:
    source = load_source(name)
    assert source.startswith(f"--[[ {name}: ")
    assert not re.search(r'^--- @include "', source, re.MULTILINE)
    assert "luacheck: globals" in source
    assert "Returns" in source
