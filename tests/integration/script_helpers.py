"""Helpers of the Redis script tests: empty the script cache and the libraries."""

from __future__ import annotations

from typing import Any

import redis
from redis.cluster import RedisCluster

from stem.drivers.redis.library import LIBRARY_PREFIX


def primaries(client: Any) -> list[redis.Redis]:
    """Return the single node's client, or a client of each Cluster primary."""
    if isinstance(client, RedisCluster):
        return [client.get_redis_connection(node) for node in client.get_primaries()]
    return [client]


def has_library(node: redis.Redis) -> bool:
    """Return True when the node has a Stem Functions library."""
    listed = node.execute_command("FUNCTION LIST", "LIBRARYNAME", f"{LIBRARY_PREFIX}*")
    return bool(listed)


def flush_scripts(node: redis.Redis) -> None:
    """Empty the node's script cache and delete its Functions libraries."""
    node.script_flush()
    node.function_flush()


def script_command(driver: Any) -> str:
    """Return the commandstats name of the driver's script calls."""
    return "fcall" if driver._scripts.use_functions else "evalsha"
