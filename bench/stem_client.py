"""Stem's side of the benchmark: one scenario as a client, JSON on stdout.

Run by bench/run.py with the Stem venv's Python, while ``stem worker`` runs
in another process. Everything goes through Stem's public API: tasks,
canvases, ``apply_async``, ``apply_many``, ``AsyncResult.get`` and
``ResultSet.get``; per-node times come from ``AsyncResult.graph()`` after
the timed part.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import itertools

from stem_tasks import app, collect, member, noop, step

from stem import chain, chord

#: Tasks per `apply_many` call in the noop scenario, as BullMQ's client
#: passes them to ``Queue.addBulk`` (bench/bullmq/bench.js).
NOOP_BATCH = 1000


def run_noop(count: int, cap_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + cap_s
    started = time.monotonic()
    batches = [
        noop.apply_many([()] * min(NOOP_BATCH, count - first))
        for first in range(0, count, NOOP_BATCH)
    ]
    submitted = time.monotonic()
    done = 0
    try:
        for batch in batches:
            batch.get(timeout=max(0.001, deadline - time.monotonic()))
            done += len(batch)
    except TimeoutError:
        return {"capped": True, "done": done, "submit_s": submitted - started}
    ended = time.monotonic()
    return {
        "submit_s": submitted - started,
        "total_s": ended - started,
        "tasks_per_s": count / (ended - started),
    }


def run_chord(count: int, cap_s: float, details: bool) -> dict[str, Any]:
    header = [member.s(index) for index in range(count)]
    canvas = chord(header, collect.s())
    started_wall = time.time()
    started = time.monotonic()
    result = canvas.apply_async()
    submitted = time.monotonic()
    try:
        value = result.get(timeout=max(0.001, cap_s - (submitted - started)))
    except TimeoutError:
        return {"capped": True, "submit_s": submitted - started}
    got = time.monotonic()

    if value["n"] != count or value["sum"] != count * (count - 1) // 2:
        raise SystemExit(f"The chord's callback received wrong input: {value!r}")
    out: dict[str, Any] = {"submit_s": submitted - started, "get_s": got - started}
    if not details:
        return out

    # Per-node times, read after the timed part.
    spec, records = result.graph()
    callback = next(node for node in spec.nodes if node.task == collect.name)
    members = [records[node.id] for node in spec.nodes if node.task == member.name]
    last_stored = max(record.ended_at or 0.0 for record in members)
    record = records[callback.id]
    assert record.started_at is not None
    assert record.ended_at is not None
    out.update(
        callback_stored_s=record.ended_at - started_wall,
        fanin_ms=(value["start"] - last_stored) * 1000,
        fanin_to_claim_ms=(record.started_at - last_stored) * 1000,
        input_read_ms=(value["start"] - record.started_at) * 1000,
    )
    return out


def run_submit(count: int) -> dict[str, Any]:
    canvas = chord([member.s(index) for index in range(count)], collect.s())
    started = time.monotonic()
    canvas.apply_async()
    return {"submit_s": time.monotonic() - started}


def run_chain(count: int, cap_s: float) -> dict[str, Any]:
    canvas = chain(step.s(0.0), *[step.s() for _ in range(count - 1)])
    started = time.monotonic()
    result = canvas.apply_async()
    try:
        result.get(timeout=cap_s)
    except TimeoutError:
        return {"capped": True}
    total = time.monotonic() - started
    spec, records = result.graph()
    starts = [float(records[node.id].value or "nan") for node in spec.nodes]
    hops = [(b - a) * 1000 for a, b in itertools.pairwise(starts)]
    return {
        "total_s": total,
        "hop_p50_ms": statistics.median(hops),
        "hop_p90_ms": statistics.quantiles(hops, n=10)[-1],
        "hops": len(hops),
    }


def run_warmup() -> dict[str, Any]:
    for _ in range(20):
        noop.delay().get(timeout=30)
    chord([member.s(i) for i in range(10)], collect.s()).apply_async().get(timeout=30)
    return {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "scenario", choices=["warmup", "noop", "chord", "submit", "chain"]
    )
    parser.add_argument("--url", required=True)
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--cap", type=float, default=60.0)
    parser.add_argument("--no-details", action="store_true")
    args = parser.parse_args()
    app.url = args.url
    if args.scenario == "warmup":
        out = run_warmup()
    elif args.scenario == "noop":
        out = run_noop(args.count, args.cap)
    elif args.scenario == "chord":
        out = run_chord(args.count, args.cap, not args.no_details)
    elif args.scenario == "submit":
        out = run_submit(args.count)
    else:
        out = run_chain(args.count, args.cap)
    app.close()
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
