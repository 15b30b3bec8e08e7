"""Turn raw scenario records into figures, and figures into a markdown table."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from server import SCRIPT_COMMANDS

Record = dict[str, Any]


@dataclass(frozen=True)
class Figure:
    """One row of the table: a number taken from each record of a scenario."""

    key: str
    label: str
    unit: str
    scenario: str
    read: Callable[[Record, int], float | None]
    target: str = "reported"
    meets: Callable[[float], bool] | None = None
    #: Read from the server's counters, so valid even when the client failed:
    #: a script keeps running after its caller gave up waiting.
    server_side: bool = False


def _get(name: str) -> Callable[[Record, int], float | None]:
    return lambda record, count: record.get(name)


def _first(*names: str) -> Callable[[Record, int], float | None]:
    """Read the first of ``names`` that the record has."""

    def read(record: Record, count: int) -> float | None:
        for name in names:
            if record.get(name) is not None:
                return float(record[name])
        return None

    return read


def _fan_in_figures(key: str, size: str, scenario: str) -> tuple[Figure, Figure]:
    """Return the fan-in rows of one chord size: to the callback's start, and
    with its input read.

    The target counts to the callback's start, which is Stem's claim and
    BullMQ's processor start. Both read the members' values after it, in the
    row below. Celery passes the values in the callback's message, so its
    one figure already includes the read.
    """
    to_start = Figure(
        key,
        f"fan-in at {size}: last member stored to callback start",
        "ms",
        scenario,
        _first("fanin_to_claim_ms", "fanin_to_start_ms", "fanin_ms"),
        "≤ 2",
        lambda v: v <= 2,
    )
    with_read = Figure(
        f"{key}_read",
        f"fan-in at {size}, callback input read included",
        "ms",
        scenario,
        _get("fanin_ms"),
    )
    return to_start, with_read


def _per(
    path: tuple[str, ...], scale: float = 1.0
) -> Callable[[Record, int], float | None]:
    def read(record: Record, count: int) -> float | None:
        value: Any = record
        for part in path:
            if not isinstance(value, dict) or part not in value:
                return None
            value = value[part]
        return float(value) / count * scale

    return read


def _commands(record: Record, count: int) -> float | None:
    commands = record.get("server", {}).get("commands")
    return None if commands is None else sum(commands.values()) / count


def _script_calls(record: Record, count: int) -> float | None:
    commands = record.get("server", {}).get("commands")
    if commands is None:
        return None
    return sum(commands.get(name, 0) for name in SCRIPT_COMMANDS) / count


def _p999(record: Record, count: int) -> float | None:
    found = record.get("scripts", {}).get("percentiles_us", {})
    values = [entry["p99.9"] for entry in found.values() if "p99.9" in entry]
    return max(values) if values else None


def _slowest(record: Record, count: int) -> float | None:
    scripts = record.get("scripts")
    if not scripts or not scripts.get("percentiles_us"):
        return None
    return float(scripts["slowest_us"]) or None


def _stall(record: Record, count: int) -> float | None:
    return record.get("pinger", {}).get("max_rtt_ms")


def _done_at_cap(record: Record, count: int) -> float | None:
    if not record.get("capped"):
        return float(count)
    return record.get("worker_processed")


def figures_for(sizes: dict[str, int]) -> list[Figure]:
    """Return the figures of the scenarios that ran, in the targets table order."""
    big = "chord100k" if "chord100k" in sizes else "chord10k"
    submit = "submit100k" if "submit100k" in sizes else "submit10k"
    figures = [
        Figure(
            "noop_tps",
            "no-op tasks end to end, submit + get()",
            "tasks/s",
            "noop",
            _get("tasks_per_s"),
            "≥ 7,000",
            lambda v: v >= 7000,
        ),
        Figure(
            "round_trips",
            "client round trips per task (server read events)",
            "per task",
            "noop",
            _per(("server", "reads")),
            "≤ 2",
            lambda v: v <= 2,
        ),
        Figure(
            "census_client",
            "client commands per task (MONITOR)",
            "per task",
            "census",
            _per(("census", "client_commands")),
        ),
        Figure(
            "census_script",
            "commands called inside scripts per task (MONITOR)",
            "per task",
            "census",
            _per(("census", "script_commands")),
        ),
        Figure(
            "redis_cpu",
            "Redis server CPU per task",
            "µs",
            "noop",
            _per(("server", "cpu_s"), 1e6),
            "≤ 60",
            lambda v: v <= 60,
        ),
        Figure(
            "commands",
            "Redis commands per task, inside scripts counted",
            "per task",
            "noop",
            _commands,
        ),
        Figure(
            "script_calls", "script calls per task", "per task", "noop", _script_calls
        ),
        Figure(
            "worker_cpu",
            "worker CPU per task (all worker processes)",
            "µs",
            "noop",
            _per(("worker_cpu_s",), 1e6),
        ),
        Figure(
            "client_cpu",
            "client CPU per task (submit + get())",
            "µs",
            "noop",
            _per(("client_cpu_s",), 1e6),
        ),
        Figure(
            "chord10k_stored",
            "10,000-member chord, submit to callback stored",
            "s",
            "chord10k",
            _get("callback_stored_s"),
        ),
        Figure(
            "chord10k_get",
            "10,000-member chord, submit to get() returned",
            "s",
            "chord10k",
            _get("get_s"),
            "≤ 1.5",
            lambda v: v <= 1.5,
        ),
        Figure(
            "chord100k_stored",
            "100,000-member chord, submit to callback stored",
            "s",
            "chord100k",
            _get("callback_stored_s"),
        ),
        Figure(
            "chord100k_get",
            "100,000-member chord, submit to get() returned",
            "s",
            "chord100k",
            _get("get_s"),
            "≤ 15",
            lambda v: v <= 15,
        ),
        *_fan_in_figures("fanin_1k", "1,000", "chord1k"),
        *_fan_in_figures("fanin_10k", "10,000", "chord10k"),
        *_fan_in_figures("fanin_100k", "100,000", "chord100k"),
        Figure(
            "input_read_10k",
            "callback input read at 10,000",
            "ms",
            "chord10k",
            _get("input_read_ms"),
        ),
        Figure(
            "input_read_100k",
            "callback input read at 100,000",
            "ms",
            "chord100k",
            _get("input_read_ms"),
        ),
        Figure(
            "stall",
            f"longest Redis stall while submitting ({submit})",
            "ms",
            submit,
            _stall,
            "≤ 20",
            lambda v: v <= 20,
            server_side=True,
        ),
        Figure(
            "submit_time",
            f"submit time ({submit}, no worker)",
            "s",
            submit,
            _get("submit_s"),
        ),
        Figure(
            "memory_rest",
            f"Redis memory per chord member, stored ({submit})",
            "B",
            submit,
            _per(("server", "memory_delta")),
            "≤ 500",
            lambda v: v <= 500,
            server_side=True,
        ),
        Figure(
            "memory_peak",
            f"Redis memory per chord member, peak while running ({big})",
            "B",
            big,
            _per(("server", "memory_peak_delta")),
        ),
        Figure(
            "chord1m_get",
            "1,000,000-member chord, submit to get() returned",
            "s",
            "chord1m",
            _get("get_s"),
            "completes",
            lambda v: True,
        ),
        Figure(
            "chord1m_done",
            "1,000,000-member chord, tasks done by the cap",
            "tasks",
            "chord1m",
            _done_at_cap,
        ),
        Figure(
            "chain_hop",
            "chain of 200 steps, hop latency p50",
            "ms",
            "chain200",
            _get("hop_p50_ms"),
            "≤ 0.5",
            lambda v: v <= 0.5,
        ),
        Figure(
            "chain_bytes",
            "bytes written to Redis per chain step (net input)",
            "B",
            "chain200",
            _per(("server", "net_input")),
            "< 1,024",
            lambda v: v < 1024,
        ),
    ]
    for scenario in ("noop", "chord10k", big, submit):
        figures.append(
            Figure(
                f"p999_{scenario}",
                f"script call p99.9 ({scenario})",
                "µs",
                scenario,
                _p999,
                server_side=True,
            )
        )
        figures.append(
            Figure(
                f"slowest_{scenario}",
                f"slowest script call ({scenario})",
                "µs",
                scenario,
                _slowest,
                server_side=True,
            )
        )
    return [figure for figure in figures if figure.scenario in sizes]  # fmt: skip


def summarise(
    results: dict[str, dict[str, list[Record]]],
    systems: list[str],
    scenarios: list[Any],
) -> list[dict[str, Any]]:
    """Return every figure with min, median and max per system, and Stem's ratios."""
    sizes = {scenario.name: scenario.count for scenario in scenarios}
    caps = {scenario.name: scenario.cap_s for scenario in scenarios}
    out = []
    for figure in figures_for(sizes):
        row: dict[str, Any] = {
            "key": figure.key,
            "label": figure.label,
            "unit": figure.unit,
            "scenario": figure.scenario,
            "target": figure.target,
        }
        for system in systems:
            records = results.get(figure.scenario, {}).get(system, [])
            row[system] = _entry(figure, records, sizes, caps)
        stem = row.get("stem", {}).get("median")
        for peer in ("celery", "bullmq"):
            theirs = row.get(peer, {}).get("median")
            if stem is not None and theirs:
                row[f"stem_to_{peer}"] = stem / theirs
        if figure.meets is not None and "stem" in row:
            if stem is None:
                row["met"] = False
            else:
                row["met"] = bool(figure.meets(stem))
        out.append(row)
    return out


def _entry(
    figure: Figure,
    records: list[Record],
    sizes: dict[str, int],
    caps: dict[str, float],
) -> dict[str, Any]:
    """Return one system's values of a figure over the runs, with min and max."""
    values = []
    notes = []
    for record in records:
        if "error" in record:
            notes.append("client failed")
            if not figure.server_side or "server" not in record:
                continue
        value = figure.read(record, sizes[figure.scenario])
        if value is None:
            if record.get("capped") or record.get("get_capped"):
                notes.append(f"capped at {caps[figure.scenario]:.0f} s")
            continue
        values.append(value)
    entry: dict[str, Any] = {"values": values, "runs": len(records)}
    if values:
        entry.update(min=min(values), median=statistics.median(values), max=max(values))
    if notes:
        entry["notes"] = sorted(set(notes))
    return entry


def _number(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def _cell(entry: dict[str, Any] | None) -> str:
    if not entry or entry.get("runs", 0) == 0:
        return "not run"
    notes = "; ".join(entry.get("notes", []))
    if "median" not in entry:
        return notes or "n/a"
    if len(entry["values"]) == 1:
        text = _number(entry["median"])
    else:
        text = (
            f"{_number(entry['median'])} "
            f"({_number(entry['min'])} to {_number(entry['max'])})"
        )
    return f"{text}; {notes}" if notes else text


def figures_table(
    figures: list[dict[str, Any]], systems: list[str], info: dict[str, Any]
) -> str:
    """Return the figures as a markdown table: median (min to max) per system."""
    header = ["figure", "unit", *systems]
    peers = [peer for peer in ("celery", "bullmq") if peer in systems]
    if "stem" in systems:
        header += [f"Stem ÷ {peer}" for peer in peers] + ["target", "Stem meets it"]
    lines = [
        f"Runs: {info['runs']}; cells are median (min to max) over the runs.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for row in figures:
        cells = [row["label"], row["unit"]]
        cells += [_cell(row.get(system)) for system in systems]
        if "stem" in systems:
            for peer in peers:
                ratio = row.get(f"stem_to_{peer}")
                cells.append("" if ratio is None else f"{ratio:.2f}")
            cells.append(row["target"])
            met = row.get("met")
            if met is None:
                cells.append("")
            elif met:
                cells.append("yes")
            else:
                cells.append("**no**")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    return "\n".join(lines)
