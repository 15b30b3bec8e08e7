"""The Redis driver: run state in hashes, messages in Streams.

Every change of run state is one Lua script call (see `stem.drivers.redis.scripts`
and the ``lua`` folder), so an outcome, the nodes it made ready and the
acknowledgement of its message change together. Keys are described in
`stem.drivers.redis.keys`.

Keys are spread over partitions (`stem.drivers.redis.partitions`), and a
run with its messages lives in one, so every script touches one partition.
A single node has one partition unless ``partitions`` sets more, and a
Cluster has a few per primary.

A chord header larger than ``shard_size`` runs as shard runs, written and
coordinated by the base class `stem.drivers.redis.shard_runs.ShardRuns`.

A run's input values and its value are assembled in Python from the stored
opaque strings when a node is claimed and when a snapshot is taken.
`replace` computes the spliced spec in Python and applies it with one script
call, which rejects it if the run's spec changed in between, so the splice
is computed again.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import itertools
import logging
import math
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis
from redis.cluster import RedisCluster
from redis.exceptions import RedisClusterException

from stem.canvas.errors import StemError
from stem.canvas.gcpause import paused_gc
from stem.canvas.spec import (
    GraphSpec,
    NodeId,
    NodeInput,
    NodeSpec,
    SpecText,
    same_layout,
    template_nodes,
)
from stem.canvas.text import printable
from stem.canvas.values import decode, dumps
from stem.drivers.redis import layout
from stem.drivers.redis.connection import Target, connect, parse_url
from stem.drivers.redis.keys import Keys, KeySpace
from stem.drivers.redis.partitions import load_tags
from stem.drivers.redis.scripts import Reply, Scripts, check_reply, script_error
from stem.drivers.redis.shard_runs import ShardRuns
from stem.drivers.redis.shards import SHARD_TASK, plan_shards, shard_run_id
from stem.engine import machine, settings
from stem.engine.drivers import redact
from stem.engine.errors import DriverError, RunNotFound, RunNotRetryable
from stem.engine.ports import (
    TASK_HEADER,
    Claim,
    LifecycleEvent,
    Message,
    RunSnapshot,
    failure_reached,
)
from stem.engine.records import ErrorInfo, NodeRecord, RunState, task_id

log = logging.getLogger(__name__)

#: Consumer group that every worker of a deployment reads the queue streams with.
DEFAULT_GROUP = "stem"
#: Version of the message layout in the queue streams, the field "v" of each
#: entry: run, node, attempt, epoch and the headers (today only task). The
#: scripts that queue messages write it (graph.lua, promote.lua). A worker
#: dead-letters an entry of any other version, so a newer format is never
#: read as this one.
ENVELOPE_VERSION = "1"
#: Nodes, summed over runs, and runs of the parsed graph specs a driver
#: keeps, so claiming a node or reading a result does not parse its run's
#: spec again. Each run keeps only its latest spec version, and the newest
#: spec is kept whatever its size. A cached spec also lets `get()` read only
#: the value of a run that succeeded (read_value.lua), so the runs bound
#: covers a bulk call of 10,000 tasks. A one-node spec copied from its task's
#: layout costs about 1.1 KB and 7 objects for the cyclic collector. With
#: 16,384 of them cached, delay() and apply_many() took the same CPU per task
#: as with 1,024 (within the noise of 3 runs each, CPython 3.11).
_SPEC_CACHE_NODES = 200_000
_SPEC_CACHE_RUNS = 16_384
#: Fields of the run hash that a snapshot reads; the spec is read only when
#: the driver has not parsed that version of it yet.
_SNAPSHOT_FIELDS = (
    "status",
    "created_at",
    "ended_at",
    "error_node",
    "spec_version",
    "epoch",
)
#: Nodes read by a claimed node's input above which the claim pauses the
#: cyclic collector while it builds the input (see stem.canvas.gcpause).
_LARGE_INPUT_READS = 100
#: Times `replace` recomputes the spliced spec when another splice changed it.
_SPLICE_ATTEMPTS = 5
#: Maximum XREADGROUP block in seconds, so due delayed messages move while waiting.
_MAX_BLOCK_S = 0.05
#: Characters of a malformed entry's fields quoted in its dead-letter reason.
_MAX_SHOWN_FIELDS = 500
#: An event id: its write time in microseconds and a sequence number.
_EVENT_ID = re.compile(r"[0-9]+-[0-9]+")
#: Run statuses in the first chunk that `_read_changed` reads.
_FIRST_STATUS_CHUNK = 32
#: Nodes whose state, value and error one command of a paged input read fetches.
_READ_PAGE = 1000
#: Log message of a success report that failed in `complete_many`.
_REPORT_FAILED = (
    "Reporting the value of %s failed, so its message is delivered again after "
    "the visibility timeout."
)
#: Name of the lock that lets one worker at a time run the reconciler.
_RECONCILE_LOCK = "reconciler"
#: Most stalled runs of one partition that one reconciler pass takes up.
_RECONCILE_BATCH = 100
#: Header members per shard of a sharded chord when neither the URL nor the
#: settings give ``shard_size``.
DEFAULT_SHARD_SIZE = 5000
#: Fields that each kind of outbox entry must have to be applied.
_OUTBOX_FIELDS: dict[str, frozenset[str]] = {
    "release": frozenset({"run", "epoch"}),
    "activate": frozenset({"run", "node", "epoch"}),
    "report": frozenset({"run", "node", "epoch", "shard", "outcome", "cause"}),
    "cancel": frozenset({"run", "node"}),
    "retain": frozenset({"run", "shards", "version"}),
    "keep": frozenset({"run", "shards", "version"}),
}
#: Runs whose script calls or status reads `submit_many` and
#: `wait_ended_many` send in one pipeline.
_PIPELINE_BATCH = 500
#: Minimum seconds between two XAUTOCLAIM sweeps of one driver. Sweeps run every
#: quarter of the visibility timeout, but no more often than this.
_MIN_RECLAIM_INTERVAL_S = 0.05


@dataclasses.dataclass(frozen=True)
class _LargeRun:
    """The fields of a run too large for one submit call, for `_submit_large`."""

    graph: list[str]
    state: list[str]
    counts: list[str]


@dataclasses.dataclass(frozen=True)
class _SubmitLayout:
    """The submit script arguments of a spec, less the run's key and spec JSON.

    They depend only on the spec's layout, so runs whose specs differ only
    in arguments (see `same_layout`) share one.
    """

    #: The spec the arguments were computed for.
    spec: GraphSpec
    #: The arguments before the spec JSON: the root nodes and the version.
    head: tuple[str, ...]
    #: The arguments after it.
    tail: tuple[str, ...]
    #: The cut JSON text of this layout, which writes its specs; None until cut.
    text: SpecText | None = None
    #: Whether cutting the text was tried.
    cut: bool = False

    def call(
        self, run_key: str, spec: GraphSpec
    ) -> tuple[list[str], list[str | int | float]]:
        """Return the keys and arguments of the submit script for one run."""
        spec_json = spec.to_json() if self.text is None else self.text.write(spec)
        return [run_key], [*self.head, spec_json, *self.tail]


class RedisDriver(ShardRuns):
    """Runs, queues and delayed messages in one Redis server or a Redis Cluster.

    Args:
        url: a ``redis://host:port/db`` URL, as redis-py's ``from_url`` reads
            it, or ``redis+cluster://host:port`` for a Cluster (database 0
            only). The query option ``?partitions=N`` sets ``partitions``.
        prefix: text in front of every key, to share one database between
            deployments or tests; it must not contain braces.
        group: the consumer group name for the queue streams.
        visibility_timeout_s: seconds a fetched message may stay unacknowledged
            before another worker takes it over. A worker renews the lease of
            a task that runs longer, so this bounds how long a killed worker's
            message waits, not how long a task may run.
        max_deliveries: deliveries of one message after which the next
            takeover dead-letters it and fails its node instead, because its
            workers keep dying. Renewals do not count as deliveries.
        promote_batch: most delayed messages moved to their queues per fetch.
        fire_ttl_s: seconds a claimed beat fire time is remembered.
        poll_interval_s: seconds between status checks in `wait`.
        partitions: the number of partitions a new deployment gets; None
            means 1 on a single node and two per primary in a Cluster, where
            it must be at least the number of primaries. The first client of
            a prefix stores the list, and later clients use the stored list
            whatever they set here.
        retention_s: seconds a run's keys live after it ends, or None to keep
            them. A run that has not ended never expires. The setting in
            force when a run is submitted applies to it.
        max_value_bytes: largest task value the worker reports, in bytes of
            JSON text, or None for no limit.
        events: whether runs submitted through this driver write lifecycle
            events.
        events_max_len: lifecycle events kept per partition, about.
        submit_chunk: field/value pairs (or roots) written per script call
            when a run is submitted. A run with more is written in chunks
            and then sealed by one small call, so no call blocks Redis for
            long; below it a run is stored in one call.
        stage_ttl_s: seconds until the chunks of a run that was never sealed
            (its submitter died) expire.
        release_slice: roots of a large run queued per script call.
        inline_input_chars: longest comma-separated list of the nodes a
            node reads, in characters, whose values its claim script
            returns. A longer one (a large chord's callback) is read in
            pages of plain commands after the claim, so the claim does not
            grow with the chord.
        reconcile_interval_s: seconds between two reconciler passes of a
            fetching worker; one worker at a time runs a pass, under a lock.
        reconcile_after_s: seconds without progress after which the
            reconciler queues a large run's remaining roots itself, in case
            the outbox entry that asks for them was lost (a failover), and
            sends a sharded chord's activations and reports again.
        shard_size: header members per shard of a chord. A chord header
            with more members is cut into shard runs spread over the
            partitions (see `stem.drivers.redis.shards`); 0 turns sharding
            off. None means the URL's ``?shard_size=N``, or 5,000.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "",
        group: str = DEFAULT_GROUP,
        visibility_timeout_s: float = 300.0,
        max_deliveries: int = 5,
        promote_batch: int = 100,
        fire_ttl_s: float = 7 * 24 * 3600.0,
        poll_interval_s: float = 0.02,
        partitions: int | None = None,
        retention_s: float | None = settings.DEFAULT_RETENTION_S,
        max_value_bytes: int | None = settings.DEFAULT_MAX_VALUE_BYTES,
        events: bool = True,
        events_max_len: int = settings.DEFAULT_EVENTS_MAX_LEN,
        submit_chunk: int = 1000,
        stage_ttl_s: float = 24 * 3600.0,
        release_slice: int = 200,
        inline_input_chars: int = 20_000,
        reconcile_interval_s: float = 30.0,
        reconcile_after_s: float = 60.0,
        shard_size: int | None = None,
    ) -> None:
        self.url = url
        url, self._shard_size = _shard_size_option(url, shard_size)
        url, prefix = _prefix_option(url, prefix)
        Keys(prefix)  # Rejects a prefix with braces before anything connects.
        self.retention_s = settings.check_retention_s(retention_s)
        self.max_value_bytes = settings.check_max_value_bytes(max_value_bytes)
        settings.check_events(events)
        self._events_max_len = settings.check_events_max_len(events_max_len)
        if not events:
            self._events_max_len = 0
        self._group = group
        if type(max_deliveries) is not int or max_deliveries < 1:
            raise ValueError(
                f"max_deliveries is {max_deliveries!r}; pass a whole number of 1 "
                "or more, because every message is delivered at least once."
            )
        if visibility_timeout_s is not None:
            _check_seconds("visibility_timeout_s", visibility_timeout_s, zero=True)
        self.visibility_timeout_s: float | None = visibility_timeout_s
        self._max_deliveries = max_deliveries
        for name, size in (
            ("promote_batch", promote_batch),
            ("submit_chunk", submit_chunk),
            ("release_slice", release_slice),
            ("inline_input_chars", inline_input_chars),
        ):
            if isinstance(size, bool) or not isinstance(size, int) or size < 1:
                raise ValueError(
                    f"{name} is {size!r}; pass a whole number of 1 or more."
                )
        _check_seconds("stage_ttl_s", stage_ttl_s, zero=False)
        _check_seconds("fire_ttl_s", fire_ttl_s, zero=False)
        _check_seconds("poll_interval_s", poll_interval_s, zero=True)
        self._submit_chunk = submit_chunk
        self._stage_ttl_s = stage_ttl_s
        self._release_slice = release_slice
        self._inline_input_chars = inline_input_chars
        _check_seconds("reconcile_interval_s", reconcile_interval_s, zero=True)
        _check_seconds("reconcile_after_s", reconcile_after_s, zero=True)
        self._reconcile_interval_s = reconcile_interval_s
        self._reconcile_after_s = reconcile_after_s
        self._last_reconcile = time.monotonic()
        self._promote_batch = promote_batch
        self._fire_ttl_s = fire_ttl_s
        self._poll_interval_s = poll_interval_s
        target = parse_url(url, partitions)
        self._client, self._scripts, tags = _open(url, target, prefix)
        self._keys = KeySpace(prefix, tags)
        self._consumer = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._lock = threading.Lock()
        self._groups: set[str] = set()
        self._specs: collections.OrderedDict[str, tuple[str, GraphSpec]] = (
            collections.OrderedDict()
        )
        self._spec_parser = layout.SpecParser()
        #: The submit layout of the last run stored with one script call.
        self._shared_layout: _SubmitLayout | None = None
        self._cached_nodes = 0
        self._last_reclaim = 0.0
        self._last_promote = 0.0
        self._workers = 0
        #: Spreads the partition a fetch starts with (and blocks on) over calls.
        self._rotation = itertools.count()
        #: Messages read beyond a fetch's limit, per queue, for the next fetch.
        self._buffered: dict[str, collections.deque[tuple[Message, float]]] = {}

    def __repr__(self) -> str:
        tags = ",".join(self._keys.tags)
        prefix = self._keys.prefix
        return f"<RedisDriver {redact(self.url)} prefix {prefix!r} partitions {tags}>"

    # -- graph store --------------------------------------------------------

    def submit(self, run_id: str, spec: GraphSpec) -> bool:
        found = self._layout_or_store(run_id, spec)
        if isinstance(found, bool):
            return found
        keys, args = found.call(self._keys.run(run_id).run, spec)
        reply = self._scripts.call("submit", keys, args, run_id=run_id)
        return self._submitted(run_id, spec, reply)

    def _submit_run(
        self,
        run_id: str,
        spec: GraphSpec,
        extra_graph: Sequence[str] = (),
        *,
        one_call: bool = False,
    ) -> bool | None:
        """Store one run, in one script call or in chunks, and queue its roots.

        ``extra_graph`` are graph hash fields and values that the spec does
        not give, such as a callback's ``/shards`` field. With ``one_call``
        a run too large for one submit call is not stored, and None is
        returned.
        """
        with paused_gc():
            call = self._submit_call(run_id, spec, extra_graph)
            if one_call and isinstance(call, _LargeRun):
                return None
            if isinstance(call, _LargeRun):
                reply = None
            else:
                reply = self._scripts.call("submit", *call, run_id=run_id)
        if isinstance(call, _LargeRun):
            return self._submit_large(run_id, spec, call.graph, call.state, call.counts)
        return self._submitted(run_id, spec, reply)

    def submit_many(
        self, runs: Sequence[tuple[str, GraphSpec]]
    ) -> list[bool | Exception]:
        """Store each run with its own submit script call, pipelined per batch.

        A run that `submit` would shard or write in chunks is stored on its
        own as it comes, before the pipeline of its batch. A Cluster
        pipeline sends each node its share of the calls in one round trip.
        """
        results: list[bool | Exception | None] = [None] * len(runs)
        for first in range(0, len(runs), _PIPELINE_BATCH):
            calls: list[tuple[str, list[str], list[str | int | float]]] = []
            piped: list[int] = []
            for index in range(first, min(first + _PIPELINE_BATCH, len(runs))):
                run_id, spec = runs[index]
                try:
                    found = self._layout_or_store(run_id, spec)
                except StemError as err:
                    results[index] = err
                    continue
                if isinstance(found, bool):
                    results[index] = found
                    continue
                run_key = self._keys.run(run_id).run
                calls.append(("submit", *found.call(run_key, spec)))
                piped.append(index)
            try:
                replies = self._scripts.call_many(calls) if calls else []
            except DriverError as err:
                # The pipeline as a whole failed: some of its runs may have
                # been stored anyway, and submitting them again is a no-op.
                for index in piped:
                    results[index] = err
                continue
            for index, reply in zip(piped, replies, strict=True):
                run_id, spec = runs[index]
                results[index] = self._submitted_or_error(run_id, spec, reply)
        done: list[bool | Exception] = []
        for result in results:
            assert result is not None, "every run of submit_many has a result"
            done.append(result)
        return done

    def _layout_or_store(self, run_id: str, spec: GraphSpec) -> _SubmitLayout | bool:
        """Return the submit layout of a run, or store a run too large for one call.

        A sharded or large run is stored at once, and what `submit` returns
        for it is returned instead of a layout. The last layout is reused
        while the next specs share it (`same_layout`), as the copies that
        ``Task.apply_many()`` and ``Task.delay()`` make do, and its spec
        text is cut (`SpecText`) once a second spec shares it.
        """
        shared = self._shared_layout
        if shared is not None and same_layout(shared.spec, spec):
            if shared.text is None and not shared.cut:
                shared = dataclasses.replace(
                    shared, text=_cut_text(shared.spec), cut=True
                )
                self._shared_layout = shared
            return shared
        plan = plan_shards(spec, self._shard_size)
        if plan is not None:
            return self._submit_sharded(run_id, plan)
        with paused_gc():
            found = self._submit_layout(spec)
        if isinstance(found, _LargeRun):
            return self._submit_large(
                run_id, spec, found.graph, found.state, found.counts
            )
        self._shared_layout = found
        return found

    def _submitted_or_error(
        self, run_id: str, spec: GraphSpec, reply: Any
    ) -> bool | Exception:
        """Check one submit reply of a pipeline; return its error instead of raising."""
        if isinstance(reply, redis.RedisError):
            error = script_error("submit", reply, run_id, "")
            error.__cause__ = reply
            return error
        if isinstance(reply, Exception):
            return reply
        try:
            return self._submitted(run_id, spec, reply)
        except StemError as err:
            return err

    def _submit_call(
        self, run_id: str, spec: GraphSpec, extra_graph: Sequence[str] = ()
    ) -> tuple[list[str], list[str | int | float]] | _LargeRun:
        """Return the keys and arguments of the submit script for a run.

        A run with more fields than ``submit_chunk`` gets the fields that
        `_submit_large` writes in chunks instead. The caller pauses the
        cyclic collector.
        """
        found = self._submit_layout(spec, extra_graph)
        if isinstance(found, _LargeRun):
            return found
        # The script builds the run's other keys from the run hash's.
        return found.call(self._keys.run(run_id).run, spec)

    def _submit_layout(
        self, spec: GraphSpec, extra_graph: Sequence[str] = ()
    ) -> _SubmitLayout | _LargeRun:
        """Return the submit script arguments that the spec's layout decides.

        See `_submit_call`, which adds the run's key and spec JSON.
        """
        # The extra pairs go first: submit.lua looks for "submitter_activates"
        # in the first pair only.
        graph = [*extra_graph, *layout.graph_fields(spec, defaults=False)]
        counts = layout.initial_counts(spec.nodes)
        state = [
            *layout.initial_node_fields(spec.nodes),
            *layout.open_reader_fields(spec),
        ]
        if (len(graph) + len(state)) // 2 > self._submit_chunk:
            return _LargeRun(graph, state, counts)
        roots = (node.id for node in spec.nodes if _queued_at_start(node))
        tail = (
            ",".join(node.id for node in spec.nodes),
            ",".join(spec.sinks),
            ",".join(layout.nodes_reaching_sinks(spec)),
            str(sum(1 for node in spec.nodes if not node.side)),
            str(len(graph) // 2),
            *graph,
            _milliseconds(self.retention_s),
            str(self._events_max_len),
            str(len(counts) // 2),
            *counts,
            *state,
        )
        return _SubmitLayout(spec=spec, head=(",".join(roots), "1"), tail=tail)

    def _submitted(self, run_id: str, spec: GraphSpec, reply: Any) -> bool:
        """Check a submit script's reply; True if it created the run."""
        accept = frozenset({Reply.DONE, Reply.DUPLICATE})
        created = check_reply("submit", reply, run_id, accept=accept) is Reply.DONE
        if created:
            log.debug("Run %s submitted with %d nodes.", run_id, len(spec.nodes))
            # The submitting process often reads the run back with get().
            self._store_spec(run_id, "1", spec)
        return created

    def _submit_large(
        self,
        run_id: str,
        spec: GraphSpec,
        graph: list[str],
        state: list[str],
        counts: list[str],
    ) -> bool:
        """Write a run in chunks, seal it, then queue its roots slice by slice.

        The chunks go to the run's graph, node-state and state-count hashes
        and its roots list with a TTL, before the run hash exists, so no
        other script sees the run until the seal. The seal also writes an
        outbox entry, so a worker queues the roots if this process dies
        before it does.
        """
        roots = [node.id for node in spec.nodes if _queued_at_start(node)]
        if not self._stage_and_seal(run_id, spec, graph, state, counts, roots):
            return False
        self._release(run_id, "1", "")
        log.debug("Run %s submitted in chunks with %d nodes.", run_id, len(spec.nodes))
        self._store_spec(run_id, "1", spec)
        return True

    def _stage_and_seal(
        self,
        run_id: str,
        spec: GraphSpec,
        graph: list[str],
        state: list[str],
        counts: list[str],
        roots: list[NodeId],
        home: Sequence[str] = ("", "", "", ""),
    ) -> bool:
        """Write a run's keys in chunks and seal it; False if the run exists.

        ``home`` is the home run id, shard node, home epoch and key TTL in
        milliseconds of a shard run, which is sealed inactive.
        """
        partition = self._keys.partition_of(run_id)
        keys = partition.run(run_id)
        ttl_ms = max(1, int(self._stage_ttl_s * 1000))
        # A plain SET keeps the argument as the value, with no copy: a script
        # argument of a few megabytes would block Redis for tens of ms.
        with self._redis_errors(f"stage the graph spec of run {run_id}"):
            self._client.set(keys.staged_spec, spec.to_json(), px=ttl_ms)
        parts = (
            (keys.graph, "hash", graph, 2 * self._submit_chunk),
            (keys.nodes, "hash", state, 2 * self._submit_chunk),
            (keys.counts, "hash", counts, 2 * self._submit_chunk),
            (keys.roots, "list", roots, self._submit_chunk),
        )
        accept = frozenset({Reply.DONE, Reply.DUPLICATE})
        for target, kind, items, step in parts:
            for first in range(0, len(items), step):
                args: list[str | int | float] = [
                    kind,
                    "1" if first == 0 else "0",
                    str(ttl_ms),
                    *items[first : first + step],
                ]
                reply = self._scripts.call(
                    "stage", [keys.run, target], args, run_id=run_id
                )
                if check_reply("stage", reply, run_id, accept=accept) is not Reply.DONE:
                    return False
        # Sorting a shard's members by node order allocates one tuple per
        # member, and unpaused the collector's passes over the whole spec
        # took 7 times as long as the sort (100,000-member chord, 3.11).
        with paused_gc():
            seal_args: list[str | int | float] = [
                run_id,
                "1",
                ",".join(node.id for node in spec.nodes),
                ",".join(spec.sinks),
                ",".join(layout.nodes_reaching_sinks(spec)),
                str(sum(1 for node in spec.nodes if not node.side)),
                str(len(graph) // 2),
                str(len(state) // 2),
                str(len(roots)),
                _milliseconds(self.retention_s),
                str(self._events_max_len),
                str(len(counts) // 2),
                *home,
            ]
        seal_keys = [
            keys.run,
            keys.graph,
            keys.nodes,
            keys.roots,
            partition.outbox,
            keys.staged_spec,
            keys.spec,
            partition.releasing,
            keys.counts,
            partition.events,
        ]
        reply = self._scripts.call("seal", seal_keys, seal_args, run_id=run_id)
        result = check_reply("seal", reply, run_id, accept=accept | {Reply.INCOMPLETE})
        if result is Reply.INCOMPLETE:
            raise DriverError(
                f"Sealing run {run_id} failed: some of its staged chunks are "
                f"missing, because they expired (stage_ttl_s is "
                f"{self._stage_ttl_s}) or another submit of the same run id "
                "started over. Submit it again, or raise stage_ttl_s."
            )
        return result is Reply.DONE

    def _release(self, run_id: str, epoch: str, receipt: str) -> None:
        """Queue the roots of a sealed large run, one slice per script call."""
        partition = self._keys.partition_of(run_id)
        keys = partition.run(run_id)
        script_keys = [
            keys.run,
            keys.graph,
            keys.nodes,
            keys.roots,
            partition.delayed,
            partition.outbox,
            partition.releasing,
            keys.values,
            keys.errors,
            keys.counts,
            partition.events,
        ]
        args: list[str | int | float] = [
            run_id,
            epoch,
            str(self._release_slice),
            self._group,
            receipt,
        ]
        accept = frozenset({Reply.DONE, Reply.DUPLICATE, Reply.RUN_NOT_FOUND})
        while True:
            reply = self._scripts.call("release", script_keys, args, run_id=run_id)
            result = check_reply("release", reply, run_id, accept=accept)
            if result is not Reply.DONE or int(reply[1]) == 0:
                return

    def reconcile(self) -> int | None:
        """Queue the remaining roots of large runs whose release stopped.

        A run sealed by a submitter that died is released by whichever
        worker drains the seal's outbox entry. After a failover that entry
        can be lost while the run survives, so the reconciler finds runs
        without progress for ``reconcile_after_s`` and releases them again,
        which is idempotent. In the same way it sends again the shard
        activations and reports of a run whose chord shards have not all
        reported, and cancels again the shards of its cancelled shard
        nodes. One process at a time runs it, under a lock. It leaves
        alone an entry that a worker read and did not apply, because
        another worker's fetch reclaims and applies it (`_reclaim_outbox`).

        Returns:
            The number of runs it took up, or None when another process
            holds the lock.
        """
        token = self.acquire(_RECONCILE_LOCK, max(10.0, self._reconcile_after_s))
        if token is None:
            return None
        taken = 0
        try:
            listed = [
                (partition, key)
                for partition in self._keys.partitions
                for key in (partition.releasing, partition.sharded)
            ]
            calls: list[tuple[str, list[str], list[str | int | float]]] = [
                (
                    "stale_releases",
                    [key],
                    [repr(self._reconcile_after_s), str(_RECONCILE_BATCH)],
                )
                for _, key in listed
            ]
            replies = self._scripts.call_many(calls)
            for (partition, key), stale in zip(listed, replies, strict=True):
                if isinstance(stale, Exception):
                    raise DriverError(
                        f"Listing stalled runs of {key} failed: {stale}"
                    ) from stale
                for run_id in stale:
                    if key == partition.sharded:
                        log.warning(
                            "Reconciler sends the shard activations and reports "
                            "of run %s again; it made no progress for %s s.",
                            run_id,
                            self._reconcile_after_s,
                        )
                        self._resync_shards(run_id)
                    else:
                        log.warning(
                            "Reconciler releases the roots of run %s, which "
                            "made no progress for %s s.",
                            run_id,
                            self._reconcile_after_s,
                        )
                        self._release(run_id, "", "")
                    taken += 1
        finally:
            self.release(_RECONCILE_LOCK, token)
        return taken

    def _reconcile_due(self) -> None:
        """Run a reconciler pass if ``reconcile_interval_s`` passed since the last."""
        now = time.monotonic()
        with self._lock:
            if now - self._last_reconcile < self._reconcile_interval_s:
                return
            self._last_reconcile = now
        try:
            self.reconcile()
        except DriverError as err:
            log.warning("Reconciler pass failed; the next one tries again: %s", err)

    def _apply_outbox(self, partition: Keys, entry_id: str, fields: Any) -> None:
        """Apply one outbox entry; the script that applies it acknowledges it.

        An entry that fails stays pending and is applied again after the
        visibility timeout by whichever worker reclaims it.
        """
        kind = fields.get("kind")
        needed = _OUTBOX_FIELDS.get(kind, frozenset())
        problem = ""
        if not needed <= fields.keys():
            problem = (
                f"a {kind} entry needs the fields {', '.join(sorted(needed))}, "
                f"and it has {fields!r}"
            )
        elif not all(_is_utf8(text) for item in fields.items() for text in item):
            # The client decodes a byte that is not UTF-8 to a lone
            # surrogate, which no script argument can carry.
            problem = f"a field is not UTF-8 text: {fields!r}"
        if problem:
            # Stem did not write it, and applying it again would fail again.
            log.warning(
                "Deleted malformed outbox entry %s of %s: %s.",
                entry_id,
                partition.tag,
                problem,
            )
            self._ack_outbox(partition, entry_id)
            return
        try:
            if kind == "release":
                self._release(fields["run"], fields["epoch"], entry_id)
            elif kind == "activate":
                self._activate(fields["run"], fields["node"], fields["epoch"])
                self._ack_outbox(partition, entry_id)
            elif kind == "report":
                self._apply_report(
                    fields["run"],
                    fields["node"],
                    fields["epoch"],
                    fields["shard"],
                    fields["outcome"],
                    fields["cause"],
                )
                self._ack_outbox(partition, entry_id)
            elif kind == "cancel":
                # An entry written before its epoch was added has none.
                self._cancel_shard(
                    shard_run_id(fields["run"], fields["node"]), fields.get("epoch", "")
                )
                self._ack_outbox(partition, entry_id)
            elif kind in ("retain", "keep"):
                self._apply_shard_retention(
                    fields["run"], fields["shards"].split(","), fields["version"], kind
                )
                self._ack_outbox(partition, entry_id)
            else:
                log.warning(
                    "Left outbox entry %s of %s with unknown kind %r for a "
                    "newer worker.",
                    entry_id,
                    partition.tag,
                    kind,
                )
        except DriverError as err:
            log.warning(
                "Applying outbox entry %s of %s failed; it is retried after the "
                "visibility timeout: %s",
                entry_id,
                partition.tag,
                err,
            )

    def _ack_outbox(self, partition: Keys, entry_id: str) -> None:
        """Acknowledge and delete one outbox entry of a partition."""
        with self._redis_errors(f"acknowledge outbox entry {entry_id}"):
            pipe = self._client.pipeline(transaction=True)
            pipe.xack(partition.outbox, self._group, entry_id)
            pipe.xdel(partition.outbox, entry_id)
            pipe.execute()

    def claim(self, message: Message) -> Claim | None:
        keys, args = self._claim_call(message, self._known_version(message.run_id))
        reply = self._scripts.call(
            "claim", keys, args, run_id=message.run_id, node_id=message.node_id
        )
        return self._claimed(message, reply)

    def claim_many(self, messages: Sequence[Message]) -> list[Claim | None]:
        calls: list[tuple[str, list[str], list[str | int | float]]] = []
        requested: set[str] = set()
        for message in messages:
            # Only the first claim of a run in the batch may return its spec,
            # so a batch of chord members carries one copy of it.
            known = "-" if message.run_id in requested else None
            if known is None:
                known = self._known_version(message.run_id)
                if not known:
                    requested.add(message.run_id)
            calls.append(("claim", *self._claim_call(message, known)))
        replies = self._scripts.call_many(calls)
        claims: list[Claim | None] = []
        for message, reply in zip(messages, replies, strict=True):
            try:
                if isinstance(reply, redis.RedisError):
                    error = script_error(
                        "claim", reply, message.run_id, message.node_id
                    )
                    raise error from reply
                if isinstance(reply, Exception):
                    raise reply
                claims.append(self._claimed(message, reply))
            except Exception:
                # Its message stays pending, so it is delivered again after
                # the visibility timeout; the other claims of the batch stand.
                log.error("Claiming %s failed.", _ids(message), exc_info=True)
                claims.append(None)
        return claims

    def _claim_call(
        self, message: Message, known_version: str
    ) -> tuple[list[str], list[str | int | float]]:
        partition = self._keys.partition_of(message.run_id)
        keys = [partition.run_hash(message.run_id), partition.queue(message.queue)]
        args: list[str | int | float] = [
            message.node_id,
            str(message.attempt),
            str(message.epoch),
            message.receipt,
            self._group,
            "1" if message.reclaimed else "0",
            known_version,
            str(self._inline_input_chars),
        ]
        return keys, args

    def _claimed(self, message: Message, reply: Any) -> Claim | None:
        """Build the claim from a claim script's reply; None for a dropped message."""
        result = check_reply("claim", reply, message.run_id, message.node_id)
        if result is not Reply.DONE:
            log.debug("Dropped %s message for %s.", result.name.lower(), _ids(message))
            return None

        cause, version, lease, text = reply[1], reply[2], reply[3], reply[4]
        # A shard run's nodes keep the task ids they have in the home run.
        owner = reply[5] or message.run_id
        triples = reply[6:]
        spec = self._cached_spec(message.run_id, version, text)
        node = spec.node(message.node_id)
        if node.input.kind == "none":
            # No upstream value to build, as for a run's first node.
            return self._claim_result(message, node, lease, owner)
        reads = list(template_nodes(node.input))
        if reads and all(spec.node(read).task == SHARD_TASK for read in reads):
            # A callback that joins shards: its input is built from them.
            claim = self._claim_result(message, node, lease, owner)
            upstream = self._shard_input(message.run_id, reads)
            claim.args.insert(0, upstream)
            return claim
        if len(triples) < 3 * len(reads):
            triples = self._read_inputs(message.run_id, reads)
        # A chord callback reads every header member's value.
        large = len(reads) > _LARGE_INPUT_READS
        with paused_gc() if large else contextlib.nullcontext():
            records: dict[str, NodeRecord] = {}
            for index, read in enumerate(reads):
                state, value, error = triples[3 * index : 3 * index + 3]
                records[read] = NodeRecord(
                    state=state,
                    value=value or None,
                    error=layout.error_from_json(error),
                )
            records[node.id] = NodeRecord(state="running", cause=cause or None)

            run = RunState(run_id=message.run_id, spec=spec, nodes=records)
            has_value, upstream = machine.resolve_input(run, node)
        claim = self._claim_result(message, node, lease, owner)
        if has_value:
            claim.args.insert(0, upstream)
        return claim

    def _claim_result(
        self, message: Message, node: NodeSpec, lease: Any, owner: str
    ) -> Claim:
        """Build a claim without its upstream value, which the caller inserts."""
        args_out = [decode(item) for item in node.args]
        kwargs = {key: decode(item) for key, item in node.kwargs.items()}
        leased = _leased(message, int(lease))
        if message.reclaimed and leased.lease > 1:
            log.warning("Took over %s with lease %d.", _ids(message), leased.lease)
        elif log.isEnabledFor(logging.DEBUG):
            log.debug("Claimed %s.", _ids(message))
        return Claim(
            leased, node.task, task_id(owner, node.id), args_out, kwargs, node.options
        )

    def _read_inputs(self, run_id: str, reads: Sequence[str]) -> list[str]:
        """Read the state, value and error of each node in ``reads``, in pages.

        The claim of a node that reads many others leaves its inputs out, so
        no script call grows with a chord. The nodes read have ended before
        the claimed node was queued, so reading them after the claim sees
        what the claim would have seen.
        """
        keys = self._keys.run(run_id)
        triples: list[str] = []
        for first in range(0, len(reads), _READ_PAGE):
            page = list(reads[first : first + _READ_PAGE])
            with self._redis_errors(f"read the inputs of a node of run {run_id}"):
                pipe = self._client.pipeline(transaction=False)
                pipe.hmget(keys.nodes, page)
                pipe.hmget(keys.values, page)
                pipe.hmget(keys.errors, page)
                states, values, errors = pipe.execute()
            for state, value, error in zip(states, values, errors, strict=True):
                triples += [state or "", value or "", error or ""]
        return triples

    def complete(self, message: Message, value: str) -> None:
        self._report("complete", message, value)

    def complete_many(self, reports: Sequence[tuple[Message, str]]) -> None:
        if len(reports) == 1:
            # One plain EVALSHA costs less client CPU than a pipeline of one.
            [(message, value)] = reports
            try:
                self.complete(message, value)
            except Exception:
                log.error(_REPORT_FAILED, _ids(message), exc_info=True)
            return
        calls: list[tuple[str, list[str], list[str | int | float]]] = [
            (
                "complete",
                self._report_keys(message),
                [*self._message_args(message), value],
            )
            for message, value in reports
        ]
        replies = self._scripts.call_many(calls)
        for (message, _), reply in zip(reports, replies, strict=True):
            try:
                if isinstance(reply, redis.RedisError):
                    error = script_error(
                        "complete", reply, message.run_id, message.node_id
                    )
                    raise error from reply
                if isinstance(reply, Exception):
                    raise reply
                self._check_report("complete", message, reply)
            except Exception:
                # Its message stays pending, so it is delivered again after
                # the visibility timeout. The other reports of the batch stand.
                log.error(_REPORT_FAILED, _ids(message), exc_info=True)

    def fail(self, message: Message, error: ErrorInfo) -> None:
        self._report("fail", message, layout.error_json(error))

    def retry(self, message: Message, error: ErrorInfo, delay_s: float) -> None:
        self._report("retry", message, layout.error_json(error), repr(float(delay_s)))

    def replace(self, message: Message, spec: GraphSpec) -> None:
        keys = self._report_keys(message)
        for _ in range(_SPLICE_ATTEMPTS):
            with self._redis_errors(f"read the graph spec of run {message.run_id}"):
                current: Any = self._client.hmget(keys[0], ["spec_version", "spec"])
            version, text = current
            if text is None and version is not None:
                text = self._large_spec(message.run_id)
            args = self._message_args(message)
            if text is not None:
                old = self._cached_spec(message.run_id, version, text)
                args += layout.splice_args(old, message.node_id, spec, version)
            reply = self._scripts.call(
                "splice", keys, args, run_id=message.run_id, node_id=message.node_id
            )
            result = check_reply("splice", reply, message.run_id, message.node_id)
            if result is Reply.CONFLICT:
                continue
            if result is not Reply.DONE:
                log.debug(
                    "Ignored a %s replace report for %s.",
                    result.name.lower(),
                    _ids(message),
                )
            return
        raise DriverError(
            f"Replacing node {message.node_id} of run {message.run_id} failed: "
            f"the run's graph changed {_SPLICE_ATTEMPTS} times while the new "
            "graph was computed. Report the task again."
        )

    def cancel(self, run_id: str) -> None:
        self._cancel(run_id, "")

    def _cancel(self, run_id: str, home_epoch: str) -> None:
        """Cancel a run; a shard run only if it is not in a later home epoch.

        ``home_epoch`` is the home run's epoch that asked to cancel a shard,
        or "" to cancel the run whatever its epoch.
        """
        partition = self._keys.partition_of(run_id)
        run_keys = partition.run(run_id)
        keys = [*run_keys.all(), run_keys.counts, partition.events, partition.outbox]
        reply = self._scripts.call("cancel", keys, [run_id, home_epoch], run_id=run_id)
        accept = frozenset({Reply.DONE, Reply.DUPLICATE})
        if check_reply("cancel", reply, run_id, accept=accept) is not Reply.DONE:
            return
        log.debug("Run %s cancelled.", run_id)
        # The script left a "cancel" entry per shard for a worker to apply.
        # Applying them here as well stops the shards without waiting for one.
        spec = self._spec_of(run_id)
        for node in spec.nodes:
            if node.task == SHARD_TASK:
                self._cancel_shard(shard_run_id(run_id, node.id))

    def retry_run(self, run_id: str) -> int:
        run_keys = self._keys.run(run_id)
        with self._redis_errors(f"read the epoch of run {run_id}"):
            seen: Any = self._client.hget(run_keys.run, "epoch")
        if seen is None:
            raise RunNotFound(f"Run {run_id!r} is not found in {self}.")
        reply = self._scripts.call(
            "reopen", [run_keys.run], [run_id, seen], run_id=run_id
        )
        accept = frozenset({Reply.DONE, Reply.DUPLICATE, Reply.NOT_RETRYABLE})
        result = check_reply("reopen", reply, run_id, accept=accept)
        if result is Reply.NOT_RETRYABLE:
            raise RunNotRetryable(run_id, str(reply[1]))
        epoch = int(reply[1])
        if result is Reply.DONE:
            log.info("Run %s reopened as epoch %d.", run_id, epoch)
        else:
            log.info("Run %s was already reopened as epoch %d.", run_id, epoch)
        return epoch

    def snapshot(self, run_id: str) -> RunSnapshot:
        keys = self._keys.run(run_id)
        known = self._known_version(run_id)
        while True:
            # A large spec is read only when this version is not parsed yet.
            fields_read = [*_SNAPSHOT_FIELDS, "spec"] if not known else _SNAPSHOT_FIELDS
            with self._redis_errors(f"read run {run_id}"):
                pipe = self._client.pipeline(transaction=True)
                pipe.hmget(keys.run, [*fields_read, "single"])
                pipe.hgetall(keys.nodes)
                pipe.hgetall(keys.values)
                pipe.hgetall(keys.errors)
                found, fields, values, errors = pipe.execute()
            run = _fields_found(fields_read, found[:-1])
            if found[-1] is not None:
                run, fields, values, errors = self._read_single(run_id, fields_read)
            if "status" not in run:
                raise self._not_found(run_id)
            version, text = run["spec_version"], run.pop("spec", "")
            if text or version == known:
                break
            if not known:
                # A large run keeps its spec in its own key until a splice.
                text = self._large_spec(run_id)
                break
            # A splice changed the spec since it was parsed: read it too.
            known = ""
        return self._snapshot_of(run_id, run, version, text, (fields, values, errors))

    def _read_single(
        self, run_id: str, fields_read: Sequence[str]
    ) -> tuple[dict[str, str], dict[str, str], dict[str, str], dict[str, str]]:
        """Read a run of one node kept in its run hash (lua/include/single.lua).

        Returns the run fields of ``fields_read`` that exist, and the node
        state, values and errors hashes as a run in the usual keys has them.
        The run may have moved to the usual keys since the caller's read, so
        those are read in the same transaction.
        """
        keys = self._keys.run(run_id)
        with self._redis_errors(f"read run {run_id}"):
            pipe = self._client.pipeline(transaction=True)
            pipe.hgetall(keys.run)
            pipe.hgetall(keys.nodes)
            pipe.hgetall(keys.values)
            pipe.hgetall(keys.errors)
            flat, fields, values, errors = pipe.execute()
        run = {name: flat[name] for name in fields_read if name in flat}
        if "single" in flat:
            fields, values = layout.single_run_hashes(flat)
            errors = {}
        return run, fields, values, errors

    def _snapshot_of(
        self,
        run_id: str,
        run: dict[str, str],
        version: str,
        text: str,
        hashes: tuple[dict[str, str], dict[str, str], dict[str, str]],
        *,
        full: bool = True,
    ) -> RunSnapshot:
        """Build a snapshot from the run hash fields and the three node hashes.

        A home run's shard nodes are replaced by their shards' nodes, which
        reads every shard. With ``full=False`` a succeeded run whose value
        reads no shard node keeps its shard nodes, since its value does not
        change.
        """
        spec = self._cached_spec(run_id, version, text)
        with paused_gc():
            nodes = layout.node_records(spec, *hashes)
        shard_nodes = [node.id for node in spec.nodes if node.task == SHARD_TASK]
        value_only = not full and run.get("status") == "succeeded"
        if value_only and not set(template_nodes(spec.output)) & set(shard_nodes):
            shard_nodes = []
        if shard_nodes:
            spec, nodes = self._merge_shards(run_id, spec, nodes, shard_nodes)
            error_node = run.get("error_node")
            if error_node in shard_nodes:
                # A failed shard node's cause is the member that failed in it,
                # unless that member's shard is gone from the view.
                cause = hashes[0].get(f"{error_node}/cause")
                if cause in nodes:
                    run["error_node"] = cause
        with paused_gc():
            return layout.snapshot_of(run_id, spec, run, nodes)

    def _read_if_ended(self, run_id: str, *, full: bool = True) -> RunSnapshot | None:
        """Return the run's snapshot if it has ended, else None.

        One script call reads the status and, if the run has ended, the node
        hashes, unless the spec must be read too (a large run's spec is not
        in its run hash). ``full`` is `wait_ended`'s.

        Raises:
            RunNotFound: if the run does not exist.
        """
        if not full:
            return self._read_ended_many([run_id], full=False)[0]
        keys, fields_read = self._read_ended_call(run_id)
        reply = self._scripts.call("read_ended", keys, fields_read, run_id=run_id)
        return self._ended_from_reply(run_id, fields_read, reply, full=full)

    def _read_ended_many(
        self, run_ids: Sequence[str], *, full: bool = True
    ) -> list[RunSnapshot | None]:
        """Do what `_read_if_ended` does for each run, pipelined per batch.

        With ``full=False``, a run whose value is one node's stored value, by
        the spec this client has parsed, is read with read_value: its run
        fields and that value only. Such a run's snapshot, when it
        succeeded, has no node records. The runs that ended otherwise are
        read again with read_ended.
        """
        snapshots: list[RunSnapshot | None] = []
        for first in range(0, len(run_ids), _PIPELINE_BATCH):
            batch = run_ids[first : first + _PIPELINE_BATCH]
            calls: list[tuple[str, list[str], list[str | int | float]]] = []
            outputs: list[tuple[str, GraphSpec, NodeId] | None] = []
            for run_id in batch:
                output = None if full else self._value_node(run_id)
                outputs.append(output)
                keys = self._keys.run(run_id)
                if output is None:
                    run_keys, fields = self._read_ended_call(run_id)
                    calls.append(("read_ended", run_keys, fields))
                else:
                    arguments: list[str | int | float] = [output[2], *_SNAPSHOT_FIELDS]
                    calls.append(("read_value", [keys.run, keys.values], arguments))
            replies = self._scripts.call_many(calls)
            again: list[int] = []
            for run_id, (name, _, fields), output, reply in zip(
                batch, calls, outputs, replies, strict=True
            ):
                if isinstance(reply, redis.RedisError):
                    raise script_error(name, reply, run_id, "") from reply
                if isinstance(reply, Exception):
                    raise reply
                if output is None:
                    snapshots.append(self._ended_from_reply(run_id, fields, reply))
                    continue
                snapshot, ended = self._value_from_reply(run_id, output, reply)
                if ended and snapshot is None:
                    again.append(len(snapshots))
                snapshots.append(snapshot)
            if again:
                found = self._read_ended_many([run_ids[index] for index in again])
                for index, snapshot in zip(again, found, strict=True):
                    snapshots[index] = snapshot
        return snapshots

    def _value_node(self, run_id: str) -> tuple[str, GraphSpec, NodeId] | None:
        """Return the cached spec version, spec and node whose value is the run's.

        None when this client has no spec of the run cached, or the run's
        value is not one node's stored value (a list, a shard, ignore_result).
        """
        with self._lock:
            cached = self._specs.get(run_id)
        if cached is None:
            return None
        version, spec = cached
        output = spec.output
        if not isinstance(output, NodeInput):
            return None
        first = spec.nodes[0]
        node = first if first.id == output.node else spec.node(output.node)
        if node.task == SHARD_TASK or node.options.ignore_result:
            return None
        return version, spec, node.id

    def _value_from_reply(
        self, run_id: str, output: tuple[str, GraphSpec, NodeId], reply: Any
    ) -> tuple[RunSnapshot | None, bool]:
        """Build a succeeded run's snapshot from a read_value reply.

        Returns the snapshot, or None, and whether the run has ended: None
        with True means the run ended some other way, or its spec changed,
        and must be read with read_ended.

        Raises:
            RunNotFound: if the run does not exist.
        """
        run = _fields_found(_SNAPSHOT_FIELDS, reply[0])
        status = run.get("status")
        if status is None:
            raise self._not_found(run_id)
        version, spec, _ = output
        if status != "succeeded" or run.get("spec_version") != version:
            return None, status != "running"
        value = reply[1]
        snapshot = RunSnapshot(
            run_id=run_id,
            status="succeeded",
            spec=spec,
            nodes={},
            created_at=float(run.get("created_at", "0")),
            ended_at=float(run["ended_at"]) if "ended_at" in run else None,
            value=dumps(None) if value is None else str(value),
            error_node=None,
            epoch=int(run.get("epoch", "1")),
        )
        return snapshot, True

    def _read_ended_call(
        self, run_id: str
    ) -> tuple[list[str], list[str | int | float]]:
        """Return the keys and arguments of the read_ended script for a run."""
        keys = self._keys.run(run_id)
        known = self._known_version(run_id)
        fields_read = [*_SNAPSHOT_FIELDS, "spec"] if not known else _SNAPSHOT_FIELDS
        return [keys.run, keys.nodes, keys.values, keys.errors], list(fields_read)

    def _ended_from_reply(
        self,
        run_id: str,
        fields_read: Sequence[Any],
        reply: Any,
        *,
        full: bool = True,
    ) -> RunSnapshot | None:
        """Build the snapshot of an ended run from a read_ended reply; None if running.

        Raises:
            RunNotFound: if the run does not exist.
        """
        run = _fields_found([str(name) for name in fields_read], reply[0])
        if "status" not in run:
            raise self._not_found(run_id)
        if len(reply) == 1:
            return None
        version, text = run["spec_version"], run.pop("spec", "")
        if not text and version != self._known_version(run_id):
            # A large run's spec, or a spec that a splice changed since it
            # was parsed: snapshot reads either.
            return self.snapshot(run_id)
        hashes = (_pairs(reply[1]), _pairs(reply[2]), _pairs(reply[3]))
        return self._snapshot_of(run_id, run, version, text, hashes, full=full)

    def wait(self, run_id: str, timeout_s: float | None) -> RunSnapshot:
        ended = self.wait_ended(run_id, timeout_s)
        return self.snapshot(run_id) if ended is None else ended

    def wait_ended(
        self, run_id: str, timeout_s: float | None, *, full: bool = True
    ) -> RunSnapshot | None:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            ended = self._read_if_ended(run_id, full=full)
            if ended is not None:
                return ended
            run_key = self._keys.run(run_id).run
            # A running run is polled with HGET, a fifth of the script call's
            # bytes, until its status changes.
            status: Any = "running"
            while status == "running":
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return self._read_if_ended(run_id, full=full)
                pause = self._poll_interval_s
                time.sleep(pause if remaining is None else min(pause, remaining))
                with self._redis_errors(f"read the status of run {run_id}"):
                    status = self._client.hget(run_key, "status")
                if status is None:
                    raise self._not_found(run_id)

    def wait_ended_many(
        self,
        run_ids: Sequence[str],
        timeout_s: float | None,
        *,
        stop_at_failure: bool = False,
        full: bool = True,
    ) -> list[RunSnapshot | None]:
        """Wait as `wait_ended` does, for many runs, with one HGET per poll.

        The first read is one pipeline of read_ended calls. Runs still
        running are then polled by `_poll_changed`, and only the runs whose
        status changed are read again. The run it polls is the first one
        still running, the only one whose end can make `failure_reached`
        true for ``stop_at_failure``.
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        snapshots: list[RunSnapshot | None] = [None] * len(run_ids)
        reading = list(range(len(run_ids)))
        while True:
            found = self._read_ended_many(
                [run_ids[index] for index in reading], full=full
            )
            for index, snapshot in zip(reading, found, strict=True):
                snapshots[index] = snapshot
            if stop_at_failure and failure_reached(snapshots):
                return snapshots
            pending = [
                index for index in range(len(run_ids)) if snapshots[index] is None
            ]
            if not pending:
                return snapshots
            reading = self._poll_changed(run_ids, pending, deadline)
            if not reading:
                return snapshots

    def _poll_changed(
        self, run_ids: Sequence[str], pending: list[int], deadline: float | None
    ) -> list[int]:
        """Poll the status of the pending runs until one changes; return their indexes.

        The caller waits for every run, so each poll reads the status of the
        first pending run alone. Once that run has left "running", one pass
        reads every pending run's status, and the runs that ended meanwhile
        are returned together. A poll costs one HGET however many runs wait.

        At the deadline, returns every pending index to read once more, or
        an empty list when nothing changed since that last read.

        Raises:
            RunNotFound: if a pending run no longer exists.
        """
        last_read = True
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return [] if last_read else pending
            pause = self._poll_interval_s
            time.sleep(pause if remaining is None else min(pause, remaining))
            last_read = False
            if self._read_status(run_ids[pending[0]]) == "running":
                continue
            changed = self._read_changed(run_ids, pending)
            if changed:
                return changed

    def _read_status(self, run_id: str) -> str | None:
        """Return a run's status field, or None when the run does not exist."""
        with self._redis_errors(f"read the status of run {run_id}"):
            status: Any = self._client.hget(self._keys.run(run_id).run, "status")
        return None if status is None else str(status)

    def _read_changed(self, run_ids: Sequence[str], pending: list[int]) -> list[int]:
        """Return the indexes of pending runs no longer running, read in order.

        Statuses are read in pipelined chunks that double from
        `_FIRST_STATUS_CHUNK` to `_PIPELINE_BATCH` while every run of a chunk
        has ended, and the reading stops after the first chunk with a run
        still running. Runs mostly end in the order they were queued, so the
        runs after that one are mostly running too, and the waiter needs
        every run anyway: a later poll reads them. Reading every pending
        status at each change read each run about 3.5 times in a set of 1,000
        no-op runs.

        Raises:
            RunNotFound: if a pending run no longer exists.
        """
        changed: list[int] = []
        first = 0
        size = _FIRST_STATUS_CHUNK
        while first < len(pending):
            batch = pending[first : first + size]
            with self._redis_errors(f"read the status of {len(batch)} runs"):
                pipe = self._client.pipeline(transaction=False)
                for index in batch:
                    pipe.hget(self._keys.run(run_ids[index]).run, "status")
                statuses: list[Any] = pipe.execute()
            running = False
            for index, status in zip(batch, statuses, strict=True):
                if status is None:
                    raise self._not_found(run_ids[index])
                if status == "running":
                    running = True
                else:
                    changed.append(index)
            if running:
                break
            first += len(batch)
            size = min(2 * size, _PIPELINE_BATCH)
        return changed

    def workers_alive(self) -> int | None:
        return len(self.workers())

    def group_counts(self, run_id: str) -> dict[int | None, dict[str, int]]:
        keys = self._keys.run(run_id)
        with self._redis_errors(f"read the state counts of run {run_id}"):
            pipe = self._client.pipeline(transaction=True)
            pipe.hmget(keys.run, ["status", "single", "nodes"])
            pipe.hgetall(keys.counts)
            (status, single, node), fields = pipe.execute()
            if single is not None:
                # A run of one node has no state-count hash: its node is the
                # only one counted (lua/include/single.lua).
                state: Any = self._client.hget(keys.run, node)
                if state is not None:
                    return layout.single_run_counts(single, state)
                # The run moved to the usual keys since the read above.
                fields = self._client.hgetall(keys.counts)
        if status is None:
            raise self._not_found(run_id)
        counts = layout.group_counts(fields)
        spec = self._spec_of(run_id)
        for node in spec.nodes:
            if node.task == SHARD_TASK:
                self._add_shard_counts(counts, run_id, node)
        return counts

    def events(
        self, after: str | None = None, limit: int = 100
    ) -> list[LifecycleEvent]:
        if after is not None and not _EVENT_ID.fullmatch(after):
            raise ValueError(
                f"Event id {after!r} is invalid; pass the id of an event that "
                "events() returned."
            )
        # Each partition has its own stream. The scripts start every event id
        # with the write time in microseconds, so the streams merge by id.
        # On one Redis server (not a Cluster) one transaction reads them all.
        start = "-" if after is None else f"({after}"
        partitions = self._keys.partitions
        with self._redis_errors("read the lifecycle event streams"):
            if len(partitions) == 1 or isinstance(self._client, RedisCluster):
                replies: list[Any] = [
                    self._client.xrange(keys.events, min=start, count=limit)
                    for keys in partitions
                ]
            else:
                pipe = self._client.pipeline(transaction=True)
                for keys in partitions:
                    pipe.xrange(keys.events, min=start, count=limit)
                replies = pipe.execute()
        found = [
            (_event_position(entry_id), index, entry_id, fields)
            for index, entries in enumerate(replies)
            for entry_id, fields in entries
        ]
        found.sort(key=lambda item: (item[0], item[1]))
        return [_event(entry_id, fields) for _, _, entry_id, fields in found[:limit]]

    # -- broker -------------------------------------------------------------

    def fetch(
        self, queues: Sequence[str], limit: int, timeout_s: float
    ) -> list[Message]:
        deadline = time.monotonic() + timeout_s
        self._ensure_groups(queues)
        while True:
            batch = self._take_buffered(queues, limit)
            if batch:
                return batch
            self._promote_due()
            self._reconcile_due()
            batch = self._reclaim_stalled(queues, limit)
            remaining = deadline - time.monotonic()
            if not batch:
                batch = self._read(queues, limit, remaining)
            if batch or remaining <= 0:
                return batch

    def renew(self, message: Message) -> bool:
        if not message.receipt:
            return False
        partition = self._keys.partition_of(message.run_id)
        run_keys = partition.run(message.run_id)
        keys = [partition.queue(message.queue), run_keys.nodes, run_keys.run]
        args: list[str | int | float] = [
            self._group,
            self._consumer,
            message.receipt,
            message.node_id,
            str(message.attempt),
            str(message.lease),
            str(message.epoch),
        ]
        renewed = bool(
            self._scripts.call(
                "renew", keys, args, run_id=message.run_id, node_id=message.node_id
            )
        )
        if not renewed:
            log.warning("Lease of %s was lost; it was taken over.", _ids(message))
        return renewed

    def dead_letter(self, message: Message, reason: str) -> None:
        self._dead_letter(message, reason, abandoned=False)

    def _dead_letter(self, message: Message, reason: str, *, abandoned: bool) -> None:
        error = ErrorInfo("stem.engine.errors", "DeadLettered", reason, [reason])
        partition = self._keys.partition_of(message.run_id)
        run_keys = partition.run(message.run_id)
        keys = [
            *run_keys.all(),
            partition.delayed,
            partition.queue(message.queue),
            partition.dead,
            run_keys.counts,
            partition.events,
        ]
        args: list[str | int | float] = [
            message.run_id,
            *self._message_args(message),
            layout.error_json(error),
            reason,
            message.queue,
            message.headers.get(TASK_HEADER, ""),
            "1" if abandoned else "0",
        ]
        reply = self._scripts.call(
            "dead_letter", keys, args, run_id=message.run_id, node_id=message.node_id
        )
        check_reply("dead_letter", reply, message.run_id, message.node_id)
        log.warning("Dead-lettered %s: %s", _ids(message), printable(reason))

    def defer(self, message: Message, delay_s: float) -> bool:
        if not message.receipt:
            return False
        partition = self._keys.partition_of(message.run_id)
        keys = [partition.run_hash(message.run_id), partition.queue(message.queue)]
        args: list[str | int | float] = [
            message.node_id,
            str(message.attempt),
            str(message.epoch),
            message.receipt,
            self._group,
            self._consumer,
            message.queue,
            message.headers.get(TASK_HEADER, ""),
            str(round(message.enqueued_at * 1000)),
            repr(max(0.0, float(delay_s))),
        ]
        reply = self._scripts.call(
            "defer", keys, args, run_id=message.run_id, node_id=message.node_id
        )
        result = check_reply("defer", reply, message.run_id, message.node_id)
        if result is Reply.DONE:
            return True
        if result is Reply.DUPLICATE:
            log.warning(
                "Deferring %s changed nothing: another worker took it over.",
                _ids(message),
            )
        else:
            log.debug("Dropped a stale deferred message for %s.", _ids(message))
        return False

    def dead_letters(self) -> list[tuple[Message, str]]:
        # Partition by partition: entry ids come from each node's clock, so
        # they do not order entries across partitions.
        found: list[tuple[Message, str]] = []
        for partition in self._keys.partitions:
            with self._redis_errors(f"read the dead-letter stream {partition.dead}"):
                entries: Any = self._client.xrange(partition.dead)
            for entry_id, fields in entries:
                message = _message(fields["queue"], entry_id, fields)
                found.append((message, str(fields["reason"])))
        return found

    # -- schedule store and lock ------------------------------------------

    def claim_fire(self, entry: str, fire_time_s: float) -> bool:
        key = self._keys.fire(entry, fire_time_s)
        ttl_ms = max(1, int(self._fire_ttl_s * 1000))
        with self._redis_errors(f"claim fire time {fire_time_s} of {entry}"):
            # One transaction, so a claimed time is never missing from the
            # latest-fire record. ZADD GT (Redis 6.2+) keeps the later time.
            pipe = self._client.pipeline(transaction=True)
            pipe.set(key, "1", nx=True, px=ttl_ms)
            pipe.zadd(self._keys.last_fires, {entry: fire_time_s}, gt=True)
            claimed, _ = pipe.execute()
        return bool(claimed)

    def last_fire(self, entry: str) -> float | None:
        with self._redis_errors(f"read the latest fire time of {entry}"):
            score = self._client.zscore(self._keys.last_fires, entry)
        return None if score is None else float(score)

    def acquire(self, name: str, lease_s: float) -> str | None:
        token = uuid.uuid4().hex
        lease_ms = max(1, int(lease_s * 1000))
        with self._redis_errors(f"acquire lock {name}"):
            acquired = self._client.set(
                self._keys.lock(name), token, nx=True, px=lease_ms
            )
        return token if acquired else None

    def release(self, name: str, token: str) -> bool:
        reply = self._scripts.call("release_lock", [self._keys.lock(name)], [token])
        return bool(reply)

    # -- worker bookkeeping -------------------------------------------------

    def worker_started(self) -> None:
        with self._lock:
            self._workers += 1

    def worker_stopped(self) -> None:
        with self._lock:
            self._workers -= 1

    def close(self) -> None:
        try:
            self._hand_back_buffered()
        except DriverError as err:
            log.warning(
                "Handing back fetched messages failed, so they wait for the "
                "visibility timeout: %s",
                err,
            )
        with self._redis_errors("close the connection pool"):
            self._client.close()

    # -- internals ------------------------------------------------------------

    def _report(self, script: str, message: Message, *payload: str) -> None:
        keys = self._report_keys(message)
        args: list[str | int | float] = [*self._message_args(message), *payload]
        reply = self._scripts.call(
            script, keys, args, run_id=message.run_id, node_id=message.node_id
        )
        self._check_report(script, message, reply)

    def _check_report(self, script: str, message: Message, reply: Any) -> None:
        result = check_reply(script, reply, message.run_id, message.node_id)
        if result is not Reply.DONE:
            log.debug(
                "Ignored a %s %s report for %s.",
                result.name.lower(),
                script,
                _ids(message),
            )

    def _report_keys(self, message: Message) -> list[str]:
        """Return the keys of complete, fail, retry and splice, in script order.

        The scripts build the run's other keys from the run hash's name.
        """
        partition = self._keys.partition_of(message.run_id)
        return [partition.run_hash(message.run_id), partition.queue(message.queue)]

    def _not_found(self, run_id: str) -> RunNotFound:
        return RunNotFound(
            f"Run {run_id!r} is not found in {self}: it was never submitted "
            f"here, or it ended more than retention_s ({self.retention_s} s) "
            "ago and its keys expired."
        )

    def _message_args(self, message: Message) -> list[str | int | float]:
        """Return the first arguments of the report scripts.

        complete, fail, retry and splice take the run id from their run key,
        and dead_letter takes it as its first argument, before these.
        """
        return [
            message.node_id,
            str(message.attempt),
            str(message.epoch),
            message.receipt,
            self._group,
            str(message.lease),
        ]

    def _known_version(self, run_id: str) -> str:
        """Return the spec version parsed for a run, or "" when none is cached."""
        with self._lock:
            cached = self._specs.get(run_id)
        return "" if cached is None else cached[0]

    def _large_spec(self, run_id: str) -> str:
        """Read the spec of a large run, which the seal keeps in its own key.

        A splice writes the new spec to the run hash, which then takes over.

        Raises:
            RunNotFound: if the run has no spec key either.
        """
        with self._redis_errors(f"read the graph spec of run {run_id}"):
            text: Any = self._client.get(self._keys.run(run_id).spec)
        if text is None:
            raise self._not_found(run_id)
        return str(text)

    def _cached_spec(self, run_id: str, version: str, text: str) -> GraphSpec:
        """Return the run's spec of ``version``, parsing ``text`` if not cached.

        ``text`` may be "" when the claim script saw that this version is
        cached, or when the run is a large one, whose spec is not in its run
        hash. The spec is then read from Redis if it is not cached (another
        thread evicted it in between, or this is a large run's first claim).
        """
        with self._lock:
            cached = self._specs.get(run_id)
            if cached is not None and cached[0] == version:
                self._specs.move_to_end(run_id)
                return cached[1]
        if not text:
            with self._redis_errors(f"read the graph spec of run {run_id}"):
                found: Any = self._client.hmget(
                    self._keys.run(run_id).run, ["spec_version", "spec"]
                )
            if found[0] is None:
                raise self._not_found(run_id)
            version = found[0]
            text = found[1] if found[1] is not None else self._large_spec(run_id)
        # Parsed outside the lock: a large spec takes seconds to parse, and
        # other runs' claims must not wait for it.
        spec = self._spec_parser.parse(text)
        self._store_spec(run_id, version, spec)
        return spec

    def _store_spec(self, run_id: str, version: str, spec: GraphSpec) -> None:
        with self._lock:
            replaced = self._specs.pop(run_id, None)
            if replaced is not None:
                self._cached_nodes -= len(replaced[1].nodes)
            self._specs[run_id] = (version, spec)
            self._cached_nodes += len(spec.nodes)
            while len(self._specs) > 1 and (
                self._cached_nodes > _SPEC_CACHE_NODES
                or len(self._specs) > _SPEC_CACHE_RUNS
            ):
                _, (_, evicted) = self._specs.popitem(last=False)
                self._cached_nodes -= len(evicted.nodes)

    def _ensure_groups(self, queues: Sequence[str]) -> None:
        for partition in self._keys.partitions:
            self._ensure_group(partition.outbox)
            for queue in queues:
                self._ensure_group(partition.queue(queue))

    def _ensure_group(self, stream: str) -> None:
        if stream in self._groups:
            return
        try:
            # Id 0: messages that scripts added before the group existed
            # are delivered too.
            self._client.xgroup_create(stream, self._group, id="0", mkstream=True)
        except redis.ResponseError as err:
            if "BUSYGROUP" not in str(err):
                raise DriverError(
                    f"Creating consumer group {self._group} on {stream} failed: {err}"
                ) from err
        except redis.RedisError as err:
            raise DriverError(
                f"Creating consumer group {self._group} on {stream} failed: {err}"
            ) from err
        with self._lock:
            self._groups.add(stream)

    def _promote_due(self) -> None:
        """Move due delayed messages of every partition, in one pipeline.

        Concurrent fetches of one driver share the work, so it runs at most
        once per `_MAX_BLOCK_S`. Each round moves up to ``promote_batch``
        messages per partition.
        """
        now = time.monotonic()
        with self._lock:
            if now - self._last_promote < _MAX_BLOCK_S:
                return
            self._last_promote = now
        calls: list[tuple[str, list[str], list[str | int | float]]] = [
            ("promote", [partition.delayed], [str(self._promote_batch)])
            for partition in self._keys.partitions
        ]
        replies = self._scripts.call_many(calls)
        for partition, moved in zip(self._keys.partitions, replies, strict=True):
            if isinstance(moved, Exception):
                raise DriverError(
                    f"Moving due delayed messages of {partition.delayed} failed: "
                    f"{moved}"
                ) from moved
            if moved:
                log.debug(
                    "Moved %d due delayed messages of %s to their queues.",
                    moved,
                    partition.tag,
                )

    def _reclaim_stalled(self, queues: Sequence[str], limit: int) -> list[Message]:
        """Take over messages that another consumer left unacknowledged too long.

        A message delivered more than ``max_deliveries`` times is dead-lettered
        instead, and its node fails even if it is running, because the workers
        that took it keep dying. Messages taken over beyond ``limit`` wait in
        the buffer for the next fetch.
        """
        timeout_s = self.visibility_timeout_s or 0.0
        now = time.monotonic()
        with self._lock:
            if now - self._last_reclaim < max(_MIN_RECLAIM_INTERVAL_S, timeout_s / 4):
                return []
            self._last_reclaim = now
        batch: list[Message] = []
        for partition in self._keys.partitions:
            self._reclaim_outbox(partition, limit)
            for queue in queues:
                batch += self._reclaim_stream(partition, queue, limit)
        self._buffer(batch[limit:])
        return batch[:limit]

    def _reclaim_stream(self, partition: Keys, queue: str, limit: int) -> list[Message]:
        stream = partition.queue(queue)
        min_idle_ms = int((self.visibility_timeout_s or 0.0) * 1000)
        with self._redis_errors(f"reclaim stalled messages of {stream}"):
            reply: Any = self._client.xautoclaim(
                stream, self._group, self._consumer, min_idle_ms, count=limit
            )
        taken = self._parse_entries(
            partition, queue, [entry for entry in reply[1] if entry[1]], reclaimed=True
        )
        batch: list[Message] = []
        for message, deliveries in zip(
            taken, self._deliveries(stream, taken), strict=True
        ):
            if deliveries > self._max_deliveries:
                reason = (
                    f"Message was delivered {deliveries} times, more than "
                    f"max_deliveries ({self._max_deliveries}); the workers "
                    "that took it are presumed dead."
                )
                self._dead_letter(message, reason, abandoned=True)
                continue
            log.warning(
                "Reclaimed a stalled message %s, delivery %d.",
                _ids(message),
                deliveries,
            )
            batch.append(message)
        return batch

    def _reclaim_outbox(self, partition: Keys, limit: int) -> None:
        """Apply outbox entries that another worker left unacknowledged too long."""
        min_idle_ms = int((self.visibility_timeout_s or 0.0) * 1000)
        with self._redis_errors(f"reclaim stalled entries of {partition.outbox}"):
            reply: Any = self._client.xautoclaim(
                partition.outbox, self._group, self._consumer, min_idle_ms, count=limit
            )
        for entry_id, fields in reply[1]:
            if fields:
                self._apply_outbox(partition, entry_id, fields)

    def _deliveries(self, stream: str, messages: list[Message]) -> list[int]:
        """Return each message's delivery count from XPENDING, in order."""
        if not messages:
            return []
        with self._redis_errors(f"read the delivery counts of {stream}"):
            pipe = self._client.pipeline(transaction=False)
            for message in messages:
                pipe.xpending_range(
                    stream, self._group, message.receipt, message.receipt, 1
                )
            replies: list[Any] = pipe.execute()
        # An entry acknowledged in between has no pending record; 1 lets its
        # claim drop it as usual.
        return [int(found[0]["times_delivered"]) if found else 1 for found in replies]

    def _read(
        self, queues: Sequence[str], limit: int, remaining_s: float
    ) -> list[Message]:
        """Read new messages, partition by partition, blocking on one of them.

        Each partition is read with one XREADGROUP that covers all of
        ``queues``. In a Cluster one command cannot name streams of different
        slots, so no single blocking read waits on every partition. A single
        node is read the same way, so both take one path. The call reads the
        other partitions without blocking, then blocks on one partition for
        at most `_MAX_BLOCK_S`. Which partition comes first (and is blocked
        on) rotates from one call to the next, so the concurrent fetches of a
        worker's threads wait on different partitions. A message in a
        partition that no fetch is blocked on waits for the next round: at
        most `_MAX_BLOCK_S` plus one round trip per partition.
        """
        partitions = self._keys.partitions
        start = next(self._rotation) % len(partitions)
        order = partitions[start:] + partitions[:start]
        for partition in order[1:]:
            batch = self._read_partition(partition, queues, limit, None)
            if batch:
                return batch
        block_ms: int | None = None
        if remaining_s > 0:
            block_ms = max(1, int(min(remaining_s, _MAX_BLOCK_S) * 1000))
        return self._read_partition(order[0], queues, limit, block_ms)

    def _read_partition(
        self, partition: Keys, queues: Sequence[str], limit: int, block_ms: int | None
    ) -> list[Message]:
        """Read one partition's queues with one XREADGROUP, in priority order.

        COUNT applies to each stream, so the read may return up to ``limit``
        messages per queue. The first ``limit`` in the order of ``queues``
        are returned and the rest wait in the buffer for the next fetch.
        """
        streams = {partition.queue(queue): queue for queue in queues}
        with self._redis_errors(f"read the queues of partition {partition.tag}"):
            reply = self._read_group([*streams, partition.outbox], limit, block_ms)
        found: dict[str, list[Message]] = {}
        for stream, entries in reply:
            if stream == partition.outbox:
                for entry_id, fields in entries:
                    self._apply_outbox(partition, entry_id, fields)
                continue
            queue = streams[stream]
            found[queue] = self._parse_entries(partition, queue, entries)
        batch = [message for queue in queues for message in found.get(queue, [])]
        self._buffer(batch[limit:])
        return batch[:limit]

    def _read_group(
        self, streams: list[str], limit: int, block_ms: int | None
    ) -> list[tuple[str, list[tuple[str, dict[str, str] | None]]]]:
        """Send XREADGROUP for new entries of ``streams``; return them per stream.

        On a single node it goes straight to this thread's connection and
        the reply is parsed here, which costs less client CPU than
        redis-py's command path.

        Raises:
            redis.RedisError: if Redis failed.
        """
        connections = self._scripts.connections
        if connections is not None:
            command: list[Any] = ["XREADGROUP", "GROUP", self._group, self._consumer]
            command += ["COUNT", limit]
            if block_ms is not None:
                command += ["BLOCK", block_ms]
            command += ["STREAMS", *streams, *[">"] * len(streams)]
            try:
                [raw] = connections.send([tuple(command)])
            except (redis.ConnectionError, redis.TimeoutError):
                # Read again through redis-py, which reconnects and follows
                # its retry policy. Entries delivered in the lost reply stay
                # pending until a reclaim takes them, as with redis-py's retry.
                pass
            else:
                if isinstance(raw, redis.ResponseError):
                    raise raw
                return _stream_entries(raw)
        reply: Any = self._client.xreadgroup(
            self._group,
            self._consumer,
            dict.fromkeys(streams, ">"),
            count=limit,
            block=block_ms,
        )
        return [(stream, entries) for stream, entries in reply or []]

    def _parse_entries(
        self,
        partition: Keys,
        queue: str,
        entries: list[Any],
        *,
        reclaimed: bool = False,
    ) -> list[Message]:
        """Return the messages of stream entries, dead-lettering malformed ones.

        An entry that Stem did not write (a field missing, or an attempt or
        epoch that is not a number) would otherwise stop every fetch that
        reads it, and stay pending forever.
        """
        messages: list[Message] = []
        for entry_id, fields in entries:
            problem = _undecodable_field(fields)
            if problem is None:
                try:
                    _check_envelope(fields)
                    message = _message(queue, entry_id, fields, reclaimed=reclaimed)
                except _UnknownEnvelope as err:
                    problem = str(err)
                except KeyError as err:
                    problem = f"missing field {err.args[0]!r}"
                except ValueError as err:
                    problem = f"bad number ({err})"
                else:
                    messages.append(message)
                    continue
            self._dead_letter_malformed(partition, queue, entry_id, fields, problem)
        return messages

    def _dead_letter_malformed(
        self,
        partition: Keys,
        queue: str,
        entry_id: str,
        fields: dict[str, Any],
        problem: str,
    ) -> None:
        """Move a malformed entry to its partition's dead-letter stream.

        No run state changes, since the entry names no node that could be
        trusted. The dead letter keeps whatever run, node and task fields the
        entry had, with U+FFFD for each byte that is not UTF-8 and 0 for an
        attempt or epoch that is not a number, and the reason quotes the
        entry's fields.
        """
        shown = repr(fields)
        if len(shown) > _MAX_SHOWN_FIELDS:
            shown = shown[:_MAX_SHOWN_FIELDS] + "..."
        reason = (
            f"Malformed message {entry_id} on queue {queue!r}: {problem}; "
            f"fields {shown}. Stem writes v (the envelope version), run, node, "
            "attempt, epoch and task."
        )

        def text(name: str) -> str:
            found = str(fields.get(name, ""))
            return found.encode("utf-8", "surrogateescape").decode("utf-8", "replace")

        def number(name: str) -> str:
            found = str(fields.get(name, "0"))
            # isdigit() alone passes "²", which int() rejects when dlq reads it.
            return found if found.isascii() and found.isdigit() else "0"

        stream = partition.queue(queue)
        with self._redis_errors(f"dead-letter malformed entry {entry_id} of {stream}"):
            pipe = self._client.pipeline(transaction=True)
            pipe.xack(stream, self._group, entry_id)
            pipe.xdel(stream, entry_id)
            pipe.xadd(
                partition.dead,
                {
                    "run": text("run"),
                    "node": text("node"),
                    "attempt": number("attempt"),
                    "epoch": number("epoch"),
                    "queue": queue,
                    "task": text("task"),
                    "reason": reason,
                },
            )
            pipe.execute()
        log.warning("Dead-lettered a malformed entry %s of %s.", entry_id, stream)

    def _buffer(self, messages: list[Message]) -> None:
        if not messages:
            return
        now = time.monotonic()
        with self._lock:
            for message in messages:
                waiting = self._buffered.setdefault(message.queue, collections.deque())
                waiting.append((message, now))

    def _take_buffered(self, queues: Sequence[str], limit: int) -> list[Message]:
        """Return up to ``limit`` buffered messages of ``queues``, in priority order.

        A message buffered for more than half the visibility timeout is left
        out, because another worker may have taken it over by now, and the
        claim of a stale copy would acknowledge the entry that worker holds.
        It stays pending for this consumer until a reclaim sweep takes it.
        """
        max_age_s = (self.visibility_timeout_s or 0.0) / 2
        now = time.monotonic()
        batch: list[Message] = []
        with self._lock:
            for queue in queues:
                waiting = self._buffered.get(queue)
                while waiting and len(batch) < limit:
                    message, buffered_at = waiting.popleft()
                    if now - buffered_at <= max_age_s:
                        batch.append(message)
                    else:
                        log.debug(
                            "Left a stale buffered %s for reclaim.", _ids(message)
                        )
        return batch

    def _hand_back_buffered(self) -> None:
        """Make the messages read but never returned free for other workers.

        XCLAIM sets their idle time to the visibility timeout, so the next
        reclaim sweep of any worker takes them over, instead of one
        visibility timeout from now. Messages that are no longer pending for
        this consumer are left alone.
        """
        with self._lock:
            messages = [
                message for waiting in self._buffered.values() for message, _ in waiting
            ]
            self._buffered.clear()
        idle_ms = int((self.visibility_timeout_s or 0.0) * 1000)
        handed_back = 0
        for message in messages:
            stream = self._keys.partition_of(message.run_id).queue(message.queue)
            with self._redis_errors(f"hand back a message of {stream}"):
                pending: Any = self._client.xpending_range(
                    stream,
                    self._group,
                    message.receipt,
                    message.receipt,
                    1,
                    consumername=self._consumer,
                )
                if not pending:
                    continue
                self._client.xclaim(
                    stream,
                    self._group,
                    self._consumer,
                    0,
                    [message.receipt],
                    idle=idle_ms,
                    justid=True,
                )
                handed_back += 1
        if handed_back:
            log.info("Handed back %d fetched messages that never ran.", handed_back)

    @contextlib.contextmanager
    def _redis_errors(self, action: str) -> Iterator[None]:
        try:
            yield
        except redis.RedisError as err:
            raise DriverError(f"Redis failed to {action} at {self}: {err}") from err


def _cut_text(spec: GraphSpec) -> SpecText | None:
    """Return the cut text of a spec's layout, or None when it cannot be cut."""
    try:
        return SpecText(spec)
    except ValueError:
        return None


def _check_seconds(name: str, value: Any, *, zero: bool) -> None:
    """Reject a duration setting that is not a finite number of seconds.

    Raises:
        ValueError: naming the setting, its value and what to pass.
    """
    is_number = type(value) in (int, float) and math.isfinite(value)
    if not is_number or value < 0 or (value == 0 and not zero):
        bound = "0 or more" if zero else "above 0"
        raise ValueError(
            f"{name} is {value!r}; pass a finite number of seconds, {bound}."
        )


def _open(
    url: str, target: Target, prefix: str
) -> tuple[redis.Redis | RedisCluster, Scripts, list[str]]:
    """Connect, load the scripts and read the partition tags of a new driver.

    Raises:
        DriverError: if Redis cannot be reached or failed.
        ValueError: if redis-py rejected a query option of the URL.
    """
    try:
        # A Cluster client connects here, to discover the other nodes.
        client: redis.Redis | RedisCluster = connect(target)
    except RedisClusterException as err:
        raise DriverError(
            f"Could not connect to a Redis Cluster at {redact(url)}: {err}; "
            "name a node of a running Cluster, or use redis://host:port/db "
            "for a single Redis server."
        ) from err
    scripts = Scripts(client)
    try:
        scripts.preload()
        tags = load_tags(client, prefix, target.partitions)
    except DriverError as err:
        client.close()
        raise _first_call_error(url, err) from err.__cause__
    except TypeError as err:
        client.close()
        # redis-py passes a URL query option it does not know to its
        # connection class, which rejects it on the first connection.
        if "unexpected keyword argument" not in str(err):
            raise
        raise _unknown_option_error(url, err) from err
    except BaseException:
        client.close()
        raise
    return client, scripts, tags


def _unknown_option_error(url: str, err: TypeError) -> ValueError:
    """Return the error for a URL query option that redis-py rejected."""
    found = re.search(r"keyword argument '([^']*)'", str(err))
    name = found.group(1) if found else str(err)
    return ValueError(
        f"The URL {redact(url)} has the query option {name!r}, which redis-py "
        "does not accept; remove it. Driver settings other than prefix and "
        "shard_size go to App(url, ...) instead, for example "
        "App(url, visibility_timeout_s=60)."
    )


def _queued_at_start(node: NodeSpec) -> bool:
    """Tell whether a run's start queues the node, as `machine.start` does.

    Errbacks that cover nothing are skipped, and other nodes without
    dependencies are queued.
    """
    if node.role == "errback":
        return not node.covers
    return not node.deps


def _is_utf8(text: object) -> bool:
    """Tell whether a decoded reply is text that encodes back to UTF-8."""
    try:
        str(text).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _pop_query_option(url: str, option: str) -> tuple[str, list[str]]:
    """Return the URL without the query option ``option``, and its values."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    found = [value for name, value in query if name == option]
    if not found:
        return url, []
    rest = [(name, value) for name, value in query if name != option]
    stripped = urlunsplit(
        (parts.scheme, parts.netloc, parts.path, urlencode(rest), parts.fragment)
    )
    return stripped, found


def _prefix_option(url: str, setting: str) -> tuple[str, str]:
    """Return the URL without its ``prefix`` option, and the key prefix.

    The URL's ``?prefix=P`` lets the ``stem`` commands and ``STEM_URL``
    reach a deployment that uses a prefix.

    Raises:
        ValueError: if the URL and the settings give different prefixes.
    """
    stripped, found = _pop_query_option(url, "prefix")
    if not found:
        return url, setting
    given = set(found)
    if setting:
        given.add(setting)
    if len(given) > 1:
        raise ValueError(
            f"The URL {redact(url)} and the settings give the prefixes "
            f"{', '.join(repr(value) for value in sorted(given))}; give the "
            "prefix in one place."
        )
    return stripped, found[0]


def _shard_size_option(url: str, setting: int | None) -> tuple[str, int]:
    """Return the URL without its ``shard_size`` option, and the shard size.

    Raises:
        ValueError: if a shard size is not a whole number of 0 or more, or
            the URL and the settings give different sizes.
    """
    stripped, found = _pop_query_option(url, "shard_size")
    size = setting
    if size is not None and (
        isinstance(size, bool) or not isinstance(size, int) or size < 0
    ):
        raise ValueError(
            f"shard_size {size!r} is invalid; pass a whole number of members, "
            "or 0 to turn chord sharding off."
        )
    for text in found:
        if not text.isdigit():
            raise ValueError(
                f"The URL's shard_size={text!r} is invalid; pass a whole number "
                "of members, or 0 to turn chord sharding off."
            )
        if size is not None and int(text) != size:
            raise ValueError(
                f"The URL sets shard_size={text} but the settings pass {size}; "
                "give the size in one place."
            )
        size = int(text)
    return stripped, DEFAULT_SHARD_SIZE if size is None else size


def _first_call_error(url: str, err: DriverError) -> DriverError:
    """Return the error for a failed first call, naming the server and the fix.

    The first call is when a driver connects, so a wrong address or password
    shows up here rather than as a failure to load the scripts.
    """
    cause = err.__cause__
    reason = str(cause).rstrip(".")
    if isinstance(cause, redis.AuthenticationError):
        return DriverError(
            f"Redis at {redact(url)} rejected the login: {reason}; put the "
            "server's password in the URL, as redis://:PASSWORD@host:port/db."
        )
    if isinstance(cause, redis.ConnectionError):
        return DriverError(
            f"Could not connect to Redis at {redact(url)}: {reason}; check that "
            "a Redis server listens at that host and port."
        )
    return err


def _undecodable_field(fields: dict[str, Any]) -> str | None:
    """Return the problem of an entry with a field that is not UTF-8, else None.

    The client decodes such bytes to lone surrogates, which no script call
    could send, so the entry can only be dead-lettered.
    """
    try:
        # Most entries are ASCII, which two joins check in C.
        if "".join(fields).isascii() and "".join(fields.values()).isascii():
            return None
    except TypeError:
        pass  # A value that is not text: checked one by one below.
    for name, value in fields.items():
        for text in (name, value):
            if isinstance(text, str) and not text.isascii():
                try:
                    text.encode("utf-8")
                except UnicodeEncodeError:
                    return f"field {name!r} is not valid UTF-8"
    return None


class _UnknownEnvelope(Exception):
    """A queue entry written in an envelope version this worker does not read."""


def _stream_entries(
    reply: Any,
) -> list[tuple[str, list[tuple[str, dict[str, str] | None]]]]:
    """Parse a raw XREADGROUP reply as redis-py does: entries per stream.

    RESP2 replies with a list of ``[stream, entries]`` pairs and RESP3 with
    a map, and either is None or empty when nothing was read. An entry's
    fields are None when the entry was deleted while pending.
    """
    if not reply:
        return []
    pairs = reply.items() if isinstance(reply, dict) else reply
    found: list[tuple[str, list[tuple[str, dict[str, str] | None]]]] = []
    for stream, entries in pairs:
        parsed: list[tuple[str, dict[str, str] | None]] = []
        for entry_id, flat in entries:
            fields = None if flat is None else _pairs(flat)
            parsed.append((entry_id, fields))
        found.append((stream, parsed))
    return found


def _check_envelope(fields: dict[str, Any]) -> None:
    """Raise unless a queue entry is in the envelope version this worker reads."""
    version = fields.get("v")
    if version is None:
        raise KeyError("v")
    if version != ENVELOPE_VERSION:
        raise _UnknownEnvelope(
            f"envelope version {version!r}, but this worker reads only version "
            f"{ENVELOPE_VERSION!r}; upgrade the worker, then replay the dead letter"
        )


def _message(
    queue: str, entry_id: str, fields: dict[str, Any], *, reclaimed: bool = False
) -> Message:
    # A deferred message carries the time it first entered a queue. Any
    # other entry entered its queue when it was added, at its id's time.
    enqueued_ms = fields.get("enqueued_ms") or entry_id.partition("-")[0]
    return Message(
        fields["run"],
        fields["node"],
        int(fields["attempt"]),
        queue,
        int(fields["epoch"]),
        entry_id,
        {TASK_HEADER: fields["task"]},
        # Positional, because keywords cost more on this per-message path:
        # lease 1 (the default), reclaimed and enqueued_at.
        1,
        reclaimed,
        int(enqueued_ms) / 1000,
    )


def _leased(message: Message, lease: int) -> Message:
    """Return a copy of a claimed message with the lease the claim granted.

    The same as ``dataclasses.replace(message, lease=lease, reclaimed=False)``
    at half its cost (1.1 us against 2.3 us on CPython 3.11), because
    ``replace`` reads the class's fields on every call. A test checks that
    it copies every field of `Message`.
    """
    return Message(
        message.run_id,
        message.node_id,
        message.attempt,
        message.queue,
        message.epoch,
        message.receipt,
        message.headers,
        lease,
        False,
        message.enqueued_at,
    )


def _event(entry_id: str, fields: dict[str, str]) -> LifecycleEvent:
    micros, _ = _event_position(entry_id)
    return LifecycleEvent(
        entry_id,
        micros / 1_000_000,
        fields["run"],
        fields["event"],
        fields.get("node", ""),
        int(fields.get("attempt", "0")),
        fields.get("status", ""),
    )


def _event_position(entry_id: str) -> tuple[int, int]:
    """Return a stream entry id as numbers: write time in microseconds, sequence."""
    micros, _, sequence = entry_id.partition("-")
    return int(micros), int(sequence)


def _fields_found(names: Sequence[str], found: Sequence[str | None]) -> dict[str, str]:
    """Pair hash field names with the values HMGET found, leaving out missing ones."""
    return {
        name: value
        for name, value in zip(names, found, strict=True)
        if value is not None
    }


def _pairs(flat: Sequence[str]) -> dict[str, str]:
    """Turn a flat field/value list, as a script returns HGETALL, into a dict."""
    return dict(zip(flat[::2], flat[1::2], strict=True))


def _milliseconds(seconds: float | None) -> str:
    """Return a duration as whole milliseconds for a script, or "0" (off) for None."""
    if seconds is None:
        return "0"
    return str(max(1, round(seconds * 1000)))


def _ids(message: Message) -> str:
    return (
        f"run {message.run_id} node {message.node_id} attempt {message.attempt} "
        f"epoch {message.epoch}"
    )
