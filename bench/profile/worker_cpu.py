"""Profile the worker's per-task Python work in one thread, without a pool.

Run from the repository root:
``python bench/profile/worker_cpu.py [--tasks N] [--profile FILE]``.
It submits N no-op runs, then fetches and claims batches and runs each
claim in the main thread as the worker's threads would, and prints wall time, this
process's CPU time and Redis's CPU time per task. With ``--profile`` it also
prints the top functions of a cProfile of that loop (cProfile adds its own
overhead to the CPU time).
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


def main() -> None:
    parser = arguments(__doc__ or "")
    parser.add_argument("--tasks", type=int, default=5_000)
    parser.add_argument("--batch", type=int, default=8)
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
        if profiler is not None:
            stats = pstats.Stats(profiler)
            stats.dump_stats(options.profile)
            stats.sort_stats("tottime").print_stats(25)
        app.close()


if __name__ == "__main__":
    main()
