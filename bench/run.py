"""Benchmark Stem side by side with Celery 5.7 and BullMQ 6.7 on one Redis.

    python bench/run.py --runs 3      # the full set, about 20 minutes
    python bench/run.py --quick       # smaller sizes, one run, a few minutes

Starts its own redis-server on a free loopback port with persistence off.
Runs every scenario for every system against it, one system at a time.
Writes the figures as JSON and as a markdown table: min, median and max
over the runs, and Stem's ratios to both peers. docs/benchmarks.md explains
each figure and how it is measured.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from probes import Census, MemorySampler, Pinger
from report import figures_table, summarise
from server import (
    Counters,
    RedisServer,
    counter_delta,
    process_tree_cpu_s,
    script_latency,
)
from systems import SYSTEMS, Settings, System

HERE = Path(__file__).resolve().parent
ALL_SYSTEMS = ("stem", "celery", "bullmq")


@dataclass(frozen=True)
class Scenario:
    """One measured workload.

    Attributes:
        name: the scenario's name in the results.
        kind: the client program's scenario (noop, chord, submit, chain).
        count: tasks, chord members or chain steps.
        cap_s: the time cap. A client still waiting then reports "capped".
        systems: the systems that run it.
        worker: whether a worker runs (not while only submitting).
        pinger: whether a separate client pings the server throughout.
        census: whether MONITOR counts every command by source.
        once_for: systems that run it in the first run only, to keep the
            whole benchmark short (Celery's large chords take minutes).
        details: whether the client reads per-node times after the run.
        client_memory_gb: the client's address-space limit, so that a
            client that cannot hold the canvas fails with MemoryError
            instead of exhausting a shared machine; 0 sets none.
    """

    name: str
    kind: str
    count: int
    cap_s: float
    systems: tuple[str, ...] = ALL_SYSTEMS
    worker: bool = True
    pinger: bool = False
    census: bool = False
    once_for: tuple[str, ...] = ()
    details: bool = True
    client_memory_gb: float = 0


def plan(quick: bool) -> list[Scenario]:
    """Return the scenarios of a full or a quick benchmark."""
    if quick:
        return [
            Scenario("noop", "noop", 2000, 60),
            Scenario("census", "noop", 300, 60, census=True, once_for=ALL_SYSTEMS),
            Scenario("chord1k", "chord", 1000, 60),
            Scenario("chord10k", "chord", 10_000, 90, once_for=("celery",)),
            Scenario("submit10k", "submit", 10_000, 60, worker=False, pinger=True),
            Scenario("chain200", "chain", 200, 60),
        ]
    return [
        Scenario("noop", "noop", 10_000, 120),
        Scenario("census", "noop", 1000, 60, census=True, once_for=ALL_SYSTEMS),
        Scenario("chord1k", "chord", 1000, 60),
        Scenario("chord10k", "chord", 10_000, 120, once_for=("celery",)),
        Scenario("chord100k", "chord", 100_000, 120, once_for=("celery",)),
        # Celery is left out: submitting a 100,000-member chord takes it
        # minutes, and it holds no lock while doing so.
        Scenario(
            "submit100k",
            "submit",
            100_000,
            120,
            systems=("stem", "bullmq"),
            worker=False,
            pinger=True,
        ),
        Scenario("chain200", "chain", 200, 60),
        # The target is that it completes, so the cap leaves room for a
        # submit of about a minute and the 8 to 14 minutes of work measured
        # on 2 cores beside other load.
        Scenario(
            "chord1m",
            "chord",
            1_000_000,
            1800,
            systems=("stem",),
            once_for=("stem",),
            details=False,
            client_memory_gb=8,
        ),
    ]


def run_client(
    system: System,
    kind: str,
    count: int,
    cap_s: float,
    details: bool = True,
    memory_gb: float = 0,
) -> dict[str, Any]:
    """Run one client program and return its JSON output, CPU time and wall time."""
    command, cwd = system.client_command(kind, count, cap_s)
    if not details and system.name != "bullmq":
        command.append("--no-details")
    limit = None
    if memory_gb:
        size = int(memory_gb * 1024**3)
        limit = lambda: resource.setrlimit(resource.RLIMIT_AS, (size, size))  # noqa: E731
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.monotonic()
        process = subprocess.Popen(
            command,
            cwd=cwd,
            env=system.env(),
            stdout=out,
            stderr=err,
            preexec_fn=limit,
        )
        # The client enforces the cap itself; this only ends a hung one.
        guard = threading.Timer(cap_s + 180, process.kill)
        guard.start()
        _, status, usage = os.wait4(process.pid, 0)
        guard.cancel()
        process.returncode = os.waitstatus_to_exitcode(status)
        wall_s = time.monotonic() - started
        out.seek(0)
        err.seek(0)
        text = out.read().decode(errors="replace").strip()
        errors = err.read().decode(errors="replace")
    if process.returncode != 0 or not text:
        return {
            "error": f"{system.name} {kind} exited with {process.returncode}",
            "stderr": errors[-3000:],
        }
    result: dict[str, Any] = json.loads(text.splitlines()[-1])
    result["client_cpu_s"] = usage.ru_utime + usage.ru_stime
    result["client_wall_s"] = wall_s
    return result


def run_scenario(
    server: RedisServer, system: System, scenario: Scenario
) -> dict[str, Any]:
    """Run one scenario for one system on an emptied server."""
    server.reset()
    worker = None
    record: dict[str, Any] = {"loadavg": os.getloadavg()}
    try:
        if scenario.worker:
            worker = system.start_worker()
            warm = run_client(system, "warmup", 0, 60)
            if "error" in warm:
                warm["worker_log"] = worker.log()[-3000:]
                return warm
        server.client.config_resetstat()
        server.client.slowlog_reset()
        census = Census(server.port) if scenario.census else None
        pinger = Pinger(server.port) if scenario.pinger else None
        sampler = MemorySampler(server.port)
        worker_cpu = process_tree_cpu_s(worker.pid) if worker else 0.0
        before = Counters.read(server.client)
        client = run_client(
            system,
            scenario.kind,
            scenario.count,
            scenario.cap_s,
            scenario.details,
            scenario.client_memory_gb,
        )
        # A capped client can leave a long script running in the server.
        record["busy_after_client_s"] = server.wait_while_busy()
        after = Counters.read(server.client)
        if worker:
            worker_cpu = process_tree_cpu_s(worker.pid) - worker_cpu
        sampler.stop()
        record.update(client)
        record["worker_cpu_s"] = worker_cpu
        record["server"] = counter_delta(before, after, sampler.requests)
        record["server"]["memory_peak_delta"] = max(
            0, sampler.peak - before.used_memory
        )
        record["scripts"] = script_latency(server.client)
        if pinger:
            record["pinger"] = pinger.stop()
        if census:
            record["census"] = census.stop()
    finally:
        if worker:
            log = worker.stop()
            match = re.search(r"Worker (?:\S+ )?stopped: (\d+) tasks processed", log)
            if match:
                record["worker_processed"] = int(match.group(1))
            if "error" in record:
                record["worker_log"] = log[-3000:]
    return record


def machine() -> dict[str, Any]:
    """Describe the machine and the versions of everything measured."""
    model = ""
    with open("/proc/cpuinfo") as handle:
        for line in handle:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as handle:
        total_kb = int(handle.readline().split()[1])
    node = subprocess.run(["node", "--version"], capture_output=True, text=True)
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "memory_gb": round(total_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "node": node.stdout.strip(),
        "loadavg_at_start": os.getloadavg(),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--runs", type=int, default=None, help="runs of each scenario [3, quick: 1]"
    )
    parser.add_argument(
        "--quick", action="store_true", help="smaller sizes, for a check in minutes"
    )
    parser.add_argument(
        "--systems",
        default=",".join(ALL_SYSTEMS),
        help="comma-separated systems to run [stem,celery,bullmq]",
    )
    parser.add_argument(
        "--only", default="", help="comma-separated scenario names to run [all]"
    )
    parser.add_argument(
        "--out", type=Path, default=HERE / "results", help="folder for the results"
    )
    parser.add_argument(
        "--report",
        type=Path,
        default=None,
        help="print the table of an earlier run's JSON file instead of running",
    )
    parser.add_argument(
        "--celery-python",
        default=os.environ.get("BENCH_CELERY_PYTHON", "/work/venvs/celery/bin/python"),
        help="Python of a venv with celery[redis]==5.7.*",
    )
    defaults = Settings()
    parser.add_argument(
        "--stem-concurrency", type=int, default=defaults.stem_concurrency
    )
    parser.add_argument(
        "--celery-concurrency", type=int, default=defaults.celery_concurrency
    )
    parser.add_argument(
        "--bullmq-concurrency", type=int, default=defaults.bullmq_concurrency
    )
    args = parser.parse_args(argv)
    if args.runs is None:
        args.runs = 1 if args.quick else 3
    if args.runs < 1:
        parser.error(f"--runs {args.runs} is not a positive count; pass 1 or more.")
    systems = [name for name in args.systems.split(",") if name]
    unknown = [name for name in systems if name not in SYSTEMS]
    if unknown or not systems:
        parser.error(
            f"--systems {args.systems!r} names {unknown or 'nothing'}; pass a "
            f"comma-separated subset of {','.join(ALL_SYSTEMS)}."
        )
    args.systems = systems
    names = {scenario.name for scenario in plan(args.quick)}
    only = [name for name in args.only.split(",") if name]
    if any(name not in names for name in only):
        parser.error(
            f"--only {args.only!r} names an unknown scenario; pass a subset of "
            f"{','.join(sorted(names))}."
        )
    args.only = only
    return args


def report_again(path: Path) -> None:
    """Print the table of an earlier run from its JSON file."""
    saved = json.loads(path.read_text())
    info = saved["info"]
    scenarios = [Scenario(**scenario) for scenario in info["scenarios"]]
    systems = list(info["versions"])
    figures = summarise(saved["raw"], systems, scenarios)
    print(figures_table(figures, systems, info))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.report is not None:
        report_again(args.report)
        return
    settings = Settings(
        celery_python=args.celery_python,
        stem_concurrency=args.stem_concurrency,
        celery_concurrency=args.celery_concurrency,
        bullmq_concurrency=args.bullmq_concurrency,
    )
    scenarios = [
        scenario
        for scenario in plan(args.quick)
        if not args.only or scenario.name in args.only
    ]
    server = RedisServer()
    started = time.monotonic()
    try:
        systems = [SYSTEMS[name](settings, server.url) for name in args.systems]
        info = {
            "started_at": datetime.datetime.now(datetime.UTC).isoformat(
                timespec="seconds"
            ),
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "quick": args.quick,
            "runs": args.runs,
            "machine": machine(),
            "redis": server.version,
            "versions": {system.name: system.version for system in systems},
            "concurrency": {system.name: system.concurrency() for system in systems},
            "scenarios": [asdict(scenario) for scenario in scenarios],
        }
        results: dict[str, dict[str, list[dict[str, Any]]]] = {}
        for run in range(args.runs):
            for scenario in scenarios:
                for system in systems:
                    if system.name not in scenario.systems:
                        continue
                    if run > 0 and system.name in scenario.once_for:
                        continue
                    print(
                        f"[{time.monotonic() - started:6.0f} s] run {run + 1}: "
                        f"{scenario.name} {system.name}",
                        file=sys.stderr,
                        flush=True,
                    )
                    restarts = server.restarts
                    try:
                        record = run_scenario(server, system, scenario)
                    except Exception as err:  # keep the other scenarios' results
                        record = {"error": f"{type(err).__name__}: {err}"}
                    if server.restarts != restarts:
                        record["server_restarted"] = True
                    print(f"    {_brief(record)}", file=sys.stderr, flush=True)
                    results.setdefault(scenario.name, {}).setdefault(
                        system.name, []
                    ).append(record)
    finally:
        server.stop()
    info["duration_s"] = time.monotonic() - started
    figures = summarise(results, [s.name for s in systems], scenarios)
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    json_path = args.out / f"bench-{stamp}.json"
    md_path = args.out / f"bench-{stamp}.md"
    json_path.write_text(
        json.dumps({"info": info, "figures": figures, "raw": results}, indent=1)
    )
    table = figures_table(figures, [s.name for s in systems], info)
    md_path.write_text(table)
    print(table)
    print(f"Wrote {json_path} and {md_path}.", file=sys.stderr)


def _brief(record: dict[str, Any]) -> str:
    if "error" in record:
        return f"ERROR {record['error']}: {record.get('stderr', '')[-500:]}"
    keys = (
        "tasks_per_s",
        "get_s",
        "callback_stored_s",
        "fanin_ms",
        "submit_s",
        "hop_p50_ms",
        "capped",
    )
    shown = {key: record[key] for key in keys if key in record}
    shown["redis_cpu_s"] = record["server"]["cpu_s"]
    shown["worker_cpu_s"] = record.get("worker_cpu_s")
    return json.dumps(
        {k: round(v, 4) if isinstance(v, float) else v for k, v in shown.items()}
    )


if __name__ == "__main__":
    main()
