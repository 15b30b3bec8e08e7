"""Time a chord of N no-op members: compile, submit, run and get().

Run from the repository root:
``python bench/profile/chord.py [--members N] [--concurrency C] [--profile FILE]``.
"""

from __future__ import annotations

import sys

sys.path.insert(0, __file__.rsplit("/", 1)[0])

from common import Phase, arguments, private_redis, server_cpu_s

from stem import App, chord, group
from stem.canvas.compiler import compile_canvas
from stem.canvas.spec import GraphSpec


def main() -> None:
    parser = arguments(__doc__ or "")
    parser.add_argument("--members", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=4)
    options = parser.parse_args()
    phase = Phase(options.profile)
    with private_redis() as url:
        # NOTE: a large run is submitted in one script call, which blocks Redis
        # for seconds at 100,000 members, longer than redis-py's default
        # socket timeout of 5 s (redis-py 8.2).
        app = App(f"{url}?socket_timeout=120")

        @app.task
        def member(i: int) -> int:
            return i

        @app.task
        def total(values: list[int]) -> int:
            return sum(values)

        with phase("build canvas"):
            header = group(member.s(i) for i in range(options.members))
            canvas = chord(header, total.s())
        with phase("compile"):
            spec = compile_canvas(canvas)
        with phase("to_json"):
            text = spec.to_json()
        print(f"{'spec JSON bytes':>28}: {len(text):8d}")
        with phase("from_json"):
            GraphSpec.from_json(text)
        worker = app.worker(concurrency=options.concurrency)
        worker.start()
        cpu_before = server_cpu_s(url)
        with phase("end to end"):
            with phase("  submit (compile included)"):
                result = canvas.apply_async()
            with phase("  run and get()"):
                value = result.get(timeout=600)
        worker.stop()
        cpu = server_cpu_s(url) - cpu_before
        print(f"{'Redis CPU s (end to end)':>28}: {cpu:8.3f}")
        assert value == sum(range(options.members)), value
        nodes = result.snapshot().nodes
        callback = nodes[str(options.members)]
        last = max(nodes[str(i)].ended_at or 0.0 for i in range(options.members))
        first = min(nodes[str(i)].started_at or 0.0 for i in range(options.members))
        assert callback.started_at is not None
        assert callback.ended_at is not None
        print(f"{'first member start to last end':>28}: {last - first:8.3f} s")
        fan_in = callback.started_at - last
        callback_s = callback.ended_at - callback.started_at
        print(f"{'last member end to callback':>28}: {fan_in:8.3f} s")
        print(f"{'callback run':>28}: {callback_s:8.3f} s")
        phase.save()
        app.close()


if __name__ == "__main__":
    main()
