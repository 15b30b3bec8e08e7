"""The Redis driver's paths for large runs and batches, against a private server.

A chord callback's claim reads its header in slices of 1,000 members, the
worker claims a fetched batch in one pipeline, and the claim script returns
a run's spec only to the first claim of that run in a batch.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis

from stem import App, chord, group
from stem.canvas.spec import GraphSpec
from stem.drivers.redis import RedisDriver
from stem.engine.ports import Message

TIMEOUT_S = 60.0


@pytest.fixture
def app(redis_url: str) -> Iterator[App]:
    """Yield an app on the private server under its own key prefix."""
    instance = App(redis_url, prefix=f"test-{uuid.uuid4().hex[:12]}:")

    @instance.task(name="square")
    def square(x: int) -> int:
        return x * x

    @instance.task(name="collect")
    def collect(values: list[int]) -> list[int]:
        return values

    yield instance
    instance.close()


def test_callback_reads_header_slices(app: App) -> None:
    members = 2_345
    canvas = chord(
        group(app.tasks["square"].s(i) for i in range(members)),
        app.tasks["collect"].s(),
    )

    with app.worker(concurrency=4):
        value = canvas.apply_async().get(TIMEOUT_S)

    assert value == [i * i for i in range(members)]


def _fetch_all(driver: RedisDriver, count: int) -> list[Message]:
    messages: list[Message] = []
    for _ in range(50):
        messages += driver.fetch(["default"], count - len(messages), 0.1)
        if len(messages) >= count:
            break
    return messages


def test_claim_many_matches_claim(app: App) -> None:
    driver = app.driver
    assert isinstance(driver, RedisDriver)
    header = group(app.tasks["square"].s(i) for i in range(5))
    app.submit(chord(header, app.tasks["collect"].s()))
    messages = _fetch_all(driver, 5)
    # A second driver has no parsed spec, so one claim must carry it.
    fresh = RedisDriver(driver.url, prefix=driver._keys.prefix)
    texts: list[str] = []
    parse = fresh._cached_spec

    def recording(run_id: str, version: str, text: str) -> GraphSpec:
        texts.append(text)
        return parse(run_id, version, text)

    fresh._cached_spec = recording  # type: ignore[method-assign]

    claims = fresh.claim_many(messages)
    again = fresh.claim_many(messages)

    assert [claim.args for claim in claims if claim] == [[i] for i in range(5)]
    assert [claim.task for claim in claims if claim] == ["square"] * 5
    assert all(claim.message.lease == 1 for claim in claims if claim)
    assert again == [None] * 5
    assert len(texts) == 5
    assert sum(1 for text in texts if text) == 1
    fresh.close()


def test_claim_many_after_script_flush(app: App, redis_url: str) -> None:
    driver = app.driver
    assert isinstance(driver, RedisDriver)
    app.submit(group(app.tasks["square"].s(i) for i in range(3)))
    messages = _fetch_all(driver, 3)
    plain = redis.Redis.from_url(redis_url)
    plain.script_flush()
    plain.close()

    claims = driver.claim_many(messages)

    assert [claim.args for claim in claims if claim] == [[0], [1], [2]]
