"""Celery's side of the benchmark: one scenario as a client, JSON on stdout.

Run by bench/run.py with the Celery venv's Python while a Celery worker
runs in another process. Results are read with ``AsyncResult.get``; per-task
times come from the result backend's ``date_done`` after the timed part.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import itertools

import celery_app
from celery import chain, chord

app = celery_app.app


def stored_at(task_ids: list[str]) -> list[float]:
    """Return each task's date_done, read from the result backend."""
    backend = app.backend
    out: list[float] = []
    for start in range(0, len(task_ids), 5000):
        keys = [backend.get_key_for_task(tid) for tid in task_ids[start : start + 5000]]
        for raw in backend.client.mget(keys):
            meta = json.loads(raw)
            when = datetime.datetime.fromisoformat(meta["date_done"])
            if when.tzinfo is None:
                when = when.replace(tzinfo=datetime.UTC)
            out.append(when.timestamp())
    return out


def run_noop(count: int, cap_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + cap_s
    started = time.monotonic()
    results = [celery_app.noop.delay() for _ in range(count)]
    submitted = time.monotonic()
    done = 0
    try:
        for result in results:
            result.get(timeout=max(0.001, deadline - time.monotonic()))
            done += 1
    except Exception as exc:  # celery raises its own TimeoutError
        if "Timeout" not in type(exc).__name__:
            raise
        return {"capped": True, "done": done, "submit_s": submitted - started}
    ended = time.monotonic()
    return {
        "submit_s": submitted - started,
        "total_s": ended - started,
        "tasks_per_s": count / (ended - started),
    }


def run_chord(count: int, cap_s: float, details: bool) -> dict[str, Any]:
    header = [celery_app.member.s(index) for index in range(count)]
    deadline = time.monotonic() + cap_s
    started_wall = time.time()
    started = time.monotonic()
    result = chord(header)(celery_app.collect.s())
    submitted = time.monotonic()
    out: dict[str, Any] = {"submit_s": submitted - started}
    # Wait for the callback's result to be stored, then time get() on top.
    key = app.backend.get_key_for_task(result.id)
    while app.backend.client.get(key) is None:
        if time.monotonic() > deadline:
            out["capped"] = True
            return out
        time.sleep(0.05)
    callback_stored = stored_at([result.id])[0]
    out["callback_stored_s"] = callback_stored - started_wall
    try:
        value = result.get(timeout=max(0.001, deadline - time.monotonic()))
    except Exception as exc:
        if "Timeout" not in type(exc).__name__:
            raise
        out["get_capped"] = True
        return out
    out["get_s"] = time.monotonic() - started
    if value["n"] != count or value["sum"] != count * (count - 1) // 2:
        raise SystemExit(f"The chord's callback received wrong input: {value!r}")
    if details:
        member_ids = [child.id for child in result.parent.results]
        last_stored = max(stored_at(member_ids))
        out["fanin_ms"] = (value["start"] - last_stored) * 1000
    return out


def run_submit(count: int) -> dict[str, Any]:
    header = [celery_app.member.s(index) for index in range(count)]
    started = time.monotonic()
    chord(header)(celery_app.collect.s())
    return {"submit_s": time.monotonic() - started}


def run_chain(count: int, cap_s: float) -> dict[str, Any]:
    canvas = chain(
        celery_app.step.s(0.0), *[celery_app.step.s() for _ in range(count - 1)]
    )
    started = time.monotonic()
    result = canvas.apply_async()
    try:
        result.get(timeout=cap_s)
    except Exception as exc:
        if "Timeout" not in type(exc).__name__:
            raise
        return {"capped": True}
    total = time.monotonic() - started
    ids = []
    node = result
    while node is not None:
        ids.append(node.id)
        node = node.parent
    ids.reverse()
    backend = app.backend
    raws = backend.client.mget([backend.get_key_for_task(tid) for tid in ids])
    starts = [float(json.loads(raw)["result"]) for raw in raws]
    hops = [(b - a) * 1000 for a, b in itertools.pairwise(starts)]
    return {
        "total_s": total,
        "hop_p50_ms": statistics.median(hops),
        "hop_p90_ms": statistics.quantiles(hops, n=10)[-1],
        "hops": len(hops),
    }


def run_warmup() -> dict[str, Any]:
    for _ in range(20):
        celery_app.noop.delay().get(timeout=30)
    header = [celery_app.member.s(i) for i in range(10)]
    chord(header)(celery_app.collect.s()).get(timeout=30)
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
    if os.environ.get("BENCH_REDIS_URL") != args.url:
        raise SystemExit("Set BENCH_REDIS_URL to the same URL as --url.")
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
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
