"""Time 10,000 no-op tasks through App, a thread worker and the Redis driver.

Run from the repository root:
``python bench/profile/noop.py [--tasks N] [--concurrency C] [--profile FILE]``.
It submits every task with ``delay()`` first, then starts the worker and
times until the last run has ended, and prints Redis commands per task.
"""

from __future__ import annotations

import sys
import time

sys.path.insert(0, __file__.rsplit("/", 1)[0])

import redis.connection
from common import Phase, arguments, command_stats, private_redis, server_cpu_s

from stem import App


class RoundTrips:
    """Count the requests this process sends to Redis: a pipeline counts once."""

    def __init__(self) -> None:
        self.count = 0
        connection = redis.connection.AbstractConnection
        original = connection.send_packed_command

        def counted(conn: object, command: object, check_health: bool = True) -> None:
            self.count += 1
            original(conn, command, check_health)  # type: ignore[arg-type]

        connection.send_packed_command = counted  # type: ignore[method-assign,assignment]


def main() -> None:
    parser = arguments(__doc__ or "")
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=4)
    options = parser.parse_args()
    phase = Phase(options.profile)
    with private_redis() as url:
        app = App(url)

        @app.task
        def noop() -> None:
            return None

        with phase("submit"):
            results = [noop.delay() for _ in range(options.tasks)]
        before = command_stats(url)
        cpu_before = server_cpu_s(url)
        worker = app.worker(concurrency=options.concurrency)
        round_trips = RoundTrips()
        with phase("run"):
            worker.start()
            last = results[-1]
            driver = app.driver
            deadline = time.monotonic() + 300
            while worker.processed < options.tasks and time.monotonic() < deadline:
                time.sleep(0.005)
        worker.stop()
        sent = round_trips.count
        after = command_stats(url)
        cpu_after = server_cpu_s(url)
        with phase("get all"):
            for result in results:
                result.get(timeout=10)
        del last, driver
        phase.save()
        rate = options.tasks / phase.times["run"]
        print(f"{'tasks/s (run)':>28}: {rate:8.0f}")
        calls = {k: after.get(k, 0) - before.get(k, 0) for k in after}
        total = sum(calls.values())
        print(f"{'Redis commands/task (run)':>28}: {total / options.tasks:8.2f}")
        print(f"{'round trips/task (run)':>28}: {sent / options.tasks:8.2f}")
        cpu_us = (cpu_after - cpu_before) / options.tasks * 1e6
        print(f"{'Redis CPU us/task (run)':>28}: {cpu_us:8.1f}")
        top = sorted(calls.items(), key=lambda kv: -kv[1])[:8]
        print("   ", ", ".join(f"{k}={v / options.tasks:.2f}" for k, v in top))
        app.close()


if __name__ == "__main__":
    main()
