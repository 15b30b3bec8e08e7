"""Canvases on which the state machine once disagreed with the interpreter.

Each case is the smallest canvas found from a failing property test in
tests/property/test_engine_properties.py. It runs through `StepDriver` on the
state machine and through the reference interpreter, which must agree, and
checks the outcome the rules in docs/canvas.md give.
"""

from __future__ import annotations

import pytest

from stem.canvas import chain, chord, group
from stem.canvas.primitives import Signature
from stem.testing import NodePlan, check_against_interpreter


def task(name: str) -> Signature:
    return Signature(name, immutable=True)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_settled_failure_fails_other_member(seed: int) -> None:
    # Node 0 reaches the group twice through empty groups: the chord's
    # all_settled body absorbs its failure, but the second member does not.
    # The group's value needs that member, so the run fails with node 0.
    header = [task("b"), group()]
    canvas = chain(
        task("a"), group(chord(header, group(), join="all_settled"), group())
    )

    run, _ = check_against_interpreter(canvas, {"0": NodePlan("fail")}, seed)

    assert run.status == "failed"
    assert run.error_node == "0"
    assert run.nodes["1"].state == "cancelled"


def test_settled_failure_fires_group_errback() -> None:
    # The errback covers node 0 through the second member, so it fires.
    header = [task("b"), group()]
    members = group(chord(header, group(), join="all_settled"), group())
    members.link_error(task("report"))
    canvas = chain(task("a"), members)

    run, expected = check_against_interpreter(canvas, {"0": NodePlan("fail")}, 0)

    assert expected.errback_calls == {"2": 1}
    assert run.nodes["2"].state == "succeeded"


@pytest.mark.parametrize("join", ["fail_fast", "all_settled"])
def test_failed_trigger_skips_whole_link(join: str) -> None:
    # The empty group in the header passes node 0 on to the body, so the
    # body waits on the link's trigger directly. 0 failed, so the link's
    # condition did not occur: the body is skipped, not cancelled or run.
    link = chord([task("b"), group()], task("c"), join=join)
    canvas = task("a")
    canvas.link(link)

    run, _ = check_against_interpreter(canvas, {"0": NodePlan("fail")}, 0)

    assert run.nodes["1"].state == "skipped"
    assert run.nodes["2"].state == "skipped"


def test_failed_link_member_cancels_body() -> None:
    # The trigger succeeded and the header member failed: the body is
    # cancelled by that failure, as anywhere else.
    link = chord([task("b"), group()], task("c"))
    canvas = task("a")
    canvas.link(link)

    run, _ = check_against_interpreter(canvas, {"1": NodePlan("fail")}, 0)

    assert run.nodes["2"].state == "cancelled"


def test_failed_trigger_skips_link_errback() -> None:
    # The chord's errback covers node 0 through the empty header member, but
    # the chord is a link of 0: when 0 fails, the chord never runs, and its
    # errback is skipped with it.
    inner = chord([task("b"), group()], group())
    inner.link_error(task("report"))
    canvas = task("a")
    canvas.link(inner)

    run, _ = check_against_interpreter(canvas, {"0": NodePlan("fail")}, 0)

    assert run.nodes["2"].state == "skipped"
