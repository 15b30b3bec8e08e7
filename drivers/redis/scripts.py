"""The driver's Lua scripts: loading, registering, calling and reading replies.

Each ``lua/<name>.lua`` file is one state change. A line
``--- @include "<name>"`` is replaced at load time by ``lua/include/<name>.lua``,
so the node transitions that several scripts share are written once. Redis
runs a script's top level on every call, so the assembled source keeps only
the top-level local functions and constants that the script reaches
(`drop_unused_locals`).

On Redis 7.0 or later every script runs as a function of one Functions
library (`stem.drivers.redis.library`), whose load code defines the
include functions and constant tables once. `Scripts.preload` reads the
server's version once per driver and loads the library with FUNCTION LOAD
on every primary that lacks it. An older server gets EVALSHA.
`Scripts.call` sends FCALL or EVALSHA. On a reply that the script is
missing ("Function not found" after ``FUNCTION FLUSH`` or on a new node,
NOSCRIPT after ``SCRIPT FLUSH``, a restart or a failover), it loads the
library or the script and sends the call again. In a Cluster the library
goes to every primary that lacks it, and redis-py sends ``SCRIPT LOAD``
to every primary. `Scripts.call_many` does the same for the calls of a
pipeline that failed that way, which redis-py's Cluster pipeline does not
do.

On a single node each thread keeps one connection of the client's pool
for its script calls and sends them on it directly
(`stem.drivers.redis.connection.ThreadConnections`).
"""

from __future__ import annotations

import logging
import re
from enum import IntEnum
from importlib import resources
from typing import Any

import redis
from redis.cluster import RedisCluster
from redis.commands.core import Script

from stem.canvas.errors import StemInternalError
from stem.drivers.redis.connection import ThreadConnections
from stem.drivers.redis.library import build_library, code_flags
from stem.engine.errors import DriverError, RunNotFound

log = logging.getLogger(__name__)

SCRIPT_NAMES = (
    "submit",
    "claim",
    "complete",
    "fail",
    "retry",
    "dead_letter",
    "defer",
    "splice",
    "cancel",
    "promote",
    "release_lock",
    "renew",
    "reopen",
    "stage",
    "seal",
    "release",
    "stale_releases",
    "purge",
    "replay",
    "activate",
    "report",
    "reset_shard",
    "shard_retention",
    "read_ended",
    "read_value",
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
    #: The run is running or succeeded, so it cannot be retried (reopen only).
    NOT_RETRYABLE = -4
    #: A staged key of a large run expired or is incomplete (seal only).
    INCOMPLETE = -5


_REPLY_OF_CODE: dict[int, Reply] = {int(reply): reply for reply in Reply}
_ANY_REPLY = frozenset(Reply)


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
    """Read one script from package data, with its includes expanded.

    The top-level local functions and constants that the script does not
    reach are left out (`drop_unused_locals`).
    """
    folder = resources.files("stem.drivers.redis") / "lua"
    text = (folder / f"{name}.lua").read_text(encoding="utf-8")
    return drop_unused_locals(expand_includes(text))


def expand_includes(text: str) -> str:
    """Replace each ``--- @include "<name>"`` line by ``lua/include/<name>.lua``.

    An include may include others. Each one is expanded once, where it
    first occurs, and a later line that includes it again is left empty.
    """
    folder = resources.files("stem.drivers.redis") / "lua" / "include"
    expanded: set[str] = set()

    def expand(match: re.Match[str]) -> str:
        name = match.group(1)
        if name in expanded:
            return ""
        expanded.add(name)
        return _INCLUDE.sub(
            expand, (folder / f"{name}.lua").read_text(encoding="utf-8")
        )

    return _INCLUDE.sub(expand, text)


#: The first line of a top-level local function, which ends at the next
#: line that is ``end`` at column 0.
_LOCAL_FUNCTION = re.compile(r"^local function ([A-Za-z_][A-Za-z0-9_]*)\(")
#: A top-level local that is a literal or starts a table constructor.
_LOCAL_CONSTANT = re.compile(
    r'^local ([A-Za-z_][A-Za-z0-9_]*) = (nil|true|false|-?[0-9]+|"[^"\\]*"|\{.*)$'
)
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def drop_unused_locals(source: str) -> str:
    """Blank the top-level local functions and constants that nothing reaches.

    Redis runs a script's top level on every call, so each included
    function is defined again on every call, used or not. A definition is
    kept when its name occurs, as a whole word, in the rest of the top
    level or in a kept definition, outside the lines that are wholly
    comments. So a name in a string or after code on its line keeps it too.
    Only definitions without side effects are candidates: a ``local
    function`` block (to the next ``end`` at column 0), and a local set to
    a literal or to a table constructor with no call in it. The dropped
    lines become empty lines, so line numbers in Redis's errors match the
    assembled source before the drop.
    """
    lines = source.split("\n")
    blocks = _definitions(lines)
    owner: dict[int, str] = {}
    for name, (first, last) in blocks.items():
        for number in range(first, last + 1):
            owner[number] = name
    # The words of each block, and of the rest of the top level under None.
    words_of: dict[str | None, set[str]] = {}
    for number, is_code in enumerate(code_flags(lines, blank_is_code=True)):
        if is_code:
            words = _NAME.findall(lines[number])
            words_of.setdefault(owner.get(number), set()).update(words)
    kept: set[str] = set()
    pending: list[str | None] = [None]
    while pending:
        block = pending.pop()
        for word in words_of.get(block, set()):
            if word in blocks and word != block and word not in kept:
                kept.add(word)
                pending.append(word)
    for name, (first, last) in blocks.items():
        if name not in kept:
            for number in range(first, last + 1):
                lines[number] = ""
    return "\n".join(lines)


def _definitions(lines: list[str]) -> dict[str, tuple[int, int]]:
    """Return the droppable definitions by name: their first and last line."""
    blocks: dict[str, tuple[int, int]] = {}
    # A name defined twice keeps both definitions rather than guess which
    # one a use refers to.
    defined_twice: set[str] = set()
    index = 0
    while index < len(lines):
        span = _definition_span(lines, index)
        if span is None:
            index += 1
            continue
        name, last = span
        if name in blocks or name in defined_twice:
            blocks.pop(name, None)
            defined_twice.add(name)
        else:
            blocks[name] = (index, last)
        index = last + 1
    return blocks


def _definition_span(lines: list[str], first: int) -> tuple[str, int] | None:
    """Return the name and last line of a droppable definition at ``first``, or None."""
    line = lines[first]
    function = _LOCAL_FUNCTION.match(line)
    if function:
        for number in range(first + 1, len(lines)):
            if lines[number] == "end":
                return function.group(1), number
        return None
    constant = _LOCAL_CONSTANT.match(line)
    if not constant:
        return None
    if not constant.group(2).startswith("{"):
        return constant.group(1), first
    # A table constructor, to the line where its braces balance. One with a
    # call, a comment or an odd quote in it is kept.
    depth = 0
    for number in range(first, len(lines)):
        text = re.sub(r'"[^"\\]*"', "", lines[number])
        if "(" in text or "--" in text or '"' in text or "'" in text:
            return None
        depth += text.count("{") - text.count("}")
        if depth == 0:
            if not text.rstrip().endswith("}"):
                return None
            return constant.group(1), number
    return None


#: The first Redis version with Functions (FUNCTION LOAD, FCALL).
FUNCTIONS_VERSION = (7, 0)
#: The function flags of the scripts that need one, so each function runs
#: where Redis ran the script with EVALSHA. A function without flags is
#: rejected on a read-only replica and, above maxmemory, before it starts,
#: while EVALSHA rejects only a write command that can grow memory
#: (Redis 7.0). ``no-writes`` marks the scripts that only read, and
#: ``allow-oom`` the ones that only delete.
SCRIPT_FLAGS: dict[str, tuple[str, ...]] = {
    "read_ended": ("no-writes",),
    "read_value": ("no-writes",),
    "stale_releases": ("no-writes",),
    "purge": ("allow-oom",),
    "release_lock": ("allow-oom",),
}


class Scripts:
    """Every script of the driver on one client, called by name.

    On Redis 7.0 or later the scripts run as the functions of one library
    (`stem.drivers.redis.library`), called with FCALL. On an older server,
    a Cluster with an older primary, or a server that rejects the FUNCTION
    commands, they run with EVALSHA. `preload` decides once.

    Args:
        client: the client that runs them; its replies must be decoded to str.
    """

    def __init__(self, client: redis.Redis | RedisCluster) -> None:
        self._client = client
        sources = {name: load_source(name) for name in SCRIPT_NAMES}
        self._scripts: dict[str, Script] = {
            name: client.register_script(source) for name, source in sources.items()
        }
        self.library = build_library(sources, SCRIPT_FLAGS)
        self._function_names = {
            name: self.library.function_name(name) for name in SCRIPT_NAMES
        }
        #: True for FCALL, False for EVALSHA, None until `preload` reads the
        #: server's version.
        self.use_functions: bool | None = None
        self.connections: ThreadConnections | None = None
        if isinstance(client, redis.Redis):
            self.connections = ThreadConnections(client.connection_pool)

    def preload(self) -> None:
        """Choose FCALL or EVALSHA, then load what the node or any primary lacks.

        The first call reads the Redis version of the node, or of every
        Cluster primary, and later calls keep the choice. A server that
        rejects INFO or the FUNCTION commands gets EVALSHA. For FCALL the
        library is loaded on each node whose FUNCTION LIST does not name it.
        For EVALSHA one SCRIPT EXISTS checks every script first, so a client
        of a server whose script cache contains them already sends about
        1 KB instead of their 200 KB of source. In a Cluster a script
        counts as cached only when every primary has it.

        Raises:
            DriverError: if Redis failed.
        """
        try:
            if self.use_functions is None:
                self.use_functions = self._load_library_if_supported()
            elif self.use_functions:
                self._load_library()
            if self.use_functions:
                return
            scripts = list(self._scripts.values())
            cached = self._client.script_exists(*(script.sha for script in scripts))
            for script, found in zip(scripts, cached, strict=True):
                if not found:
                    script.sha = self._client.script_load(script.script)
        except redis.RedisError as err:
            raise DriverError(f"Loading the Lua scripts failed: {err}") from err

    def _load_library_if_supported(self) -> bool:
        """Load the library where it is missing and return True, or return False.

        It returns False, for EVALSHA, on a server older than 7.0, and when
        Redis rejects INFO or a FUNCTION command with an error reply, as
        for an ACL user without the FUNCTION commands.

        Raises:
            redis.RedisError: if Redis failed otherwise, as on a lost
                connection.
        """
        try:
            if server_version(self._client) < FUNCTIONS_VERSION:
                return False
            self._load_library()
        except redis.ResponseError as err:
            log.warning(
                "Redis rejected a command that loads the Functions library, so "
                "the driver runs its scripts with EVALSHA: %s",
                err,
            )
            return False
        return True

    def _load_library(self) -> None:
        """Load the library on the node, or on each Cluster primary, that lacks it.

        The library's name is a hash of its code, so a node that has a
        library of that name has this code, and FUNCTION LOAD needs no
        REPLACE. A node that another client loaded it on in the meantime
        replies that it exists, which counts as loaded.

        Raises:
            redis.RedisError: if Redis failed.
        """
        library = self.library
        for node in _nodes(self._client):
            listed = _execute(node, "FUNCTION LIST", "LIBRARYNAME", library.name)
            if any(entry[1] == library.name for entry in listed or []):
                continue
            try:
                _execute(node, "FUNCTION LOAD", library.code)
            except redis.ResponseError as err:
                if "already exists" not in str(err):
                    raise

    def _reload(self, name: str) -> None:
        """Load the script ``name`` again after a reply that it is missing.

        Raises:
            redis.RedisError: if Redis failed.
        """
        if self.use_functions:
            self._load_library()
        else:
            script = self._scripts[name]
            script.sha = self._client.script_load(script.script)

    def command(
        self, name: str, key_count: int, encoded: list[bytes]
    ) -> tuple[Any, ...]:
        """Return the FCALL or EVALSHA command that runs one script."""
        if self.use_functions is None:
            self.preload()
        if self.use_functions:
            return ("FCALL", self._function_names[name], key_count, *encoded)
        return ("EVALSHA", self._scripts[name].sha, key_count, *encoded)

    def call_many(
        self, calls: list[tuple[str, list[str], list[str | int | float]]]
    ) -> list[Any]:
        """Run several scripts in one pipeline and return their raw replies in order.

        Each call is ``(name, keys, args)``. Calls whose node had lost the
        script or the library (NOSCRIPT, "Function not found") did not run,
        so they are sent once more after the scripts are loaded again on
        every primary. A call that fails for any other reason returns its
        exception in its place.

        Raises:
            DriverError: if Redis failed for the pipeline as a whole.
        """
        replies = self._pipeline(calls)
        missing = [
            index for index, reply in enumerate(replies) if is_missing_script(reply)
        ]
        if missing:
            self.preload()
            again = self._pipeline([calls[index] for index in missing])
            for index, reply in zip(missing, again, strict=True):
                replies[index] = reply
        return replies

    def _pipeline(
        self, calls: list[tuple[str, list[str], list[str | int | float]]]
    ) -> list[Any]:
        commands = [
            self.command(name, len(keys), _encoded([*keys, *args]))
            for name, keys, args in calls
        ]
        if self.connections is not None:
            try:
                return self.connections.send(commands)
            except (redis.ConnectionError, redis.TimeoutError):
                # Some calls may have run. redis-py's own retry sends a whole
                # pipeline again too, so sending it again through redis-py,
                # which reconnects and follows its retry policy, keeps that.
                # NOTE: this resend happens even when the client's retries are
                # off; the scripts are idempotent, so it applies nothing twice.
                pass
        try:
            pipe = self._client.pipeline(transaction=False)
            for command in commands:
                _execute(pipe, *command)
            replies: list[Any] = pipe.execute(raise_on_error=False)
        except redis.RedisError as err:
            raise DriverError(f"Running a pipeline of scripts failed: {err}") from err
        return replies

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
        try:
            command = self.command(name, len(keys), _encoded([*keys, *args]))
            try:
                return self._send(command)
            except redis.ResponseError as err:
                if not is_missing_script(err):
                    raise
                # FUNCTION FLUSH, SCRIPT FLUSH, a restart or a new node lost
                # the script, so the call did not run.
                self._reload(name)
                return _execute(self._client, *command)
        except redis.RedisError as err:
            raise script_error(name, err, run_id, node_id) from err

    def _send(self, command: tuple[Any, ...]) -> Any:
        """Send one script call; on a single node, on this thread's connection."""
        if self.connections is not None:
            try:
                [reply] = self.connections.send([command])
            except (redis.ConnectionError, redis.TimeoutError):
                # Sent again through redis-py, as in `_pipeline`.
                return _execute(self._client, *command)
            if isinstance(reply, redis.ResponseError):
                raise reply
            return reply
        return _execute(self._client, *command)


def is_missing_script(reply: Any) -> bool:
    """Return True for the error of a call whose script or function the node lacks.

    EVALSHA gets NOSCRIPT. FCALL gets "Function not found" (Redis 7.0.15)
    when the node has no library of that name.
    """
    if isinstance(reply, redis.exceptions.NoScriptError):
        return True
    return isinstance(reply, redis.ResponseError) and str(reply).startswith(
        "Function not found"
    )


def server_version(client: redis.Redis | RedisCluster) -> tuple[int, ...]:
    """Return the Redis version of the node, or the lowest of the Cluster primaries.

    Raises:
        redis.RedisError: if Redis failed.
    """
    versions = []
    for node in _nodes(client):
        info = _execute(node, "INFO", "server")
        text = str(info.get("redis_version", "0"))
        versions.append(tuple(int(part) for part in re.findall(r"[0-9]+", text)[:3]))
    return min(versions)


def _nodes(client: redis.Redis | RedisCluster) -> list[redis.Redis]:
    """Return the single node's client, or a client of each Cluster primary."""
    if isinstance(client, RedisCluster):
        cluster: Any = client
        return [cluster.get_redis_connection(node) for node in cluster.get_primaries()]
    return [client]


def _execute(client: Any, *command: Any) -> Any:
    """Send one command through a redis-py client or pipeline (untyped in its stubs)."""
    return client.execute_command(*command)


def _encoded(items: list[str | int | float]) -> list[bytes]:
    """Encode script keys and arguments to UTF-8 in one step.

    redis-py's encoder checks each argument's type in Python, a large share
    of a task's client CPU in the worker, while bytes pass through it.
    Joining with NUL and splitting again encodes in C. If an item contains
    NUL itself, the split finds more items, so each item is encoded alone.
    """
    try:
        # The worker's claim and report calls pass text only.
        joined = "\0".join(items)  # type: ignore[arg-type]
        texts: list[str] | None = None
    except TypeError:
        texts = [item if type(item) is str else repr(item) for item in items]
        joined = "\0".join(texts)
    parts = joined.encode().split(b"\0")
    if len(parts) == len(items):
        return parts
    if texts is None:
        texts = [item if type(item) is str else repr(item) for item in items]
    return [text.encode() for text in texts]


def script_error(
    name: str, err: redis.RedisError, run_id: str, node_id: str
) -> Exception:
    """Wrap a redis-py error of one script call in Stem's exception for it.

    A `StemInternalError` when the script found a broken invariant, else a
    `DriverError`. A call about no one node (a submit) names the run only.
    """
    target = f"run {run_id} node {node_id}" if node_id else f"run {run_id}"
    # Redis ends some error texts with a period of its own.
    detail = str(err).rstrip(".")
    if isinstance(err, redis.ResponseError):
        if _INTERNAL_MARKER in detail:
            return StemInternalError(f"Script {name} failed for {target}: {detail}")
        return DriverError(f"Script {name} failed for {target}: {detail}")
    return DriverError(
        f"Redis failed while running script {name} for {target}: {detail}"
    )


def check_reply(
    script: str,
    reply: Any,
    run_id: str,
    node_id: str = "",
    *,
    accept: frozenset[Reply] = _ANY_REPLY,
) -> Reply:
    """Map a run script's result code to a `Reply`, or raise for one not accepted.

    Raises:
        ScriptRunNotFound: for `Reply.RUN_NOT_FOUND` when it is not accepted.
        ScriptError: for any other code that is not accepted or not known.
    """
    code = reply[0] if isinstance(reply, list) and reply else reply
    # Scripts return integers, which a dict maps without Enum's slower call.
    known = _REPLY_OF_CODE.get(code) if type(code) is int else None
    if known is not None and (accept is _ANY_REPLY or known in accept):
        return known
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
            f"Run {run_id!r} is not found: script {script} found no state for "
            "it. It was never submitted, or it ended and its retention passed.",
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
