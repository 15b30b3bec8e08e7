"""Sharded chords on Redis, against a private server.

A chord header with more than ``shard_size`` members is cut into shard runs
spread over the partitions. The home run activates each shard through its
outbox, each shard reports back through its own, and the callback is queued
by the report of the last shard. These tests drive those entries by hand to
repeat, drop and reorder them, and count the Redis commands each script call
runs to show that none grows with the chord.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from stem import App, chain, chord, group
from stem.canvas.compiler import compile_canvas
from stem.canvas.values import dumps
from stem.drivers.redis import RedisDriver
from stem.drivers.redis.shards import SHARD_TASK, shard_run_id
from stem.engine.errors import DriverError
from stem.engine.ports import Message

from .conftest import database_url, stem
from .shard_helpers import (
    TIMEOUT_S,
    ScriptCommandCounter,
    apply_entries,
    chord_spec,
    make_driver,
    new_prefix,
    planned_error,
    read_outbox,
    run_message,
)


@pytest.fixture
def client(redis_target: Any) -> Iterator[Any]:
    plain = redis_target.client()
    yield plain
    plain.close()


@pytest.fixture
def make_app(redis_target: Any) -> Iterator[Callable[..., App]]:
    """Yield a factory of apps with ``add``, ``total``, ``echo`` and ``fail``."""
    prefix = new_prefix()
    apps: list[App] = []

    def make(**settings: Any) -> App:
        instance = App(
            redis_target.url, prefix=prefix, **redis_target.settings, **settings
        )
        instance.task(name="add")(lambda x, y: x + y)
        instance.task(name="total")(sum)
        instance.task(name="echo")(lambda value: value)

        def fail(*args: Any) -> None:
            raise ValueError("planned failure")

        instance.task(name="fail")(fail)
        apps.append(instance)
        return instance

    yield make
    for instance in apps:
        instance.close()


def test_large_chord_gives_same_input(make_app: Callable[..., App]) -> None:
    sharded = make_app(shard_size=100)
    plain = make_app(shard_size=0)
    canvas = chord(
        [sharded.tasks["add"].s(i, i) for i in range(2000)],
        sharded.tasks["echo"].s(),
    )
    with sharded.worker(concurrency=4):
        value = sharded.submit(canvas).get(TIMEOUT_S)
    with plain.worker(concurrency=4):
        expected = plain.submit(canvas).get(TIMEOUT_S)
    assert value == expected
    assert value == [2 * i for i in range(2000)]


def test_shard_input_keeps_tagged_values(make_app: Callable[..., App]) -> None:
    sharded = make_app(shard_size=50)
    plain = make_app(shard_size=0)
    for app in (sharded, plain):
        app.task(name="stamp")(
            lambda i: {"id": uuid.UUID(int=i), "day": dt.date(2024, 1, 1 + i % 28)}
        )
    header = [sharded.tasks["stamp"].s(i) for i in range(120)]
    header[7] = sharded.tasks["add"].s("a", "b")
    canvas = chord(header, sharded.tasks["echo"].s())
    with sharded.worker(concurrency=4):
        result = sharded.submit(canvas)
        value = result.get(TIMEOUT_S)
    with plain.worker(concurrency=4):
        expected = plain.submit(canvas).get(TIMEOUT_S)
    home = sharded.driver._spec_of(result.id)  # type: ignore[attr-defined]
    assert sum(node.task == SHARD_TASK for node in home.nodes) == 3
    assert value == expected
    assert value[1] == {"id": uuid.UUID(int=1), "day": dt.date(2024, 1, 2)}
    assert value[7] == "ab"
    assert len(value) == 120


def test_shards_spread_over_partitions(
    make_app: Callable[..., App], client: Any, redis_target: Any
) -> None:
    app = make_app(shard_size=100)
    driver = app.driver
    assert isinstance(driver, RedisDriver)
    driver.submit("spread", chord_spec(2000))
    tags = {
        driver._keys.partition_of(shard_run_id("spread", str(first))).tag
        for first in range(0, 2000, 100)
    }
    for first in range(0, 2000, 100):
        keys = driver._keys.run(shard_run_id("spread", str(first)))
        assert client.hget(keys.run, "active") == "0"
    assert len(tags) == len(driver._keys.partitions)


def test_get_reads_no_shard_of_succeeded_run(
    make_app: Callable[..., App], monkeypatch: pytest.MonkeyPatch
) -> None:
    app = make_app(shard_size=3)
    tasks = app.tasks
    canvas = chord([tasks["add"].s(i, i) for i in range(10)], tasks["total"].s())
    with app.worker(concurrency=4):
        result = canvas.apply_async()
        result.get(TIMEOUT_S)
    merged = result.snapshot()
    shard_reads: list[str] = []
    driver = app.driver
    assert isinstance(driver, RedisDriver)
    read_shard = driver._shard_state

    def counted(run_id: str) -> Any:
        shard_reads.append(run_id)
        return read_shard(run_id)

    monkeypatch.setattr(driver, "_shard_state", counted)

    assert result.get(TIMEOUT_S) == 90
    assert shard_reads == []
    # A snapshot still shows the members in place of the shard nodes.
    assert sorted(merged.nodes, key=int) == [str(i) for i in range(11)]
    assert result.snapshot().nodes.keys() == merged.nodes.keys()
    assert len(shard_reads) == 4


def test_chain_input_reaches_every_member(make_app: Callable[..., App]) -> None:
    app = make_app(shard_size=3)
    tasks = app.tasks
    canvas = chain(
        tasks["add"].s(1, 2),
        chord([tasks["add"].s(i) for i in range(10)], tasks["echo"].s()),
    )
    with app.worker(concurrency=4):
        assert canvas.apply_async().get(TIMEOUT_S) == [3 + i for i in range(10)]


def _drain(
    driver: RedisDriver,
    *,
    skip: Callable[[str], bool] = lambda kind: False,
    fixed: bool = False,
) -> list[tuple[str, str]]:
    """Apply outbox entries and run messages one at a time until nothing is left.

    ``skip`` drops entries of the kinds it returns True for, acknowledged
    and never applied, as a worker killed between partitions would. With
    ``fixed`` the task ``fail`` succeeds with twice its node id, as ``add``
    does for its member. Returns the tasks run, in order.
    """
    ran: list[tuple[str, str]] = []
    while True:
        progressed = False
        for partition, entry_id, fields in read_outbox(driver):
            progressed = True
            if skip(fields["kind"]):
                driver._ack_outbox(partition, entry_id)
            else:
                driver._apply_outbox(partition, entry_id, fields)
        for message in driver.fetch(["default"], 100, 0.05):
            progressed = True
            claim = run_message(driver, message, fixed=fixed)
            if claim is not None:
                ran.append((claim.task, claim.task_id))
        if not progressed:
            return ran


def test_callback_once_with_repeated_entries(redis_target: Any) -> None:
    driver = make_driver(redis_target, shard_size=5)
    original = driver._apply_outbox

    def twice(partition: Any, entry_id: str, fields: Any) -> None:
        # A worker that died after applying an entry but before its
        # acknowledgement: the entry is applied again.
        original(partition, entry_id, fields)
        original(partition, entry_id, fields)

    driver._apply_outbox = twice  # type: ignore[method-assign]
    try:
        driver.submit("repeat", chord_spec(23))
        ran = _drain(driver)
        assert [task for task, _ in ran].count("echo") == 1
        assert [task for task, _ in ran].count("add") == 23
        snapshot = driver.snapshot("repeat")
        assert snapshot.status == "succeeded"
        assert snapshot.value == dumps([2 * i for i in range(23)])
    finally:
        driver.close()


def test_reconciler_recovers_dropped_entries(redis_target: Any) -> None:
    driver = make_driver(redis_target, shard_size=5, reconcile_after_s=0.0)
    try:
        driver.submit("dropped", chord_spec(12))
        _drain(driver, skip=lambda kind: kind in ("activate", "report"))
        assert driver.snapshot("dropped").status == "running"
        for _ in range(4):
            driver.reconcile()
            _drain(driver, skip=lambda kind: kind in ("activate", "report"))
        snapshot = driver.snapshot("dropped")
        assert snapshot.status == "succeeded"
        assert snapshot.value == dumps([2 * i for i in range(12)])
    finally:
        driver.close()


def test_member_task_ids_are_home_ids(redis_target: Any) -> None:
    driver = make_driver(redis_target, shard_size=5)
    try:
        driver.submit("ids", chord_spec(12))
        ran = _drain(driver)
        ids = sorted(task_id for task, task_id in ran if task == "add")
        assert ids == sorted(f"ids-{i}" for i in range(12))
    finally:
        driver.close()


def test_fail_fast_cancels_other_shards(redis_target: Any) -> None:
    driver = make_driver(redis_target, shard_size=5)
    try:
        driver.submit("fails", chord_spec(20, failing=7))
        # Activate every shard, then run only the failing member.
        for partition in driver._keys.partitions:
            driver._ensure_group(partition.outbox)
        _apply_outbox_once(driver)
        messages = _fetch_all(driver)
        failing = [m for m in messages if m.node_id == "7"]
        assert len(failing) == 1
        claim = driver.claim(failing[0])
        assert claim is not None
        driver.fail(failing[0], planned_error())
        # The failing shard reports at once, before its other members end.
        _apply_outbox_once(driver)
        home = driver.snapshot("fails")
        assert home.status == "failed"
        assert home.error_node == "7"
        assert home.nodes["20"].state == "cancelled"
        _apply_outbox_once(driver)
        for first in (0, 5, 10, 15):
            keys = driver._keys.run(shard_run_id("fails", str(first)))
            assert driver._client.hget(keys.run, "status") == "cancelled"
    finally:
        driver.close()


def _fetch_all(driver: RedisDriver) -> list[Message]:
    """Fetch every queued message of every partition."""
    found: list[Message] = []
    while True:
        batch = driver.fetch(["default"], 100, 0.05)
        if not batch:
            return found
        found += batch


def _apply_outbox_once(driver: RedisDriver) -> int:
    """Apply every outbox entry now pending, once; return how many."""
    driver._ensure_groups(["default"])
    entries = read_outbox(driver)
    apply_entries(driver, entries)
    return len(entries)


def test_cancel_reaches_shards(redis_target: Any) -> None:
    driver = make_driver(redis_target, shard_size=5)
    try:
        driver.submit("stop", chord_spec(12))
        for partition in driver._keys.partitions:
            driver._ensure_group(partition.outbox)
        _apply_outbox_once(driver)
        driver.cancel("stop")
        for first in (0, 5, 10):
            keys = driver._keys.run(shard_run_id("stop", str(first)))
            assert driver._client.hget(keys.run, "status") == "cancelled"
        assert driver.snapshot("stop").status == "cancelled"
        assert _drain(driver) == []
    finally:
        driver.close()


def test_run_retry_reopens_shards(redis_target: Any) -> None:
    driver = make_driver(redis_target, shard_size=5)
    try:
        driver.submit("again", chord_spec(12, failing=3))
        first = _drain(driver)
        assert driver.snapshot("again").status == "failed"
        assert driver.retry_run("again") == 2
        # The failed member runs again and succeeds this time.
        second = _drain(driver, fixed=True)
        snapshot = driver.snapshot("again")
        assert snapshot.status == "succeeded"
        assert snapshot.value == dumps([2 * i for i in range(12)])
        ran_first = {task_id for task, task_id in first if task == "add"}
        ran_second = {task_id for task, task_id in second if task == "add"}
        assert not ran_first & ran_second
        assert [task for task, _ in second].count("echo") == 1
    finally:
        driver.close()


def test_run_retry_resets_unstarted_shards(redis_target: Any) -> None:
    app = App("memory://")
    add = app.task(name="add")(lambda x, y=0: x + y)
    fail = app.task(name="fail")(lambda *args: None)
    echo = app.task(name="echo")(lambda value: value)
    canvas = chain(fail.s(), chord([add.s(i) for i in range(12)], echo.s()))
    driver = make_driver(redis_target, shard_size=5)
    try:
        driver.submit("unstarted", compile_canvas(canvas))
        _drain(driver)
        for first in (1, 6, 11):
            keys = driver._keys.run(shard_run_id("unstarted", str(first)))
            assert driver._client.hmget(keys.run, ["status", "active"]) == [
                "cancelled",
                "0",
            ]
        driver.retry_run("unstarted")
        # The predecessor succeeds with 0 this time, so member i gets i.
        second = _drain(driver, fixed=True)
        snapshot = driver.snapshot("unstarted")
        assert snapshot.status == "succeeded"
        assert snapshot.value == dumps(list(range(12)))
        assert [task for task, _ in second].count("add") == 12
    finally:
        driver.close()


def test_shard_size_option_is_checked(redis_target: Any) -> None:
    with pytest.raises(ValueError, match="shard_size"):
        make_driver(redis_target, shard_size=-1)


def _largest_script_call(url: str, members: int, shard_size: int) -> int:
    """Run a chord in a chain one step at a time; return the largest script call."""
    app = App("memory://")
    add = app.task(name="add")(lambda x, y=0: x + y)
    echo = app.task(name="echo")(lambda value: value)
    canvas = chain(add.s(1, 2), chord([add.s(i) for i in range(members)], echo.s()))
    spec = compile_canvas(canvas)
    driver = RedisDriver(
        url,
        prefix=new_prefix(),
        partitions=3,
        shard_size=shard_size,
        release_slice=50,
        reconcile_interval_s=3600.0,
    )
    try:
        counter = ScriptCommandCounter(driver, pipelines=True)
        driver.submit("measured", spec)
        while True:
            messages = driver.fetch(["default"], 1, 0.05)
            if not messages:
                if driver.snapshot("measured").status != "running":
                    break
                continue
            [message] = messages
            claim = driver.claim(message)
            if claim is None:
                continue
            if claim.task == "echo":
                assert claim.args[0] == [3 + i for i in range(members)]
                driver.complete(message, dumps(claim.args[0]))
            else:
                driver.complete(message, str(sum(claim.args)))
        assert driver.snapshot("measured").status == "succeeded"
        return max(counter.largest.values())
    finally:
        driver.close()


@pytest.mark.slow
def test_no_script_grows_with_chord(redis_url: str) -> None:
    small = _largest_script_call(redis_url, 200, shard_size=100)
    large = _largest_script_call(redis_url, 2000, shard_size=100)
    assert small == large
    # The same chords without shards: the call that queues the header grows.
    unsharded_small = _largest_script_call(redis_url, 200, shard_size=0)
    unsharded_large = _largest_script_call(redis_url, 2000, shard_size=0)
    assert unsharded_large > 5 * unsharded_small


def test_crash_after_activate_is_applied_again(
    redis_target: Any, monkeypatch: Any
) -> None:
    driver = make_driver(redis_target, shard_size=5)
    try:
        driver.submit("crash", chord_spec(12))
        original = driver._scripts.call
        crashed: list[str] = []

        def call(name: str, *args: Any, **kwargs: Any) -> Any:
            # The worker dies after the shard's activation, between the
            # partitions, before the activate entry is acknowledged.
            if name == "release" and not crashed:
                crashed.append(name)
                raise KeyboardInterrupt("died after activate")
            return original(name, *args, **kwargs)

        monkeypatch.setattr(driver._scripts, "call", call)
        with pytest.raises(KeyboardInterrupt):
            _apply_outbox_once(driver)
        monkeypatch.setattr(driver._scripts, "call", original)
        # Another worker reclaims the pending entry and applies it again.
        driver.visibility_timeout_s = 0.0
        driver._last_reclaim = 0.0
        for partition in driver._keys.partitions:
            driver._reclaim_outbox(partition, 100)
        ran = _drain(driver)
        assert [task for task, _ in ran].count("add") == 12
        assert [task for task, _ in ran].count("echo") == 1
        assert driver.snapshot("crash").status == "succeeded"
    finally:
        driver.close()


def test_unwritten_home_lets_shards_expire(
    redis_target: Any, client: Any, monkeypatch: Any
) -> None:
    driver = make_driver(redis_target, shard_size=5, stage_ttl_s=0.2)
    try:
        original = driver._scripts.call

        def call(name: str, *args: Any, **kwargs: Any) -> Any:
            if name == "submit":
                raise KeyboardInterrupt("died before the home run")
            return original(name, *args, **kwargs)

        monkeypatch.setattr(driver._scripts, "call", call)
        with pytest.raises(KeyboardInterrupt):
            driver.submit("orphan", chord_spec(12))
        shard = driver._keys.run(shard_run_id("orphan", "0"))
        assert client.exists(shard.run) == 1
        time.sleep(0.4)
        assert client.exists(shard.run, shard.graph, shard.nodes, shard.spec) == 0
    finally:
        driver.close()


def test_written_home_keeps_its_shards(redis_target: Any, client: Any) -> None:
    driver = make_driver(redis_target, shard_size=5, stage_ttl_s=0.2)
    try:
        driver.submit("kept", chord_spec(12))
        time.sleep(0.4)
        for first in (0, 5, 10):
            shard = driver._keys.run(shard_run_id("kept", str(first)))
            assert client.exists(shard.run, shard.graph, shard.nodes) == 3
        _drain(driver)
        assert driver.snapshot("kept").status == "succeeded"
    finally:
        driver.close()


def test_views_merge_the_shards(make_app: Callable[..., App]) -> None:
    app = make_app(shard_size=4, reconcile_interval_s=3600.0)
    tasks = app.tasks
    canvas = chain(
        tasks["add"].s(1, 2),
        chord([tasks["add"].s(i) for i in range(10)], tasks["echo"].s()),
    )
    result = app.submit(canvas)
    with app.worker(concurrency=4):
        result.get(TIMEOUT_S)
    spec, records = result.graph()
    plain = make_app(shard_size=0)
    unsharded = plain.submit(canvas)
    assert spec == unsharded.graph()[0]
    assert sorted(records) == sorted(node.id for node in spec.nodes)
    assert {record.state for record in records.values()} == {"succeeded"}
    assert result.node("5").value == 3 + 4
    assert result.group_counts() == {None: {"succeeded": 2}, 0: {"succeeded": 10}}


def test_dead_letter_in_shard_not_replayed(redis_target: Any) -> None:
    driver = make_driver(redis_target, shard_size=5)
    try:
        driver.submit("dead", chord_spec(12))
        _apply_outbox_once(driver)
        [message] = [m for m in _fetch_all(driver) if m.node_id == "6"]
        driver.dead_letter(message, "no such task")
        [dead], _ = driver.list_dead_letters()
        assert dead.message.run_id == shard_run_id("dead", "5")
        assert driver.replay_dead_letter(dead.id) == "in_shard"
        assert len(driver.list_dead_letters()[0]) == 1
    finally:
        driver.close()


def test_shard_size_in_url(redis_target: Any) -> None:
    separator = "&" if "?" in redis_target.url else "?"
    driver = RedisDriver(
        f"{redis_target.url}{separator}shard_size=7",
        prefix=new_prefix(),
        **redis_target.settings,
    )
    try:
        assert driver._shard_size == 7
    finally:
        driver.close()
    with pytest.raises(ValueError, match="shard_size='x' is invalid"):
        make_driver(redis_target, url_suffix="shard_size=x")


def test_graph_show_of_sharded_run(redis_url: str) -> None:
    # The command line uses no key prefix, so the run gets a database of its own.
    url = f"{database_url(redis_url, 13)}?shard_size=50"
    driver = RedisDriver(url, reconcile_interval_s=3600.0)
    try:
        driver.submit("drawn", chord_spec(400))
        _drain(driver)
        assert driver.snapshot("drawn").status == "succeeded"
    finally:
        driver.close()
    drawn = stem("graph", "show", "drawn", "--url", url)
    assert drawn.returncode == 0, drawn.stderr
    assert "401 nodes" in drawn.stdout
    assert "add \N{MULTIPLICATION SIGN}400" in drawn.stdout


def test_nested_members_after_group(make_app: Callable[..., App]) -> None:
    app = make_app(shard_size=2)
    tasks = app.tasks
    pair = app.task(name="pair")(lambda value, extra: [value, extra])
    members = [group(pair.s(i), pair.s(10 * i)) for i in range(5)]
    canvas = chain(
        group(tasks["add"].s(1, 1), tasks["add"].s(2, 2)),
        chord(members, tasks["echo"].s()),
    )
    with app.worker(concurrency=4):
        value = canvas.apply_async().get(TIMEOUT_S)
    assert value == [[[[2, 4], i], [[2, 4], 10 * i]] for i in range(5)]


def test_shard_id_taken_by_other_run(redis_target: Any) -> None:
    driver = make_driver(redis_target, shard_size=5)
    try:
        assert driver.submit("taken~s5", chord_spec(2))
        with pytest.raises(DriverError, match="taken~s5"):
            driver.submit("taken", chord_spec(12))
    finally:
        driver.close()


def test_submit_again_after_crash(redis_target: Any, monkeypatch: Any) -> None:
    driver = make_driver(redis_target, shard_size=5)
    try:
        original = driver._scripts.call

        def call(name: str, *args: Any, **kwargs: Any) -> Any:
            if name == "submit":
                raise KeyboardInterrupt("died before the home run")
            return original(name, *args, **kwargs)

        with monkeypatch.context() as patch:
            patch.setattr(driver._scripts, "call", call)
            with pytest.raises(KeyboardInterrupt):
                driver.submit("again-after", chord_spec(12))
        # The shards written by the first try are taken over.
        assert driver.submit("again-after", chord_spec(12))
        _drain(driver)
        snapshot = driver.snapshot("again-after")
        assert snapshot.status == "succeeded"
        assert snapshot.value == dumps([2 * i for i in range(12)])
    finally:
        driver.close()
