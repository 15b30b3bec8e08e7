"""The pytest plugin's Redis fixtures, used as docs/testing.md shows."""

from __future__ import annotations

import uuid

import redis

from stem import App, chain


def test_chain_on_redis(stem_redis_url: str) -> None:
    app = App(stem_redis_url, prefix=f"test-{uuid.uuid4().hex}:")
    add = app.task(name="add")(lambda x, y: x + y)
    worker = app.worker(concurrency=2)
    worker.start()
    try:
        assert chain(add.s(1, 2), add.s(3)).apply_async().get(timeout=10) == 6
    finally:
        worker.stop()
        app.close()


def test_cluster_fixture_has_three_primaries_with_every_slot(
    stem_redis_cluster_url: str,
) -> None:
    port = int(stem_redis_cluster_url.rsplit(":", 1)[1])
    client = redis.Redis(port=port, decode_responses=True)
    try:
        slots = client.execute_command("CLUSTER SLOTS")
        assert len({tuple(entry[2][:2]) for entry in slots}) == 3
        assert sum(end - start + 1 for start, end, *_ in slots) == 16384
    finally:
        client.close()
