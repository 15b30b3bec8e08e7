"""Every Redis key the driver uses, built in one place.

A key is ``<prefix><tag>:<rest>``. The prefix separates deployments (and
tests) that share one server, and the tag is the partition's hash tag, so
Redis Cluster puts every key of a partition in one slot. This step uses one
partition, ``{stem:p0}``. In the table, ``<base>`` is ``<prefix>{stem:p0}:``.

======================== ========== =============================================
key                      type       contents
======================== ========== =============================================
<base>run:<run>          hash       ``status``, ``epoch``, ``created_at``,
                                    ``ended_at``, ``open_main`` (main-path nodes
                                    not yet ended), ``error_node``, ``spec`` (the
                                    graph spec's JSON, opaque to Lua),
                                    ``spec_version`` (raised by each splice),
                                    and the comma-separated
                                    node lists ``nodes``, ``sinks``, ``reaching``
<base>run:<run>:graph    hash       the graph's structure for Lua, one field per
                                    node and attribute: ``<node>/role``,
                                    ``/join``, ``/side``, ``/queue``, ``/task``,
                                    ``/countdown``, ``/eta``, ``/ndeps``,
                                    ``/ncovers`` and the comma-separated
                                    ``/settled``, ``/dependents``, ``/errbacks``,
                                    ``/reads``; a new run leaves out the fields
                                    equal to ``layout.GRAPH_DEFAULTS``
<base>run:<run>:nodes    hash       ``<node>`` is the node's state, with
                                    ``<node>/attempt``, ``/lease`` (fencing
                                    token of the attempt), ``/cause``,
                                    ``/queued_at``, ``/started_at``,
                                    ``/ended_at``, ``/replaced`` (``1`` once a
                                    canvas took its place), ``/waiting``
                                    (dependency edges not yet accepted) and
                                    ``/open_covers`` (covered nodes not yet
                                    ended, for errbacks)
<base>run:<run>:values   hash       ``<node>`` to its value, opaque JSON text
<base>run:<run>:errors   hash       ``<node>`` to the error of its last failed
                                    attempt, JSON text
<base>q:<queue>          stream     one entry per message: ``run``, ``node``,
                                    ``attempt``, ``epoch``, ``task``; read with
                                    the consumer group ``stem``
<base>delayed            sorted set delayed messages scored by due time in
                                    seconds; each member is the JSON array
                                    ``[queue, run, node, attempt, epoch, task]``
<base>dead               stream     dead-lettered messages: ``run``, ``node``,
                                    ``attempt``, ``epoch``, ``queue``, ``task``,
                                    ``reason``
<base>fire:<entry>:<t>   string     a claimed beat fire time, with a TTL
<base>lock:<name>        string     a lock's holder token, with the lease as TTL
======================== ========== =============================================
"""

from __future__ import annotations

from dataclasses import dataclass

#: Hash tag of the only partition in this version of the driver.
DEFAULT_TAG = "{stem:p0}"


@dataclass(frozen=True)
class RunKeys:
    """The keys of one run, in the order the scripts take them as ``KEYS``."""

    run: str
    graph: str
    nodes: str
    values: str
    errors: str

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
        head = f"{self.base}run:{run_id}"
        return RunKeys(
            run=head,
            graph=f"{head}:graph",
            nodes=f"{head}:nodes",
            values=f"{head}:values",
            errors=f"{head}:errors",
        )

    def queue(self, name: str) -> str:
        """Return the stream of a queue. Scripts build the same name from ``base``."""
        return f"{self.base}q:{name}"

    @property
    def delayed(self) -> str:
        """The sorted set of delayed messages."""
        return f"{self.base}delayed"

    @property
    def dead(self) -> str:
        """The dead-letter stream."""
        return f"{self.base}dead"

    def fire(self, entry: str, fire_time_s: float) -> str:
        """Return the key that marks one fire time of a beat entry as claimed."""
        return f"{self.base}fire:{entry}:{fire_time_s!r}"

    def lock(self, name: str) -> str:
        """Return the key of a named lock."""
        return f"{self.base}lock:{name}"
