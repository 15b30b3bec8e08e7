"""Fixtures that run each conformance test on every driver.

``kit`` is parametrised over ``memory://`` and the Redis configurations of
the session (``redis_target_for`` in tests/conftest.py): a private Redis
server with one partition and with three, and a private 3-primary Redis
Cluster. ``redis-shards`` is the three-partition server with a shard size of
2, so every chord of three or more members whose header can be cut runs
through shard runs. On Redis each test gets its own key prefix, so no run,
queue or dead letter leaks between tests.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from ..task_kit import TIMEOUT_S, Kit

__all__ = ["TIMEOUT_S", "Kit"]

#: Redis driver settings small enough that most runs of the suite are large
#: runs: written in chunks, sealed, and their roots released in slices.
#: A callback that reads more than one node reads its inputs in pages.
REDIS_SMALL_LIMITS: dict[str, Any] = {
    "submit_chunk": 24,
    "release_slice": 2,
    "inline_input_chars": 2,
}


#: Driver settings of the ``redis-shards`` configuration, on ``redis-3p``.
REDIS_SHARDS: dict[str, Any] = {"shard_size": 2}


@pytest.fixture(params=["memory", "redis", "redis-3p", "redis-shards", "cluster"])
def driver_name(request: pytest.FixtureRequest) -> str:
    """Name each driver the conformance suite runs on."""
    name: str = request.param
    return name


@pytest.fixture
def make_kit(
    driver_name: str, request: pytest.FixtureRequest
) -> Iterator[Callable[..., Kit]]:
    """Yield a factory of fresh apps on one driver with driver settings.

    Every app it made is closed after the test.
    """
    made: list[Kit] = []

    def make(**settings: Any) -> Kit:
        if driver_name == "memory":
            instance = Kit("memory://", **settings)
        else:
            sharded = driver_name == "redis-shards"
            target_name = "redis-3p" if sharded else driver_name
            target = request.getfixturevalue("redis_targets")(target_name)
            prefix = f"test-{uuid.uuid4().hex[:12]}:"
            shards = REDIS_SHARDS if sharded else {}
            instance = Kit(
                target.url,
                prefix=prefix,
                **{**target.settings, **REDIS_SMALL_LIMITS, **shards, **settings},
            )
        made.append(instance)
        return instance

    yield make
    for instance in made:
        instance.gate.set()
        instance.app.close()


@pytest.fixture
def kit(make_kit: Callable[..., Kit]) -> Kit:
    """Return a fresh app with the test tasks on one driver, closed after the test."""
    return make_kit()
