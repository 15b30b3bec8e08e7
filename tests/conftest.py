"""Shared pytest configuration for the whole test suite."""

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import settings

# HYPOTHESIS_PROFILE selects the profile. "dev" (the default) keeps local runs
# quick, and .ci/run sets "ci". An unknown name fails the session at start.
# No deadline in either profile: speed is measured in bench/, and a loaded
# machine must not fail a test that is only slow.
settings.register_profile("dev", max_examples=25, deadline=None)
settings.register_profile("ci", max_examples=500, deadline=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


# -- how the Redis driver runs its scripts --------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--redis-scripts",
        choices=("auto", "evalsha"),
        default="auto",
        help="How the Redis driver runs its Lua scripts in this process: auto "
        "(default) uses a Functions library on Redis 7.0 or later, evalsha "
        "reports the server's version as 6.2 so EVALSHA runs them. Workers "
        "that tests start as subprocesses always use auto.",
    )


@pytest.fixture(autouse=True, scope="session")
def redis_script_mode(request: pytest.FixtureRequest) -> Iterator[str]:
    """Apply --redis-scripts for the session and return its value."""
    mode: str = request.config.getoption("--redis-scripts")
    if mode == "auto":
        yield mode
        return
    from stem.drivers.redis import scripts

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(scripts, "server_version", lambda client: (6, 2, 0))
        yield mode


# -- a private Redis server and Cluster -----------------------------------------
# Stem's pytest plugin starts them (stem.local_redis); these names are the
# suite's own.


@pytest.fixture(scope="session")
def redis_url(stem_redis_url: str) -> str:
    """The URL of the session's private redis-server on a free loopback port."""
    return stem_redis_url


@pytest.fixture(scope="session")
def redis_cluster_url(stem_redis_cluster_url: str) -> str:
    """The URL of the session's private 3-primary Redis Cluster on loopback."""
    return stem_redis_cluster_url


# -- Redis configurations that the Redis tests run on ---------------------------


@dataclass(frozen=True)
class RedisTarget:
    """One Redis configuration: its URL and the driver settings it needs."""

    name: str
    url: str
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def cluster(self) -> bool:
        """True for a Redis Cluster."""
        return self.url.startswith("redis+cluster://")

    def client(self) -> Any:
        """Return a plain client of the target, replies decoded to str."""
        import redis
        from redis.cluster import RedisCluster

        if self.cluster:
            plain_url = "redis://" + self.url.removeprefix("redis+cluster://")
            return RedisCluster.from_url(plain_url, decode_responses=True)
        return redis.Redis.from_url(self.url, decode_responses=True)


#: Names of the Redis configurations, in the order tests run on them.
REDIS_TARGETS = ("redis", "redis-3p", "cluster")


def redis_target_for(name: str, request: pytest.FixtureRequest) -> RedisTarget:
    """Start (once per session) and return the Redis configuration ``name``.

    ``redis`` is a single node with one partition, ``redis-3p`` the same node
    with three partitions and ``cluster`` the 3-primary Redis Cluster with
    the default two partitions per primary.
    """
    if name == "cluster":
        return RedisTarget(name, request.getfixturevalue("redis_cluster_url"))
    url: str = request.getfixturevalue("redis_url")
    if name == "redis-3p":
        return RedisTarget(name, url, {"partitions": 3})
    return RedisTarget(name, url)


@pytest.fixture
def redis_targets(request: pytest.FixtureRequest) -> Callable[[str], RedisTarget]:
    """Return `redis_target_for` bound to the test, for fixtures in other folders."""
    return lambda name: redis_target_for(name, request)


@pytest.fixture(params=REDIS_TARGETS)
def redis_target(request: pytest.FixtureRequest) -> RedisTarget:
    """Each Redis configuration in turn: one partition, three, and the Cluster."""
    return redis_target_for(request.param, request)
