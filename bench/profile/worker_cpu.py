"""Profile the worker's per-task Python work in one thread, without a pool.

Run from the repository root:
``python bench/profile/worker_cpu.py [--tasks N] [--profile FILE]``.
It submits N no-op runs, then fetches and claims batches and runs each
claim in the main thread as the worker's threads would, and prints wall time, this
process's CPU time and Redis's CPU time per task. With ``--profile`` it also
prints the top functions of a cProfile of that loop (cProfile adds its own
overhead to the CPU time). With ``--stages`` it runs each batch's tasks
first and reports their successes in one ``complete_many`` call, as
worker threads whose successes overlap do, and prints the CPU time per
task of each stage: fetch, claim, run and report.
"""

from __future__ import annotations

import cProfile
import os
import pstats
import sys
import time

sys.path.insert(0, __file__.rsplit("/", 1)[0])

from common import arguments, private_redis, server_cpu_s

from stem import App
from stem.engine.ports import Message
from stem.engine.worker import Worker


def main() -> None:
    parser = arguments(__doc__ or "")
    parser.add_argument("--tasks", type=int, default=5_000)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument(
        "--stages",
        action="store_true",
        help="report each batch in one call and print CPU per task of each stage",
    )
    options = parser.parse_args()
    with private_redis() as url:
        app = App(url)

        @app.task
        def noop() -> None:
            return None

        for _ in range(options.tasks):
            noop.delay()
        worker = app.worker(concurrency=1)
        driver = app.driver
        profiler = cProfile.Profile(time.process_time) if options.profile else None
        handled = 0
        redis_before = server_cpu_s(url)
        wall, cpu, times = time.perf_counter(), time.process_time(), os.times()
        if profiler is not None:
            profiler.enable()
        if options.stages:
            stages = run_stages(worker, options.tasks, options.batch)
            handled = options.tasks
        else:
            stages = {}
        while handled < options.tasks:
            messages = driver.fetch(worker.queues, options.batch, 1.0)
            for task, claim in worker._claim_batch(messages):
                worker._run(task, claim)
            handled += len(messages)
        if profiler is not None:
            profiler.disable()
        cpu = time.process_time() - cpu
        system = os.times().system - times.system
        wall = time.perf_counter() - wall
        redis_cpu = server_cpu_s(url) - redis_before
        per_task = {
            "wall": wall,
            "Python CPU": cpu,
            "of it system": system,
            "Redis CPU": redis_cpu,
        }
        print(
            ", ".join(
                f"{k} {v / handled * 1e6:.0f} us/task" for k, v in per_task.items()
            )
        )
        if stages:
            print(
                "stages: "
                + ", ".join(
                    f"{k} {v / handled * 1e6:.1f} us/task" for k, v in stages.items()
                )
            )
        if profiler is not None:
            stats = pstats.Stats(profiler)
            stats.dump_stats(options.profile)
            stats.sort_stats("tottime").print_stats(25)
        app.close()


def run_stages(worker: Worker, tasks: int, batch: int) -> dict[str, float]:
    """Handle ``tasks`` tasks in batches; return each stage's CPU seconds.

    Each batch is fetched, claimed, run, then reported in one
    ``complete_many`` call. Every task must succeed.
    """
    driver = worker.app.driver
    spent = dict.fromkeys(("fetch", "claim", "run", "report"), 0.0)
    clock = time.process_time
    handled = 0
    while handled < tasks:
        started = clock()
        messages = driver.fetch(worker.queues, batch, 1.0)
        fetched = clock()
        claimed = worker._claim_batch(messages)
        spent["fetch"] += fetched - started
        spent["claim"] += clock() - fetched
        successes: list[tuple[Message, str]] = []
        for task, claim in claimed:
            started = clock()
            outcome = worker._execute(task, claim)
            spent["run"] += clock() - started
            if outcome.kind != "succeeded":
                raise SystemExit(f"Task {claim.task_id} {outcome.kind}: {outcome}")
            with worker._leases_lock:
                worker._leases.pop(id(claim), None)
            successes.append((claim.message, outcome.payload))
        started = clock()
        driver.complete_many(successes)
        spent["report"] += clock() - started
        handled += len(messages)
    return spent


if __name__ == "__main__":
    main()
