"""Time 10,000 no-op tasks through App, a thread worker and the Redis driver.

Run from the repository root:
``python bench/profile/noop.py [--tasks N] [--concurrency C] [--bulk]``
``[--profile FILE]``.
It submits every task with ``delay()`` first, then starts the worker and
times until the last run has ended, then calls ``get()`` on each result.
With ``--bulk`` it submits with one ``noop.apply_many()`` call and reads
with one ``ResultSet.get()`` call instead. For
each of the three phases it prints Redis commands, round trips and Redis CPU
per task. ``--commands`` lists every command with its microseconds.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator

sys.path.insert(0, __file__.rsplit("/", 1)[0])

from common import (
    Phase,
    RoundTrips,
    arguments,
    command_usage,
    private_redis,
    server_cpu_s,
)

from stem import App, ResultSet


class Census:
    """Redis commands, round trips and Redis CPU of one phase, per task."""

    def __init__(self, url: str, round_trips: RoundTrips) -> None:
        self.url = url
        self.round_trips = round_trips

    @contextlib.contextmanager
    def __call__(self, name: str, tasks: int, breakdown: bool) -> Iterator[None]:
        before = command_usage(self.url)
        cpu_before = server_cpu_s(self.url)
        sent = self.round_trips.count
        try:
            yield
        finally:
            sent = self.round_trips.count - sent
            cpu_us = (server_cpu_s(self.url) - cpu_before) / tasks * 1e6
            after = command_usage(self.url)
            calls = {
                command: (
                    (count - before.get(command, (0, 0))[0]) / tasks,
                    (usec - before.get(command, (0, 0))[1]) / tasks,
                )
                for command, (count, usec) in after.items()
            }
            # INFO itself is not part of the phase.
            calls.pop("info", None)
            calls = {command: used for command, used in calls.items() if used[0]}
            total = sum(count for count, _ in calls.values())
            print(
                f"{name:>28}: {total:6.2f} Redis commands, "
                f"{sent / tasks:5.2f} round trips, {cpu_us:6.1f} us Redis CPU "
                "per task"
            )
            top = sorted(calls.items(), key=lambda item: -item[1][0])
            if not breakdown:
                top = top[:8]
            print(
                "    "
                + ", ".join(f"{command}={count:.2f}" for command, (count, _) in top)
            )
            if breakdown:
                print(
                    "    us per task: "
                    + ", ".join(
                        f"{command}={usec:.1f}"
                        for command, (_, usec) in sorted(
                            calls.items(), key=lambda item: -item[1][1]
                        )
                    )
                )


def main() -> None:
    parser = arguments(__doc__ or "")
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument(
        "--commands",
        action="store_true",
        help="print every Redis command per task, with its microseconds",
    )
    parser.add_argument(
        "--bulk",
        action="store_true",
        help="submit with apply_many() and read with ResultSet.get()",
    )
    options = parser.parse_args()
    phase = Phase(options.profile)
    tasks = options.tasks
    with private_redis() as url:
        app = App(url)

        @app.task
        def noop() -> None:
            return None

        census = Census(url, RoundTrips())
        with census("submit", tasks, options.commands), phase("submit"):
            if options.bulk:
                results = list(noop.apply_many([()] * tasks))
            else:
                results = [noop.delay() for _ in range(tasks)]
        worker = app.worker(concurrency=options.concurrency)
        with census("run", tasks, options.commands), phase("run"):
            worker.start()
            deadline = time.monotonic() + 300
            while worker.processed < tasks and time.monotonic() < deadline:
                time.sleep(0.005)
        worker.stop()
        with census("get all", tasks, options.commands), phase("get all"):
            if options.bulk:
                ResultSet(results).get(timeout=60)
            else:
                for result in results:
                    result.get(timeout=10)
        phase.save()
        rate = tasks / phase.times["run"]
        print(f"{'tasks/s (run)':>28}: {rate:8.0f}")
        app.close()


if __name__ == "__main__":
    main()
