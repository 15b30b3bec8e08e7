"""A rule-based state machine that drives the Python transitions and the Redis scripts.

Each rule applies one operation to `stem.engine.machine` and to the Redis
driver side by side:

- submit a drawn canvas, claim a queued message, deliver a claimed message
  again;
- complete, fail, retry with a countdown, or splice (as ``self.replace``
  does);
- report an attempt a second time, or report from an attempt whose lease
  was taken over or whose run was retried;
- take a lease over, cancel a run, retry a run, and let countdowns elapse.

After every step the invariant checks that both sides contain the same
state for every run. It compares node states, values, errors, attempts and
leases, run status and epoch, and state counts per group. On Redis it also
checks the lifecycle events written, the attempts on the queue streams and
in the delayed set, and the keys' expiry. Timestamps are left out. Claims
must be accepted or rejected alike, and every rejected report must change
nothing on either side.

No worker threads run and nothing sleeps. A countdown is waited out by the
``elapse_countdowns`` rule, which makes every delayed message of the driver
due and runs the driver's promote script. Hypothesis draws every step, so a
failing example replays from hypothesis's example database, or from the blob
that the ``ci`` profile prints.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from stem.canvas.compiler import compile_canvas
from stem.drivers.redis import RedisDriver
from stem.engine.records import ErrorInfo
from stem.testing import PlannedFailure, PlannedRetry, canvases

from .test_redis_scripts_match_machine import (
    TASKS,
    _check_same_state,
    _Claimed,
    _Delivery,
    _Pair,
    _Report,
    _with_ignored,
)

#: Runs one example submits at most. Every step checks all of them, so the
#: cost of a step grows with this number.
MAX_RUNS = 3

#: Countdowns of retry reports, in seconds. Zero queues the next attempt at
#: once, and the others put it in the delayed set until ``elapse_countdowns``.
COUNTDOWNS_S = (0.0, 30.0, 3600.0)

#: Seconds of slack on a delayed-set score, which the scripts round to six
#: decimals. The bounds come from TIME on the Redis node that stores the run.
SCORE_SLACK_S = 0.001

#: Kinds of `_Report`, for a late report.
REPORT_KINDS = ("complete", "fail", "retry", "replace")


class _LentClient:
    """A client that the shared checks may close, which leaves it open."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def close(self) -> None:
        """Leave the client open for the next check."""


class _LentClientTarget:
    """A Redis target for `_check_same_state` that lends it one open client."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def client(self) -> _LentClient:
        return _LentClient(self._client)


@dataclass
class _Run:
    """One submitted run and the workers' view of its attempts."""

    pair: _Pair
    #: Attempts claimed by a worker that has not reported yet. An attempt
    #: whose lease was taken over or whose run was retried stays here, stale.
    claims: list[_Claimed] = field(default_factory=list)
    #: Messages already claimed once, for a second delivery.
    delivered: list[_Delivery] = field(default_factory=list)
    #: Reports applied, for a duplicate report.
    reported: list[_Report] = field(default_factory=list)

    def may_cancel(self) -> bool:
        """Return whether the run is running and one of its messages was claimed."""
        return self.pair.run.status == "running" and bool(self.delivered)

    def is_live(self, claimed: _Claimed) -> bool:
        """Return whether the machine would accept a report of ``claimed``."""
        run = self.pair.run
        record = run.nodes.get(claimed.node)
        return (
            record is not None
            and claimed.epoch == run.epoch
            and record.state == "running"
            and record.attempt == claimed.attempt
            and record.lease == claimed.lease
        )

    def live_claims(self) -> list[_Claimed]:
        return [claimed for claimed in self.claims if self.is_live(claimed)]

    def stale_claims(self) -> list[_Claimed]:
        return [claimed for claimed in self.claims if not self.is_live(claimed)]


class RedisScriptsMachine(RuleBasedStateMachine):
    """Apply each operation to the Python machine and to the Redis scripts."""

    runs = Bundle("runs")

    def __init__(self, target: Any) -> None:
        super().__init__()
        self.target = target
        #: One client for every check of an example, because opening a
        #: Cluster client runs slot discovery, which took most of the time.
        self.client = target.client()
        self.driver: RedisDriver | None = None
        self.submitted: list[_Run] = []

    # -- helpers --------------------------------------------------------------

    def _pick(
        self, data: st.DataObject, items_of: Callable[[_Run], list[Any]]
    ) -> tuple[_Run, Any]:
        """Draw a run that has items, then one of its items."""
        candidates = [run for run in self.submitted if items_of(run)]
        run = data.draw(st.sampled_from(candidates), label="run")
        item = data.draw(st.sampled_from(items_of(run)), label="item")
        return run, item

    def _claim(self, run: _Run, delivery: _Delivery) -> _Claimed | None:
        run.pair.now += 1.0
        claimed = run.pair.claim(delivery)
        run.delivered.append(delivery)
        if claimed is not None:
            run.claims.append(claimed)
        return claimed

    def _report(self, run: _Run, report: _Report) -> None:
        run.pair.now += 1.0
        run.pair._apply(report)
        run.reported.append(report)

    def _take_live(self, data: st.DataObject) -> tuple[_Run, _Claimed]:
        run, claimed = self._pick(data, _Run.live_claims)
        run.claims.remove(claimed)
        return run, claimed

    def _has_live(self) -> bool:
        return any(run.live_claims() for run in self.submitted)

    # -- rules ----------------------------------------------------------------

    @initialize(
        chunk=st.sampled_from([5000, 8]),
        inline=st.sampled_from([20_000, 2]),
    )
    def open_driver(self, chunk: int, inline: int) -> None:
        """Open a driver on a fresh key prefix.

        A small chunk writes runs in chunks, seals them and releases their
        roots, and a small inline limit makes a node that reads others read
        its inputs in pages.
        """
        self.driver = RedisDriver(
            self.target.url,
            prefix=f"stateful-{uuid.uuid4().hex[:12]}:",
            **self.target.settings,
            submit_chunk=chunk,
            release_slice=2,
            inline_input_chars=inline,
        )

    @precondition(lambda self: len(self.submitted) < MAX_RUNS)
    @rule(
        target=runs,
        canvas=canvases(TASKS, max_depth=3, max_leaves=6),
        data=st.data(),
    )
    def submit(self, canvas: Any, data: st.DataObject) -> _Run:
        assert self.driver is not None
        spec = compile_canvas(canvas)
        node_ids = [node.id for node in spec.nodes]
        if node_ids:
            ignored = data.draw(st.sets(st.sampled_from(node_ids)), label="ignored")
            spec = _with_ignored(spec, ignored)
        run = _Run(_Pair(self.driver, spec, {}, []))
        self.submitted.append(run)
        return run

    @precondition(lambda self: any(run.pair.messages for run in self.submitted))
    @rule(data=st.data())
    def claim(self, data: st.DataObject) -> None:
        run, delivery = self._pick(data, lambda run: run.pair.messages)
        run.pair.messages.remove(delivery)
        self._claim(run, delivery)

    @precondition(lambda self: any(run.delivered for run in self.submitted))
    @rule(data=st.data())
    def deliver_again(self, data: st.DataObject) -> None:
        """Deliver a claimed message again, which both sides must reject."""
        run, delivery = self._pick(data, lambda run: run.delivered)
        assert self._claim(run, replace(delivery, takeover=False)) is None

    @precondition(_has_live)
    @rule(data=st.data())
    def complete(self, data: st.DataObject) -> None:
        run, claimed = self._take_live(data)
        self._report(run, claimed.report("complete", claimed.value()))

    @precondition(_has_live)
    @rule(data=st.data())
    def fail(self, data: st.DataObject) -> None:
        run, claimed = self._take_live(data)
        error = ErrorInfo.from_exception(PlannedFailure(f"node {claimed.node}"))
        self._report(run, claimed.report("fail", error))

    @precondition(_has_live)
    @rule(data=st.data(), countdown=st.sampled_from(COUNTDOWNS_S))
    def retry(self, data: st.DataObject, countdown: float) -> None:
        run, claimed = self._take_live(data)
        error = ErrorInfo.from_exception(PlannedRetry(f"retry {claimed.attempt}"))
        before = self._server_time(run)
        self._report(run, claimed.report("retry", error, countdown))
        after = self._server_time(run)
        if countdown > 0:
            score = self._delayed_score(run, claimed)
            assert before + countdown - SCORE_SLACK_S <= score
            assert score <= after + countdown + SCORE_SLACK_S

    @precondition(_has_live)
    @rule(
        data=st.data(),
        canvas=canvases(TASKS, max_depth=2, max_leaves=3),
        ignore_first=st.booleans(),
    )
    def splice(self, data: st.DataObject, canvas: Any, ignore_first: bool) -> None:
        """Put a drawn canvas in a running node's place, as ``self.replace`` does."""
        run, claimed = self._take_live(data)
        spec = compile_canvas(canvas)
        if ignore_first:
            spec = _with_ignored(spec, {"0"})
        self._report(run, claimed.report("replace", spec))

    @precondition(lambda self: any(run.reported for run in self.submitted))
    @rule(data=st.data())
    def duplicate_report(self, data: st.DataObject) -> None:
        """Apply a report again, which both sides must ignore."""
        run, report = self._pick(data, lambda run: run.reported)
        events = len(run.pair.events)
        self._report(run, replace(report, late=True))
        assert len(run.pair.events) == events

    @precondition(lambda self: any(run.stale_claims() for run in self.submitted))
    @rule(data=st.data(), kind=st.sampled_from(REPORT_KINDS))
    def late_report(self, data: st.DataObject, kind: str) -> None:
        """Report from an attempt that was taken over, cancelled or retried."""
        run, claimed = self._pick(data, _Run.stale_claims)
        run.claims.remove(claimed)
        if kind == "complete":
            payload: Any = claimed.value()
        elif kind == "replace":
            payload = compile_canvas(data.draw(canvases(TASKS, max_leaves=2)))
        else:
            payload = ErrorInfo.from_exception(PlannedFailure(f"late {kind}"))
        events = len(run.pair.events)
        self._report(run, claimed.report(kind, payload))
        assert len(run.pair.events) == events

    @precondition(_has_live)
    @rule(data=st.data())
    def take_lease_over(self, data: st.DataObject) -> None:
        """Reclaim a running attempt's message, as for a worker presumed dead."""
        run, claimed = self._pick(data, _Run.live_claims)
        delivery = _Delivery(claimed.node, claimed.attempt, True, claimed.epoch)
        takeover = self._claim(run, delivery)
        assert takeover is not None
        assert takeover.lease == claimed.lease + 1

    @precondition(lambda self: any(run.may_cancel() for run in self.submitted))
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        """Cancel a running run that has started."""
        candidates = [run for run in self.submitted if run.may_cancel()]
        run = data.draw(st.sampled_from(candidates), label="run")
        run.pair.cancel()

    @precondition(
        lambda self: any(
            run.pair.run.status in ("failed", "cancelled") for run in self.submitted
        )
    )
    @rule(run=runs)
    def retry_run(self, run: _Run) -> None:
        """Retry a run once some run failed or was cancelled.

        The run drawn may be running or succeeded, which both sides reject.
        """
        run.pair.retry_run()

    @precondition(lambda self: any(run.pair.delayed for run in self.submitted))
    @rule()
    def elapse_countdowns(self) -> None:
        """Make every delayed message due and move it to its queue."""
        assert self.driver is not None
        for partition in self.driver._keys.partitions:
            for member in self.client.zrange(partition.delayed, 0, -1):
                self.client.zadd(partition.delayed, {member: 0}, xx=True)
        # The driver moves due messages at most once per read block, so the
        # rule resets that clock instead of waiting it out.
        self.driver._last_promote = float("-inf")
        self.driver._promote_due()
        for run in self.submitted:
            run.pair.messages.extend(run.pair.delayed)
            run.pair.delayed.clear()

    # -- invariant ------------------------------------------------------------

    @invariant()
    def same_state(self) -> None:
        for run in self.submitted:
            _check_same_state(run.pair, _LentClientTarget(self.client))

    def teardown(self) -> None:
        self.client.close()
        if self.driver is not None:
            self.driver.close()

    # -- reading Redis --------------------------------------------------------

    def _server_time(self, run: _Run) -> float:
        """Return the clock of the Redis node that stores the run, in seconds."""
        key = run.pair.driver._keys.run(run.pair.run_id).run
        if self.target.cluster:
            node = self.client.get_node_from_key(key)
            seconds, micros = self.client.time(target_nodes=node)
        else:
            seconds, micros = self.client.time()
        return float(seconds) + float(micros) / 1_000_000

    def _delayed_score(self, run: _Run, claimed: _Claimed) -> float:
        """Return the delayed-set score of the attempt after ``claimed``."""
        partition = run.pair.driver._keys.partition_of(run.pair.run_id)
        expected = (run.pair.run_id, claimed.node, claimed.attempt + 1)
        members = self.client.zrange(partition.delayed, 0, -1, withscores=True)
        for member, score in members:
            _queue, run_id, node, attempt, epoch, _task = json.loads(member)
            if (run_id, node, int(attempt)) == expected:
                assert int(epoch) == claimed.epoch
                return float(score)
        raise AssertionError(
            f"Delayed message for node {claimed.node} attempt "
            f"{claimed.attempt + 1} of run {run.pair.run_id} not found in "
            f"{partition.delayed}, although the retry had a countdown."
        )


#: The profile that tests/conftest.py loaded.
_PROFILE = settings()

#: A tenth of the profile's examples (5 with ``dev``, 50 with ``ci``), with
#: 40 steps each, on each Redis configuration. With ``ci`` the three
#: configurations took about 48 s together on a shared two-core machine,
#: the Cluster about half of it.
MACHINE_SETTINGS = settings(
    _PROFILE,
    max_examples=max(5, _PROFILE.max_examples // 10),
    stateful_step_count=40,
)


def test_redis_state_machine(redis_target: Any) -> None:
    run_state_machine_as_test(
        lambda: RedisScriptsMachine(redis_target), settings=MACHINE_SETTINGS
    )
