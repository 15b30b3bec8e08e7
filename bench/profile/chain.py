"""Time a chain of N steps: hop latency and bytes written to Redis per hop.

Run from the repository root:
``python bench/profile/chain.py [--steps N] [--profile FILE]``.
Hop latency is the time from one step's end to the next step's start, from
the node timestamps that the scripts record with Redis's clock.
"""

from __future__ import annotations

import statistics
import sys

sys.path.insert(0, __file__.rsplit("/", 1)[0])

import redis
from common import Phase, arguments, private_redis

from stem import App, chain


def main() -> None:
    parser = arguments(__doc__ or "")
    parser.add_argument("--steps", type=int, default=200)
    options = parser.parse_args()
    phase = Phase(options.profile)
    with private_redis() as url:
        app = App(url)

        @app.task
        def step(value: int) -> int:
            return value + 1

        canvas = chain(step.s(0), *(step.s() for _ in range(options.steps - 1)))
        client = redis.Redis.from_url(url)
        worker = app.worker(concurrency=1)
        worker.start()
        # Warm up the connection pool and the script cache.
        step.delay(0).get(timeout=10)
        before = client.info("stats")["total_net_input_bytes"]
        with phase("end to end"):
            result = canvas.apply_async()
            value = result.get(timeout=120)
        after = client.info("stats")["total_net_input_bytes"]
        worker.stop()
        assert value == options.steps, value
        nodes = result.snapshot().nodes
        hops = []
        for index in range(1, options.steps):
            ended = nodes[str(index - 1)].ended_at
            started = nodes[str(index)].started_at
            assert ended is not None
            assert started is not None
            hops.append((started - ended) * 1000)
        phase.save()
        print(f"{'hop p50 ms':>28}: {statistics.median(hops):8.3f}")
        print(f"{'hop p90 ms':>28}: {statistics.quantiles(hops, n=10)[-1]:8.3f}")
        net = (after - before) / options.steps
        print(f"{'net input bytes per hop':>28}: {net:8.0f}")
        client.close()
        app.close()


if __name__ == "__main__":
    main()
