"""Reading queue entries: the raw XREADGROUP reply and the UTF-8 check of fields.

These parse replies as the client returns them, so they need no server.
"""

from __future__ import annotations

from stem.drivers.redis.driver import _stream_entries, _undecodable_field

FLAT = ["v", "1", "run", "r1", "node", "0"]
FIELDS = {"v": "1", "run": "r1", "node": "0"}


def test_stream_entries_resp2_list() -> None:
    reply = [["q", [["1-0", FLAT], ["1-1", FLAT]]], ["outbox", []]]

    assert _stream_entries(reply) == [
        ("q", [("1-0", FIELDS), ("1-1", FIELDS)]),
        ("outbox", []),
    ]


def test_stream_entries_resp3_map() -> None:
    reply = {"q": [["1-0", FLAT]], "outbox": [["2-0", ["kind", "cancel"]]]}

    assert _stream_entries(reply) == [
        ("q", [("1-0", FIELDS)]),
        ("outbox", [("2-0", {"kind": "cancel"})]),
    ]


def test_stream_entries_nothing_read() -> None:
    assert _stream_entries(None) == []
    assert _stream_entries([]) == []
    assert _stream_entries({}) == []


def test_stream_entries_deleted_entry() -> None:
    assert _stream_entries([["q", [["1-0", None]]]]) == [("q", [("1-0", None)])]


def test_undecodable_field_cases() -> None:
    assert _undecodable_field(FIELDS) is None
    assert _undecodable_field({"task": "café.add", "run": "r1"}) is None
    assert _undecodable_field({"task": "bad\udcff", "run": "r1"}) == (
        "field 'task' is not valid UTF-8"
    )
    assert _undecodable_field({"na\udcffme": "x"}) == (
        "field 'na\\udcffme' is not valid UTF-8"
    )
    assert _undecodable_field({"attempt": 1, "task": "bad\udcff"}) == (
        "field 'task' is not valid UTF-8"
    )
    assert _undecodable_field({"attempt": 1, "run": "r1"}) is None
