"""The Redis scripts against the engine's Python transitions, step by step.

Each example draws a canvas, a plan of outcomes and a seeded schedule, then
applies every claim and report to `stem.engine.machine` and to the Redis
driver side by side, as `stem.testing.StepDriver` does for the machine alone.
Some claimed tasks put a drawn canvas in their place, as ``self.replace``
does. Nodes planned with ``takeover`` have each attempt's message reclaimed
once after its first claim, and a claim that takes the lease over fences the
first claim's report. Some examples retry the run once it ends, with a new
plan, and some try a run retry while the run is still going. Some nodes are
drawn with ``ignore_result``. Both sides must accept and reject the same
messages and reports (those of older epochs included), accept and reject the
same run retries, grant the same leases, hand each task the same arguments,
enqueue the same attempts, keep and drop the same values, and end in the same
state, with the same state counts per group; Redis must write the lifecycle
events of the steps that were applied.
"""

from __future__ import annotations

import json
import random
import uuid
from collections import Counter
from dataclasses import dataclass, replace
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from stem.canvas.compiler import compile_canvas
from stem.canvas.spec import GraphSpec, NodeId
from stem.canvas.values import decode, dumps, loads
from stem.drivers.redis import RedisDriver
from stem.engine import machine
from stem.engine.errors import RunNotRetryable
from stem.engine.ports import Message
from stem.engine.records import ErrorInfo, RunState
from stem.testing import (
    NodePlan,
    PlannedFailure,
    PlannedRetry,
    canvases,
    echo_value,
    plans,
)

TASKS = ["a", "b", "c"]


@dataclass(frozen=True)
class _Report:
    kind: str
    node: NodeId
    attempt: int
    payload: Any
    late: bool = False
    lease: int = 1
    epoch: int = 1
    #: Countdown of a retry report before the next attempt, in seconds.
    countdown: float = 0.0


@dataclass(frozen=True)
class _Delivery:
    node: NodeId
    attempt: int
    takeover: bool = False
    epoch: int = 1


@dataclass(frozen=True)
class _Claimed:
    """One attempt that both sides let a worker run, with the lease they granted."""

    node: NodeId
    attempt: int
    lease: int
    epoch: int
    task: str
    args: list[Any]
    kwargs: dict[str, Any]

    def value(self) -> str:
        """Return the encoded value that a planned success of the attempt returns."""
        return dumps(echo_value(self.task, self.args, self.kwargs))

    def report(self, kind: str, payload: Any, countdown: float = 0.0) -> _Report:
        """Return the attempt's report of ``kind``, carrying its lease and epoch."""
        return _Report(
            kind,
            self.node,
            self.attempt,
            payload,
            lease=self.lease,
            epoch=self.epoch,
            countdown=countdown,
        )


class _Pair:
    """One run applied to the machine and to the Redis scripts in lockstep."""

    def __init__(
        self,
        driver: RedisDriver,
        spec: GraphSpec,
        plan: dict[str, NodePlan],
        replacements: list[GraphSpec],
    ) -> None:
        self.driver = driver
        self.spec = spec
        self.plan = plan
        #: Compiled canvases that claimed tasks put in their place, one each.
        self.replacements = replacements
        self.run_id = f"run-{uuid.uuid4().hex[:8]}"
        self.now = 0.0
        self.messages: list[_Delivery] = []
        #: Retried attempts waiting out their countdown, not yet deliverable.
        self.delayed: list[_Delivery] = []
        self.reports: list[_Report] = []
        #: Times each ``(node, attempt, epoch)`` was enqueued.
        self.enqueued: Counter[tuple[NodeId, int, int]] = Counter()
        #: The latest lease the machine granted for each ``(node, attempt, epoch)``.
        self.leases: dict[tuple[NodeId, int, int], int] = {}
        #: Reports from fenced claims, which both sides ignored.
        self.fenced = 0
        #: Lifecycle events the applied steps must write: kind, node, attempt.
        self.events: list[tuple[str, str, int]] = [("submitted", "", 0)]
        run, effects = machine.start(self.run_id, spec, self.now)
        self.run: RunState = run
        assert driver.submit(self.run_id, spec)
        assert not driver.submit(self.run_id, spec)
        self._enqueue(effects)

    def step(self, rng: random.Random) -> None:
        self.now += 1.0
        index = rng.randrange(len(self.messages) + len(self.reports))
        if index < len(self.messages):
            self._deliver(self.messages.pop(index), rng)
        else:
            self._apply(self.reports.pop(index - len(self.messages)))

    def cancel(self) -> None:
        self.now += 1.0
        was_running = self.run.status == "running"
        self._enqueue(machine.cancel(self.run, self.now))
        self.driver.cancel(self.run_id)
        if was_running and self.run.status == "cancelled":
            # Cancelling removes the run's messages of its epoch from the
            # delayed set.
            dropped = [item for item in self.delayed if item.epoch == self.run.epoch]
            for item in dropped:
                self.enqueued[(item.node, item.attempt, item.epoch)] -= 1
            self.enqueued = +self.enqueued
            self.delayed = [item for item in self.delayed if item not in dropped]

    def retry_run(self) -> bool:
        """Retry the run on both sides; return whether they reopened it."""
        self.now += 1.0
        status = self.run.status
        if status in ("failed", "cancelled"):
            rerun = [
                node_id
                for node_id in machine.nodes_to_reopen(self.run)
                if self.run.nodes[node_id].state == "succeeded"
                and self.run.spec.node(node_id).options.ignore_result
                and self.run.nodes[node_id].value is None
            ]
            if rerun:
                event("run retry reruns a dropped ignore_result value")
        try:
            effects = machine.reopen(self.run, self.now)
        except RunNotRetryable:
            with pytest.raises(RunNotRetryable, match=status):
                self.driver.retry_run(self.run_id)
            event(f"run retry rejected: {status}")
            return False
        assert self.driver.retry_run(self.run_id) == self.run.epoch
        self.events.append(("reopened", "", 0))
        event(f"run retry of a {status} run")
        if any(record.replaced for record in self.run.nodes.values()):
            event("run retry with a replaced node")
        self._enqueue(effects)
        return True

    def _message(
        self,
        node_id: NodeId,
        attempt: int,
        lease: int = 1,
        reclaimed: bool = False,
        epoch: int = 1,
    ) -> Message:
        queue = self.run.spec.node(node_id).options.queue or "default"
        return Message(
            self.run_id,
            node_id,
            attempt,
            queue,
            epoch=epoch,
            lease=lease,
            reclaimed=reclaimed,
        )

    def claim(self, delivery: _Delivery) -> _Claimed | None:
        """Claim a delivery on both sides and return the claim, or None if rejected.

        Both sides must accept or reject it alike, grant the same lease and
        hand the task the same arguments.
        """
        node_id, attempt, takeover = delivery.node, delivery.attempt, delivery.takeover
        epoch = delivery.epoch
        accepted = machine.claim(
            self.run, node_id, attempt, self.now, takeover=takeover, epoch=epoch
        )
        message = self._message(node_id, attempt, reclaimed=takeover, epoch=epoch)
        claim = self.driver.claim(message)
        assert (claim is not None) == accepted, (
            f"Claim of node {node_id} attempt {attempt} (takeover {takeover}): "
            f"machine accepted {accepted}, Redis returned {claim}."
        )
        if claim is None:
            return None
        self.events.append(("started", node_id, attempt))
        lease = self.run.nodes[node_id].lease
        self.leases[(node_id, attempt, epoch)] = lease
        assert claim.message.lease == lease
        assert not claim.message.reclaimed
        node = self.run.spec.node(node_id)
        has_value, value = machine.resolve_input(self.run, node)
        args = [decode(item) for item in node.args]
        if has_value:
            args.insert(0, value)
        assert loads(dumps(claim.args)) == loads(dumps(args))
        assert claim.kwargs == {key: decode(v) for key, v in node.kwargs.items()}
        return _Claimed(node_id, attempt, lease, epoch, node.task, args, claim.kwargs)

    def _deliver(self, delivery: _Delivery, rng: random.Random) -> None:
        claimed = self.claim(delivery)
        if claimed is None:
            return
        node_id, attempt, epoch = claimed.node, claimed.attempt, claimed.epoch
        node_plan = self.plan.get(node_id, NodePlan())
        if node_plan.takeover and claimed.lease == 1 and not delivery.takeover:
            self.messages.append(_Delivery(node_id, attempt, True, epoch))
        if self.replacements and rng.random() < 0.5:
            kind, payload = "replace", self.replacements.pop()
        elif attempt <= node_plan.retries:
            kind = "retry"
            payload = ErrorInfo.from_exception(PlannedRetry(f"retry {attempt}"))
        elif node_plan.outcome == "fail":
            kind = "fail"
            payload = ErrorInfo.from_exception(PlannedFailure(f"node {node_id}"))
        else:
            kind = "complete"
            payload = claimed.value()
        self.reports.append(claimed.report(kind, payload))

    def _apply(self, report: _Report) -> None:
        run, now = self.run, self.now
        node, attempt, payload, lease, epoch = (
            report.node,
            report.attempt,
            report.payload,
            report.lease,
            report.epoch,
        )
        message = self._message(node, attempt, lease, epoch=epoch)
        fenced = lease < self.leases.get((node, attempt, epoch), lease)
        old_epoch = epoch < run.epoch
        fence = {"lease": lease, "epoch": epoch}
        if report.kind == "complete":
            effects = machine.complete(run, node, attempt, payload, now, **fence)
            self.driver.complete(message, payload)
        elif report.kind == "fail":
            effects = machine.fail(run, node, attempt, payload, now, **fence)
            self.driver.fail(message, payload)
        elif report.kind == "replace":
            effects = machine.splice(run, node, attempt, payload, now, **fence)
            self.driver.replace(message, payload)
        else:
            delay = report.countdown
            effects = machine.retry(run, node, attempt, payload, delay, now, **fence)
            self.driver.retry(message, payload, delay)
        if old_epoch:
            assert effects is None
            return
        if report.late or fenced:
            assert effects is None
            if fenced:
                self.fenced += 1
            return
        if effects is not None:
            self.events.append((_EVENT_OF_REPORT[report.kind], node, attempt))
            self._enqueue(effects)
        if self.plan.get(report.node, NodePlan()).duplicate:
            self.reports.append(replace(report, late=True))

    def _enqueue(self, effects: list[machine.Effect]) -> None:
        for effect in effects:
            if isinstance(effect, machine.RunEnded):
                self.events.append(("ended", effect.status, 0))
            if isinstance(effect, machine.Enqueue):
                self.enqueued[(effect.node, effect.attempt, self.run.epoch)] += 1
                delivery = _Delivery(effect.node, effect.attempt, epoch=self.run.epoch)
                if effect.delay_s > 0:
                    # Delivered once its countdown elapses, and only once,
                    # because a plan's ``duplicate`` does not apply to it.
                    self.delayed.append(delivery)
                    continue
                self.messages.append(delivery)
                if self.plan.get(effect.node, NodePlan()).duplicate:
                    self.messages.append(delivery)


_EVENT_OF_REPORT = {
    "complete": "succeeded",
    "fail": "failed",
    "retry": "retried",
    "replace": "replaced",
}


def _with_ignored(spec: GraphSpec, ignored: set[NodeId]) -> GraphSpec:
    """Return ``spec`` with ``ignore_result`` set on the nodes in ``ignored``."""
    nodes = [
        node.model_copy(
            update={"options": node.options.model_copy(update={"ignore_result": True})}
        )
        if node.id in ignored
        else node
        for node in spec.nodes
    ]
    return spec.model_copy(update={"nodes": nodes})


def _queued_attempts(
    target: Any, pair: _Pair, queues: set[str]
) -> tuple[Counter[Any], Counter[Any]]:
    """Return the run's attempts on its queue streams and in the delayed set.

    Each attempt is ``(node, attempt, epoch)``. Other runs of the driver may
    share the streams and the delayed set, so their entries are left out.
    """
    client = target.client()
    partition = pair.driver._keys.partition_of(pair.run_id)
    try:
        on_streams: Counter[tuple[str, int, int]] = Counter()
        for queue in queues:
            for _entry, fields in client.xrange(partition.queue(queue)):
                if fields["run"] != pair.run_id:
                    continue
                key = (fields["node"], int(fields["attempt"]), int(fields["epoch"]))
                on_streams[key] += 1
        delayed: Counter[tuple[str, int, int]] = Counter()
        for member in client.zrange(partition.delayed, 0, -1):
            # The member is the JSON array [queue, run, node, attempt, epoch, task].
            _queue, run_id, node, attempt, epoch, _task = json.loads(member)
            if run_id == pair.run_id:
                delayed[(node, int(attempt), int(epoch))] += 1
        return on_streams, delayed
    finally:
        client.close()


def _check_expiry(pair: _Pair, target: Any) -> None:
    """Check that the run's keys expire once it ended, and never while it runs."""
    run_keys = pair.driver._keys.run(pair.run_id)
    client = target.client()
    try:
        # A large run (a small submit chunk) also has a spec key, and a
        # roots list until its roots are released.
        for key in [*run_keys.all(), run_keys.counts, run_keys.spec, run_keys.roots]:
            ttl = client.pttl(key)
            if ttl == -2:  # The key holds nothing (no value or error yet).
                continue
            if pair.run.status == "running":
                assert ttl == -1, f"{key} of a running run expires in {ttl} ms"
            else:
                assert ttl > 0, f"{key} of a {pair.run.status} run has no TTL"
    finally:
        client.close()


def _check_same_state(pair: _Pair, target: Any) -> None:
    run = pair.run
    snapshot = pair.driver.snapshot(pair.run_id)
    assert snapshot.status == run.status
    assert snapshot.epoch == run.epoch
    assert snapshot.error_node == run.error_node
    if run.status == "succeeded":
        assert snapshot.value is not None
        assert run.value is not None
        assert loads(snapshot.value) == loads(run.value)
    for node_id, expected in run.nodes.items():
        actual = snapshot.nodes[node_id]
        context = f"node {node_id} of {run.spec.to_json()}"
        assert actual.state == expected.state, context
        assert actual.attempt == expected.attempt, context
        assert actual.lease == expected.lease, context
        assert actual.value == expected.value, context
        assert actual.error == expected.error, context
        assert actual.cause == expected.cause, context
        assert actual.replaced == expected.replaced, context
    assert snapshot.spec == run.spec
    assert pair.driver.group_counts(pair.run_id) == machine.group_counts(run)
    written = [
        (event.kind, event.status or event.node_id, event.attempt)
        for event in pair.driver.events(limit=100_000)
        if event.run_id == pair.run_id
    ]
    assert written == pair.events
    _check_expiry(pair, target)
    queues = {node.options.queue or "default" for node in run.spec.nodes}
    on_streams, delayed = _queued_attempts(target, pair, queues)
    waiting = Counter((item.node, item.attempt, item.epoch) for item in pair.delayed)
    assert delayed == waiting
    assert on_streams == Counter({key: 1 for key in pair.enqueued}) - waiting
    assert all(count == 1 for count in pair.enqueued.values())


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(data=st.data(), canvas=canvases(TASKS, max_depth=3, max_leaves=8))
def test_scripts_match_machine(
    redis_target: Any, data: st.DataObject, canvas: Any
) -> None:
    spec = compile_canvas(canvas)
    node_ids = [node.id for node in spec.nodes]
    if node_ids:
        ignored = data.draw(st.sets(st.sampled_from(node_ids)), label="ignored")
        spec = _with_ignored(spec, ignored)
    plan = data.draw(plans(spec), label="plan")
    seed = data.draw(st.integers(0, 2**32 - 1), label="seed")
    replacements = data.draw(
        st.lists(canvases(TASKS, max_depth=2, max_leaves=3), max_size=2),
        label="replacements",
    )
    cancel_after = data.draw(st.one_of(st.none(), st.integers(0, 20)), label="cancel")
    # A run retry tried at one step, whatever the run's state then, and the
    # number of retries once the run has ended, each with a new plan.
    retry_at = data.draw(st.one_of(st.none(), st.integers(0, 20)), label="retry at")
    rounds = data.draw(st.integers(0, 2), label="retries after the end")
    # A small chunk writes the run in chunks, seals it and releases its roots,
    # and a small inline limit makes a node that reads others read in pages.
    chunk = data.draw(st.sampled_from([5000, 8]), label="submit chunk")
    inline = data.draw(st.sampled_from([20_000, 2]), label="inline input chars")
    prefix = f"diff-{uuid.uuid4().hex[:12]}:"
    driver = RedisDriver(
        redis_target.url,
        prefix=prefix,
        **redis_target.settings,
        submit_chunk=chunk,
        release_slice=2,
        inline_input_chars=inline,
    )
    try:
        compiled = [
            _with_ignored(compile_canvas(item), {"0"})
            if index % 2
            else compile_canvas(item)
            for index, item in enumerate(replacements)
        ]
        pair = _Pair(driver, spec, plan, compiled)
        rng = random.Random(seed)
        steps = 0
        for round_number in range(rounds + 1):
            while pair.messages or pair.reports:
                if steps == cancel_after:
                    pair.cancel()
                if steps == retry_at:
                    pair.retry_run()
                pair.step(rng)
                steps += 1
            _check_same_state(pair, redis_target)
            if round_number < rounds:
                pair.plan = data.draw(plans(pair.run.spec), label="retry plan")
                pair.retry_run()
        _check_same_state(pair, redis_target)
    finally:
        driver.close()


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(data=st.data(), canvas=canvases(TASKS, max_depth=3, max_leaves=8))
def test_replay_matches_machine_replay_node(
    redis_target: Any, data: st.DataObject, canvas: Any
) -> None:
    """Replaying a failed node reopens the same nodes on Redis as `replay_node`.

    Some examples retry the run as a new epoch first, and some replay a dead
    letter of the epoch before, which both sides must refuse.
    """
    spec = compile_canvas(canvas)
    node_ids = [node.id for node in spec.nodes]
    if node_ids:
        ignored = data.draw(st.sets(st.sampled_from(node_ids)), label="ignored")
        spec = _with_ignored(spec, ignored)
    plan = data.draw(plans(spec), label="plan")
    seed = data.draw(st.integers(0, 2**32 - 1), label="seed")
    prefix = f"replay-{uuid.uuid4().hex[:12]}:"
    driver = RedisDriver(redis_target.url, prefix=prefix, **redis_target.settings)
    try:
        pair = _Pair(driver, spec, plan, [])
        rng = random.Random(seed)
        while pair.messages or pair.reports:
            pair.step(rng)
        stale: dict[NodeId, int] = {}
        if data.draw(st.booleans(), label="retry the run first"):
            stale = {
                key: record.attempt
                for key, record in pair.run.nodes.items()
                if record.state == "failed"
            }
            pair.plan = data.draw(plans(pair.run.spec), label="retry plan")
            if pair.retry_run():
                while pair.messages or pair.reports:
                    pair.step(rng)
            else:
                stale = {}
        failed = [
            key for key, record in pair.run.nodes.items() if record.state == "failed"
        ]
        for node_id in data.draw(st.permutations(failed), label="replayed"):
            record = pair.run.nodes[node_id]
            epoch = pair.run.epoch
            if node_id in stale and data.draw(st.booleans(), label="stale epoch"):
                # A dead letter of the epoch before the run retry.
                epoch -= 1
                attempt = stale[node_id]
            else:
                attempt = record.attempt
            message = pair._message(node_id, attempt, epoch=epoch)
            driver.dead_letter(message, "replayed by the test")
            [dead], _ = driver.list_dead_letters()
            pair.now += 1.0
            effects = machine.replay_node(
                pair.run, node_id, attempt, pair.now, epoch=epoch
            )
            outcome = driver.replay_dead_letter(dead.id)
            assert (outcome == "replayed") == (effects is not None), outcome
            if epoch != pair.run.epoch:
                assert outcome == "other_epoch"
            event(f"replay: {outcome}")
            if effects is None:
                driver.purge_dead_letters([dead.id])
                continue
            # The new attempt succeeds, so the reopened nodes can run.
            pair.plan[node_id] = NodePlan()
            pair._enqueue(effects)
            _check_same_state(pair, redis_target)
            while pair.messages or pair.reports:
                pair.step(rng)
        _check_same_state(pair, redis_target)
    finally:
        driver.close()
