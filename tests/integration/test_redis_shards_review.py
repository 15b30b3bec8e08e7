"""Review of sharded chords on Redis: the promises of docs/redis.md, attacked.

Each test drives a sharded chord on the three Redis configurations (one
partition, three partitions, the Cluster) and checks one promise. The
callback gets exactly the list that memory:// gives, once per epoch. Outbox
entries applied twice, late or out of order change nothing. A shard lives as
long as its home run needs its values. No script call grows with the header.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from stem import App, chain, chord, group
from stem.canvas.compiler import compile_canvas
from stem.canvas.spec import GraphSpec
from stem.canvas.values import dumps
from stem.drivers.redis import RedisDriver
from stem.drivers.redis.shards import plan_shards, shard_run_id
from stem.engine.errors import DriverError, RunNotFound
from stem.engine.ports import Message

from .shard_helpers import (
    TIMEOUT_S,
    Held,
    ScriptCommandCounter,
    apply_entries,
    chord_spec,
    make_driver,
    new_prefix,
    read_outbox,
    run_message,
)


def _drain(
    driver: RedisDriver,
    *,
    fixed: bool = False,
    hold: Callable[[dict[str, str]], bool] = lambda fields: False,
    held: Held | None = None,
    skip: Callable[[Message], bool] = lambda message: False,
    skipped: list[Message] | None = None,
) -> list[str]:
    """Apply outbox entries and run messages until nothing is left.

    Entries that ``hold`` selects are left pending and appended to ``held``,
    as a worker that read them and stalls would leave them. `fetch` applies
    the entries it reads too, so the hold covers it. Messages that ``skip``
    selects are fetched and left unclaimed, appended to ``skipped``. With
    ``fixed`` the task ``fail`` succeeds. Returns the tasks run.
    """
    original = driver._apply_outbox

    def apply(partition: Any, entry_id: str, fields: Any) -> None:
        if hold(fields):
            assert held is not None
            held.append((partition, entry_id, fields))
        else:
            original(partition, entry_id, fields)

    driver._apply_outbox = apply  # type: ignore[method-assign]
    ran: list[str] = []
    try:
        while True:
            progressed = False
            for partition, entry_id, fields in read_outbox(driver):
                progressed = True
                apply(partition, entry_id, fields)
            for message in driver.fetch(["default"], 100, 0.05):
                progressed = True
                if skip(message):
                    assert skipped is not None
                    skipped.append(message)
                    continue
                claim = run_message(driver, message, fixed=fixed)
                if claim is not None:
                    ran.append(claim.task)
            if not progressed:
                return ran
    finally:
        del driver._apply_outbox


# -- the callback's input, compared with memory:// ---------------------------


def _canvases(app: App) -> dict[str, Any]:
    """Return canvases whose chord headers are larger than a shard of 3."""
    add = app.tasks["add"]
    echo = app.tasks["echo"]
    total = app.tasks["total"]
    return {
        "chains": chord([add.s(i, 1) | add.s(10) for i in range(8)], echo.s()),
        "uneven chains": chord(
            [chain(*[add.s(i, 0)] + [add.s(1)] * (i % 3)) for i in range(8)],
            echo.s(),
        ),
        "nested groups": chord(
            [group(add.s(i, 0), add.s(i, 100)) for i in range(7)], echo.s()
        ),
        "countdown": chord(
            [add.s(i, 0).set(countdown=0.05 * (i % 2)) for i in range(8)], echo.s()
        ),
        "in a chain": chain(
            add.s(1, 2),
            chord([add.s(i) for i in range(8)], echo.s()),
            add.s([0]),
        ),
        "in a group": group(
            chord([add.s(i, i) for i in range(7)], echo.s()), add.s(5, 5)
        ),
        "chord of chords": chord(
            [chord([add.s(i, j) for j in range(2)], total.s()) for i in range(7)],
            echo.s(),
        ),
        "chord member of a chord": chord(
            [chord([add.s(i, 1) for i in range(7)], total.s()), add.s(2, 2)],
            echo.s(),
        ),
        "after a group": chain(
            group(add.s(1, 1), add.s(2, 2)),
            chord([echo.s() for _ in range(7)], echo.s()),
        ),
        "two chords in a chain": chain(
            chord([add.s(i, 0) for i in range(7)], total.s()),
            chord([add.s(i) for i in range(7)], echo.s()),
        ),
    }


def _counted_app(url: str, calls: list[str], **settings: Any) -> App:
    """Return an app with ``add``, ``echo`` and ``total``, each noting its calls."""
    instance = App(url, **settings)

    def add(x: Any, y: Any) -> Any:
        calls.append("add")
        return x + y

    def echo(value: Any) -> Any:
        calls.append("echo")
        return value

    def total(values: list[int]) -> int:
        calls.append("total")
        return sum(values)

    instance.task(name="add")(add)
    instance.task(name="echo")(echo)
    instance.task(name="total")(total)
    return instance


@pytest.mark.parametrize(
    "shape",
    [
        "chains",
        "uneven chains",
        "nested groups",
        "countdown",
        "in a chain",
        "in a group",
        "chord of chords",
        "chord member of a chord",
        "after a group",
        "two chords in a chain",
    ],
)
def test_sharded_value_matches_memory(redis_target: Any, shape: str) -> None:
    memory_calls: list[str] = []
    memory = _counted_app("memory://", memory_calls)
    calls: list[str] = []
    app = _counted_app(
        redis_target.url,
        calls,
        prefix=new_prefix(),
        **{**redis_target.settings, "release_slice": 2, "shard_size": 3},
    )
    try:
        with memory.worker(concurrency=2):
            expected = _canvases(memory)[shape].apply_async().get(TIMEOUT_S)
        canvas = _canvases(app)[shape]
        # The canvas must really be cut, or this compares two unsharded runs.
        assert plan_shards(compile_canvas(canvas), 3) is not None
        with app.worker(concurrency=4):
            value = canvas.apply_async().get(TIMEOUT_S)
    finally:
        memory.close()
        app.close()
    assert value == expected
    # Each task ran once per call, and the callback once: no repeat.
    assert sorted(calls) == sorted(memory_calls)


# -- outbox entries out of order ---------------------------------------------


def _fail_member_and_hold_cancels(driver: RedisDriver, run_id: str) -> Held:
    """Run the chord until member 3 fails; return the cancel entries held back."""
    held: Held = []
    _drain(
        driver,
        hold=lambda fields: fields["kind"] == "cancel",
        held=held,
    )
    snapshot = driver.snapshot(run_id)
    assert snapshot.status == "failed"
    assert held, "the failure wrote no cancel entries"
    return held


def test_stale_cancel_spares_new_epoch(redis_target: Any) -> None:
    driver = make_driver(redis_target, shard_size=5)
    try:
        driver.submit("late", chord_spec(12, failing=3))
        held = _fail_member_and_hold_cancels(driver, "late")
        assert driver.retry_run("late") > 0
        # The new epoch's activations reopen the shards.
        for partition, entry_id, fields in read_outbox(driver):
            driver._apply_outbox(partition, entry_id, fields)
        # A worker that stalled on the first epoch's cancel entries wakes up.
        apply_entries(driver, held)
        _drain(driver, fixed=True)
        snapshot = driver.snapshot("late")
        assert snapshot.status == "succeeded"
        assert snapshot.value == dumps([2 * i for i in range(12)])
    finally:
        driver.close()


def test_stale_report_ignored_in_new_epoch(redis_target: Any) -> None:
    driver = make_driver(redis_target, shard_size=5)
    try:
        driver.submit("old", chord_spec(12, failing=3))
        held: Held = []
        _drain(driver, hold=lambda fields: fields["kind"] == "report", held=held)
        # Nothing reached the home run: apply the reports now, twice.
        apply_entries(driver, held)
        apply_entries(driver, held)
        _drain(driver)
        assert driver.snapshot("old").status == "failed"
        assert driver.retry_run("old") > 0
        # The first epoch's reports arrive again after the retry.
        apply_entries(driver, held)
        ran = _drain(driver, fixed=True)
        snapshot = driver.snapshot("old")
        assert snapshot.status == "succeeded"
        assert snapshot.value == dumps([2 * i for i in range(12)])
        assert ran.count("echo") == 1
    finally:
        driver.close()


def test_report_after_home_cancel_ignored(redis_target: Any) -> None:
    driver = make_driver(redis_target, shard_size=5)
    try:
        driver.submit("gone", chord_spec(12))
        held: Held = []
        _drain(driver, hold=lambda fields: fields["kind"] == "report", held=held)
        assert len(held) == 3
        driver.cancel("gone")
        apply_entries(driver, held)
        ran = _drain(driver)
        assert "echo" not in ran
        snapshot = driver.snapshot("gone")
        assert snapshot.status == "cancelled"
        assert snapshot.nodes["12"].state == "cancelled"
    finally:
        driver.close()


def test_activate_applied_twice_runs_once(redis_target: Any) -> None:
    driver = make_driver(redis_target, shard_size=5, release_slice=2)
    try:
        driver.submit("twice", chord_spec(12))
        entries = read_outbox(driver)
        assert {fields["kind"] for _, _, fields in entries} == {"activate"}
        apply_entries(driver, entries)
        apply_entries(driver, entries)
        # The reconciler sends the same activations a third time.
        driver._resync_shards("twice")
        ran = _drain(driver)
        assert ran.count("add") == 12
        assert ran.count("echo") == 1
        assert driver.snapshot("twice").value == dumps([2 * i for i in range(12)])
    finally:
        driver.close()


# -- a shard lives as long as its home run reads it --------------------------

#: Retention of the runs in the tests below, in seconds.
RETENTION_S = 0.5


def _shard_ttls(driver: RedisDriver, home: str, spec: GraphSpec) -> dict[str, int]:
    """Return the PTTL in ms of each key that exists of a home run's shards.

    Every shard's run hash is in the result, with -2 when it is missing.
    """
    plan = plan_shards(spec, 5)
    assert plan is not None
    ttls: dict[str, int] = {}
    for shard in plan.shards:
        keys = driver._keys.run(shard_run_id(home, shard.node))
        ttls[keys.run] = driver._client.pttl(keys.run)
        for key in (keys.graph, keys.nodes, keys.values, keys.errors, keys.counts):
            ttl = driver._client.pttl(key)
            if ttl != -2:
                ttls[key] = ttl
    return ttls


def _assert_shards_kept(driver: RedisDriver, home: str, spec: GraphSpec) -> None:
    ttls = _shard_ttls(driver, home, spec)
    assert -2 not in ttls.values(), ttls
    assert set(ttls.values()) == {-1}, ttls


def _assert_shards_expiring(driver: RedisDriver, home: str, spec: GraphSpec) -> None:
    ttls = _shard_ttls(driver, home, spec)
    assert -2 not in ttls.values(), ttls
    assert all(0 < ttl <= RETENTION_S * 1000 for ttl in ttls.values()), ttls


def _assert_shards_gone(driver: RedisDriver, home: str, spec: GraphSpec) -> None:
    ttls = _shard_ttls(driver, home, spec)
    assert set(ttls.values()) == {-2}, ttls


def _is_retain(fields: dict[str, str]) -> bool:
    return fields["kind"] == "retain"


def test_shards_outlive_a_late_callback(redis_target: Any) -> None:
    driver = make_driver(redis_target, shard_size=5, retention_s=RETENTION_S)
    spec = chord_spec(12)
    try:
        driver.submit("late_callback", spec)
        skipped: list[Message] = []
        # The callback, node 12, waits in its queue.
        _drain(driver, skipped=skipped, skip=lambda message: message.node_id == "12")
        [message] = skipped
        time.sleep(2 * RETENTION_S)
        assert driver.snapshot("late_callback").status == "running"
        claim = run_message(driver, message, fixed=False)
        assert claim is not None
        assert claim.task == "echo"
        snapshot = driver.snapshot("late_callback")
        assert snapshot.status == "succeeded"
        assert snapshot.value == dumps([2 * i for i in range(12)])
        # The home run ended, so its retention passes on to the shards.
        _drain(driver)
        _assert_shards_expiring(driver, "late_callback", spec)
        time.sleep(RETENTION_S + 0.3)
        _assert_shards_gone(driver, "late_callback", spec)
    finally:
        driver.close()


def _chord_beside_a_task() -> GraphSpec:
    """Compile group(chord([add(i, i)] with fail as member 3, echo), add(1, 1))."""
    app = App("memory://")
    add = app.task(name="add")(lambda x, y: x + y)
    fail = app.task(name="fail")(lambda *args: None)
    echo = app.task(name="echo")(lambda value: value)
    header = [fail.s() if i == 3 else add.s(i, i) for i in range(12)]
    return compile_canvas(group(chord(header, echo.s()), add.s(1, 1)))


def test_shards_expire_after_failed_home(redis_target: Any) -> None:
    driver = make_driver(redis_target, shard_size=5, retention_s=RETENTION_S)
    spec = _chord_beside_a_task()
    try:
        driver.submit("failed_home", spec)
        skipped: list[Message] = []
        # The other branch, node 13, keeps the home run running.
        _drain(driver, skipped=skipped, skip=lambda message: message.node_id == "13")
        [message] = skipped
        snapshot = driver.snapshot("failed_home")
        assert snapshot.status == "running"
        assert snapshot.nodes["12"].state == "cancelled"
        # The chord's shards ended, and the home run still shows them.
        time.sleep(RETENTION_S + 0.3)
        _assert_shards_kept(driver, "failed_home", spec)
        run_message(driver, message, fixed=False)
        held: Held = []
        _drain(driver, hold=_is_retain, held=held)
        assert driver.snapshot("failed_home").status == "failed"
        assert len(held) == 1
        # The shards expire only once the home run's entry is applied.
        _assert_shards_kept(driver, "failed_home", spec)
        apply_entries(driver, held)
        _assert_shards_expiring(driver, "failed_home", spec)
        time.sleep(RETENTION_S + 0.3)
        _assert_shards_gone(driver, "failed_home", spec)
        with pytest.raises(RunNotFound):
            driver.snapshot("failed_home")
    finally:
        driver.close()


def test_shards_expire_after_cancelled_home(redis_target: Any) -> None:
    driver = make_driver(redis_target, shard_size=5, retention_s=RETENTION_S)
    spec = chord_spec(12)
    try:
        driver.submit("cancelled_home", spec)
        apply_entries(driver, read_outbox(driver))
        messages: list[Message] = []
        while batch := driver.fetch(["default"], 100, 0.05):
            messages += batch
        for message in messages[:4]:
            run_message(driver, message, fixed=False)
        driver.cancel("cancelled_home")
        held: Held = []
        _drain(driver, hold=_is_retain, held=held)
        assert driver.snapshot("cancelled_home").status == "cancelled"
        assert len(held) == 1
        # The cancelled shards ended, but the home run's entry is not applied.
        _assert_shards_kept(driver, "cancelled_home", spec)
        apply_entries(driver, held)
        _assert_shards_expiring(driver, "cancelled_home", spec)
        time.sleep(RETENTION_S + 0.3)
        _assert_shards_gone(driver, "cancelled_home", spec)
    finally:
        driver.close()


def test_unstarted_shards_expire_with_home(redis_target: Any) -> None:
    app = App("memory://")
    add = app.task(name="add")(lambda x, y: x + y)
    fail = app.task(name="fail")(lambda *args: None)
    echo = app.task(name="echo")(lambda value: value)
    members = [add.s(i) for i in range(12)]
    spec = compile_canvas(chain(fail.s(), chord(members, echo.s())))
    driver = make_driver(redis_target, shard_size=5, retention_s=RETENTION_S)
    try:
        driver.submit("unstarted", spec)
        held: Held = []
        # Node 0 fails, so the shard nodes are cancelled before they start.
        _drain(driver, hold=_is_retain, held=held)
        assert driver.snapshot("unstarted").status == "failed"
        assert len(held) == 1
        _assert_shards_kept(driver, "unstarted", spec)
        apply_entries(driver, held)
        _assert_shards_expiring(driver, "unstarted", spec)
        # The retry resets the shards that never started, and finds them.
        assert driver.retry_run("unstarted") > 0
        ran = _drain(driver, fixed=True)
        snapshot = driver.snapshot("unstarted")
        assert snapshot.status == "succeeded"
        assert snapshot.value == dumps(list(range(12)))
        assert ran.count("echo") == 1
        _assert_shards_expiring(driver, "unstarted", spec)
    finally:
        driver.close()


def test_late_submitter_keeps_shard_expiry(redis_target: Any) -> None:
    app = App("memory://")
    add = app.task(name="add")(lambda x, y: x + y)
    fail = app.task(name="fail")(lambda *args: None)
    echo = app.task(name="echo")(lambda value: value)
    members = [add.s(i) for i in range(12)]
    spec = compile_canvas(chain(fail.s(), chord(members, echo.s())))
    driver = make_driver(redis_target, shard_size=5, retention_s=RETENTION_S)
    original = driver._apply_shard_retention
    late: list[tuple[Any, ...]] = []

    def apply(*args: Any) -> None:
        # The submitter stalls after it wrote the home run.
        if args[-1] == "submitted":
            late.append(args)
        else:
            original(*args)

    try:
        driver._apply_shard_retention = apply  # type: ignore[method-assign]
        driver.submit("stalled", spec)
        _drain(driver)
        assert driver.snapshot("stalled").status == "failed"
        _assert_shards_expiring(driver, "stalled", spec)
        # The submitter wakes up after the home run ended.
        [args] = late
        original(*args)
        _assert_shards_expiring(driver, "stalled", spec)
    finally:
        driver.close()


def test_home_retry_keeps_expiring_shards(redis_target: Any) -> None:
    driver = make_driver(redis_target, shard_size=5, retention_s=RETENTION_S)
    spec = chord_spec(12, failing=3)
    try:
        driver.submit("retried", spec)
        _drain(driver)
        assert driver.snapshot("retried").status == "failed"
        _assert_shards_expiring(driver, "retried", spec)
        assert driver.retry_run("retried") > 0
        apply_entries(driver, read_outbox(driver))
        # The home run runs again, so every shard loses its expiry, also
        # those whose shard nodes succeeded and are not activated again.
        _assert_shards_kept(driver, "retried", spec)
        time.sleep(RETENTION_S + 0.3)
        ran = _drain(driver, fixed=True)
        snapshot = driver.snapshot("retried")
        assert snapshot.status == "succeeded"
        assert snapshot.value == dumps([2 * i for i in range(12)])
        assert ran.count("echo") == 1
    finally:
        driver.close()


def test_late_retain_ignored_after_retry(redis_target: Any) -> None:
    driver = make_driver(redis_target, shard_size=5, retention_s=RETENTION_S)
    spec = chord_spec(12, failing=3)
    try:
        driver.submit("late_retain", spec)
        held: Held = []
        _drain(driver, hold=_is_retain, held=held)
        assert driver.snapshot("late_retain").status == "failed"
        assert len(held) == 1
        assert driver.retry_run("late_retain") > 0
        apply_entries(driver, read_outbox(driver))
        # A worker that stalled on the first epoch's entry wakes up.
        apply_entries(driver, held)
        _assert_shards_kept(driver, "late_retain", spec)
        skipped: list[Message] = []
        # The shards end again, and the callback, node 12, waits in its queue.
        _drain(
            driver,
            fixed=True,
            skipped=skipped,
            skip=lambda message: message.node_id == "12",
        )
        [message] = skipped
        _assert_shards_kept(driver, "late_retain", spec)
        time.sleep(RETENTION_S + 0.3)
        claim = run_message(driver, message, fixed=False)
        assert claim is not None
        snapshot = driver.snapshot("late_retain")
        assert snapshot.status == "succeeded"
        assert snapshot.value == dumps([2 * i for i in range(12)])
    finally:
        driver.close()


def test_replay_of_callback_keeps_shards(redis_target: Any) -> None:
    driver = make_driver(redis_target, shard_size=5, retention_s=RETENTION_S)
    spec = chord_spec(12)
    try:
        driver.submit("replayed", spec)
        skipped: list[Message] = []
        _drain(driver, skipped=skipped, skip=lambda message: message.node_id == "12")
        [message] = skipped
        driver.dead_letter(message, "no such task")
        _drain(driver)
        assert driver.snapshot("replayed").status == "failed"
        _assert_shards_expiring(driver, "replayed", spec)
        # The replay keeps the run's epoch, and the run runs again.
        [dead], _ = driver.list_dead_letters()
        assert driver.replay_dead_letter(dead.id) == "replayed"
        skipped = []
        _drain(driver, skipped=skipped, skip=lambda message: message.node_id == "12")
        [message] = skipped
        _assert_shards_kept(driver, "replayed", spec)
        time.sleep(RETENTION_S + 0.3)
        claim = run_message(driver, message, fixed=False)
        assert claim is not None
        snapshot = driver.snapshot("replayed")
        assert snapshot.status == "succeeded"
        assert snapshot.value == dumps([2 * i for i in range(12)])
    finally:
        driver.close()


# -- a worker that dies while it applies a retain, keep or cancel entry ------

#: Retention of the dying-worker tests: long enough that no shard expires
#: while a test runs, so a TTL of -1 (kept) differs from one above 0 (expiring).
LONG_RETENTION_S = 600.0


class _WorkerDied(BaseException):
    """Simulated death of the worker process, so nothing after it runs."""


def _die_applying(driver: RedisDriver, script: str, kind: str = "") -> list[str]:
    """Make ``driver`` die at its first call of ``script``; return the death log.

    A pipeline of ``shard_retention`` calls of ``kind`` applies its first
    call, so the entry is applied to one shard only, and then the worker
    dies. A single ``script`` call dies before it runs. Either way the
    outbox entry stays read and unacknowledged.
    """
    scripts = driver._scripts
    original_call = scripts.call
    original_many = scripts.call_many
    deaths: list[str] = []

    def call(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == script and not deaths:
            deaths.append(name)
            raise _WorkerDied(name)
        return original_call(name, *args, **kwargs)

    def call_many(calls: list[Any]) -> list[Any]:
        first = calls[0] if calls else None
        if first and first[0] == script and first[2][-1] == kind and not deaths:
            original_many(calls[:1])
            deaths.append(f"{script} {kind}")
            raise _WorkerDied(script)
        return original_many(calls)

    scripts.call = call  # type: ignore[method-assign]
    scripts.call_many = call_many  # type: ignore[method-assign]
    return deaths


def _two_workers(redis_target: Any) -> tuple[RedisDriver, RedisDriver]:
    """Open a worker's driver and a second one on the same keys that reclaims.

    The second reclaims every pending entry at its first fetch, because its
    visibility timeout is 0.
    """
    prefix = new_prefix()
    settings: dict[str, Any] = {
        **redis_target.settings,
        "prefix": prefix,
        "shard_size": 5,
        "retention_s": LONG_RETENTION_S,
        "reconcile_interval_s": 3600.0,
    }
    first = RedisDriver(redis_target.url, **settings)
    second = RedisDriver(redis_target.url, **settings, visibility_timeout_s=0.0)
    return first, second


def _shard_expiry(driver: RedisDriver, home: str) -> dict[str, str]:
    """Return "kept" or "expiring" for each shard of ``chord_spec(12)``, by node."""
    found: dict[str, str] = {}
    for node in ("0", "5", "10"):
        ttl = driver._client.pttl(driver._keys.run(shard_run_id(home, node)).run)
        assert ttl != -2, f"shard {node} of {home} is gone"
        found[node] = "kept" if ttl == -1 else "expiring"
    return found


def _pending_entries(driver: RedisDriver) -> int:
    """Return how many outbox entries a worker read and did not acknowledge."""
    total = 0
    for partition in driver._keys.partitions:
        summary = driver._client.xpending(partition.outbox, driver._group)
        total += int(summary["pending"])
    return total


def _reclaim(driver: RedisDriver) -> None:
    """Fetch once, as a worker's loop does, which applies reclaimed entries."""
    driver.fetch(["default"], 100, 0.0)


def test_dead_worker_retain_reclaimed(redis_target: Any) -> None:
    worker, survivor = _two_workers(redis_target)
    try:
        worker.submit("retain", chord_spec(12))
        deaths = _die_applying(worker, "shard_retention", "retain")
        with pytest.raises(_WorkerDied):
            _drain(worker)
        assert deaths == ["shard_retention retain"]
        assert _pending_entries(worker) > 0
        assert worker.snapshot("retain").status == "succeeded"
        expiry = _shard_expiry(worker, "retain")
        assert list(expiry.values()).count("kept") == 2, expiry
        _reclaim(survivor)
        assert set(_shard_expiry(worker, "retain").values()) == {"expiring"}
        assert _pending_entries(worker) == 0
    finally:
        worker.close()
        survivor.close()


def test_dead_worker_keep_reclaimed(redis_target: Any) -> None:
    worker, survivor = _two_workers(redis_target)
    try:
        worker.submit("keep", chord_spec(12, failing=3))
        _drain(worker)
        assert worker.snapshot("keep").status == "failed"
        assert set(_shard_expiry(worker, "keep").values()) == {"expiring"}
        assert worker.retry_run("keep") > 0
        deaths = _die_applying(worker, "shard_retention", "keep")
        with pytest.raises(_WorkerDied):
            apply_entries(worker, read_outbox(worker))
        assert deaths == ["shard_retention keep"]
        assert _pending_entries(worker) > 0
        # Shards 5 and 10 succeeded, so no activation of the retry opens
        # them again, and only the keep entry takes their expiry away.
        expiry = _shard_expiry(worker, "keep")
        assert expiry["5"] == "expiring"
        assert expiry["10"] == "expiring"
        _reclaim(survivor)
        assert set(_shard_expiry(worker, "keep").values()) == {"kept"}
        assert _pending_entries(worker) == 0
        assert _drain(survivor, fixed=True).count("echo") == 1
        assert survivor.snapshot("keep").status == "succeeded"
    finally:
        worker.close()
        survivor.close()


def test_dead_worker_cancel_reclaimed(redis_target: Any) -> None:
    worker, survivor = _two_workers(redis_target)
    try:
        worker.submit("cancel", chord_spec(12, failing=7))
        apply_entries(worker, read_outbox(worker))
        messages: list[Message] = []
        while batch := worker.fetch(["default"], 100, 0.05):
            messages += batch
        [failing] = [message for message in messages if message.node_id == "7"]
        run_message(worker, failing, fixed=False)
        # The failed shard's report fails the home run, which writes a
        # cancel entry for each other shard.
        apply_entries(worker, read_outbox(worker))
        assert worker.snapshot("cancel").status == "failed"
        deaths = _die_applying(worker, "cancel")
        with pytest.raises(_WorkerDied):
            apply_entries(worker, read_outbox(worker))
        assert deaths == ["cancel"]
        assert _pending_entries(worker) > 0
        for node in ("0", "10"):
            keys = worker._keys.run(shard_run_id("cancel", node))
            assert worker._client.hget(keys.run, "status") == "running"
        _reclaim(survivor)
        for node in ("0", "10"):
            keys = worker._keys.run(shard_run_id("cancel", node))
            assert worker._client.hget(keys.run, "status") == "cancelled"
        assert _pending_entries(worker) == 0
    finally:
        worker.close()
        survivor.close()


# -- no script call grows with the header ------------------------------------


def _largest_call_with_group_members(url: str, member_size: int) -> tuple[int, str]:
    """Run chain(add, chord([group of member_size] * 4, echo)) one message at a time."""
    app = App("memory://")
    add = app.task(name="add")(lambda x, y=0: x + y)
    echo = app.task(name="echo")(lambda value: value)
    members = [group(add.s(j) for j in range(member_size)) for _ in range(4)]
    spec = compile_canvas(chain(add.s(1, 2), chord(members, echo.s())))
    driver = RedisDriver(
        url,
        prefix=new_prefix(),
        shard_size=2,
        release_slice=50,
        reconcile_interval_s=3600.0,
    )
    try:
        counter = ScriptCommandCounter(driver, pipelines=False)
        driver.submit("grouped", spec)
        while True:
            messages = driver.fetch(["default"], 100, 0.05)
            if not messages and driver.snapshot("grouped").status != "running":
                break
            for message in messages:
                run_message(driver, message, fixed=False)
        assert driver.snapshot("grouped").status == "succeeded"
        return counter.largest_call()
    finally:
        driver.close()


@pytest.mark.slow
def test_no_script_grows_with_group_members(redis_url: str) -> None:
    # Each shard contains 2 members, so 2n tasks that are all sinks of the shard
    # run: its last completion must not check each of them.
    small, small_name = _largest_call_with_group_members(redis_url, 100)
    large, large_name = _largest_call_with_group_members(redis_url, 1000)
    assert large <= small, (small, small_name, large, large_name)


def test_reconciler_skips_expired_shards(redis_target: Any) -> None:
    app = App("memory://")
    add = app.task(name="add")(lambda x, y: x + y)
    fail = app.task(name="fail")(lambda *args: None)
    echo = app.task(name="echo")(lambda value: value)
    header = [fail.s() if i == 3 else add.s(i, i) for i in range(12)]
    spec = compile_canvas(group(chord(header, echo.s()), add.s(1, 1)))
    driver = make_driver(redis_target, shard_size=5, reconcile_after_s=0)
    try:
        driver.submit("branch", spec)
        skipped: list[Message] = []
        # The other branch, node 13, keeps the home run running.
        _drain(driver, skipped=skipped, skip=lambda message: message.node_id == "13")
        [message] = skipped
        snapshot = driver.snapshot("branch")
        assert snapshot.status == "running"
        assert snapshot.nodes["12"].state == "cancelled"
        # The chord's shards are gone, as after a failover that lost them.
        for shard in ("branch~s0", "branch~s5", "branch~s10"):
            keys = driver._keys.run(shard)
            for key in (*keys.all(), keys.counts, keys.spec):
                driver._client.delete(key)
        assert driver.reconcile() == 1
        claim = run_message(driver, message, fixed=False)
        assert claim is not None
        assert claim.task == "add"
        assert driver.snapshot("branch").status == "failed"
    finally:
        driver.close()


# -- a worker killed between the partitions ----------------------------------

#: Database of the worker-process test: the command line uses no key prefix.
KILL_DATABASE = 14

KILLED_FLOWS = """
import os
import signal

from stem import App, chord
from stem.drivers.redis import driver as redis_driver

app = App({url!r}, partitions=3, visibility_timeout_s=1.0)


def note(line):
    with open({log!r}, "a", encoding="utf-8") as log:
        log.write(line + "\\n")


@app.task(name="add")
def add(x, y):
    note(f"add {{x}}")
    return x + y


@app.task(name="echo")
def echo(values):
    note("echo")
    return values


def header(n=11):
    return chord([add.s(i, i) for i in range(n)], echo.s())


# The worker dies by SIGKILL right after the first shard's activate.lua,
# before release.lua queues any member and before the entry is acknowledged.
original_release = redis_driver.RedisDriver._release


def release_or_die(self, run_id, epoch, receipt):
    if "~s" in run_id:
        note("killed")
        os.kill(os.getpid(), signal.SIGKILL)
    return original_release(self, run_id, epoch, receipt)


# Only in the doomed worker: the test process imports this module too.
if os.environ.get("KILL_AFTER_ACTIVATE"):
    redis_driver.RedisDriver._release = release_or_die
"""


@pytest.mark.slow
def test_worker_killed_after_activate(tmp_path: Any, redis_url: str) -> None:
    from .conftest import TIMEOUT_S as PROCESS_TIMEOUT_S
    from .conftest import database_url, load_flows, start_stem, stop_process

    url = f"{database_url(redis_url, KILL_DATABASE)}?shard_size=3"
    log = tmp_path / "calls.log"
    flows = tmp_path / f"killedflows_{uuid.uuid4().hex[:8]}.py"
    flows.write_text(KILLED_FLOWS.format(url=url, log=str(log)), encoding="utf-8")
    module = load_flows(flows)
    app = module.app
    args = ["worker", "-A", str(flows), "-n", "doomed", "--pool", "threads", "-c", "2"]
    doomed = start_stem(*args, env={"KILL_AFTER_ACTIVATE": "1"})
    try:
        result = app.submit(module.header(11))
        doomed.communicate(timeout=PROCESS_TIMEOUT_S)
        assert doomed.returncode == -9
    finally:
        if doomed.poll() is None:
            stop_process(doomed)
    assert log.read_text(encoding="utf-8").splitlines() == ["killed"]
    args[4] = "survivor"
    survivor = start_stem(*args)
    try:
        value = result.get(PROCESS_TIMEOUT_S)
    finally:
        code, _, stderr = stop_process(survivor)
        app.close()
    assert code == 0, stderr
    assert value == [2 * i for i in range(11)]
    lines = log.read_text(encoding="utf-8").splitlines()
    # Every member ran once and the callback once: nothing was applied twice.
    assert sorted(lines) == sorted(["killed", "echo", *(f"add {i}" for i in range(11))])


# -- shard run ids -------------------------------------------------------------


def test_run_named_like_a_shard_kept_apart(redis_target: Any) -> None:
    app = App("memory://")
    add = app.task(name="add")(lambda x, y: x + y)
    driver = make_driver(redis_target, shard_size=5)
    try:
        driver.submit("taken~s0", compile_canvas(add.s(100, 100)))
        _drain(driver)
        assert driver.snapshot("taken~s0").value == "200"
        with pytest.raises(DriverError, match=r"is taken by another run"):
            driver.submit("taken", chord_spec(12))
        assert _drain(driver) == []
        with pytest.raises(RunNotFound):
            driver.snapshot("taken")
        other = driver.snapshot("taken~s0")
        assert other.value == "200"
        assert driver._client.hget(driver._keys.run("taken~s0").run, "home") is None
    finally:
        driver.close()


def test_resubmit_after_crash_reuses_shards(redis_target: Any) -> None:
    driver = make_driver(redis_target, shard_size=5)
    original = driver._scripts.call

    def call(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "submit":
            raise KeyboardInterrupt("died after the shards, before the home run")
        return original(name, *args, **kwargs)

    try:
        driver._scripts.call = call  # type: ignore[method-assign]
        with pytest.raises(KeyboardInterrupt):
            driver.submit("again", chord_spec(12))
        driver._scripts.call = original  # type: ignore[method-assign]
        # The shards the first submit wrote are this run's, so they are kept.
        assert driver.submit("again", chord_spec(12)) is True
        ran = _drain(driver)
        assert ran.count("add") == 12
        assert driver.snapshot("again").value == dumps([2 * i for i in range(12)])
    finally:
        driver.close()


def test_chord_in_group_views_match(redis_target: Any) -> None:
    calls: list[str] = []
    options = {**redis_target.settings, "reconcile_interval_s": 3600.0}
    sharded = _counted_app(
        redis_target.url, calls, prefix=new_prefix(), shard_size=4, **options
    )
    plain = _counted_app(
        redis_target.url, calls, prefix=new_prefix(), shard_size=0, **options
    )
    try:
        add = sharded.tasks["add"]
        canvas = group(
            chord([add.s(i, i) for i in range(10)], sharded.tasks["echo"].s()),
            add.s(5, 5),
        )
        result = sharded.submit(canvas)
        with sharded.worker(concurrency=4):
            value = result.get(TIMEOUT_S)
        unsharded = plain.submit(canvas)
        with plain.worker(concurrency=4):
            assert unsharded.get(TIMEOUT_S) == value
        spec, records = result.graph()
        expected_spec, expected_records = unsharded.graph()
        assert spec.groups == expected_spec.groups
        assert spec == expected_spec
        assert sorted(records) == sorted(expected_records)
        assert result.group_counts() == unsharded.group_counts()
    finally:
        sharded.close()
        plain.close()


def test_retry_keeps_values_of_cancelled_shards(redis_target: Any) -> None:
    driver = make_driver(redis_target, shard_size=5)
    try:
        driver.submit("keep", chord_spec(12, failing=3))
        apply_entries(driver, read_outbox(driver))
        messages: list[Message] = []
        while batch := driver.fetch(["default"], 100, 0.05):
            messages += batch
        by_node = {message.node_id: message for message in messages}
        assert sorted(by_node, key=int) == [str(i) for i in range(12)]
        # Members 0, 1, 6 and 11 succeed, 3 fails, the rest never start.
        for node in ("0", "1", "6", "11", "3"):
            run_message(driver, by_node[node], fixed=False)
        _drain(driver)
        assert driver.snapshot("keep").status == "failed"
        claimed: list[str] = []
        original = driver.claim

        def claim(message: Message) -> Any:
            found = original(message)
            if found is not None:
                claimed.append(message.node_id)
            return found

        driver.claim = claim  # type: ignore[method-assign]
        assert driver.retry_run("keep") > 0
        _drain(driver, fixed=True)
        snapshot = driver.snapshot("keep")
        assert snapshot.status == "succeeded"
        assert snapshot.value == dumps([2 * i for i in range(12)])
        # Only what failed or never ran runs again, and the callback once.
        again = sorted(node for node in claimed if node != "12")
        assert again == sorted(["2", "3", "4", "5", "7", "8", "9", "10"])
        assert claimed.count("12") == 1
    finally:
        driver.close()


def test_report_before_release_finishes(redis_target: Any) -> None:
    driver = make_driver(redis_target, shard_size=5, release_slice=1)
    original = driver._scripts.call
    slices: list[str] = []

    def call(name: str, keys: Any, args: Any, **kwargs: Any) -> Any:
        # The worker that activates shard 0 dies after its first slice.
        if name == "release" and args[0] == "early~s0":
            slices.append(args[0])
            if len(slices) == 2:
                raise KeyboardInterrupt("died between two release slices")
        return original(name, keys, args, **kwargs)

    try:
        driver.submit("early", chord_spec(12, failing=0))
        driver._scripts.call = call  # type: ignore[method-assign]
        with pytest.raises(KeyboardInterrupt):
            apply_entries(driver, read_outbox(driver))
        driver._scripts.call = original  # type: ignore[method-assign]
        # Only member 0, the failing one, is queued; it fails and reports.
        [message] = driver.fetch(["default"], 100, 0.05)
        assert (message.run_id, message.node_id) == ("early~s0", "0")
        run_message(driver, message, fixed=False)
        ran = _drain(driver)
        assert driver.snapshot("early").status == "failed"
        # The activate entry is taken over after the visibility timeout.
        driver.visibility_timeout_s = 0.0
        driver._last_reclaim = 0.0
        for partition in driver._keys.partitions:
            driver._reclaim_outbox(partition, 100)
        ran += _drain(driver)
        shard = driver._keys.run("early~s0")
        assert driver._client.hget(shard.run, "status") == "cancelled"
        # No member of shard 0 after the first slice was ever queued.
        for i in range(1, 5):
            assert driver.snapshot("early").nodes[str(i)].state == "cancelled"
        assert driver.retry_run("early") > 0
        ran = _drain(driver, fixed=True)
        snapshot = driver.snapshot("early")
        assert snapshot.status == "succeeded"
        assert snapshot.value == dumps([2 * i for i in range(12)])
        assert ran.count("echo") == 1
    finally:
        driver.close()


def test_dead_letter_in_shard_fails_chord(redis_target: Any) -> None:
    driver = make_driver(redis_target, shard_size=5)
    try:
        driver.submit("dropped", chord_spec(12))
        apply_entries(driver, read_outbox(driver))
        messages: list[Message] = []
        while batch := driver.fetch(["default"], 100, 0.05):
            messages += batch
        [message] = [m for m in messages if m.node_id == "7"]
        driver.dead_letter(message, "no such task")
        _drain(driver)
        snapshot = driver.snapshot("dropped")
        # The shard reports the dead letter's failure at once.
        assert snapshot.status == "failed"
        assert snapshot.error_node == "7"
        assert snapshot.nodes["12"].state == "cancelled"
        [dead], _ = driver.list_dead_letters()
        assert driver.replay_dead_letter(dead.id) == "in_shard"
        # A run retry is the way to run it again.
        assert driver.retry_run("dropped") > 0
        ran = _drain(driver)
        snapshot = driver.snapshot("dropped")
        assert snapshot.status == "succeeded"
        assert snapshot.value == dumps([2 * i for i in range(12)])
        assert ran.count("echo") == 1
    finally:
        driver.close()


def test_missing_shard_names_itself(redis_target: Any) -> None:
    driver = make_driver(redis_target, shard_size=5)
    try:
        driver.submit("lost", chord_spec(12))
        # The shard expired before its activation: the submitter died
        # before it removed the shards' TTL, and stage_ttl_s passed.
        keys = driver._keys.run("lost~s5")
        for key in (keys.run, keys.graph, keys.nodes, keys.spec, keys.counts):
            driver._client.delete(key)
        _drain(driver)
        snapshot = driver.snapshot("lost")
        assert snapshot.status == "failed"
        assert snapshot.error_node is not None
        # The result raises the error of this node, so it must be in the view.
        record = snapshot.nodes.get(snapshot.error_node)
        assert record is not None, (snapshot.error_node, sorted(snapshot.nodes))
        assert record.error is not None
        assert "lost~s5" in record.error.message
        # Every node of the view has a record, as AsyncResult.nodes() reads.
        assert sorted(snapshot.nodes) == sorted(n.id for n in snapshot.spec.nodes)
        counts = driver.group_counts("lost")
        assert sum(counts[0].values()) == 8
    finally:
        driver.close()


def test_retry_after_cancel_ignores_old_cancels(redis_target: Any) -> None:
    driver = make_driver(redis_target, shard_size=5)
    try:
        driver.submit("undo", chord_spec(12))
        apply_entries(driver, read_outbox(driver))
        messages: list[Message] = []
        while batch := driver.fetch(["default"], 100, 0.05):
            messages += batch
        for message in messages[:4]:
            run_message(driver, message, fixed=False)
        driver.cancel("undo")
        # A worker read the cancel entries of the home run and stalled.
        held = read_outbox(driver)
        assert {fields["kind"] for _, _, fields in held} >= {"cancel"}
        assert driver.snapshot("undo").status == "cancelled"
        assert driver.retry_run("undo") > 0
        apply_entries(driver, read_outbox(driver))
        apply_entries(driver, held)
        ran = _drain(driver)
        snapshot = driver.snapshot("undo")
        assert snapshot.status == "succeeded"
        assert snapshot.value == dumps([2 * i for i in range(12)])
        assert ran.count("add") == 8
        assert ran.count("echo") == 1
    finally:
        driver.close()


def test_late_failure_report_keeps_an_error(redis_target: Any) -> None:
    driver = make_driver(redis_target, shard_size=5)
    try:
        driver.submit("faded", chord_spec(12, failing=7))
        held: Held = []
        _drain(driver, hold=lambda fields: fields["kind"] == "report", held=held)
        # The failed shard expired before its report was applied.
        keys = driver._keys.run("faded~s5")
        for key in (keys.run, keys.graph, keys.nodes, keys.values, keys.errors):
            driver._client.delete(key)
        apply_entries(driver, held)
        _drain(driver)
        snapshot = driver.snapshot("faded")
        assert snapshot.status == "failed"
        assert snapshot.error_node is not None
        record = snapshot.nodes.get(snapshot.error_node)
        assert record is not None, (snapshot.error_node, sorted(snapshot.nodes))
        assert record.error is not None
        assert "faded~s5" in record.error.message
        assert "at node 7" in record.error.message
    finally:
        driver.close()
