"""Helpers of the sharded-chord tests on Redis.

Those tests drive outbox entries and queue messages by hand, through the
driver's private methods, to repeat, drop, hold and reorder them. The tasks
are the ones that `chord_spec` compiles: ``add`` returns the sum of its
arguments, ``echo`` its one argument, and ``fail`` fails.
"""

from __future__ import annotations

import uuid
from typing import Any

from stem import App, chord
from stem.canvas.compiler import compile_canvas
from stem.canvas.spec import GraphSpec
from stem.canvas.values import dumps
from stem.drivers.redis import RedisDriver
from stem.engine.ports import Claim, Message
from stem.engine.records import ErrorInfo

#: Seconds a test waits for a run to end.
TIMEOUT_S = 30.0

#: Outbox entries read and not acknowledged: (partition, id, fields).
Held = list[tuple[Any, str, dict[str, str]]]


def new_prefix() -> str:
    """Return a key prefix of its own for one test's driver."""
    return f"test-{uuid.uuid4().hex[:12]}:"


def make_driver(
    redis_target: Any,
    *,
    url_suffix: str = "",
    submitter_starts: bool = False,
    **settings: Any,
) -> RedisDriver:
    """Open a driver on ``redis_target`` with its own prefix.

    The reconciler waits an hour unless ``settings`` set
    ``reconcile_interval_s``, so only the test applies outbox entries.
    ``url_suffix`` is appended to the URL's query string. Unless
    ``submitter_starts`` is set, every shard is activated from the home
    run's outbox, also one whose header is ready at submit.
    """
    url = redis_target.url
    if url_suffix:
        url += ("&" if "?" in url else "?") + url_suffix
    driver = RedisDriver(
        url,
        prefix=new_prefix(),
        **redis_target.settings,
        **{"reconcile_interval_s": 3600.0, **settings},
    )
    driver._submitter_starts_shards = submitter_starts
    return driver


def planned_error() -> ErrorInfo:
    return ErrorInfo("builtins", "ValueError", "planned failure", ["planned failure"])


def chord_spec(members: int, *, failing: int | None = None) -> GraphSpec:
    """Compile chord([add(i, i)], echo), with ``fail`` as member ``failing``."""
    app = App("memory://")
    add = app.task(name="add")(lambda x, y: x + y)
    fail = app.task(name="fail")(lambda *args: None)
    echo = app.task(name="echo")(lambda value: value)
    header = [fail.s() if i == failing else add.s(i, i) for i in range(members)]
    return compile_canvas(chord(header, echo.s()))


def read_outbox(driver: RedisDriver) -> Held:
    """Read every new outbox entry of every partition, without applying it."""
    found: Held = []
    for partition in driver._keys.partitions:
        driver._ensure_group(partition.outbox)
        reply: Any = driver._client.xreadgroup(
            driver._group, "test", {partition.outbox: ">"}, count=1000
        )
        for _, entries in reply or []:
            for entry_id, fields in entries:
                found.append((partition, entry_id, fields))
    return found


def apply_entries(driver: RedisDriver, entries: Held) -> None:
    for partition, entry_id, fields in entries:
        driver._apply_outbox(partition, entry_id, fields)


def run_message(driver: RedisDriver, message: Message, *, fixed: bool) -> Claim | None:
    """Claim and finish one message as the tasks would, and return the claim.

    With ``fixed`` the task ``fail`` succeeds with twice its node id, as
    ``add`` does for its member. Returns None when the claim is rejected.
    """
    claim = driver.claim(message)
    if claim is None:
        return None
    if claim.task == "fail" and not fixed:
        driver.fail(message, planned_error())
    elif claim.task == "fail":
        driver.complete(message, str(2 * int(message.node_id)))
    elif claim.task == "echo":
        driver.complete(message, dumps(claim.args[0]))
    else:
        driver.complete(message, str(sum(claim.args)))
    return claim


class ScriptCommandCounter:
    """Record the maximum Redis commands that one script call of a driver ran.

    It reads INFO commandstats before and after every call, so calls must
    run one at a time. The script's own EVALSHA and the INFO calls are not
    counted, so the count is what the script did inside Redis. With
    ``pipelines``, a pipeline of script calls (``call_many``) counts as one
    call, named after its first script.
    """

    def __init__(self, driver: RedisDriver, *, pipelines: bool) -> None:
        #: The maximum commands of one call, per script name.
        self.largest: dict[str, int] = {}
        self._client = driver._client
        scripts = driver._scripts
        original_call = scripts.call
        original_many = scripts.call_many

        def call(name: str, *args: Any, **kwargs: Any) -> Any:
            before = self._total()
            reply = original_call(name, *args, **kwargs)
            self._note(name, self._total() - before)
            return reply

        def call_many(calls: list[Any]) -> list[Any]:
            before = self._total()
            replies = original_many(calls)
            self._note(calls[0][0] if calls else "", self._total() - before)
            return replies

        scripts.call = call  # type: ignore[method-assign]
        if pipelines:
            scripts.call_many = call_many  # type: ignore[method-assign]

    def largest_call(self) -> tuple[int, str]:
        """Return the maximum commands of one call and its script's name."""
        name = max(self.largest, key=lambda script: self.largest[script])
        return self.largest[name], name

    def _total(self) -> int:
        stats = self._client.info("commandstats")
        return sum(
            int(entry["calls"])
            for name, entry in stats.items()
            if name not in ("cmdstat_info", "cmdstat_evalsha", "cmdstat_fcall")
            and not name.startswith(("cmdstat_script", "cmdstat_function"))
        )

    def _note(self, name: str, commands: int) -> None:
        self.largest[name] = max(self.largest.get(name, 0), commands)
