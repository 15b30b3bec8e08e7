"""The Redis driver's side of sharded chords: shard runs and their outbox entries.

`ShardRuns` is a base of `stem.drivers.redis.RedisDriver`. It writes the
shard runs that `stem.drivers.redis.shards.plan_shards` cuts from a chord
header. It applies the ``activate``, ``report`` and ``cancel`` outbox
entries that the scripts write between a home run and its shards, and sends
them again for the reconciler. It also merges the shards back into a home
run's views.
Every script call touches one partition: the home run's or one shard's.
docs/redis.md describes how a sharded chord runs.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from stem.canvas.errors import UndecodableValue
from stem.canvas.gcpause import paused_gc
from stem.canvas.spec import GraphSpec, ListInput, NodeId, NodeInput, NodeSpec
from stem.canvas.values import dumps, loads
from stem.drivers.redis import layout
from stem.drivers.redis.operations import RedisOperations
from stem.drivers.redis.scripts import Reply, check_reply
from stem.drivers.redis.shards import (
    SHARD_INPUT_TASK,
    SHARD_TASK,
    Shard,
    ShardPlan,
    merged_view,
    shard_run_id,
)
from stem.engine import machine
from stem.engine.errors import DriverError, RunNotFound
from stem.engine.records import ErrorInfo, NodeRecord, RunState

log = logging.getLogger("stem.drivers.redis.driver")


class ShardRuns(RedisOperations):
    """Shard runs of sharded chords, over the keys of every partition."""

    _stage_ttl_s: float
    #: Whether `_submit_sharded` activates the shards whose header is ready
    #: at submit itself. The tests of activation entries turn it off, so
    #: every shard is activated from the home run's outbox.
    _submitter_starts_shards: bool = True

    # RedisDriver defines these, and the shard runs call them.

    def _submit_run(
        self,
        run_id: str,
        spec: GraphSpec,
        extra_graph: Sequence[str] = (),
        *,
        one_call: bool = False,
    ) -> bool | None:
        raise NotImplementedError  # pragma: no cover - RedisDriver defines it

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
        raise NotImplementedError  # pragma: no cover - RedisDriver defines it

    def _release(self, run_id: str, epoch: str, receipt: str) -> None:
        raise NotImplementedError  # pragma: no cover - RedisDriver defines it

    def _cancel(self, run_id: str, home_epoch: str) -> None:
        raise NotImplementedError  # pragma: no cover - RedisDriver defines it

    def _cached_spec(self, run_id: str, version: str, text: str) -> GraphSpec:
        raise NotImplementedError  # pragma: no cover - RedisDriver defines it

    def _not_found(self, run_id: str) -> RunNotFound:
        raise NotImplementedError  # pragma: no cover - RedisDriver defines it

    def _submit_sharded(self, run_id: str, plan: ShardPlan) -> bool:
        """Write a run whose chord headers are cut into shards.

        A shard whose header waits for other nodes is written inactive
        before the home run, so its activation never finds it missing. A
        shard whose header is ready at submit (its shard node is a root of
        the home run) is written after the home run. The home run starts
        its shard node without an activation entry, and the shard is
        activated as soon as it is sealed. So its members run while later
        shards are still being written.
        """
        with self._errors(f"check whether run {run_id} exists"):
            exists = self._client.exists(self._keys.run(run_id).run)
        if exists:
            return False
        ready: list[Shard] = []
        waiting: list[Shard] = []
        for shard in plan.shards:
            if self._submitter_starts_shards and not shard.inputs:
                ready.append(shard)
            else:
                waiting.append(shard)
        # A taken shard run id is found before the home run is written, so
        # that the submit writes nothing.
        for shard in ready:
            self._check_shard_owner(run_id, shard)
        # "shard_nodes" lets the script that ends the home run pass its
        # retention on to the shards (send_shard_retention in lifecycle.lua).
        shard_fields = ["shard_nodes", ",".join(shard.node for shard in plan.shards)]
        for join, nodes in plan.joins.items():
            shard_fields += [f"{join}/shards", ",".join(nodes)]
        # Shards keep a TTL of stage_ttl_s until the home run exists, so
        # those of a submitter that died first expire.
        for shard in waiting:
            self._write_shard(run_id, shard)
        created: bool | None = None
        if ready:
            started = ",".join(shard.node for shard in ready)
            created = self._submit_run(
                run_id,
                plan.home,
                ["submitter_activates", started, *shard_fields],
                one_call=True,
            )
        if created is None:
            # A home run too large for one submit call queues its roots
            # from release.lua, which writes an activation entry for every
            # shard node, so every shard is written before it.
            for shard in ready:
                self._write_shard(run_id, shard)
            ready = []
            created = bool(self._submit_run(run_id, plan.home, shard_fields))
        if not created:
            return False
        # NOTE: if this process dies from here on, a shard node whose shard
        # is not written yet stays running with no activation entry until
        # the reconciler resyncs the home run, reconcile_after_s after its
        # last progress. It then fails the chord with an error that names
        # the missing shard run (_shard_missing). So does a shard that is
        # activated after its stage_ttl_s ran out.
        self._write_started_shards(run_id, ready)
        self._apply_shard_retention(
            run_id, [shard.node for shard in plan.shards], "0", "submitted"
        )
        log.debug("Run %s submitted with %d chord shards.", run_id, len(plan.shards))
        return True

    def _write_started_shards(self, home: str, shards: list[Shard]) -> None:
        """Write, one by one, the shards that the home run started.

        Each shard is activated while the home run runs in its first epoch.
        A shard written after the home run ended is cancelled instead, as
        the end cancelled the shards that existed then, so a run retry
        reopens all of them alike. It is written all the same, because a run
        retry fails the chord when one of its shard runs is missing.
        """
        status, epoch, _ = self._home_fields(home)
        late: list[Shard] = []
        for shard in shards:
            self._write_shard(home, shard)
            if status == "running" and epoch == "1":
                self._start_shard(home, shard)
                status, epoch, _ = self._home_fields(home)
                if status == "running":
                    self._note_progress(home)
                    continue
            # The home run's cancel, and the "retain" entry of its end, found
            # this shard missing and skipped it. Without a cancel its members
            # would run after the home run ended, and it would never expire.
            self._cancel_shard(shard_run_id(home, shard.node), "1")
            late.append(shard)
        if late:
            self._retain_late_shards(home, late)

    def _home_fields(self, home: str) -> tuple[str | None, str | None, str | None]:
        """Read a home run's status, epoch and shards_version."""
        with self._errors(f"read the status of run {home}"):
            found: Any = self._client.hmget(
                self._keys.run(home).run, ["status", "epoch", "shards_version"]
            )
        status, epoch, version = found
        return status, epoch, version

    def _retain_late_shards(self, home: str, shards: list[Shard]) -> None:
        """Give shards written after their home run ended the home run's retention."""
        log.info(
            "Run %s ended or ran again while its chord shards were written; "
            "%d shards written after that were cancelled.",
            home,
            len(shards),
        )
        status, _, version = self._home_fields(home)
        if status == "running" or version is None:
            # A home run that runs again sent a "keep" entry, which the
            # "submitted" retention matches. No version means the home run
            # keeps its keys forever (send_shard_retention in lifecycle.lua).
            return
        self._apply_shard_retention(
            home, [shard.node for shard in shards], version, "retain"
        )

    def _start_shard(self, home: str, shard: Shard) -> None:
        """Activate a shard whose header is ready at submit; a worker queues its roots.

        The shard reads no home node, so it needs no input. Its roots are
        queued by the worker that drains the "release" entry that this adds
        to the shard's partition outbox, so the submitter writes the next
        shard meanwhile. A release applied twice, or by the reconciler
        (activate.lua adds the shard to the releasing set), is harmless.
        """
        shard_id = shard_run_id(home, shard.node)
        script_keys = [self._keys.run(shard_id).run]
        args: list[str | int | float] = [shard_id, "1"]
        reply = self._scripts.call("activate", script_keys, args, run_id=shard_id)
        accept = frozenset({Reply.DONE, Reply.DUPLICATE, Reply.STALE})
        result = check_reply("activate", reply, shard_id, accept=accept)
        if result is Reply.STALE:
            # The home run was retried meanwhile. Its reconciler renews and
            # activates the shard for the new epoch.
            log.info("Skipped starting shard %s of an older epoch.", shard_id)
            return
        outbox = self._keys.partition_of(shard_id).outbox
        entry = {"kind": "release", "run": shard_id, "epoch": "1"}
        with self._errors(f"ask a worker to release the roots of shard {shard_id}"):
            self._client.xadd(outbox, entry)  # type: ignore[arg-type]

    def _note_progress(self, home: str) -> None:
        """Score a home run's progress now, so the reconciler leaves it alone."""
        with self._errors(f"note the progress of run {home}"):
            seconds, micros = self._client.time()
            self._client.zadd(
                self._keys.partition_of(home).sharded,
                {home: seconds + micros / 1_000_000},
                xx=True,
            )

    def _write_shard(self, home: str, shard: Shard) -> None:
        """Stage and seal one shard run, inactive until its home run activates it."""
        shard_id = shard_run_id(home, shard.node)
        with paused_gc():
            graph = layout.graph_fields(shard.spec, defaults=False)
            counts = layout.initial_counts(shard.spec.nodes)
            state = layout.initial_node_fields(shard.spec.nodes)
        ttl_ms = str(max(1, int(self._stage_ttl_s * 1000)))
        sealed = self._stage_and_seal(
            shard_id,
            shard.spec,
            graph,
            state,
            counts,
            shard.roots,
            [home, shard.node, "1", ttl_ms],
        )
        if sealed:
            return
        # The shard exists: an earlier submit of this run wrote it, or a run
        # that is not a shard has its id.
        self._check_shard_owner(home, shard)

    def _check_shard_owner(self, home: str, shard: Shard) -> None:
        """Raise if a run that is not this home run's shard has the shard's id."""
        shard_id = shard_run_id(home, shard.node)
        keys = self._keys.run(shard_id)
        with self._errors(f"read shard {shard_id}"):
            found: Any = self._client.hmget(keys.run, ["status", "home"])
        status, owner = found
        if status is not None and owner != home:
            raise DriverError(
                f"Run id {shard_id!r} that shard {shard.node} of run {home} "
                "needs is taken by another run. Submit run "
                f"{home} with another run id, or with shard_size=0."
            )

    def _activate(self, home: str, node: NodeId, epoch: str) -> None:
        """Give a shard run its input and queue its roots, a slice per call.

        Idempotent: a shard activated already only gets its remaining roots
        released, so an entry applied twice, or by the reconciler, is harmless.
        """
        shard = shard_run_id(home, node)
        home_keys = self._keys.run(home)
        with self._errors(f"read the status of run {home}"):
            status, current = self._client.hmget(home_keys.run, ["status", "epoch"])
        if status != "running" or current != epoch:
            # An ended home run cancelled its shards when it ended, and an
            # entry of an older epoch has nothing left to start.
            log.debug("Skipped activating shard %s of run %s.", shard, home)
            return
        try:
            spec = self._spec_of(shard)
        except RunNotFound:
            self._shard_missing(home, node, epoch, shard)
            return
        inputs = [n.id for n in spec.nodes if n.task == SHARD_INPUT_TASK]
        values: list[Any] = []
        if inputs:
            with self._errors(f"read the input of shard {shard}"):
                values = list(self._client.hmget(home_keys.values, inputs))
        pairs: list[str | int | float] = []
        for input_node, value in zip(inputs, values, strict=True):
            pairs += [input_node, dumps(None) if value is None else value]
        # The script builds the shard's other keys from its run hash's name.
        script_keys = [self._keys.run(shard).run]
        args: list[str | int | float] = [shard, epoch, *pairs]
        reply = self._scripts.call("activate", script_keys, args, run_id=shard)
        result = check_reply("activate", reply, shard)
        if result is Reply.STALE:
            # A retry of the home run opened this epoch after the shard ended.
            self._renew_shard(home, node, shard, epoch)
            reply = self._scripts.call("activate", script_keys, args, run_id=shard)
            result = check_reply("activate", reply, shard)
        if result is Reply.RUN_NOT_FOUND:
            self._shard_missing(home, node, epoch, shard)
            return
        if result is Reply.STALE:
            log.warning("Skipped activating shard %s for epoch %s.", shard, epoch)
            return
        self._release(shard, "", "")

    def _renew_shard(
        self, home: str, node: NodeId, shard: str, home_epoch: str
    ) -> None:
        """Open a shard run again for a new epoch of its home run.

        A shard that succeeded (its home run cancelled its shard node before
        the report came) reports its success again, in the new epoch. A
        shard still running from the older epoch is cancelled first. One
        that was activated is reopened (reopen.lua), which queues again what
        failed or was cancelled, and one that never started is reset to
        inactive (reset_shard.lua).
        """
        keys = self._keys.run(shard)
        with self._errors(f"read shard {shard}"):
            status, active = self._client.hmget(keys.run, ["status", "active"])
        if status == "succeeded":
            # An ended shard never changes again, so a plain write is safe.
            with self._errors(f"write the home epoch of shard {shard}"):
                self._client.hset(keys.run, "home_epoch", home_epoch)
            self._report_to_home(home, node, home_epoch, "succeeded", "", "")
            return
        if status == "running":
            self._cancel_shard(shard)
        partition = self._keys.partition_of(shard)
        if active == "1":
            with self._errors(f"read the epoch of shard {shard}"):
                seen: Any = self._client.hget(keys.run, "epoch")
            reply = self._scripts.call(
                "reopen",
                [keys.run],
                [shard, str(seen), home_epoch],
                run_id=shard,
            )
            check_reply("reopen", reply, shard)
            log.info("Reopened shard %s for epoch %s of its run.", shard, home_epoch)
            return
        script_keys = [*keys.all(), keys.counts, partition.events]
        reply = self._scripts.call(
            "reset_shard", script_keys, [shard, home_epoch], run_id=shard
        )
        check_reply("reset_shard", reply, shard)

    def _shard_missing(self, home: str, node: NodeId, epoch: str, shard: str) -> None:
        """Fail a shard node whose shard run is gone, so its home run ends."""
        reason = (
            f"Shard run {shard} of run {home} is not found: it expired or was "
            "never written. Submit the run again."
        )
        log.warning("%s", reason)
        error = ErrorInfo("stem.engine.errors", "DriverError", reason, [reason])
        self._report_to_home(
            home, node, epoch, "failed", node, layout.error_json(error)
        )

    def _apply_report(
        self,
        home: str,
        node: NodeId,
        epoch: str,
        shard: str,
        outcome: str,
        cause: str,
    ) -> None:
        """Record on the home run how a shard ended, with the failed node's error."""
        error = ""
        if outcome == "failed" and cause:
            with self._errors(f"read the error of shard {shard}"):
                found = self._client.hget(self._keys.run(shard).errors, cause)
            error = str(found or "")
        if outcome == "failed" and not error:
            # The shard expired before this report, or failed without a
            # failed node: the home run still needs an error to raise.
            where = f"at node {cause}" if cause else "without a failed node"
            reason = (
                f"Shard run {shard} of run {home} failed {where}, and its "
                "error is not found: the shard expired before its report was "
                "applied, or it recorded no failed node. Retry the run or "
                "submit it again."
            )
            log.warning("%s", reason)
            info = ErrorInfo("stem.engine.errors", "DriverError", reason, [reason])
            error = layout.error_json(info)
        self._report_to_home(home, node, epoch, outcome, cause, error)

    def _report_to_home(
        self, home: str, node: NodeId, epoch: str, outcome: str, cause: str, error: str
    ) -> None:
        script_keys = [self._keys.run(home).run]
        args: list[str | int | float] = [home, node, epoch, outcome, cause, error]
        reply = self._scripts.call("report", script_keys, args, run_id=home)
        accept = frozenset({Reply.DONE, Reply.DUPLICATE, Reply.RUN_NOT_FOUND})
        result = check_reply("report", reply, home, node, accept=accept)
        log.debug(
            "Applied a %s report of shard node %s of run %s: %s.",
            outcome,
            node,
            home,
            result.name.lower(),
        )

    def _resync_shards(self, home: str) -> None:
        """Resend a home run's activations, reports and cancels, for the reconciler.

        Each running shard node is activated again, the report of each
        shard that ended or failed is applied again, and the shard of each
        cancelled shard node is cancelled again. All three are idempotent.
        """
        # A worker that dies while it applies an outbox entry leaves it
        # pending, and another worker's fetch reclaims and applies it after
        # visibility_timeout_s (_reclaim_outbox), so this covers only lost
        # entries. NOTE: a run leaves the reconciler's set when it ends, so
        # a "cancel" lost after that stays lost: on a Redis Cluster, a
        # failover of a shard's primary that undoes the cancel after the
        # home run's primary deleted the entry. An active shard then runs
        # its members to the end, and one never activated stays.
        try:
            spec = self._spec_of(home)
        except RunNotFound:
            return
        shard_nodes = [n.id for n in spec.nodes if n.task == SHARD_TASK]
        home_keys = self._keys.run(home)
        with self._errors(f"read the shard nodes of run {home}"):
            pipe = self._client.pipeline(transaction=True)
            pipe.hget(home_keys.run, "epoch")
            pipe.hmget(home_keys.nodes, shard_nodes)
            epoch, states = pipe.execute()
        for node, state in zip(shard_nodes, states, strict=True):
            shard = shard_run_id(home, node)
            if state == "cancelled":
                self._cancel_shard(shard, str(epoch))
                continue
            if state != "running":
                continue
            self._activate(home, node, str(epoch))
            with self._errors(f"read the status of shard {shard}"):
                found: Any = self._client.hmget(
                    self._keys.run(shard).run, ["status", "reported", "error_node"]
                )
            status, reported, error_node = found
            if reported:
                self._apply_report(home, node, str(epoch), shard, "failed", reported)
            elif status in ("succeeded", "failed", "cancelled"):
                self._apply_report(
                    home, node, str(epoch), shard, status, error_node or ""
                )
        self._note_progress(home)

    def _apply_shard_retention(
        self, home: str, shard_nodes: list[NodeId], version: str, kind: str
    ) -> None:
        """Make a home run's shards follow its retention, with one pipeline.

        ``kind`` is "retain" or "keep", the kind of the home run's outbox
        entry that ``version`` comes from, or "submitted" when the home run
        was just written. shard_retention.lua describes what each does. A shard
        ignores an entry older than the last it applied.
        """
        # A worker that dies in this call leaves the entry pending, and
        # another worker's fetch reclaims and applies it again after
        # visibility_timeout_s (_reclaim_outbox). The version makes that
        # harmless. NOTE: the reconciler does not send a "retain" or "keep"
        # entry again. So an entry stays lost when, on a Redis Cluster, a
        # failover of a shard's primary undoes its change after the home
        # run's primary deleted it. Without a "retain" the shard never
        # expires, and without a "keep" it may expire while the home run
        # runs again.
        calls: list[tuple[str, list[str], list[str | int | float]]] = []
        for node in shard_nodes:
            shard = shard_run_id(home, node)
            args: list[str | int | float] = [shard, version, kind]
            calls.append(("shard_retention", [self._keys.run(shard).run], args))
        replies = self._scripts.call_many(calls)
        accept = frozenset({Reply.DONE, Reply.DUPLICATE, Reply.RUN_NOT_FOUND})
        for (_, _, args), reply in zip(calls, replies, strict=True):
            shard = str(args[0])
            if isinstance(reply, Exception):
                raise DriverError(
                    f"Setting the expiry of shard {shard} of run {home} failed: {reply}"
                ) from reply
            check_reply("shard_retention", reply, shard, accept=accept)
        log.debug(
            "Applied %s, version %s, to the %d shards of run %s.",
            kind,
            version,
            len(shard_nodes),
            home,
        )

    def _spec_of(self, run_id: str) -> GraphSpec:
        """Return a run's current spec, from the cache when it is parsed already."""
        with self._errors(f"read the spec version of run {run_id}"):
            version: Any = self._client.hget(self._keys.run(run_id).run, "spec_version")
        if version is None:
            raise self._not_found(run_id)
        return self._cached_spec(run_id, str(version), "")

    def _shard_state(self, run_id: str) -> RunState:
        """Read a shard run's spec and node records, with plain commands."""
        spec = self._spec_of(run_id)
        keys = self._keys.run(run_id)
        with self._errors(f"read shard {run_id}"):
            pipe = self._client.pipeline(transaction=True)
            pipe.hgetall(keys.nodes)
            pipe.hgetall(keys.values)
            pipe.hgetall(keys.errors)
            fields, values, errors = pipe.execute()
        with paused_gc():
            nodes = layout.node_records(spec, fields, values, errors)
        return RunState(run_id=run_id, spec=spec, nodes=nodes)

    def _shard_input(self, home: str, shard_nodes: list[NodeId]) -> list[Any]:
        """Build a callback's input from its shards: their values, joined in order.

        Each shard's value is the list of its members' values, so the result
        is the list that the callback would get without shards.
        """
        joined: list[Any] = []
        for node in shard_nodes:
            shard = shard_run_id(home, node)
            values = self._succeeded_shard_value(shard)
            if values is None:
                state = self._shard_state(shard)
                with paused_gc():
                    values = machine.run_value(state)
            joined += values
        return joined

    def _succeeded_shard_value(self, shard: str) -> list[Any] | None:
        """Read a succeeded shard's value from its stored member values alone.

        This is the value `machine.run_value` builds, with one decode of the
        joined values in place of a record per member. It returns None when
        the shard has not succeeded or its output is not a list of member
        values, so the caller builds the value from the node records.
        """
        spec = self._spec_of(shard)
        output = spec.output
        if not isinstance(output, ListInput):
            return None
        members: list[NodeId] = []
        for item in output.items:
            if not isinstance(item, NodeInput):
                return None
            members.append(item.node)
        keys = self._keys.run(shard)
        with self._errors(f"read shard {shard}"):
            pipe = self._client.pipeline(transaction=True)
            pipe.hget(keys.run, "status")
            pipe.hmget(keys.values, members)
            status, stored = pipe.execute()
        if status != "succeeded":
            return None
        with paused_gc():
            parts = [
                "null"
                if text is None or spec.node(node).options.ignore_result
                else text
                for node, text in zip(members, stored, strict=True)
            ]
            try:
                value: list[Any] = loads("[" + ",".join(parts) + "]")
            except UndecodableValue:
                # The record path names the member whose value is broken.
                return None
        return value

    def _cancel_shard(self, shard: str, home_epoch: str = "") -> None:
        """Cancel a shard run; one that expired already needs nothing.

        A shard that a retry of its home run opened for an epoch later than
        ``home_epoch`` stays running: the cancel was meant for an older one.
        """
        try:
            self._cancel(shard, home_epoch)
        except RunNotFound:
            log.debug("Shard %s to cancel is not found; it expired.", shard)

    def _merge_shards(
        self,
        run_id: str,
        spec: GraphSpec,
        nodes: dict[NodeId, NodeRecord],
        shard_nodes: list[NodeId],
    ) -> tuple[GraphSpec, dict[NodeId, NodeRecord]]:
        """Replace a home run's shard nodes by their shards' nodes and records.

        The result reads like the run without shards: member nodes keep their
        ids, and a shard that was never activated shows its members pending.
        A shard run that is gone shows as its shard node.
        """
        shard_specs: dict[NodeId, GraphSpec] = {}
        merged = {node: record for node, record in nodes.items()}
        for shard_node in shard_nodes:
            try:
                state = self._shard_state(shard_run_id(run_id, shard_node))
            except RunNotFound:
                # The shard node stays in the view, with its own record.
                shard_specs[shard_node] = GraphSpec(nodes=[])
                continue
            del merged[shard_node]
            shard_specs[shard_node] = state.spec
            for node_id, record in state.nodes.items():
                if state.spec.node(node_id).task != SHARD_INPUT_TASK:
                    merged[node_id] = record
        view = merged_view(spec, shard_specs)
        return view, merged

    def _add_shard_counts(
        self, counts: dict[int | None, dict[str, int]], home: str, node: NodeSpec
    ) -> None:
        """Count a shard's members in place of its shard node, in ``counts``."""
        shard = shard_run_id(home, node.id)
        keys = self._keys.run(shard)
        # Two commands: the home run and the shard may be in different slots.
        with self._errors(f"read the state counts of shard {shard}"):
            state: Any = self._client.hget(self._keys.run(home).nodes, node.id)
            fields: Any = self._client.hgetall(keys.counts)
        if not fields:
            # The shard is gone, so its shard node is counted in its place.
            return
        own = counts.get(node.group, {})
        if state in own:
            own[state] -= 1
            if not own[state]:
                del own[state]
        for group, states in layout.group_counts(fields).items():
            # Input placeholders are outside every group; they are not members.
            if group is None:
                continue
            target = counts.setdefault(group, {})
            for name, count in states.items():
                target[name] = target.get(name, 0) + count
