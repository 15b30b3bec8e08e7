"""Time a chord of N no-op members: compile, submit, run and get().

Run from the repository root:
``python bench/profile/chord.py [--members N] [--concurrency C] [--profile FILE]``.
"""

from __future__ import annotations

import sys

sys.path.insert(0, __file__.rsplit("/", 1)[0])

from common import Phase, arguments, private_redis  # noqa: E402

from stem import App, chord, group  # noqa: E402
from stem.canvas.compiler import compile_canvas  # noqa: E402
from stem.canvas.spec import GraphSpec  # noqa: E402


def main() -> None:
    parser = arguments(__doc__ or "")
    parser.add_argument("--members", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=4)
    options = parser.parse_args()
    phase = Phase(options.profile)
    with private_redis() as url:
        app = App(url)

        @app.task
        def member(i: int) -> int:
            return i

        @app.task
        def total(values: list[int]) -> int:
            return sum(values)

        with phase("build canvas"):
            canvas = chord(group(member.s(i) for i in range(options.members)), total.s())
        with phase("compile"):
            spec = compile_canvas(canvas)
        with phase("to_json"):
            text = spec.to_json()
        print(f"{'spec JSON bytes':>28}: {len(text):8d}")
        with phase("from_json"):
            GraphSpec.from_json(text)
        worker = app.worker(concurrency=options.concurrency)
        worker.start()
        with phase("end to end"):
            result = canvas.apply_async()
            value = result.get(timeout=600)
        worker.stop()
        assert value == sum(range(options.members)), value
        phase.save()
        app.close()


if __name__ == "__main__":
    main()
