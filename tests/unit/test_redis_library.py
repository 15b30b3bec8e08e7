"""The conversion of the driver's scripts into one Redis Functions library.

These check the generated code; tests/integration runs it on real servers.
"""

from __future__ import annotations

import pytest
import redis

from stem.drivers.redis.library import LIBRARY_PREFIX, build_library
from stem.drivers.redis.scripts import (
    SCRIPT_FLAGS,
    SCRIPT_NAMES,
    is_missing_script,
    load_source,
)

SCRIPT = """\
-- luacheck: globals KEYS ARGV redis
local rcall = redis.call
local run_key = KEYS[1]
local LIMIT = 10
local STATES = {succeeded = true,
  failed = true}
local seen = {}
local function note(value)
  seen[#seen + 1] = value
  return STATES[value] and LIMIT
end
return note(ARGV[1])"""


def _block(code: str, script: str) -> str:
    """Return the part of the library code that registers ``script``."""
    name = code.split("\n", 1)[0].removeprefix("#!lua name=")
    marker = f"function_name = '{name}_{script}'"
    start = code.rindex("\ndo\n", 0, code.index(marker))
    return code[start : code.index("\nend\n", code.index(marker)) + 5]


def test_library_named_by_hash_of_code() -> None:
    first = build_library({"note": SCRIPT}, {})
    again = build_library({"note": SCRIPT}, {})
    changed = build_library({"note": SCRIPT.replace("10", "11")}, {})

    assert first == again
    assert first.name.startswith(LIBRARY_PREFIX)
    assert first.code.startswith(f"#!lua name={first.name}\n")
    assert changed.name != first.name
    assert first.function_name("note") == f"{first.name}_note"


def test_functions_and_constants_defined_at_load() -> None:
    code = build_library({"note": SCRIPT}, {}).code
    load, per_call = code.split("callback = function(keys, args)")

    assert "local LIMIT, STATES, note, seen\n" in load
    assert "function note(value)" in load
    assert "LIMIT = 10" in load
    assert "STATES = {succeeded = true,\n  failed = true}" in load
    # A table that a call fills must start empty on every call.
    assert "\nseen = {}" in per_call
    assert "luacheck" not in code


def test_unshared_locals_stay_in_function() -> None:
    source = SCRIPT.replace("  seen[#seen + 1] = value", "  seen[#seen + 1] = KEYS[1]")
    plain = build_library({"note": SCRIPT}, {}).code
    reading_keys = build_library({"note": source}, {}).code

    # No load-time function names them, so they stay locals of the call.
    assert "local KEYS, ARGV = keys, args" in plain
    assert "local rcall = redis.call" in plain
    assert "local run_key = KEYS[1]" in plain
    # A function that reads KEYS shares it with the call.
    assert "local KEYS, ARGV, LIMIT, STATES, note, seen\n" in reading_keys
    assert "\nKEYS, ARGV = keys, args" in reading_keys


def test_mutated_constant_stays_per_call() -> None:
    source = SCRIPT.replace("return note", "STATES.cancelled = true\nreturn note")
    load, per_call = build_library({"note": source}, {}).code.split(
        "callback = function(keys, args)"
    )

    assert "STATES = {succeeded = true" in per_call
    assert "STATES = {" not in load


def test_script_flags_registered() -> None:
    library = build_library(
        {name: load_source(name) for name in SCRIPT_NAMES}, SCRIPT_FLAGS
    )

    assert "flags = {'no-writes'}," in _block(library.code, "read_ended")
    assert "flags = {'no-writes'}," in _block(library.code, "read_value")
    assert "flags = {'no-writes'}," in _block(library.code, "stale_releases")
    assert "flags = {'allow-oom'}," in _block(library.code, "purge")
    assert "flags = {}," in _block(library.code, "complete")
    assert library.code.count("flags = {'no-writes'},") == 3
    assert library.code.count("flags = {'allow-oom'},") == 2


def test_redefinition_seen_by_function_rejected() -> None:
    source = SCRIPT.replace("return note", "local LIMIT = 20\nreturn note")

    with pytest.raises(ValueError, match="LIMIT"):
        build_library({"note": source}, {})


def test_redefinition_after_functions_allowed() -> None:
    # Both come before the function, so it reads the second under EVAL too.
    source = SCRIPT.replace(
        "local function note", "local seen = {}\nlocal function note"
    )

    code = build_library({"note": source}, {}).code

    assert code.count("\nseen = {}") == 2
    assert "local LIMIT, STATES, note, seen\n" in code


def test_unshared_redefinition_kept_as_locals() -> None:
    source = SCRIPT.replace("return note", "local run_key = KEYS[2]\nreturn note")

    code = build_library({"note": source}, {}).code

    assert "local run_key = KEYS[1]" in code
    assert "local run_key = KEYS[2]" in code


def test_function_defined_twice_rejected() -> None:
    source = SCRIPT + "\nlocal function note(value)\n  return value\nend"

    with pytest.raises(ValueError, match="note"):
        build_library({"note": source}, {})


@pytest.mark.parametrize(
    ("error", "missing"),
    [
        (redis.exceptions.NoScriptError("No matching script."), True),
        (redis.ResponseError("Function not found"), True),
        (redis.ResponseError("Library 'x' already exists"), False),
        (redis.ResponseError("ERR user_function:3: Script attempted..."), False),
        (1, False),
    ],
)
def test_missing_script_errors(error: object, missing: bool) -> None:
    assert is_missing_script(error) is missing
