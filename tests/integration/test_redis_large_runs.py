"""Large runs and batches on Redis, against a private server.

A run whose submission is larger than ``submit_chunk`` field pairs is staged
in chunks before its run hash exists, sealed, and its roots are queued
``release_slice`` at a time. Most tests here set both small so a small chord
takes every path. A chord callback's claim reads its header in slices of
1,000 members, the worker claims a fetched batch in one pipeline, and the
claim script returns a run's spec only to the first claim of that run in a
batch.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from stem import App, chord, group
from stem.canvas.compiler import compile_canvas
from stem.canvas.spec import GraphSpec
from stem.canvas.values import dumps, loads
from stem.drivers.redis import RedisDriver
from stem.engine import machine, settings
from stem.engine.errors import DriverError, RunNotFound
from stem.engine.ports import Message
from stem.engine.records import ErrorInfo
from stem.engine.result import AsyncResult

from .script_helpers import flush_scripts
from .shard_helpers import ScriptCommandCounter

TIMEOUT_S = 10.0
#: Time allowed for a chord of a few thousand members with default settings.
LARGE_TIMEOUT_S = 60.0
#: Settings that make a chord of a few members a large run.
SMALL = {"submit_chunk": 16, "release_slice": 5}


def _prefix() -> str:
    return f"test-{uuid.uuid4().hex[:12]}:"


def _chord_spec(members: int) -> GraphSpec:
    app = App("memory://")
    add = app.task(name="add")(lambda x, y: x + y)
    total = app.task(name="total")(sum)
    return compile_canvas(chord([add.s(i, i) for i in range(members)], total.s()))


@pytest.fixture
def client(redis_target: Any) -> Iterator[Any]:
    plain = redis_target.client()
    yield plain
    plain.close()


@pytest.fixture
def make_app(redis_target: Any) -> Iterator[Callable[..., App]]:
    """Yield a factory of apps with ``add`` and ``total`` under one prefix."""
    prefix = _prefix()
    apps: list[App] = []

    def make(**settings: Any) -> App:
        instance = App(
            redis_target.url, prefix=prefix, **redis_target.settings, **settings
        )
        instance.task(name="add")(lambda x, y: x + y)
        instance.task(name="total")(sum)
        apps.append(instance)
        return instance

    yield make
    for instance in apps:
        instance.close()


def test_large_chord_runs_to_its_callback(
    make_app: Callable[..., App], client: Any
) -> None:
    app = make_app(**SMALL)
    tasks = app.tasks
    result = app.submit(
        chord([tasks["add"].s(i, i) for i in range(30)], tasks["total"].s())
    )
    with app.worker(concurrency=4):
        assert result.get(TIMEOUT_S) == sum(2 * i for i in range(30))
    driver = app.driver
    assert isinstance(driver, RedisDriver)
    keys = driver._keys.run(result.id)
    assert client.exists(keys.roots) == 0
    assert client.hmget(keys.run, ["released", "release_entry"]) == [None, None]
    assert client.xlen(driver._keys.partition_of(result.id).outbox) == 0


def test_large_submit_of_an_existing_run_changes_nothing(redis_target: Any) -> None:
    driver = RedisDriver(
        redis_target.url, prefix=_prefix(), **redis_target.settings, **SMALL
    )
    spec = _chord_spec(12)
    try:
        assert driver.submit("twice", spec)
        assert not driver.submit("twice", spec)
        messages = driver.fetch(["default"], 100, TIMEOUT_S)
        assert sorted(message.node_id for message in messages) == sorted(
            node.id for node in spec.nodes if not node.deps
        )
    finally:
        driver.close()


def _crash_at(driver: RedisDriver, script: str, monkeypatch: Any) -> None:
    """Make the driver's process die (raise) when it would call ``script``."""
    original = driver._scripts.call

    def call(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == script:
            raise KeyboardInterrupt(f"died before {script}")
        return original(name, *args, **kwargs)

    monkeypatch.setattr(driver._scripts, "call", call)


def test_unsealed_run_never_runs_and_expires(
    redis_target: Any, client: Any, monkeypatch: Any
) -> None:
    prefix = _prefix()
    driver = RedisDriver(
        redis_target.url,
        prefix=prefix,
        **redis_target.settings,
        **SMALL,
        stage_ttl_s=0.2,
    )
    try:
        _crash_at(driver, "seal", monkeypatch)
        with pytest.raises(KeyboardInterrupt):
            driver.submit("unsealed", _chord_spec(12))
        keys = driver._keys.run("unsealed")
        assert client.exists(keys.run) == 0
        assert 0 < client.pttl(keys.graph) <= 200
        assert 0 < client.pttl(keys.nodes) <= 200
        assert 0 < client.pttl(keys.staged_spec) <= 200
        with pytest.raises(RunNotFound):
            driver.snapshot("unsealed")
        assert driver.fetch(["default"], 10, 0.05) == []

        deadline = time.monotonic() + TIMEOUT_S
        while client.exists(keys.graph, keys.nodes, keys.roots, keys.staged_spec):
            assert time.monotonic() < deadline, "Staged keys never expired."
            time.sleep(0.05)
    finally:
        driver.close()


def test_crash_after_seal_is_finished_by_a_worker(
    make_app: Callable[..., App], monkeypatch: Any
) -> None:
    submitter = make_app(**SMALL)
    driver = submitter.driver
    assert isinstance(driver, RedisDriver)
    _crash_at(driver, "release", monkeypatch)
    tasks = submitter.tasks
    canvas = chord([tasks["add"].s(i, 1) for i in range(20)], tasks["total"].s())
    with pytest.raises(KeyboardInterrupt):
        submitter.submit(canvas, options={"run_id": "sealed"})
    assert driver.snapshot("sealed").status == "running"

    worker = make_app(**SMALL)
    with worker.worker(concurrency=2):
        result = AsyncResult("sealed", worker)
        assert result.get(TIMEOUT_S) == sum(i + 1 for i in range(20))


def test_invalid_chunk_setting_is_rejected(redis_target: Any) -> None:
    with pytest.raises(ValueError, match="submit_chunk is 0"):
        RedisDriver(redis_target.url, prefix=_prefix(), submit_chunk=0)


def _commands_per_call(
    url: str, members: int, monkeypatch: pytest.MonkeyPatch
) -> dict[str, int]:
    """Submit a chord; return the largest command count of one call of each script.

    INFO commandstats counts the commands that scripts call too. The INFO
    calls themselves and the EVALSHA are taken off.
    """
    observer: Any = redis.Redis.from_url(url, decode_responses=True)
    # Without shards, so that the chord is one large run.
    driver = RedisDriver(
        url, prefix=_prefix(), submit_chunk=100, release_slice=100, shard_size=0
    )
    largest: dict[str, int] = {}
    original = driver._scripts.call

    def total() -> int:
        stats: dict[str, Any] = observer.info("commandstats")
        return sum(int(entry["calls"]) for entry in stats.values())

    def call(name: str, *args: Any, **kwargs: Any) -> Any:
        before = total()
        reply = original(name, *args, **kwargs)
        commands = total() - before - 2
        largest[name] = max(largest.get(name, 0), commands)
        return reply

    monkeypatch.setattr(driver._scripts, "call", call)
    try:
        assert driver.submit(f"sized-{members}", _chord_spec(members))
    finally:
        driver.close()
        observer.close()
    return largest


def test_commands_per_script_call_do_not_grow_with_the_chord(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    small = _commands_per_call(redis_url, 100, monkeypatch)
    large = _commands_per_call(redis_url, 10_000, monkeypatch)
    assert set(small) == {"stage", "seal", "release"}
    assert small == large, (small, large)
    assert all(count > 0 for count in small.values())


def _run_end_commands(url: str, members: int, fail: str) -> dict[str, int]:
    """Run a group of ``members`` sinks, failing node ``fail`` ("" for none).

    Returns the largest command count of one call of each script, so of the
    call that ends the run too.
    """
    app = App("memory://")
    add = app.task(name="add")(lambda x, y: x + y)
    spec = compile_canvas(group(add.s(i, i) for i in range(members)))
    # Without shards, so that the group's members are the run's own sinks.
    driver = RedisDriver(
        url, prefix=_prefix(), submit_chunk=100, release_slice=100, shard_size=0
    )
    try:
        counter = ScriptCommandCounter(driver, pipelines=False)
        driver.submit("sinks", spec)
        _run_queued(driver, fail)
        assert driver.snapshot("sinks").status == ("failed" if fail else "succeeded")
        assert driver.snapshot("sinks").error_node == (fail or None)
        return counter.largest
    finally:
        driver.close()


@pytest.mark.slow
@pytest.mark.parametrize("outcome", ["succeeded", "failed"])
def test_run_end_commands_do_not_grow_with_sinks(redis_url: str, outcome: str) -> None:
    # The last member fails: the error node is the last node of the run.
    small = _run_end_commands(redis_url, 100, "99" if outcome == "failed" else "")
    large = _run_end_commands(redis_url, 1000, "999" if outcome == "failed" else "")
    assert large["complete"] <= small["complete"], (small, large)
    if outcome == "failed":
        assert large["fail"] <= small["fail"], (small, large)
    assert max(large.values()) <= max(small.values()), (small, large)


def _seal_without_release(driver: RedisDriver, run_id: str, monkeypatch: Any) -> None:
    """Submit a large run whose submitter dies right after the seal."""
    with monkeypatch.context() as patch:
        _crash_at(driver, "release", patch)
        with pytest.raises(KeyboardInterrupt):
            driver.submit(run_id, _chord_spec(12))


def test_reconciler_releases_run_whose_outbox_entry_was_lost(
    make_app: Callable[..., App], client: Any, monkeypatch: Any
) -> None:
    submitter = make_app(**SMALL)
    driver = submitter.driver
    assert isinstance(driver, RedisDriver)
    _seal_without_release(driver, "lost", monkeypatch)
    # A failover can lose the outbox entry while the sealed run survives.
    outbox = driver._keys.partition_of("lost").outbox
    [(entry_id, _)] = client.xrange(outbox)
    client.xdel(outbox, entry_id)

    worker = make_app(**SMALL, reconcile_interval_s=0.0, reconcile_after_s=0.0)
    with worker.worker(concurrency=2):
        result = AsyncResult("lost", worker)
        assert result.get(TIMEOUT_S) == sum(2 * i for i in range(12))
    releasing = driver._keys.partition_of("lost").releasing
    assert client.zscore(releasing, "lost") is None


def test_reconciler_runs_only_under_its_lock(
    redis_target: Any, monkeypatch: Any
) -> None:
    prefix = _prefix()
    driver = RedisDriver(
        redis_target.url,
        prefix=prefix,
        **redis_target.settings,
        **SMALL,
        reconcile_after_s=0.0,
    )
    other = RedisDriver(redis_target.url, prefix=prefix, **redis_target.settings)
    try:
        _seal_without_release(driver, "locked", monkeypatch)
        token = other.acquire("reconciler", TIMEOUT_S)
        assert token is not None

        assert driver.reconcile() is None
        assert driver.snapshot("locked").nodes["0"].state == "pending"

        assert other.release("reconciler", token)
        assert driver.reconcile() == 1
        assert driver.snapshot("locked").nodes["0"].state == "queued"
        assert driver.reconcile() == 0
    finally:
        driver.close()
        other.close()


def test_reconciler_leaves_runs_that_progress(
    redis_target: Any, monkeypatch: Any
) -> None:
    driver = RedisDriver(
        redis_target.url,
        prefix=_prefix(),
        **redis_target.settings,
        **SMALL,
        reconcile_after_s=3600.0,
    )
    try:
        _seal_without_release(driver, "recent", monkeypatch)

        assert driver.reconcile() == 0
        assert driver.snapshot("recent").nodes["0"].state == "pending"
    finally:
        driver.close()


def _callback_claim_commands(url: str, members: int) -> tuple[int, list[Any]]:
    """Return the Redis commands the claim of a chord's callback ran, and its args.

    The members are marked succeeded with plain commands, which is what
    their completions would leave, so only the claim runs as a script.
    """
    prefix = _prefix()
    # Without shards, so that the callback reads every member itself.
    driver = RedisDriver(
        url, prefix=prefix, submit_chunk=500, inline_input_chars=64, shard_size=0
    )
    observer: Any = redis.Redis.from_url(url, decode_responses=True)
    spec = _chord_spec(members)
    run_id = f"callback-{members}"
    try:
        assert driver.submit(run_id, spec)
        keys = driver._keys.run(run_id)
        callback = spec.nodes[-1].id
        pipe = observer.pipeline(transaction=False)
        for node in spec.nodes[:-1]:
            pipe.hset(keys.nodes, node.id, "succeeded")
            pipe.hset(keys.values, node.id, node.id)
        pipe.hset(keys.nodes, mapping={callback: "queued", f"{callback}/attempt": "1"})
        pipe.execute()
        message = Message(run_id, callback, 1, "default", 1, "")

        before = _commands_run(observer)
        claim = driver.claim(message)
        commands = _commands_run(observer) - before - 2
    finally:
        driver.close()
        observer.close()
    assert claim is not None
    return commands, claim.args


def _commands_run(client: Any) -> int:
    stats: dict[str, Any] = client.info("commandstats")
    return sum(int(entry["calls"]) for entry in stats.values())


def test_callback_claim_commands_do_not_grow_with_the_chord(redis_url: str) -> None:
    small, small_args = _callback_claim_commands(redis_url, 100)
    large, large_args = _callback_claim_commands(redis_url, 10_000)

    assert small_args == [list(range(100))]
    assert large_args == [list(range(10_000))]
    # The claim script, then three HMGET per page of 1,000 inputs.
    assert small - 3 == large - 3 * 10


def test_release_after_cancel_queues_nothing(
    redis_target: Any, client: Any, monkeypatch: Any
) -> None:
    driver = RedisDriver(
        redis_target.url, prefix=_prefix(), **redis_target.settings, **SMALL
    )
    try:
        _seal_without_release(driver, "cancelled", monkeypatch)
        driver.cancel("cancelled")

        assert driver.fetch(["default"], 100, 0.2) == []
        keys = driver._keys.run("cancelled")
        assert client.exists(keys.roots) == 0
        assert client.xlen(driver._keys.partition_of("cancelled").outbox) == 0
        assert driver.snapshot("cancelled").status == "cancelled"
    finally:
        driver.close()


def test_seal_with_missing_chunks_is_rejected(
    redis_target: Any, client: Any, monkeypatch: Any
) -> None:
    driver = RedisDriver(
        redis_target.url, prefix=_prefix(), **redis_target.settings, **SMALL
    )
    keys = driver._keys.run("expired")
    original = driver._scripts.call

    def call(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "seal":
            # As if the staged graph hash expired before the seal.
            client.delete(keys.graph)
        return original(name, *args, **kwargs)

    monkeypatch.setattr(driver._scripts, "call", call)
    try:
        with pytest.raises(DriverError, match="staged chunks are missing"):
            driver.submit("expired", _chord_spec(12))

        assert client.exists(keys.run) == 0
        assert client.exists(keys.spec) == 0
    finally:
        driver.close()


def _run_queued(driver: RedisDriver, fail: str = "") -> None:
    """Claim every queued message and complete it, or fail node ``fail``."""
    while messages := driver.fetch(["default"], 100, 0.2):
        for message in messages:
            claim = driver.claim(message)
            assert claim is not None
            if message.node_id == fail:
                error = ErrorInfo("builtins", "ValueError", "boom", [])
                driver.fail(claim.message, error)
            else:
                # A member adds its two arguments; the callback sums a list.
                args = claim.args
                total = sum(args[0]) if isinstance(args[0], list) else sum(args)
                driver.complete(claim.message, dumps(total))


def test_large_run_counts_events_expiry_and_retry(
    redis_target: Any, client: Any
) -> None:
    driver = RedisDriver(
        redis_target.url,
        prefix=_prefix(),
        **redis_target.settings,
        **SMALL,
        retention_s=600.0,
    )
    spec = _chord_spec(12)
    member = spec.nodes[3].id
    keys = driver._keys.run("big")
    try:
        assert driver.submit("big", spec)
        started, _ = machine.start("big", spec, time.time())
        assert driver.group_counts("big") == machine.group_counts(started)
        assert [(e.run_id, e.kind) for e in driver.events()] == [("big", "submitted")]
        listed = driver.list_runs().runs
        assert [(run.run_id, run.status) for run in listed] == [("big", "running")]
        assert client.hmget(keys.run, ["retention_ms", "events_max_len"]) == [
            "600000",
            str(settings.DEFAULT_EVENTS_MAX_LEN),
        ]

        _run_queued(driver, fail=member)
        assert driver.snapshot("big").status == "failed"
        for key in (keys.run, keys.spec, keys.counts, keys.nodes):
            assert 0 < client.pttl(key) <= 600_000, key

        assert driver.retry_run("big") == 2
        for key in (keys.run, keys.spec, keys.counts, keys.nodes):
            assert client.pttl(key) == -1, key
        _run_queued(driver)
        snapshot = driver.snapshot("big")
        assert snapshot.status == "succeeded"
        assert snapshot.value is not None
        assert loads(snapshot.value) == sum(2 * i for i in range(12))
        counts = driver.group_counts("big").values()
        assert sum(group.get("succeeded", 0) for group in counts) == len(spec.nodes)
        assert all(set(group) == {"succeeded"} for group in counts)
        assert 0 < client.pttl(keys.spec) <= 600_000
        kinds = [e.kind for e in driver.events(limit=1000) if e.kind != "started"]
        assert kinds[0] == "submitted"
        assert kinds.count("reopened") == 1
        assert kinds.count("ended") == 2
    finally:
        driver.close()


def test_malformed_outbox_entry_is_deleted(
    redis_target: Any, client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    driver = RedisDriver(
        redis_target.url, prefix=_prefix(), **redis_target.settings, **SMALL
    )
    try:
        assert driver.fetch(["default"], 10, 0.05) == []
        outbox = driver._keys.partitions[0].outbox
        client.xadd(outbox, {"kind": "release", "run": "lost"})

        assert driver.fetch(["default"], 10, 0.2) == []
        assert client.xlen(outbox) == 0
        assert "Deleted malformed outbox entry" in caplog.text
    finally:
        driver.close()


@pytest.fixture
def app(redis_url: str) -> Iterator[App]:
    """Yield an app on the private server under its own key prefix."""
    instance = App(redis_url, prefix=f"test-{uuid.uuid4().hex[:12]}:")

    @instance.task(name="square")
    def square(x: int) -> int:
        return x * x

    @instance.task(name="collect")
    def collect(values: list[int]) -> list[int]:
        return values

    yield instance
    instance.close()


def test_callback_reads_header_slices(app: App) -> None:
    members = 2_345
    canvas = chord(
        group(app.tasks["square"].s(i) for i in range(members)),
        app.tasks["collect"].s(),
    )

    with app.worker(concurrency=4):
        value = canvas.apply_async().get(LARGE_TIMEOUT_S)

    assert value == [i * i for i in range(members)]


def _fetch_all(driver: RedisDriver, count: int) -> list[Message]:
    messages: list[Message] = []
    for _ in range(50):
        messages += driver.fetch(["default"], count - len(messages), 0.1)
        if len(messages) >= count:
            break
    return messages


def test_claim_many_matches_claim(app: App) -> None:
    driver = app.driver
    assert isinstance(driver, RedisDriver)
    header = group(app.tasks["square"].s(i) for i in range(5))
    app.submit(chord(header, app.tasks["collect"].s()))
    messages = _fetch_all(driver, 5)
    # A second driver has no parsed spec, so one claim must carry it.
    fresh = RedisDriver(driver.url, prefix=driver._keys.prefix)
    texts: list[str] = []
    parse = fresh._cached_spec

    def recording(run_id: str, version: str, text: str) -> GraphSpec:
        texts.append(text)
        return parse(run_id, version, text)

    fresh._cached_spec = recording  # type: ignore[method-assign]

    claims = fresh.claim_many(messages)
    again = fresh.claim_many(messages)

    assert [claim.args for claim in claims if claim] == [[i] for i in range(5)]
    assert [claim.task for claim in claims if claim] == ["square"] * 5
    assert all(claim.message.lease == 1 for claim in claims if claim)
    assert again == [None] * 5
    assert len(texts) == 5
    assert sum(1 for text in texts if text) == 1
    fresh.close()


def test_claim_many_after_script_flush(app: App, redis_url: str) -> None:
    driver = app.driver
    assert isinstance(driver, RedisDriver)
    app.submit(group(app.tasks["square"].s(i) for i in range(3)))
    messages = _fetch_all(driver, 3)
    plain = redis.Redis.from_url(redis_url)
    flush_scripts(plain)
    plain.close()

    claims = driver.claim_many(messages)

    assert [claim.args for claim in claims if claim] == [[0], [1], [2]]
