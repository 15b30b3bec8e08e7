"""The driver's Lua scripts: loading, registering, calling and reading replies.

Each ``lua/<name>.lua`` file is one state change. A line
``--- @include "<name>"`` is replaced at load time by ``lua/include/<name>.lua``,
so the node transitions that several scripts share are written once.
`Scripts` sends EVALSHA and, on a NOSCRIPT reply (after ``SCRIPT FLUSH`` or
a restart), loads the script and sends the call again, so a flushed script
cache costs one round trip per script.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from enum import IntEnum
from importlib import resources
from typing import Any

import redis
from redis.commands.core import Script

from stem.canvas.errors import StemInternalError
from stem.engine.errors import DriverError, RunNotFound

SCRIPT_NAMES = (
    "submit",
    "claim",
    "complete",
    "fail",
    "retry",
    "dead_letter",
    "splice",
    "cancel",
    "promote",
    "release_lock",
    "renew",
)

_INCLUDE = re.compile(r'^--- @include "([a-z_]+)"$', re.MULTILINE)
#: Marker at the start of an error a script raises when an invariant breaks.
_INTERNAL_MARKER = "STEM_INTERNAL"


class Reply(IntEnum):
    """Result codes that the run scripts return as the first item of their reply."""

    DONE = 1
    DUPLICATE = 0
    RUN_NOT_FOUND = -1
    STALE = -2
    #: The run's spec changed after the caller read it (splice only).
    CONFLICT = -3


class ScriptError(DriverError):
    """Raised when a script returns a reply the driver does not expect.

    This is a bug in Stem or a Redis that runs another version of the script.
    """

    def __init__(self, message: str, *, script: str, run_id: str, node_id: str) -> None:
        super().__init__(message)
        self.script = script
        self.run_id = run_id
        self.node_id = node_id


class ScriptRunNotFound(RunNotFound):
    """Raised when a script finds no run with the id: it never existed or expired."""

    def __init__(self, message: str, *, script: str, run_id: str, node_id: str) -> None:
        super().__init__(message)
        self.script = script
        self.run_id = run_id
        self.node_id = node_id


def load_source(name: str) -> str:
    """Read one script from package data, with its includes expanded."""
    folder = resources.files("stem.drivers.redis") / "lua"
    text = (folder / f"{name}.lua").read_text(encoding="utf-8")

    def expand(match: re.Match[str]) -> str:
        return (folder / "include" / f"{match.group(1)}.lua").read_text(
            encoding="utf-8"
        )

    return _INCLUDE.sub(expand, text)


class Scripts:
    """Every script registered on one client, called by name.

    Args:
        client: the client that runs them; its replies must be decoded to str.
    """

    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self._scripts: dict[str, Script] = {
            name: client.register_script(load_source(name)) for name in SCRIPT_NAMES
        }
        # Names of the scripts loaded by this object. Without a load before the
        # first call, that call's EVALSHA fails with NOSCRIPT on a fresh server
        # and redis-py sends it again: for a large submit, millions of
        # arguments twice.
        self._loaded: set[str] = set()

    def call(
        self,
        name: str,
        keys: list[str],
        args: list[str | int | float],
        *,
        run_id: str = "",
        node_id: str = "",
    ) -> Any:
        """Run one script and return its raw reply.

        Raises:
            StemInternalError: if the script found a broken invariant.
            DriverError: if Redis failed; the redis-py error is chained.
        """
        encoded = _encoded([*keys, *args])
        try:
            script = self._loaded_script(name)
            try:
                return self._client.evalsha(script.sha, len(keys), *encoded)
            except redis.exceptions.NoScriptError:
                # SCRIPT FLUSH or a restart emptied the cache; the call did not run.
                self._client.script_load(script.script)
                return self._client.evalsha(script.sha, len(keys), *encoded)
        except redis.RedisError as err:
            raise _script_error(name, err, run_id, node_id) from err

    def call_many(
        self,
        name: str,
        calls: Sequence[tuple[list[str], list[str | int | float]]],
        ids: Sequence[tuple[str, str]],
    ) -> list[Any]:
        """Run one script once per ``(keys, args)`` call, all in one round trip.

        Args:
            name: the script.
            calls: the keys and arguments of each call, run in this order.
            ids: the run id and node id of each call, for error messages.

        Returns:
            Each call's raw reply, or in its place the `StemInternalError` or
            `DriverError` that the call alone failed with.

        Raises:
            DriverError: if the round trip failed as a whole.
        """
        replies: list[Any] = [None] * len(calls)
        pending = list(range(len(calls)))
        # A call that found no script did not run, so it is sent again once
        # after the script is loaded (after SCRIPT FLUSH or a restart).
        for _ in range(2):
            try:
                sha = self._loaded_script(name).sha
                pipe = self._client.pipeline(transaction=False)
                for index in pending:
                    keys, args = calls[index]
                    pipe.evalsha(sha, len(keys), *_encoded([*keys, *args]))
                results = pipe.execute(raise_on_error=False)
            except redis.RedisError as err:
                raise DriverError(
                    f"Redis failed while running script {name} for a batch of "
                    f"{len(pending)} calls: {err}"
                ) from err
            missing: list[int] = []
            for index, result in zip(pending, results, strict=True):
                if isinstance(result, redis.exceptions.NoScriptError):
                    missing.append(index)
                elif isinstance(result, redis.RedisError):
                    replies[index] = _script_error(name, result, *ids[index])
                else:
                    replies[index] = result
            if not missing:
                return replies
            self._loaded.discard(name)
            pending = missing
        for index in pending:
            replies[index] = DriverError(
                f"Script {name} was not found on the server even after loading "
                f"it, for run {ids[index][0]} node {ids[index][1]}."
            )
        return replies

    def _loaded_script(self, name: str) -> Script:
        script = self._scripts[name]
        if name not in self._loaded:
            self._client.script_load(script.script)
            self._loaded.add(name)
        return script


def _encoded(items: list[str | int | float]) -> list[bytes]:
    """Encode script keys and arguments to UTF-8 in one step.

    redis-py's encoder checks each argument's type in Python, a large share
    of a task's client CPU in the worker, while bytes pass through it.
    Joining with NUL and splitting again encodes in C. If an item contains
    NUL itself, the split finds more items, so each item is encoded alone.
    """
    texts = [item if type(item) is str else repr(item) for item in items]
    parts = "\0".join(texts).encode().split(b"\0")
    if len(parts) == len(texts):
        return parts
    return [text.encode() for text in texts]


def _script_error(
    name: str, err: redis.RedisError, run_id: str, node_id: str
) -> Exception:
    """Wrap a redis-py error of one script call in Stem's exception for it."""
    if isinstance(err, redis.ResponseError):
        if _INTERNAL_MARKER in str(err):
            return StemInternalError(
                f"Script {name} failed for run {run_id} node {node_id}: {err}"
            )
        return DriverError(
            f"Script {name} failed for run {run_id} node {node_id}: {err}"
        )
    return DriverError(
        f"Redis failed while running script {name} for run {run_id} "
        f"node {node_id}: {err}"
    )


def check_reply(
    script: str,
    reply: Any,
    run_id: str,
    node_id: str = "",
    *,
    accept: frozenset[Reply] = frozenset(Reply),
) -> Reply:
    """Map a run script's result code to a `Reply`, or raise for one not accepted.

    Raises:
        ScriptRunNotFound: for `Reply.RUN_NOT_FOUND` when it is not accepted.
        ScriptError: for any other code that is not accepted or not known.
    """
    code = reply[0] if isinstance(reply, list) and reply else reply
    try:
        result = Reply(int(code))
    except (TypeError, ValueError):
        raise ScriptError(
            f"Script {script} returned {reply!r} for run {run_id} node {node_id}; "
            "expected a result code. This is a bug in Stem.",
            script=script,
            run_id=run_id,
            node_id=node_id,
        ) from None
    if result in accept:
        return result
    if result is Reply.RUN_NOT_FOUND:
        raise ScriptRunNotFound(
            f"Run {run_id!r} is not found: script {script} found no state for it.",
            script=script,
            run_id=run_id,
            node_id=node_id,
        )
    raise ScriptError(
        f"Script {script} returned {result.name} for run {run_id} node {node_id}, "
        f"which this call does not expect. This is a bug in Stem.",
        script=script,
        run_id=run_id,
        node_id=node_id,
    )
