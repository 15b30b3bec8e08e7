"""Helpers of the Redis driver's claim and report path, which need no server."""

from __future__ import annotations

import dataclasses

import pytest

from stem.drivers.redis.driver import _leased
from stem.drivers.redis.keys import Keys
from stem.drivers.redis.scripts import Reply, ScriptError, check_reply
from stem.engine.ports import Message


def test_leased_copies_every_field() -> None:
    # Every field gets a value other than its default, so a field that
    # `_leased` dropped or mixed up would show as a difference.
    message = Message(
        run_id="run-1",
        node_id="3",
        attempt=2,
        queue="urgent",
        epoch=4,
        receipt="17-5",
        headers={"task": "app.add"},
        lease=6,
        reclaimed=True,
        enqueued_at=1700000000.017,
    )
    defaults = Message("r", "0", 1)
    for field in dataclasses.fields(Message):
        assert getattr(message, field.name) != getattr(defaults, field.name), (
            f"the test message leaves {field.name} at its default"
        )

    expected = dataclasses.replace(message, lease=9, reclaimed=False)

    assert _leased(message, 9) == expected


def test_run_hash_matches_run_keys() -> None:
    for keys in (Keys(), Keys("app:", "{stem:p2}")):
        assert keys.run_hash("run-1") == keys.run("run-1").run
        assert keys.queue("default") == f"{keys.base}q:default"


def test_check_reply_codes() -> None:
    for reply in Reply:
        assert check_reply("claim", int(reply), "r") is reply
        assert check_reply("claim", [int(reply), "x"], "r") is reply
        assert check_reply("claim", str(int(reply)), "r") is reply


def test_check_reply_not_accepted() -> None:
    accept = frozenset({Reply.DONE})

    assert check_reply("complete", 1, "r", accept=accept) is Reply.DONE
    with pytest.raises(ScriptError, match="returned DUPLICATE"):
        check_reply("complete", 0, "r", accept=accept)


def test_check_reply_unknown_code() -> None:
    with pytest.raises(ScriptError, match="expected a result code"):
        check_reply("complete", 7, "r")
    with pytest.raises(ScriptError, match="expected a result code"):
        check_reply("complete", [[1]], "r")
