"""Turning a driver URL into a redis-py client and the driver's own URL options.

``redis://host:port/db`` connects to a single node and
``redis+cluster://host:port`` to a Redis Cluster through
`redis.cluster.RedisCluster`, which finds the other nodes from the one named.
The query option ``partitions`` belongs to the driver and is removed before
redis-py reads the URL; every other option goes to redis-py.

`ThreadConnections` keeps one connection of a single-node client's pool per
thread, for the driver's hot commands (script calls and XREADGROUP).
"""

from __future__ import annotations

import codecs
import contextlib
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis
from redis.cluster import RedisCluster

try:
    from hiredis import pack_command
except ImportError:  # redis-py then packs every command itself.
    _hiredis_pack: Callable[..., bytes] | None = None
else:
    _hiredis_pack = pack_command

#: URL scheme of a Redis Cluster.
CLUSTER_SCHEME = "redis+cluster"


@dataclass(frozen=True)
class Target:
    """The connection target read from a driver URL and its settings."""

    #: The URL as redis-py reads it: driver options removed, plain scheme.
    client_url: str
    cluster: bool
    #: The partition count from the URL or the settings, None when unset.
    partitions: int | None


def parse_url(url: str, partitions: int | None = None) -> Target:
    """Read the scheme and the ``partitions`` option of a driver URL.

    Raises:
        ValueError: if the database is not a number, the partition count is
            not a whole number of 1 or more, or the URL and the settings give
            different counts.
    """
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    from_url = [value for name, value in query if name == "partitions"]
    rest = [(name, value) for name, value in query if name != "partitions"]
    count = _check_count(partitions, "The partitions setting")
    for value in from_url:
        parsed = _parse_count(value)
        if count is not None and parsed != count:
            raise ValueError(
                f"The URL sets partitions={value} but the settings pass {count}; "
                "give the count in one place."
            )
        count = parsed

    # redis-py reads a path that is not a number as database 0, silently.
    database = parts.path.strip("/")
    if database and not (database.isascii() and database.isdigit()):
        raise ValueError(
            f"The database {database!r} in the URL is invalid; pass its number, "
            "as in redis://host:6379/0."
        )
    cluster = parts.scheme == CLUSTER_SCHEME
    scheme = "redis" if cluster else parts.scheme
    client_url = urlunsplit(
        (scheme, parts.netloc, parts.path, urlencode(rest), parts.fragment)
    )
    return Target(client_url, cluster, count)


def connect(target: Target) -> redis.Redis | RedisCluster:
    """Create a client for the target; replies are decoded to str.

    A byte that is not UTF-8 becomes a lone surrogate instead of raising, so
    a queue entry written by another program does not fail every read of
    its stream: the driver dead-letters a queue entry that contains one.
    Sending such a string back writes the original bytes.

    A single-node client packs script calls with `_ScriptCallPacker`. A
    Cluster client keeps redis-py's packer, because RedisCluster passes only
    the connection options it accepts to its nodes' pools.
    """
    options = {"decode_responses": True, "encoding_errors": "surrogateescape"}
    if target.cluster:
        return RedisCluster.from_url(target.client_url, **options)
    client = redis.Redis.from_url(target.client_url, **options)
    if _hiredis_pack is not None:
        # The pool has made no connection yet, so every one gets the packer.
        pool = client.connection_pool
        pool.connection_class = _packing_scripts(pool.connection_class)
    return client


class _ScriptCallPacker:
    """Pack EVALSHA, FCALL and XREADGROUP with hiredis, others as redis-py does.

    The driver's script calls pass every key and argument as UTF-8 bytes
    already (``scripts._encoded``), so redis-py's per-argument checks and
    encoding in Python find nothing to do. Packing a claim call took about
    8 us that way and 2 us with hiredis alone, and an XREADGROUP of two
    streams 9 us and 1.4 us (redis-py 8.2, hiredis 3.5, CPython 3.11). Both
    produce the same bytes for bytes, UTF-8 text and numbers. Text that is
    not UTF-8 (a lone surrogate) goes to redis-py's packer, which encodes it
    with the client's error handler.
    """

    def __init__(self, default: Any, pack_command: Callable[..., bytes]) -> None:
        self._default = default
        self._pack_command = pack_command

    def pack(self, *args: Any) -> list[bytes]:
        if args[0] in _HIREDIS_PACKED:
            try:
                return [self._pack_command(args)]
            except (TypeError, UnicodeEncodeError):
                pass  # redis-py packs it, or raises for a type it rejects.
        packed: list[bytes] = self._default.pack(*args)
        return packed

    def pack_many(self, commands: list[tuple[Any, ...]]) -> list[bytes]:
        """Pack a pipeline of commands into one buffer.

        redis-py's ``pack_commands`` checks every chunk's size and type in
        Python, which a pipeline of script calls does not need.
        """
        return [b"".join([b"".join(self.pack(*command)) for command in commands])]


#: Commands that `_ScriptCallPacker` packs with hiredis. redis-py splits a
#: first argument that contains a space ("CONFIG GET") and hiredis does not,
#: so only commands of one word whose arguments are bytes, text and numbers
#: belong here.
_HIREDIS_PACKED = frozenset({"EVALSHA", "FCALL", "XREADGROUP"})


def _packing_scripts(base: type[Any]) -> type[Any]:
    """Return a subclass of a redis-py connection class that uses `_ScriptCallPacker`.

    Only for UTF-8, the encoding the driver's script arguments are in. If a
    redis-py version builds its packer another way, the override is never
    called and redis-py's own packer stays in place.
    """
    construct: Callable[[Any, Any], Any] = base._construct_command_packer

    def _construct_command_packer(self: Any, packer: Any) -> Any:
        default = construct(self, packer)
        encoding = codecs.lookup(self.encoder.encoding).name
        if packer is not None or encoding != "utf-8" or _hiredis_pack is None:
            return default
        return _ScriptCallPacker(default, _hiredis_pack)

    return type(
        f"ScriptPacking{base.__name__}",
        (base,),
        {"_construct_command_packer": _construct_command_packer},
    )


class ThreadConnections:
    """One connection of a pool per thread, held between commands.

    redis-py checks a connection out of its pool and back in for every
    command and pipeline, and wraps each in its retry and observability
    layers. An EVALSHA of a script that returns 1 took 59 us of process CPU
    through ``Redis.evalsha`` and 23 us sent straight to a held connection
    (redis-py 8.2, hiredis 3.5, CPython 3.11, a loaded 2-core machine). A
    thread's connection goes back to the pool when the thread ends.

    Replies come back as the parser reads them, without redis-py's response
    callbacks, so a caller parses them itself. EVALSHA has no callback.
    """

    def __init__(self, pool: redis.ConnectionPool) -> None:
        self._pool = pool
        self._local = threading.local()

    def send(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Send commands in one write and return their replies in order.

        An error reply takes its command's place as a `redis.ResponseError`.

        Raises:
            redis.ConnectionError: if the connection failed; it is closed,
                and the next call opens it again. Some of the commands may
                have run.
            redis.TimeoutError: if a reply did not come within the socket
                timeout, as for ConnectionError.
        """
        held: _HeldConnection | None = getattr(self._local, "held", None)
        if held is None or held.pid != os.getpid():
            # A forked child must not share its parent's socket.
            held = _HeldConnection(self._pool)
            self._local.held = held
        connection = held.connection
        try:
            packer = getattr(connection, "_command_packer", None)
            if len(commands) == 1:
                connection.send_packed_command(connection.pack_command(*commands[0]))
            elif isinstance(packer, _ScriptCallPacker):
                connection.send_packed_command(packer.pack_many(commands))
            else:
                connection.send_packed_command(connection.pack_commands(commands))
            replies = _read_replies(connection, len(commands))
        except BaseException:
            # Replies may be left unread (an interrupt between reads), and
            # they would be taken for the next command's.
            connection.disconnect()
            raise
        if held.should_reconnect is not None and held.should_reconnect():
            # A maintenance notification asked for a new connection (redis-py
            # 8.2 has these), so the next call connects again, as at check-in.
            connection.disconnect()
        return replies


def _read_replies(connection: Any, count: int) -> list[Any]:
    """Read ``count`` replies, each error reply as a `redis.ResponseError`.

    A reply that the hiredis reader has buffered already is taken from it
    directly, which skips redis-py's two wrapper calls per reply. That saved
    about 1 us of the 3 to 4 us of client CPU per reply of a pipeline of
    eight script calls (redis-py 8.2, hiredis 3.5, CPython 3.11). Every
    other reply goes through redis-py's ``read_response``, which reads the
    socket.

    Raises:
        redis.ConnectionError: as ``read_response`` does, also for a
            connection error that Redis sent as a reply.
    """
    parser: Any = getattr(connection, "_parser", None)
    reader = getattr(parser, "_reader", None)
    missing: Any = None
    if reader is not None and not reader.has_data():
        # An empty hiredis reader returns the "not enough data" marker that
        # redis-py chose. Only a marker of its own type cannot be a reply
        # (False, for one, can be).
        missing = reader.gets()
        if type(missing) is not object:
            reader = None
    else:
        reader = None
    push_type = getattr(parser, "_hiredis_PushNotificationType", None)
    replies: list[Any] = []
    while len(replies) < count:
        reply = missing if reader is None else reader.gets()
        if reply is missing:
            try:
                replies.append(connection.read_response())
            except redis.ResponseError as err:
                replies.append(err)
            continue
        if push_type is not None and isinstance(reply, push_type):
            # A RESP3 push between replies, such as a maintenance
            # notification, goes to redis-py's handlers as in its own read.
            parser.handle_push_response(reply)
            continue
        if isinstance(reply, Exception) and not isinstance(reply, redis.ResponseError):
            raise reply
        replies.append(reply)
    return replies


class _HeldConnection:
    """A connection checked out of a pool by one thread, returned when freed."""

    def __init__(self, pool: redis.ConnectionPool) -> None:
        self.pool = pool
        self.pid = os.getpid()
        self.connection: Any = pool.get_connection()
        self.should_reconnect: Any = getattr(self.connection, "should_reconnect", None)

    def __del__(self) -> None:
        # Runs when the thread that kept it ends. The pool of a forked child
        # does not own the parent's connection.
        # At interpreter exit the pool's modules may be gone already.
        if self.pid == os.getpid():
            with contextlib.suppress(Exception):
                self.pool.release(self.connection)


def _parse_count(text: str) -> int:
    try:
        count = int(text)
    except ValueError:
        count = 0
    if count < 1 or str(count) != text.strip():
        raise ValueError(
            f"partitions={text!r} in the URL is invalid; pass a whole number of "
            "1 or more, such as ?partitions=3."
        )
    return count


def _check_count(count: int | None, source: str) -> int | None:
    if count is None:
        return None
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(
            f"{source} is {count!r}; pass a whole number of 1 or more, or None "
            "for the default."
        )
    return count
