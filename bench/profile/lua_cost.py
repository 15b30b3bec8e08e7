"""Split the Redis CPU of Stem's Lua scripts into call, includes, commands and logic.

Run from the repository root:
``python bench/profile/lua_cost.py [--tasks N] [--batch B] [--repeats R]``.
Every figure is per call, from many calls sent in pipelines of B, and is
given as min / median / max over R repeats. The CPU figures are deltas of
Redis's used_cpu_user + used_cpu_sys, so they include reading the requests
and writing the replies. The ``usec`` figures are the script command's time
in INFO commandstats, which includes the commands the script calls. That is
wall time, so it grows whenever Redis waits for a core on a loaded machine.

Part 1 times the fixed cost of a script call. The cases are PING, a
one-line script with 0, 10 and 50 arguments, a script that only calls TIME,
and 20 redis.call of EXISTS. The last two cases are complete.lua with ``do
return {1} end`` before its includes (its size alone) and right after the
includes of a one-node run's path (defining their functions on every call).

Part 2 drives the submit, claim and complete scripts of N one-node runs
through the driver, as scripts.py does. It replays each script's recorded
calls against a one-line script and against the script cut after the
includes that a one-node run's path uses (the "graph" include of submit
and complete comes after that path). That splits each call into the call
with its arguments, the includes, the commands called inside and the rest
(the script's own Lua). A last table cuts complete.lua before each
statement of a one-node run's path.

Part 3 runs parts 1 and 2 again with FCALL. The whole calls of part 2 go
through the driver's own Functions library (`stem.drivers.redis.library`).
The cut and one-line scripts that part 1 and the splits use are loaded as
one library each by ``to_library``, which moves every top-level ``local
function`` of the assembled script to the library's load code, so it is
defined once. Its other top-level statements stay in the function that
FCALL runs, so the cut's constant tables cost on every call there, which
the driver's library defines once.
"""

from __future__ import annotations

import re
import statistics
import sys
from collections.abc import Callable, Iterator
from importlib import resources
from typing import Any

sys.path.insert(0, __file__.rsplit("/", 1)[0])

import redis
from common import arguments, command_usage, private_redis, server_cpu_s

from stem import App
from stem.canvas import compile_canvas
from stem.drivers.redis import RedisDriver
from stem.drivers.redis.scripts import (
    _INCLUDE,
    drop_unused_locals,
    expand_includes,
    load_source,
)
from stem.engine.ports import Message

#: The scripts of a one-node run's life, in order.
REAL_SCRIPTS = ("submit", "claim", "complete")
#: Commands that are not called by the scripts being timed.
NOT_INSIDE = frozenset(
    {"evalsha", "fcall", "info", "ping", "script|load", "function|load"}
)
EARLY_RETURN = "do return {1} end"
TINY = "return 1"
TIME_ONLY = 'local clock = redis.call("TIME")\nreturn 1'

CALLS_20 = 'for i = 1, 20 do redis.call("EXISTS", KEYS[1]) end\nreturn 1'
#: Lines of complete.lua to cut before, in order, with the part each one ends.
CUTS = (
    ("ack()", "check_report: HMGET run"),
    ("use_settings(run[2], run[3])", "ack: XACK, XDEL"),
    (
        'if run[4] == "running" and run[5] == "1" and not run[6] and run[7] then',
        "use_settings: no command",
    ),
    ('  rcall("HSET", run_key, unpack(fields))', "fields table: no command"),
    ('  emit("succeeded", node, attempt)', "node state, value, run end: HSET"),
    ('  run_ended("succeeded", nil, nil, true)', "emit: XADD event"),
    ("  return {1}", "run end: XADD event, 2 PEXPIRE"),
)

Command = tuple[Any, ...]


def source_with_return(name: str, *, after_includes: bool) -> str:
    """Return a script's source with an early return before or after its includes."""
    folder = resources.files("stem.drivers.redis") / "lua"
    text = (folder / f"{name}.lua").read_text(encoding="utf-8")
    # The includes before the first top-level `if`: those of a one-node run's
    # path. complete and submit include "graph" after that path.
    first_if = re.search(r"^if ", text, re.MULTILINE)
    end = first_if.start() if first_if else len(text)
    includes = [found for found in _INCLUDE.finditer(text) if found.start() < end]
    cut = includes[-1].end() if after_includes else includes[0].start()
    text = f"{text[:cut]}\n{EARLY_RETURN}\n{text[cut:]}"
    return drop_unused_locals(expand_includes(text))


def source_cut_before(name: str, statement: str) -> str:
    """Return a script's source, includes expanded, with a return before a statement.

    ``statement`` is a whole line of the script's own file, not an include.
    """
    source = load_source(name)
    lines = source.split("\n")
    if statement not in lines:
        raise SystemExit(f"{name}.lua has no line {statement!r}. Update CUTS.")
    index = lines.index(statement)
    return "\n".join([*lines[:index], EARLY_RETURN, *lines[index:]])


_LOCAL_FUNCTION = re.compile(r"^local function ([A-Za-z_]\w*)\(")
_LOCAL = re.compile(r"^local ([A-Za-z_][\w, ]*?)(\s*=.*)?$")


def to_library(function_name: str, source: str) -> str:
    """Convert an EVAL script into a Functions library that registers one function.

    Every top-level local becomes a local of the library's load code. The
    top-level ``local function`` blocks, which start at column 0 and end at
    the next ``end`` at column 0, run once when the library loads. The other
    top-level statements run on every FCALL, in their order, as plain
    assignments to those locals, so each call starts from the same values
    as an EVAL of the script. KEYS and ARGV become locals that FCALL sets.
    """
    lines = source.split("\n")
    names: list[str] = []
    functions: list[str] = []
    body: list[str] = []
    index = 0
    while index < len(lines):
        line = lines[index]
        defined = _LOCAL_FUNCTION.match(line)
        if defined:
            names.append(defined.group(1))
            functions.append(line[len("local ") :])
            index += 1
            while lines[index] != "end":
                functions.append(lines[index])
                index += 1
            functions.append("end")
        elif (declared := _LOCAL.match(line)) is not None:
            local_names = [name.strip() for name in declared.group(1).split(",")]
            names.extend(local_names)
            value = declared.group(2) or " = nil"
            body.append(", ".join(local_names) + value)
        else:
            body.append(line)
        index += 1
    unique = list(dict.fromkeys(["KEYS", "ARGV", *names]))
    return "\n".join(
        [
            f"#!lua name={function_name}",
            f"local {', '.join(unique)}",
            *functions,
            "local function call(keys, args)",
            "KEYS, ARGV = keys, args",
            *body,
            "end",
            f"redis.register_function('{function_name}', call)",
        ]
    )


def stats(values: list[float]) -> str:
    low, middle, high = min(values), statistics.median(values), max(values)
    return f"{low:6.1f} {middle:6.1f} {high:6.1f}"


class Cost:
    """Redis's commandstats and CPU time over one block of script calls."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.before = command_usage(url)
        self.cpu_before = server_cpu_s(url)

    def finish(self, calls: int) -> dict[str, float]:
        """Return per-call usec of the script command, its inner commands and CPU."""
        cpu_us = (server_cpu_s(self.url) - self.cpu_before) / calls * 1e6
        used = {
            command: (
                count - self.before.get(command, (0, 0))[0],
                usec - self.before.get(command, (0, 0))[1],
            )
            for command, (count, usec) in command_usage(self.url).items()
        }
        script = sum(used.get(name, (0, 0))[1] for name in ("evalsha", "fcall"))
        if script == 0:
            script = used.get("ping", (0, 0))[1]
        inner = [value for name, value in used.items() if name not in NOT_INSIDE]
        return {
            "usec": script / calls,
            "inner_calls": sum(count for count, _ in inner) / calls,
            "inner_usec": sum(usec for _, usec in inner) / calls,
            "cpu": cpu_us,
        }


def send_all(
    client: redis.Redis, commands: list[Command], batch: int
) -> dict[str, float]:
    """Send commands in pipelines of ``batch`` and return their `Cost` per call."""
    url = client_url(client)
    cost = Cost(url)
    for first in range(0, len(commands), batch):
        pipe = client.pipeline(transaction=False)
        for command in commands[first : first + batch]:
            pipe.execute_command(*command)  # type: ignore[no-untyped-call]
        pipe.execute()
    return cost.finish(len(commands))


def client_url(client: redis.Redis) -> str:
    options = client.connection_pool.connection_kwargs
    return f"redis://{options['host']}:{options['port']}/0"


class Recorder:
    """Record the script calls a driver sends, with EVALSHA or with FCALL.

    It replaces ``send`` of the driver's per-thread connections, which a
    single-node driver uses for every script call. ``functions`` chooses
    how the driver calls the scripts: FCALL of the driver's own library
    (`stem.drivers.redis.library`), or EVALSHA.
    """

    def __init__(self, driver: RedisDriver, functions: bool) -> None:
        scripts = driver._scripts
        assert scripts.connections is not None, "a single-node driver is expected"
        scripts.use_functions = functions
        scripts.preload()
        self.names = {scripts._scripts[name].sha: name for name in REAL_SCRIPTS}
        for name in REAL_SCRIPTS:
            self.names[scripts.library.function_name(name)] = name
        self.calls: dict[str, list[Command]] = {name: [] for name in REAL_SCRIPTS}
        original: Callable[[list[Command]], list[Any]] = scripts.connections.send

        def send(commands: list[Command]) -> list[Any]:
            for command in commands:
                is_script = command[0] in ("EVALSHA", "FCALL")
                name = self.names.get(command[1]) if is_script else None
                if name is not None:
                    self.calls[name].append(command[2:])
            replies = original(commands)
            for reply in replies:
                if isinstance(reply, Exception):
                    raise reply
            return replies

        scripts.connections.send = send  # type: ignore[method-assign]


class Runs:
    """One-node runs submitted and claimed through a driver, ready to complete."""

    def __init__(
        self, url: str, tasks: int, batch: int, functions: bool, tag: str
    ) -> None:
        self.app = App(url)

        @self.app.task
        def noop() -> None:
            return None

        driver = self.app.driver
        assert isinstance(driver, RedisDriver)
        self.driver = driver
        self.recorder = Recorder(driver, functions)
        self.costs: dict[str, dict[str, float]] = {}
        spec = compile_canvas(noop.s())
        runs = [(f"{tag}-{index}", spec) for index in range(tasks)]
        cost = Cost(url)
        for first in range(0, tasks, batch):
            results = driver.submit_many(runs[first : first + batch])
            assert all(result is True for result in results), results[:3]
        self.costs["submit"] = cost.finish(tasks)

        messages: list[Message] = []
        while len(messages) < tasks:
            messages += driver.fetch(["default"], batch, 1.0)
        cost = Cost(url)
        claims = []
        for first in range(0, tasks, batch):
            claims += driver.claim_many(messages[first : first + batch])
        self.costs["claim"] = cost.finish(tasks)
        self.complete_calls = []
        for claim in claims:
            assert claim is not None, "every claim started an attempt"
            keys = driver._report_keys(claim.message)
            args = [*driver._message_args(claim.message), "null"]
            self.complete_calls.append(("complete", keys, args))

    def complete(self, url: str, batch: int) -> None:
        """Send every complete call through the driver and store its cost."""
        calls = self.complete_calls
        cost = Cost(url)
        for first in range(0, len(calls), batch):
            replies = self.driver._scripts.call_many(calls[first : first + batch])
            assert all(reply == [1] for reply in replies), replies[:3]
        self.costs["complete"] = cost.finish(len(calls))

    def complete_commands(self) -> list[Command]:
        """Return the complete calls as numkeys, keys and arguments."""
        return [
            (len(keys), *keys, *[str(arg) for arg in args])
            for _, keys, args in self.complete_calls
        ]

    def close(self) -> None:
        self.app.close()


def drive_runs(
    url: str, tasks: int, batch: int, functions: bool, tag: str
) -> Iterator[tuple[str, dict[str, float], list[Command]]]:
    """Submit, claim and complete ``tasks`` one-node runs and yield each script's cost.

    Yields (script, cost per call, the calls' numkeys, keys and arguments as
    sent).
    """
    runs = Runs(url, tasks, batch, functions, tag)
    runs.complete(url, batch)
    for name in REAL_SCRIPTS:
        yield name, runs.costs[name], runs.recorder.calls[name]
    runs.close()


class Loaded:
    """Scripts loaded for EVALSHA and as Functions libraries, by variant name."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.shas: dict[str, str] = {}

    def add(self, variant: str, source: str) -> None:
        self.shas[variant] = self.client.script_load(source)
        library = to_library(f"stem_{variant}", source)
        self.client.function_load(library, replace=True)

    def command(self, variant: str, functions: bool, call: Command) -> Command:
        if functions:
            return ("FCALL", f"stem_{variant}", *call)
        return ("EVALSHA", self.shas[variant], *call)


def fixed_costs(
    client: redis.Redis,
    loaded: Loaded,
    complete_call: Command,
    options: Any,
) -> None:
    """Print part 1: the cost of a call by its number of arguments and script size."""
    calls = options.tasks
    tiny_1key = 0.0
    cases: list[tuple[str, str | None, Command]] = [
        ("PING", None, ()),
        ("tiny, 0 args", "tiny", (0,)),
        ("tiny, 10 args", "tiny", (0, *["a" * 20] * 10)),
        ("tiny, 50 args", "tiny", (0, *["a" * 20] * 50)),
        ("TIME only, 0 args", "time", (0,)),
        ("tiny, 1 key", "tiny", (1, "missing")),
        ("20 x redis.call EXISTS, 1 key", "calls20", (1, "missing")),
        ("tiny, complete's args", "tiny", complete_call),
        ("complete, return first", "complete_top", complete_call),
        ("complete, return after includes", "complete_pre", complete_call),
    ]
    for functions in (False, True):
        kind = "FCALL" if functions else "EVALSHA"
        print(
            f"\nPart 1 ({kind}): usec | Redis CPU per call, min median max", flush=True
        )
        for label, variant, call in cases:
            if variant is None and functions:
                continue
            usec: list[float] = []
            cpu: list[float] = []
            inner_usec: list[float] = []
            for _ in range(options.repeats):
                if variant is None:
                    commands: list[Command] = [("PING",)] * calls
                else:
                    commands = [loaded.command(variant, functions, call)] * calls
                result = send_all(client, commands, options.batch)
                usec.append(result["usec"])
                cpu.append(result["cpu"])
                inner_usec.append(result["inner_usec"])
            print(f"{label:>32}: {stats(usec)} | {stats(cpu)}", flush=True)
            if variant == "calls20":
                # Each redis.call beyond the command's own time: the script's
                # CPU less a one-key tiny call's, less EXISTS's commandstats.
                glue = [
                    (total - inner - tiny_1key) / 20
                    for total, inner in zip(cpu, inner_usec, strict=True)
                ]
                print(f"{'redis.call glue per call':>32}: {stats(glue)}", flush=True)
            if label == "tiny, 1 key":
                tiny_1key = statistics.median(cpu)


def commands_share(inner_usec: float, usec: float) -> float:
    """Return the share of a script's time that its inner commands took, 0 to 1.

    Both are wall times from commandstats, which grow when Redis waits for a
    core, so only their ratio is used.
    """
    if usec <= 0:
        return 0.0
    return min(max(inner_usec / usec, 0.0), 1.0)


def real_costs(url: str, client: redis.Redis, loaded: Loaded, options: Any) -> None:
    """Print parts 2 and 3: each real script's Redis CPU split into its parts.

    Per repeat: the call is the CPU of a one-line script with the same keys
    and arguments, the includes are the script cut after its includes less
    that, and the body is the whole script less the cut. The body's
    commands are estimated from the commandstats share of the body's time.
    """
    for functions in (False, True):
        kind = "FCALL" if functions else "EVALSHA"
        rows: dict[str, dict[str, list[float]]] = {name: {} for name in REAL_SCRIPTS}
        for repeat in range(options.repeats):
            tag = f"{kind.lower()}-{repeat}"
            for name, cost, calls in drive_runs(
                url, options.tasks, options.batch, functions, tag
            ):
                tiny = send_all(
                    client,
                    [loaded.command("tiny", functions, call) for call in calls],
                    options.batch,
                )
                cut = send_all(
                    client,
                    [loaded.command(f"{name}_pre", functions, call) for call in calls],
                    options.batch,
                )
                body = cost["cpu"] - cut["cpu"]
                share = commands_share(
                    cost["inner_usec"] - cut["inner_usec"], cost["usec"] - cut["usec"]
                )
                figures = {
                    "Redis CPU, whole call": cost["cpu"],
                    "call: tiny script, same args": tiny["cpu"],
                    "includes: cut after them - tiny": cut["cpu"] - tiny["cpu"],
                    "body: whole - cut": body,
                    "body: commands (est.)": body * share,
                    "body: Lua and redis.call glue": body * (1 - share),
                    "commands inside, count": cost["inner_calls"],
                    "wall: script usec": cost["usec"],
                    "wall: commands usec": cost["inner_usec"],
                }
                for label, value in figures.items():
                    rows[name].setdefault(label, []).append(value)
        print(
            f"\nReal scripts ({kind}), Redis CPU us per call, min median max:",
            flush=True,
        )
        for name, row in rows.items():
            print(f"  {name}:")
            for label, values in row.items():
                print(f"{label:>38}: {stats(values)}", flush=True)


def median_delta(values: dict[str, list[float]], variant: str, previous: str) -> float:
    return statistics.median(values[variant]) - statistics.median(values[previous])


def complete_sections(
    url: str, client: redis.Redis, loaded: Loaded, options: Any
) -> None:
    """Print complete.lua's Redis CPU section by section, from cuts at its lines.

    Each cut is timed on fresh claimed runs, so every section runs on the
    state a real complete finds. A section's cost is the difference between
    the median CPU of its cut and of the one before, the first being the
    cut after the includes. Its commands are estimated from the
    commandstats share of the section's time.
    """
    tasks = options.section_tasks
    variants = ["complete_pre", *[f"cut{index}" for index in range(len(CUTS))]]
    for functions in (False, True):
        kind = "FCALL" if functions else "EVALSHA"
        figures: dict[str, dict[str, list[float]]] = {
            figure: {variant: [] for variant in variants}
            for figure in ("cpu", "usec", "inner_usec", "inner_calls")
        }
        for repeat in range(options.repeats):
            for variant in variants:
                tag = f"cut-{kind}-{variant}-{repeat}"
                runs = Runs(url, tasks, options.batch, False, tag)
                commands = [
                    loaded.command(variant, functions, call)
                    for call in runs.complete_commands()
                ]
                result = send_all(client, commands, options.batch)
                for figure, values in figures.items():
                    values[variant].append(result[figure])
                runs.close()
        print(
            f"\ncomplete.lua by section ({kind}), {tasks} calls, Redis CPU us per "
            "call (medians): section, commands count, commands (est.), the rest",
            flush=True,
        )
        previous = "complete_pre"
        for variant, (_, label) in zip(variants[1:], CUTS, strict=True):
            cpu = median_delta(figures["cpu"], variant, previous)
            count = median_delta(figures["inner_calls"], variant, previous)
            share = commands_share(
                median_delta(figures["inner_usec"], variant, previous),
                median_delta(figures["usec"], variant, previous),
            )
            print(
                f"{label:>38}: {cpu:6.1f} {count:5.1f} {cpu * share:6.1f} "
                f"{cpu * (1 - share):6.1f}",
                flush=True,
            )
            previous = variant


def main() -> None:
    parser = arguments(__doc__ or "")
    parser.add_argument("--tasks", type=int, default=5_000, help="calls per block")
    parser.add_argument("--batch", type=int, default=250, help="calls per pipeline")
    parser.add_argument("--repeats", type=int, default=3, help="repeats per figure")
    parser.add_argument(
        "--section-tasks",
        type=int,
        default=2_000,
        help="runs per cut of complete.lua in the section table",
    )
    parser.add_argument(
        "--parts",
        default="fixed,real,sections",
        help="comma-separated tables to print: fixed, real, sections",
    )
    options = parser.parse_args()
    with private_redis() as url:
        client = redis.Redis.from_url(url, decode_responses=True)
        info = client.info("server")
        print(
            f"Redis {info['redis_version']}, {options.tasks} calls per block, "
            f"pipelines of {options.batch}, {options.repeats} repeats"
        )
        loaded = Loaded(client)
        loaded.add("tiny", TINY)
        loaded.add("time", TIME_ONLY)
        loaded.add("calls20", CALLS_20)
        for index, (statement, _) in enumerate(CUTS):
            loaded.add(f"cut{index}", source_cut_before("complete", statement))
        loaded.add("complete_top", source_with_return("complete", after_includes=False))
        for name in REAL_SCRIPTS:
            loaded.add(name, load_source(name))
            loaded.add(f"{name}_pre", source_with_return(name, after_includes=True))
        # One run's complete call, for part 1: its keys and arguments.
        complete_call: Command = ()
        for name, _, calls in drive_runs(url, 1, 1, False, "sample"):
            if name == "complete":
                complete_call = calls[0]
        parts = options.parts.split(",")
        if "fixed" in parts:
            fixed_costs(client, loaded, complete_call, options)
        if "real" in parts:
            real_costs(url, client, loaded, options)
        if "sections" in parts:
            complete_sections(url, client, loaded, options)
        client.close()


if __name__ == "__main__":
    main()
