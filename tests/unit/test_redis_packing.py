"""The driver's packer for script calls: the bytes redis-py would send, sooner.

These build connections without connecting, so they need no server.
"""

from __future__ import annotations

from typing import Any

import pytest
import redis

from stem.drivers.redis import scripts
from stem.drivers.redis.connection import _ScriptCallPacker, connect, parse_url

pytest.importorskip("hiredis")

#: A claim call as `Scripts.call` sends it: keys and arguments already bytes.
SCRIPT_CALL: tuple[Any, ...] = (
    "EVALSHA",
    "0" * 40,
    2,
    b"{stem:p0}:run:01M91MMM44T0RME26J4YKYMHHN",
    b"{stem:p0}:q:default",
    b"0",
    "1",
    1.5,
    b"caf\xc3\xa9",
)


def _packed(connection: Any, *args: Any) -> bytes:
    return b"".join(connection.pack_command(*args))


def _connections(url: str) -> tuple[Any, Any]:
    """Return a connection of the driver's client and one of a plain client."""
    client = connect(parse_url(url))
    plain = redis.Redis.from_url(url, decode_responses=True)
    return (
        client.connection_pool.make_connection(),
        plain.connection_pool.make_connection(),
    )


def test_script_call_packed_like_redis_py() -> None:
    ours, plain = _connections("redis://127.0.0.1:1/0")

    assert isinstance(ours._command_packer, _ScriptCallPacker)
    assert _packed(ours, *SCRIPT_CALL) == _packed(plain, *SCRIPT_CALL)
    function_call = ("FCALL", "stem_v0_claim", *SCRIPT_CALL[2:])
    assert _packed(ours, *function_call) == _packed(plain, *function_call)


def test_other_commands_packed_like_redis_py() -> None:
    ours, plain = _connections("redis://127.0.0.1:1/0")

    for command in (
        ("HSET", "key", "field", 1.5),
        ("CONFIG GET", "maxmemory"),
        ("SET", "key", memoryview(b"value")),
    ):
        assert _packed(ours, *command) == _packed(plain, *command), command


def test_unpackable_script_argument_rejected() -> None:
    ours, _ = _connections("redis://127.0.0.1:1/0")

    with pytest.raises(redis.DataError):
        ours.pack_command("EVALSHA", "0" * 40, 1, None)


def test_other_encoding_keeps_redis_py_packer() -> None:
    ours, _ = _connections("redis://127.0.0.1:1/0?encoding=latin-1")

    assert not isinstance(ours._command_packer, _ScriptCallPacker)


#: A fetch as the driver sends it on a thread's connection.
READ_CALL: tuple[Any, ...] = (
    "XREADGROUP",
    "GROUP",
    "stem-workers",
    "host-1-2",
    "COUNT",
    8,
    "BLOCK",
    100,
    "STREAMS",
    "{stem:p0}:q:café",
    "{stem:p0}:outbox",
    ">",
    ">",
)


def test_read_call_packed_like_redis_py() -> None:
    ours, plain = _connections("redis://127.0.0.1:1/0")

    assert _packed(ours, *READ_CALL) == _packed(plain, *READ_CALL)


def test_surrogate_argument_packed_like_redis_py() -> None:
    # The client decodes a byte that is not UTF-8 to a lone surrogate, which
    # hiredis cannot encode, and redis-py encodes back to the byte.
    ours, plain = _connections("redis://127.0.0.1:1/0?encoding_errors=surrogateescape")
    command = (*READ_CALL[:9], "{stem:p0}:q:\udcff", ">")

    assert _packed(ours, *command) == _packed(plain, *command)
    assert b"\xff" in _packed(ours, *command)


def test_pipeline_packed_like_redis_py() -> None:
    ours, plain = _connections("redis://127.0.0.1:1/0")
    commands = [SCRIPT_CALL, READ_CALL, ("HSET", "key", "field", 1.5), SCRIPT_CALL]

    packed = ours._command_packer.pack_many(commands)

    assert len(packed) == 1
    assert packed[0] == b"".join(plain.pack_commands(commands))


@pytest.mark.parametrize(
    ("items", "expected"),
    [
        (["key", "0", ""], [b"key", b"0", b""]),
        (["caf\u00e9", 2, 1.5], [b"caf\xc3\xa9", b"2", b"1.5"]),
        (["a\0b", "c"], [b"a\0b", b"c"]),
        (["a\0b", 3], [b"a\0b", b"3"]),
    ],
)
def test_script_arguments_encoded(items: list[Any], expected: list[bytes]) -> None:
    assert scripts._encoded(items) == expected
