"""Time the submit, claim and complete scripts of one-node runs, one script at a time.

Run from the repository root:
``python bench/profile/scripts.py [--tasks N] [--batch B]``.
It submits N one-node runs one by one, fetches every message, then claims
them and reports their values in pipelines of B calls, so that no worker
and almost no round trips take Redis's time. For each script it prints, per
call, the EVALSHA time that INFO commandstats gives (which includes the
commands the script calls), the commands called inside and their time, and
Redis's CPU time.
"""

from __future__ import annotations

import sys

sys.path.insert(0, __file__.rsplit("/", 1)[0])

from common import arguments, command_usage, private_redis, server_cpu_s

from stem import App
from stem.canvas import compile_canvas
from stem.drivers.redis import RedisDriver


class ScriptCost:
    """Print the Redis cost per call of the commands sent in one block."""

    def __init__(self, url: str, calls: int) -> None:
        self.url = url
        self.calls = calls
        self.before = command_usage(url)
        self.cpu_before = server_cpu_s(url)

    def report(self, name: str) -> None:
        cpu_us = (server_cpu_s(self.url) - self.cpu_before) / self.calls * 1e6
        after = command_usage(self.url)
        used = {
            command: (
                count - self.before.get(command, (0, 0))[0],
                usec - self.before.get(command, (0, 0))[1],
            )
            for command, (count, usec) in after.items()
            if command != "info"
        }
        script_us = used.get("evalsha", (0, 0))[1] / self.calls
        inner = [
            used[command]
            for command in used
            if command not in ("evalsha", "xreadgroup", "script|load")
        ]
        inner_calls = sum(count for count, _ in inner) / self.calls
        inner_us = sum(usec for _, usec in inner) / self.calls
        print(
            f"{name:>10}: EVALSHA {script_us:5.1f} us, of it {inner_calls:4.1f} "
            f"commands inside taking {inner_us:5.1f} us; Redis CPU {cpu_us:5.1f} us "
            "per call",
            flush=True,
        )


def main() -> None:
    parser = arguments(__doc__ or "")
    parser.add_argument("--tasks", type=int, default=5_000)
    parser.add_argument("--batch", type=int, default=250)
    options = parser.parse_args()
    tasks, batch = options.tasks, options.batch
    with private_redis() as url:
        app = App(url)

        @app.task
        def noop() -> None:
            return None

        driver = app.driver
        assert isinstance(driver, RedisDriver)
        spec = compile_canvas(noop.s())
        cost = ScriptCost(url, tasks)
        for index in range(tasks):
            driver.submit(f"run-{index}", spec)
        cost.report("submit")

        messages = []
        while len(messages) < tasks:
            messages += driver.fetch(["default"], batch, 1.0)
        cost = ScriptCost(url, tasks)
        claims = []
        for first in range(0, tasks, batch):
            claims += driver.claim_many(messages[first : first + batch])
        cost.report("claim")

        # The driver's own calls, so that commits without complete_many can
        # be timed the same way.
        calls = [
            (
                "complete",
                driver._report_keys(claim.message),
                [*driver._message_args(claim.message), "null"],
            )
            for claim in claims
            if claim
        ]
        cost = ScriptCost(url, tasks)
        for first in range(0, len(calls), batch):
            driver._scripts.call_many(calls[first : first + batch])
        cost.report("complete")
        app.close()


if __name__ == "__main__":
    main()
