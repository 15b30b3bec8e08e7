"""Turning a driver URL into a redis-py client and the driver's own URL options.

``redis://host:port/db`` connects to a single node and
``redis+cluster://host:port`` to a Redis Cluster through
`redis.cluster.RedisCluster`, which finds the other nodes from the one named.
The query option ``partitions`` belongs to the driver and is removed before
redis-py reads the URL; every other option goes to redis-py.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis
from redis.cluster import RedisCluster

#: URL scheme of a Redis Cluster.
CLUSTER_SCHEME = "redis+cluster"


@dataclass(frozen=True)
class Target:
    """The connection target read from a driver URL and its settings."""

    #: The URL as redis-py reads it: driver options removed, plain scheme.
    client_url: str
    cluster: bool
    #: The partition count from the URL or the settings, None when unset.
    partitions: int | None


def parse_url(url: str, partitions: int | None = None) -> Target:
    """Read the scheme and the ``partitions`` option of a driver URL.

    Raises:
        ValueError: if the database is not a number, the partition count is
            not a whole number of 1 or more, or the URL and the settings give
            different counts.
    """
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    from_url = [value for name, value in query if name == "partitions"]
    rest = [(name, value) for name, value in query if name != "partitions"]
    count = _check_count(partitions, "The partitions setting")
    for value in from_url:
        parsed = _parse_count(value)
        if count is not None and parsed != count:
            raise ValueError(
                f"The URL sets partitions={value} but the settings pass {count}; "
                "give the count in one place."
            )
        count = parsed

    # redis-py reads a path that is not a number as database 0, silently.
    database = parts.path.strip("/")
    if database and not (database.isascii() and database.isdigit()):
        raise ValueError(
            f"The database {database!r} in the URL is invalid; pass its number, "
            "as in redis://host:6379/0."
        )
    cluster = parts.scheme == CLUSTER_SCHEME
    scheme = "redis" if cluster else parts.scheme
    client_url = urlunsplit(
        (scheme, parts.netloc, parts.path, urlencode(rest), parts.fragment)
    )
    return Target(client_url, cluster, count)


def connect(target: Target) -> redis.Redis | RedisCluster:
    """Create a client for the target; replies are decoded to str.

    A byte that is not UTF-8 becomes a lone surrogate instead of raising, so
    a queue entry written by another program does not fail every read of
    its stream: the driver dead-letters a queue entry that contains one.
    Sending such a string back writes the original bytes.
    """
    options = {"decode_responses": True, "encoding_errors": "surrogateescape"}
    if target.cluster:
        return RedisCluster.from_url(target.client_url, **options)
    return redis.Redis.from_url(target.client_url, **options)


def _parse_count(text: str) -> int:
    try:
        count = int(text)
    except ValueError:
        count = 0
    if count < 1 or str(count) != text.strip():
        raise ValueError(
            f"partitions={text!r} in the URL is invalid; pass a whole number of "
            "1 or more, such as ?partitions=3."
        )
    return count


def _check_count(count: int | None, source: str) -> int | None:
    if count is None:
        return None
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(
            f"{source} is {count!r}; pass a whole number of 1 or more, or None "
            "for the default."
        )
    return count
