"""Every Redis key the driver uses, built in one place.

A key is ``<prefix><tag>:<rest>``. The prefix separates deployments (and
tests) that share one server, and the tag is the partition's hash tag, so
Redis Cluster puts every key of a partition in one slot. A deployment has a
fixed list of partition tags, stored once under ``<prefix>stem:partitions``
(see `stem.drivers.redis.partitions`), and a run lives in the partition that
`partition_index` picks from its id. In the table, ``<base>`` is
``<prefix><tag>:`` for one partition's tag, such as ``<prefix>{stem:p0}:``.

The ``run:<run>`` keys expire together, ``retention_ms`` after the run
ends, and have no TTL while it runs. A shard run's keys expire only once its
home run ended too.

A run of one node that starts queued, the shape of a ``delay()`` call, is
kept in its run hash alone on its way from submit to success. That hash
holds the graph fields (named with ``g:`` in front), the node's state
fields and its value too, marked by the field ``single``. It has no
state-count hash, because its counts follow from its node's state. Any
other change of the run (a failure, retry, cancel, dead letter, unknown
task's hand-back or splice) first moves it to the keys below
(``lua/include/single.lua``).

======================== ========== =============================================
key                      type       contents
======================== ========== =============================================
<base>run:<run>          hash       ``status``, ``epoch``, ``created_at``,
                                    ``ended_at``, ``open_main`` (main-path nodes
                                    not yet ended), ``error_node``, ``spec`` (the
                                    graph spec's JSON, opaque to Lua),
                                    ``spec_version`` (raised by each splice),
                                    no ``spec`` for a large run (see below),
                                    for a large run whose roots are not all
                                    queued ``released`` (roots queued so far)
                                    and ``release_entry`` (its outbox entry),
                                    and the comma-separated
                                    node lists ``nodes``, ``sinks``, ``reaching``;
                                    ``sinks_not_succeeded`` (sinks that ended
                                    in another state than succeeded) and
                                    ``lowest_failed`` (the failed node lowest
                                    in node order whose failure reaches a
                                    sink), which decide how the run ends;
                                    ``retention_ms`` and ``events_max_len``, the
                                    run's settings (``0`` is off); for a
                                    run of one node kept here (see above)
                                    ``single`` (the node's ignore_result
                                    flag and group), the graph fields with
                                    ``g:`` in front, the node's state fields
                                    and ``value``; for a home run of
                                    shards ``shards_version``
                                    (``0`` once a shard node was activated
                                    or cancelled, raised by each ``retain``
                                    or ``keep`` entry); for a shard run (see
                                    `shards`)
                                    ``home``, ``home_node``, ``home_epoch``,
                                    ``active``, ``reported`` (its first
                                    failed node), ``home_version`` (of the
                                    last ``retain`` or ``keep`` entry it
                                    applied) and ``home_ended`` (``1`` after a
                                    ``retain`` entry)
<base>run:<run>:graph    hash       the graph's structure for Lua, one field per
                                    node and attribute: ``<node>/role``,
                                    ``/join``, ``/side``, ``/queue``, ``/task``,
                                    ``/countdown``, ``/eta``, ``/ndeps``,
                                    ``/ncovers`` and the comma-separated
                                    ``/settled``, ``/dependents``, ``/errbacks``,
                                    ``/reads``; ``/group`` (innermost group id,
                                    or empty), ``/ignore`` (``1`` for
                                    ignore_result), ``/drops`` (the
                                    ignore_result nodes it reads) and, for an
                                    ignore_result node, ``/readers``;
                                    ``/end_role`` (``sink``, ``reaching``
                                    when its failure reaches a sink, or
                                    ``none``; a node without it takes the
                                    run-level ``end_role`` field, or
                                    ``reaching``); for a
                                    callback that joins shards, ``/shards``
                                    (its shard nodes); for a home run of
                                    shards, ``shard_nodes`` (all of them); a new
                                    run leaves out the fields equal to
                                    ``layout.GRAPH_DEFAULTS``
<base>run:<run>:nodes    hash       ``<node>`` is the node's state, with
                                    ``<node>/attempt``, ``/lease`` (fencing
                                    token of the attempt), ``/cause``,
                                    ``/queued_at``, ``/started_at``,
                                    ``/ended_at``, ``/replaced`` (``1`` once a
                                    canvas took its place), ``/waiting``
                                    (dependency edges not yet accepted),
                                    ``/open_covers`` (covered nodes not yet
                                    ended, for errbacks) and ``/open_readers``
                                    (readers not yet ended, for ignore_result
                                    nodes)
<base>run:<run>:values   hash       ``<node>`` to its value, opaque JSON text;
                                    an ignore_result node's only while one of
                                    its readers has not ended
<base>run:<run>:errors   hash       ``<node>`` to the error of its last failed
                                    attempt, JSON text
<base>run:<run>:counts   hash       ``<group>/<state>`` to the number of nodes
                                    of the group in that state; a node counts in
                                    its innermost group, and the group ``-``
                                    counts nodes outside every group
<base>run:<run>:roots    list       a large run's roots (nodes queued or
                                    skipped at start) in node order; staged
                                    with a TTL, persisted by the seal and
                                    removed once every root is released
<base>run:<run>:spec     string     a large run's graph spec, JSON text, until
                                    a splice writes ``spec`` in the run hash;
                                    staged as ``<base>run:<run>:staged_spec``
                                    and renamed by the seal
<base>outbox             stream     work for workers to apply, read with the
                                    queues: ``kind`` (``release``,
                                    ``activate``, ``report``, ``cancel``,
                                    ``retain``, ``keep``), ``run``, and per
                                    kind ``epoch``, ``node``, ``shard``,
                                    ``outcome``, ``cause``, ``shards``,
                                    ``version`` (docs/redis.md lists them)
<base>releasing          sorted set large runs whose roots are not all queued,
                                    scored by the time of their latest
                                    progress in seconds, for the reconciler
<base>sharded            sorted set home runs whose shard nodes have not all
                                    reported, scored by the time of their
                                    latest progress in seconds, for the
                                    reconciler
<base>q:<queue>          stream     one entry per message: ``run``, ``node``,
                                    ``attempt``, ``epoch``, ``task``, and
                                    ``enqueued_ms`` once a worker deferred it;
                                    read with the consumer group ``stem``
<base>delayed            sorted set delayed messages scored by due time in
                                    seconds; each member is the JSON array
                                    ``[queue, run, node, attempt, epoch, task]``
<base>deferred           hash       delayed-set member of a message a worker
                                    deferred to the time, in milliseconds, it
                                    first entered a queue
<base>dead               stream     dead-lettered messages: ``run``, ``node``,
                                    ``attempt``, ``epoch``, ``queue``, ``task``,
                                    ``reason``
<base>events             stream     lifecycle events, capped with ``MAXLEN ~``:
                                    ``run``, ``event`` (``submitted``,
                                    ``started``, ``succeeded``, ``failed``,
                                    ``retried``, ``replaced``, ``ended``), and
                                    ``node`` with ``attempt`` for node events,
                                    ``status`` for ``ended``
<base>queues             set        names of the queues that messages were sent
                                    to, for listings
<base>runs               sorted set run ids scored by creation time in seconds,
                                    written by submit (by the seal for a
                                    large run); listings drop ids
                                    whose run hash no longer exists
<base>workers            sorted set worker names scored by last heartbeat
<base>worker:<name>      string     a worker's last heartbeat, JSON, with a TTL
                                    of a few heartbeat intervals
<base>fire:<entry>:<t>   string     a claimed beat fire time, with a TTL
<base>last_fires         sorted set beat entry names, each scored by the latest
                                    fire time claimed for it, in seconds
<base>lock:<name>        string     a lock's holder token, with the lease as TTL
<prefix>stem:partitions  string     the deployment's partition tags, a JSON array,
                                    written once and never changed
======================== ========== =============================================

Run keys live in the run's partition, and a shard run ``<run>~s<node>``
is a run whose id hashes to its own partition. Every partition has its own queue
streams, delayed set, dead-letter stream, queue names set, runs index and
outbox. A large run's graph, node-state and state-count hashes and its roots
list are written in chunks with a TTL before the run hash exists, so an
unsealed run is never seen and expires. Worker heartbeats, beat fire times
and locks belong to no run and live in the first partition.

Scripts build the names too: lua/include/run.lua builds a run's keys and
its partition's keys from the run hash's name with the suffixes used here,
so a change of a name here needs the same change there.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass

#: Hash tag of the first partition on a single Redis node.
DEFAULT_TAG = "{stem:p0}"


@dataclass(frozen=True)
class RunKeys:
    """The keys of one run, in the order the scripts take them as ``KEYS``."""

    run: str
    graph: str
    nodes: str
    values: str
    errors: str
    #: State counts per group. Not in `all`: scripts take it after their
    #: other keys.
    counts: str = ""
    #: The roots of a large run not yet released (stage, seal and release only).
    roots: str = ""
    #: The graph spec of a large run, whose run hash has no ``spec`` field.
    spec: str = ""
    #: The spec of a large run before its seal renames it to ``spec``.
    staged_spec: str = ""

    def all(self) -> list[str]:
        """Return the keys in script order: run, graph, nodes, values, errors."""
        return [self.run, self.graph, self.nodes, self.values, self.errors]


@dataclass(frozen=True)
class Keys:
    """Builds the keys of one partition.

    Args:
        prefix: text in front of every key; it must not contain ``{`` or the
            partition tag would stop being the key's hash tag.
        tag: the partition's hash tag, braces included.
    """

    prefix: str = ""
    tag: str = DEFAULT_TAG

    def __post_init__(self) -> None:
        if "{" in self.prefix or "}" in self.prefix:
            raise ValueError(
                f"Key prefix {self.prefix!r} is invalid: it must not contain "
                "braces, because the partition's hash tag must be the first "
                "braced part of every key."
            )

    @property
    def base(self) -> str:
        """The start shared by every key of the partition."""
        return f"{self.prefix}{self.tag}:"

    def run(self, run_id: str) -> RunKeys:
        """Return the keys of one run."""
        head = self.run_hash(run_id)
        return RunKeys(
            run=head,
            graph=f"{head}:graph",
            nodes=f"{head}:nodes",
            values=f"{head}:values",
            errors=f"{head}:errors",
            counts=f"{head}:counts",
            roots=f"{head}:roots",
            spec=f"{head}:spec",
            staged_spec=f"{head}:staged_spec",
        )

    def run_hash(self, run_id: str) -> str:
        """Return the key of a run's hash, the same as ``run(run_id).run``.

        The worker's claim and report calls take only this key, and building
        it alone skips the eight other keys that `run` builds.
        """
        return f"{self.prefix}{self.tag}:run:{run_id}"

    def queue(self, name: str) -> str:
        """Return the stream of a queue. Scripts build the same name from ``base``."""
        return f"{self.prefix}{self.tag}:q:{name}"

    @property
    def delayed(self) -> str:
        """The sorted set of delayed messages."""
        return f"{self.base}delayed"

    @property
    def deferred(self) -> str:
        """The hash of deferred delayed-set members to their first-queued time."""
        return f"{self.base}deferred"

    @property
    def dead(self) -> str:
        """The dead-letter stream."""
        return f"{self.base}dead"

    @property
    def events(self) -> str:
        """The lifecycle event stream."""
        return f"{self.base}events"

    @property
    def releasing(self) -> str:
        """The sorted set of large runs whose roots are not all queued yet."""
        return f"{self.base}releasing"

    @property
    def sharded(self) -> str:
        """The sorted set of home runs whose chord shards have not all reported."""
        return f"{self.base}sharded"

    @property
    def outbox(self) -> str:
        """The stream of work that workers apply for the partition's runs."""
        return f"{self.base}outbox"

    @property
    def queues(self) -> str:
        """The set of queue names. Scripts build it from ``base``."""
        return f"{self.base}queues"

    @property
    def runs(self) -> str:
        """The runs index: run ids by creation time. Scripts build it from ``base``."""
        return f"{self.base}runs"

    @property
    def workers(self) -> str:
        """The sorted set of worker names by last heartbeat."""
        return f"{self.base}workers"

    def worker(self, name: str) -> str:
        """Return the key of one worker's heartbeat."""
        return f"{self.base}worker:{name}"

    def fire(self, entry: str, fire_time_s: float) -> str:
        """Return the key that marks one fire time of a beat entry as claimed."""
        return f"{self.base}fire:{entry}:{fire_time_s!r}"

    @property
    def last_fires(self) -> str:
        """The sorted set of each beat entry's latest claimed fire time."""
        return f"{self.base}last_fires"

    def lock(self, name: str) -> str:
        """Return the key of a named lock."""
        return f"{self.base}lock:{name}"


def partition_tag(number: int) -> str:
    """Return the hash tag with the given number, such as ``{stem:p3}``."""
    return f"{{stem:p{number}}}"


def partition_list(prefix: str) -> str:
    """Return the key that stores a deployment's partition tags."""
    return f"{prefix}stem:partitions"


def partition_index(run_id: str, count: int) -> int:
    """Return the position of a run's partition in a list of ``count`` tags.

    CRC-32 of the run id, so every process maps a run to the same partition
    (Python's own `hash` of a str changes from one process to the next).
    """
    return zlib.crc32(run_id.encode("utf-8")) % count


class KeySpace:
    """Builds the keys of every partition of one deployment.

    Args:
        prefix: text in front of every key; no braces.
        tags: the deployment's partition tags, in stored order.
    """

    def __init__(self, prefix: str, tags: Sequence[str]) -> None:
        if not tags:
            raise ValueError("A key space needs at least one partition tag.")
        self.prefix = prefix
        #: One `Keys` per partition, in the order of the stored tag list.
        self.partitions: tuple[Keys, ...] = tuple(Keys(prefix, tag) for tag in tags)

    @property
    def tags(self) -> list[str]:
        """The partition tags in stored order."""
        return [keys.tag for keys in self.partitions]

    @property
    def first(self) -> Keys:
        """The first partition, which contains the keys that belong to no run."""
        return self.partitions[0]

    def partition_of(self, run_id: str) -> Keys:
        """Return the keys of the partition that a run lives in."""
        partitions = self.partitions
        if len(partitions) == 1:
            # The CRC of the run id would pick the one partition anyway.
            return partitions[0]
        return partitions[partition_index(run_id, len(partitions))]

    def run(self, run_id: str) -> RunKeys:
        """Return the keys of one run, in its partition."""
        return self.partition_of(run_id).run(run_id)

    def fire(self, entry: str, fire_time_s: float) -> str:
        """Return the key that marks one fire time of a beat entry as claimed."""
        return self.first.fire(entry, fire_time_s)

    @property
    def last_fires(self) -> str:
        """The sorted set of each beat entry's latest claimed fire time."""
        return self.first.last_fires

    def lock(self, name: str) -> str:
        """Return the key of a named lock."""
        return self.first.lock(name)

    @property
    def workers(self) -> str:
        """The sorted set of worker names by last heartbeat."""
        return self.first.workers

    def worker(self, name: str) -> str:
        """Return the key of one worker's heartbeat."""
        return self.first.worker(name)
