"""A deployment's partition tags: chosen once, stored in Redis, read by every client.

The first client of a deployment (a key prefix) chooses the tags and stores
them with ``SET NX``, so two clients that start together still agree: the one
that loses the race reads the winner's list. The list never changes
afterwards, because a run's partition is its position in the list. A client
configured with another partition count uses the stored list and logs that it
did.

On a single node the tags are ``{stem:p0}``, ``{stem:p1}`` and so on. In a
Redis Cluster, candidate tags in that form are checked with ``CLUSTER
KEYSLOT`` and kept until every primary owns its share, so no primary is left
without a partition.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import redis
from redis.cluster import RedisCluster

from stem.drivers.redis.keys import partition_list, partition_tag
from stem.engine.errors import DriverError

log = logging.getLogger(__name__)

#: Partitions per primary when a Cluster client does not set a count. More
#: than one lets a partition move to a primary added later without leaving
#: an old primary empty.
PARTITIONS_PER_PRIMARY = 2
#: Candidate tags checked before giving up on a primary that owns few slots.
#: A primary with a single slot is hit once in 16,384 candidates on average.
MAX_TAG_CANDIDATES = 200_000
#: Candidate tags sent to ``CLUSTER KEYSLOT`` in one pipeline.
_KEYSLOT_BATCH = 128


def load_tags(
    client: redis.Redis | RedisCluster, prefix: str, requested: int | None
) -> list[str]:
    """Return the stored partition tags of a deployment, storing new ones if none.

    Args:
        client: a client of the single node or of the Cluster.
        prefix: the deployment's key prefix.
        requested: the partition count the client was configured with, or
            None for the default (1 on a single node, `PARTITIONS_PER_PRIMARY`
            per primary in a Cluster).

    Raises:
        ValueError: if ``requested`` gives a Cluster primary no partition.
        DriverError: if Redis failed or the stored list is invalid.
    """
    key = partition_list(prefix)
    try:
        stored: Any = client.get(key)
        if stored is None:
            tags = choose_tags(client, requested)
            if client.set(key, json.dumps(tags), nx=True):
                log.info(
                    "Stored %d partitions under %s: %s.", len(tags), key, " ".join(tags)
                )
                return tags
            # Another client stored its list first, so that list is used.
            stored = client.get(key)
    except redis.RedisError as err:
        raise DriverError(f"Reading the partition list {key} failed: {err}") from err

    tags = _decode(key, stored)
    if requested is not None and requested != len(tags):
        log.warning(
            "Using the %d partitions stored under %s and ignoring the requested "
            "count of %d, because the list never changes once stored.",
            len(tags),
            key,
            requested,
        )
    return tags


def choose_tags(client: redis.Redis | RedisCluster, requested: int | None) -> list[str]:
    """Choose partition tags for a new deployment, without storing them."""
    if isinstance(client, RedisCluster):
        return cluster_tags(client, requested)
    return [partition_tag(number) for number in range(requested or 1)]


def cluster_tags(client: RedisCluster, requested: int | None) -> list[str]:
    """Choose tags that spread evenly over the Cluster's primaries.

    Each primary gets ``requested // primaries`` tags, and the first primaries
    in address order one more each, until ``requested`` tags are chosen.

    Raises:
        ValueError: if ``requested`` is less than the number of primaries.
        DriverError: if some primary owns too few slots to be found.
    """
    owners = slot_owners(client)
    primaries = sorted(set(owners.values()))
    count = (
        requested if requested is not None else PARTITIONS_PER_PRIMARY * len(primaries)
    )
    if count < len(primaries):
        raise ValueError(
            f"partitions is {count}, but the Cluster has {len(primaries)} primaries. "
            f"Pass at least {len(primaries)} so every primary holds a partition, "
            "or leave it unset."
        )
    share, extra = divmod(count, len(primaries))
    quota = {
        primary: share + (1 if index < extra else 0)
        for index, primary in enumerate(primaries)
    }

    default: Any = client.get_default_node()  # type: ignore[no-untyped-call]
    node = client.get_redis_connection(default)
    chosen: list[str] = []
    for start in range(0, MAX_TAG_CANDIDATES, _KEYSLOT_BATCH):
        names = [
            partition_tag(number) for number in range(start, start + _KEYSLOT_BATCH)
        ]
        pipe = node.pipeline(transaction=False)
        for name in names:
            pipe.execute_command("CLUSTER KEYSLOT", name)  # type: ignore[no-untyped-call]
        for name, slot in zip(names, pipe.execute(), strict=True):
            owner = owners.get(int(slot))
            if owner is not None and quota[owner] > 0:
                quota[owner] -= 1
                chosen.append(name)
        if len(chosen) == count:
            return chosen
    short = ", ".join(f"{host}:{port}" for (host, port), left in quota.items() if left)
    raise DriverError(
        f"No partition tag among {MAX_TAG_CANDIDATES} candidates hashes to a slot "
        f"of primary {short}. Give that primary more slots, or set partitions so "
        "it needs fewer."
    )


def slot_owners(client: RedisCluster) -> dict[int, tuple[str, int]]:
    """Return the primary ``(host, port)`` that owns each assigned slot."""
    ranges: Any = client.cluster_slots()
    owners: dict[int, tuple[str, int]] = {}
    for (first, last), nodes in ranges.items():
        host, port = nodes["primary"]
        for slot in range(int(first), int(last) + 1):
            owners[slot] = (str(host), int(port))
    return owners


def primary_of(client: RedisCluster, tag: str) -> tuple[str, int]:
    """Return the primary ``(host, port)`` that owns a partition tag's slot."""
    slot = int(client.cluster_keyslot(tag))
    return slot_owners(client)[slot]


def _decode(key: str, stored: Any) -> list[str]:
    try:
        tags = json.loads(stored)
    except (TypeError, ValueError):
        tags = None
    valid = (
        isinstance(tags, list)
        and tags
        and all(
            isinstance(tag, str) and tag.startswith("{") and tag.endswith("}")
            for tag in tags
        )
    )
    if not valid:
        raise DriverError(
            f"The partition list {key} contains {stored!r}, which is not a JSON "
            "array of hash tags. Another program wrote the key; delete it only "
            "if the deployment has no runs, because runs are found by it."
        )
    return list(tags)
