"""Convert the driver's Lua scripts into one Redis Functions library.

Redis runs an EVAL script's top level on every call, so each include
function that a script reaches is defined again on every call. A library's
load code runs once, at FUNCTION LOAD. There each script's top-level
``local function`` blocks and upper-case constants are defined once. The
script's other top-level statements, such as TIME and the key names, run
in the registered function on every FCALL. A top-level local that a
load-time function uses becomes a local of the script's block, which each
call assigns again. So each call starts from the same values as an
EVALSHA of the script.

Each script becomes one ``do ... end`` block of the load code, so the
locals of different scripts stay apart. Function names are unique across
all libraries of a server, so a function is named ``<library>_<script>``,
and the library is named ``stem_v`` plus a hash of its code. Two Stem
versions that share a server thus load two libraries side by side.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass

#: The start of every library name; the rest is a hash of the code.
LIBRARY_PREFIX = "stem_v"
#: Stands for the library name in the code until its hash is known. It is
#: not valid Lua, so no script contains it.
_NAME_PLACEHOLDER = "@library@"

_LOCAL_FUNCTION = re.compile(r"^local function ([A-Za-z_][A-Za-z0-9_]*)\(")
#: A top-level ``local`` statement: its names and the rest of the line.
_LOCAL = re.compile(r"^local ([A-Za-z_][\w, ]*?)(\s*=.*)?$")
#: A top-level upper-case constant: a number, a string or a table constructor.
_CONSTANT = re.compile(r'^local ([A-Z][A-Z0-9_]*) = (-?[0-9]+|"[^"\\]*"|\{.*)$')
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class Library:
    """A Functions library: its name and its code for FUNCTION LOAD."""

    name: str
    code: str

    def function_name(self, script: str) -> str:
        """Return the name that FCALL uses for one script."""
        return f"{self.name}_{script}"


def build_library(
    sources: Mapping[str, str], flags: Mapping[str, tuple[str, ...]]
) -> Library:
    """Build one library that registers each script of ``sources`` as a function.

    ``sources`` maps a script's name to its assembled source
    (`stem.drivers.redis.scripts.load_source`), and ``flags`` maps a
    script's name to its function flags, such as ``no-writes``. A script
    that ``flags`` does not name gets none.

    Raises:
        ValueError: if a script has a shape this conversion cannot keep
            equal to EVALSHA, such as a top-level name defined twice.
    """
    blocks = [
        _script_block(script, source, flags.get(script, ()))
        for script, source in sources.items()
    ]
    body = "\n".join(blocks)
    digest = hashlib.sha1(body.encode(), usedforsecurity=False).hexdigest()[:16]
    name = f"{LIBRARY_PREFIX}{digest}"
    code = f"#!lua name={name}\n{body.replace(_NAME_PLACEHOLDER, name)}\n"
    return Library(name=name, code=code)


def _script_block(script: str, source: str, flags: tuple[str, ...]) -> str:
    """Return the ``do ... end`` block of the load code that registers one script.

    A top-level local that no load-time definition names stays a local of
    the registered function, as fast to reach as in EVAL. The others become
    locals of the block, which the load-time functions share with each call.
    """
    lines = source.split("\n")
    is_code = code_flags(lines, blank_is_code=False)
    load_names: list[str] = []
    function_lines: dict[str, tuple[int, int]] = {}
    at_load: list[str] = []
    #: Per-call statements: (the names a top-level ``local`` declares, or
    #: None for another statement, its text, its line).
    per_call: list[tuple[list[str] | None, str, int]] = []
    index = 0
    while index < len(lines):
        line = lines[index]
        if not is_code[index]:
            index += 1
            continue
        function = _LOCAL_FUNCTION.match(line)
        constant = _constant_span(lines, index)
        declared = _LOCAL.match(line)
        if function or constant is not None:
            if function:
                name, last = function.group(1), _function_end(script, lines, index)
                function_lines[name] = (index, last)
            else:
                assert constant is not None
                name, last = constant
            load_names.append(name)
            # The name is declared as a local of the block, so this assigns to it.
            at_load.append(line[len("local ") :])
            at_load.extend(lines[index + 1 : last + 1])
            index = last + 1
            continue
        if declared:
            declared_names = [name.strip() for name in declared.group(1).split(",")]
            per_call.append((declared_names, declared.group(2) or "", index))
        else:
            per_call.append((None, line, index))
        index += 1

    # Names that a load-time definition uses, or defines, must be block locals.
    shared = set(_NAME.findall("\n".join(at_load))) | set(load_names)
    names = list(load_names)
    per_call_lines: dict[str, list[int]] = {}
    body: list[str] = []
    for local_names, text, number in per_call:
        if local_names is None:
            body.append(text)
        elif shared.isdisjoint(local_names):
            body.append(f"local {', '.join(local_names)}{text}")
        else:
            names.extend(local_names)
            for name in local_names:
                per_call_lines.setdefault(name, []).append(number)
            body.append(", ".join(local_names) + (text or " = nil"))
    _check_redefinitions(script, lines, names, per_call_lines, function_lines)
    if shared.isdisjoint({"KEYS", "ARGV"}):
        block_locals = list(dict.fromkeys(names))
        arguments = "local KEYS, ARGV = keys, args"
    else:
        block_locals = list(dict.fromkeys(["KEYS", "ARGV", *names]))
        arguments = "KEYS, ARGV = keys, args"
    flag_list = ", ".join(f"'{flag}'" for flag in flags)
    return "\n".join(
        [
            "do",
            *([f"local {', '.join(block_locals)}"] if block_locals else []),
            *at_load,
            "redis.register_function{",
            f"function_name = '{_NAME_PLACEHOLDER}_{script}',",
            f"flags = {{{flag_list}}},",
            "callback = function(keys, args)",
            arguments,
            *body,
            "end}",
            "end",
        ]
    )


def _check_redefinitions(
    script: str,
    lines: list[str],
    names: list[str],
    per_call_lines: dict[str, list[int]],
    function_lines: dict[str, tuple[int, int]],
) -> None:
    """Reject a top-level name defined twice where one local would change behavior.

    Every top-level name becomes one local of the script's block. A name
    that per-call code defines twice thus becomes two assignments, which
    matches EVAL unless a top-level function between the two definitions
    uses it: under EVAL that function reads the first value, in the library
    the last. A function or constant defined twice is rejected outright.

    Raises:
        ValueError: naming the script and the names.
    """
    rejected: set[str] = set()
    for name in {name for name in names if names.count(name) > 1}:
        defined_at = per_call_lines.get(name, [])
        if len(defined_at) != names.count(name):
            rejected.add(name)
            continue
        word = re.compile(rf"(?<![\w.]){name}\b")
        for first, last in function_lines.values():
            if defined_at[0] < first < defined_at[-1] and any(
                word.search(line) for line in lines[first : last + 1]
            ):
                rejected.add(name)
    if rejected:
        raise ValueError(
            f"Script {script} defines the top-level names "
            f"{', '.join(sorted(rejected))} more than once, so a Functions "
            "library, which keeps one local per name, would change what the "
            "code between the definitions sees; rename one of each."
        )


def _function_end(script: str, lines: list[str], first: int) -> int:
    """Return the line of the ``end`` at column 0 that closes a top-level function."""
    for number in range(first + 1, len(lines)):
        if lines[number] == "end":
            return number
    raise ValueError(
        f"Script {script}: the top-level function at line {first + 1} has no "
        "'end' at column 0; end each top-level function that way."
    )


def _constant_span(lines: list[str], first: int) -> tuple[str, int] | None:
    """Return the name and last line of an upper-case constant at ``first``, or None.

    A constant qualifies when it is a number, a string, or a table
    constructor of literals, and no other line of the script assigns to it
    or to one of its fields. Anything else stays in the per-call code.
    """
    found = _CONSTANT.match(lines[first])
    if not found:
        return None
    name = found.group(1)
    last = first
    if found.group(2).startswith("{"):
        depth = 0
        for number in range(first, len(lines)):
            text = re.sub(r'"[^"\\]*"', '""', lines[number])
            if number == first:
                text = text.split("=", 1)[1]
            # Only literals: keys written as names, strings, numbers, booleans.
            bare = re.sub(r"[A-Za-z_][A-Za-z0-9_]*\s*=(?!=)", "", text)
            words = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", bare))
            if words - {"true", "false"} or "--" in text or "'" in text:
                return None
            depth += text.count("{") - text.count("}")
            if depth == 0:
                last = number
                break
        else:
            return None
    assigned = re.compile(
        rf"(?<![\w.]){name}\s*(\[[^\]]*\]|\.\w+)?\s*=(?!=)"
        rf"|table\.(insert|remove|sort)\(\s*{name}\b"
    )
    for number, line in enumerate(lines):
        if not first <= number <= last and assigned.search(line):
            return None
    return name, last


def code_flags(lines: list[str], *, blank_is_code: bool) -> list[bool]:
    """Flag each line that is code, not wholly a comment.

    A line is a comment when it starts with ``--`` after its indent, and a
    block comment runs from a line that starts with ``--[[`` to the line
    that contains ``]]``. A comment after code on its line counts as code.
    An empty line counts as code when ``blank_is_code``.
    """
    flags: list[bool] = []
    in_block = False
    for line in lines:
        text = line.lstrip()
        if in_block:
            flags.append(False)
            in_block = "]]" not in line
        elif text.startswith("--[["):
            flags.append(False)
            in_block = "]]" not in text
        else:
            flags.append((blank_is_code or bool(text)) and not text.startswith("--"))
    return flags
