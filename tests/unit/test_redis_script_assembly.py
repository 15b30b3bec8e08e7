"""Assembling the Redis driver's scripts: includes and the locals they leave out.

These read the scripts from package data and need no server.
"""

from __future__ import annotations

import re
from importlib import resources

import pytest

from stem.drivers.redis.scripts import (
    SCRIPT_NAMES,
    drop_unused_locals,
    expand_includes,
    load_source,
)

SOURCE = """\
local rcall = redis.call
local UNUSED_TABLE = {a = true,
  b = true}
local USED_TABLE = {"x", "y"}
local CALLED_TABLE = {rcall("TIME")}
local UNUSED_TEXT = "text"
local function helper(x)
  return USED_TABLE[x]
end
local function used(x)
  return helper(x)
end
local function unused(x)
  return used(x)
end
-- unmentioned() is named in a comment only.
local function unmentioned()
  return 1
end
local function in_string()
  return 2
end
return {used(1), "in_string"}"""


def _kept(source: str) -> set[str]:
    """Return the names of the top-level local definitions left in ``source``."""
    return set(re.findall(r"^local (?:function )?(\w+)", source, re.MULTILINE))


def test_drop_keeps_what_the_body_reaches() -> None:
    kept = _kept(drop_unused_locals(SOURCE))
    assert "used" in kept
    assert "helper" in kept
    assert "USED_TABLE" in kept


def test_drop_removes_unreached_definitions() -> None:
    kept = _kept(drop_unused_locals(SOURCE))
    assert "unused" not in kept
    assert "UNUSED_TABLE" not in kept
    assert "UNUSED_TEXT" not in kept
    assert "unmentioned" not in kept


def test_drop_keeps_doubtful_definitions() -> None:
    kept = _kept(drop_unused_locals(SOURCE))
    # A constructor with a call has a side effect, and a name in a string
    # may be a use.
    assert "CALLED_TABLE" in kept
    assert "in_string" in kept


def test_drop_keeps_line_numbers() -> None:
    dropped = drop_unused_locals(SOURCE)
    assert dropped.count("\n") == SOURCE.count("\n")
    assert dropped.split("\n")[-1] == SOURCE.split("\n")[-1]


def test_drop_keeps_a_name_defined_twice() -> None:
    source = "local function twice()\nend\nlocal function twice()\nend\nreturn 1"
    assert drop_unused_locals(source) == source


@pytest.mark.parametrize("name", SCRIPT_NAMES)
def test_script_defines_what_it_calls(name: str) -> None:
    # Every name that the assembled script defines before the drop and
    # uses as a word after it is still defined: nothing used was dropped.
    folder = resources.files("stem.drivers.redis") / "lua"
    full = expand_includes((folder / f"{name}.lua").read_text(encoding="utf-8"))
    source = load_source(name)
    without_blocks = re.sub(r"--\[\[.*?\]\]", "", source, flags=re.DOTALL)
    code = "\n".join(
        line
        for line in without_blocks.split("\n")
        if not line.lstrip().startswith("--")
    )
    missing = {
        defined
        for defined in _kept(full) - _kept(source)
        if re.search(rf"\b{defined}\b", code)
    }
    assert missing == set()


def test_complete_leaves_out_unused_functions() -> None:
    kept = _kept(load_source("complete"))
    assert "count_open_readers" not in kept
    assert "persist_run" not in kept
    assert "end_node" in kept


@pytest.mark.parametrize("name", ["complete", "submit", "retry"])
def test_nested_include_expanded_once(name: str) -> None:
    # "graph" includes "queue", which complete and submit include earlier.
    source = expand_includes(
        (resources.files("stem.drivers.redis") / "lua" / f"{name}.lua").read_text(
            encoding="utf-8"
        )
    )
    assert source.count("\nlocal function send(") == 1
    assert not re.search(r'^--- @include "', source, re.MULTILINE)
