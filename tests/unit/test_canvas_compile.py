"""Tests of `compile_canvas`: the graph spec that each canvas shape compiles to."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from stem.canvas import (
    Chain,
    Chord,
    GraphSpec,
    Group,
    GroupSpec,
    InvalidCanvas,
    InvalidOption,
    NodeSpec,
    NotSerializable,
    Signature,
    chain,
    chord,
    compile_canvas,
    group,
)
from stem.canvas.spec import CauseInput, ListInput, NodeInput, NodeOptions, NoInput


def task(name: str, *args: Any, **kwargs: Any) -> Signature:
    return Signature(name, args, kwargs)


def node(spec: GraphSpec, name: str) -> NodeSpec:
    """Return the one node of ``spec`` whose task is ``name``."""
    found = [item for item in spec.nodes if item.task == name]
    assert len(found) == 1, f"{len(found)} nodes run {name!r}"
    return found[0]


def ref(node_id: str) -> NodeInput:
    return NodeInput(node=node_id)


def listing(*items: Any) -> ListInput:
    return ListInput(items=list(items))


def without_paths(spec: GraphSpec) -> list[NodeSpec]:
    return [item.model_copy(update={"path": ""}) for item in spec.nodes]


# -- shapes ---------------------------------------------------------------------


def test_signature_is_one_root() -> None:
    spec = compile_canvas(task("add", 1, k=2))

    assert [item.id for item in spec.nodes] == ["0"]
    only = spec.nodes[0]
    assert only.task == "add"
    assert only.args == [1]
    assert only.kwargs == {"k": 2}
    assert only.deps == []
    assert only.input == NoInput()
    assert only.path == ""
    assert only.role == "task"
    assert only.side is False
    assert spec.output == ref("0")
    assert spec.sinks == ["0"]
    assert spec.groups == []


def test_signature_arguments_are_encoded() -> None:
    when = dt.date(2024, 5, 1)

    spec = compile_canvas(task("add", when, (1, 2), k=b"\x00"))

    only = spec.nodes[0]
    assert only.args == [{"__stem__": "date", "v": "2024-05-01"}, [1, 2]]
    assert only.kwargs == {"k": {"__stem__": "bytes", "v": "AA=="}}


def test_signature_options_are_copied() -> None:
    spec = compile_canvas(task("add").set(queue="q", priority=3, time_limit=2))

    options = spec.nodes[0].options
    assert options.queue == "q"
    assert options.priority == 3
    assert options.time_limit == 2.0
    assert options.countdown is None


def test_immutable_signature_is_marked() -> None:
    spec = compile_canvas(task("add").si())

    assert spec.nodes[0].immutable is True


def test_chain_feeds_each_step() -> None:
    spec = compile_canvas(chain(task("a"), task("b"), task("c")))

    assert [item.task for item in spec.nodes] == ["a", "b", "c"]
    assert [item.id for item in spec.nodes] == ["0", "1", "2"]
    assert [item.deps for item in spec.nodes] == [[], ["0"], ["1"]]
    assert [item.input for item in spec.nodes] == [NoInput(), ref("0"), ref("1")]
    assert [item.path for item in spec.nodes] == ["chain[0]", "chain[1]", "chain[2]"]
    assert spec.output == ref("2")
    assert spec.sinks == ["2"]


def test_immutable_step_waits_without_input() -> None:
    spec = compile_canvas(chain(task("a"), task("b").si()))

    second = node(spec, "b")
    assert second.deps == ["0"]
    assert second.input == NoInput()


def test_group_members_share_input() -> None:
    spec = compile_canvas(chain(task("a"), group(task("b"), task("c"))))

    assert node(spec, "b").deps == ["0"]
    assert node(spec, "b").input == ref("0")
    assert node(spec, "c").deps == ["0"]
    assert node(spec, "c").input == ref("0")
    assert node(spec, "b").path == "chain[1] > group[0]"
    assert spec.output == listing(ref("1"), ref("2"))
    assert spec.sinks == ["1", "2"]


def test_group_value_in_declaration_order() -> None:
    spec = compile_canvas(group(task("a"), task("b"), task("c")))

    assert spec.output == listing(ref("0"), ref("1"), ref("2"))
    assert spec.sinks == ["0", "1", "2"]
    assert [item.deps for item in spec.nodes] == [[], [], []]


def test_group_spec_lists_members() -> None:
    spec = compile_canvas(group(chain(task("a"), task("b")), task("c")))

    assert spec.groups == [
        GroupSpec(id=0, path="", parent=None, members=[["0", "1"], ["2"]])
    ]
    assert [item.group for item in spec.nodes] == [0, 0, 0]


def test_one_member_group_is_list() -> None:
    spec = compile_canvas(group(task("a")))

    assert spec.output == listing(ref("0"))
    assert spec.sinks == ["0"]


def test_empty_group_compiles_to_nothing() -> None:
    spec = compile_canvas(Group())

    assert spec.nodes == []
    assert spec.output == listing()
    assert spec.sinks == []
    assert spec.groups == [GroupSpec(id=0, path="", members=[])]


def test_empty_group_step_passes_list() -> None:
    spec = compile_canvas(Chain((task("a"), Group(), task("b"))))

    second = node(spec, "b")
    assert second.deps == ["0"]
    assert second.input == listing()


def test_nested_group_stays_nested() -> None:
    spec = compile_canvas(group(task("a"), group(task("b"), task("c"))))

    assert spec.output == listing(ref("0"), listing(ref("1"), ref("2")))
    assert spec.groups == [
        GroupSpec(id=0, path="", parent=None, members=[["0"], ["1", "2"]]),
        GroupSpec(id=1, path="group[1]", parent=0, members=[["1"], ["2"]]),
    ]
    assert [item.group for item in spec.nodes] == [0, 1, 1]
    assert node(spec, "b").path == "group[1] > group[0]"


def test_chain_ending_in_group_output() -> None:
    spec = compile_canvas(Chain((task("a"), group(task("b"), task("c")))))

    assert spec.output == listing(ref("1"), ref("2"))
    assert spec.sinks == ["1", "2"]


def test_chord_body_gets_header_list() -> None:
    spec = compile_canvas(chord([task("a"), task("b")], task("c")))

    body = node(spec, "c")
    assert body.deps == ["0", "1"]
    assert body.input == listing(ref("0"), ref("1"))
    assert body.path == "chord.body"
    assert node(spec, "a").path == "chord.header[0]"
    assert node(spec, "b").path == "chord.header[1]"
    assert spec.output == ref("2")
    assert spec.sinks == ["2"]
    assert spec.groups == [GroupSpec(id=0, path="", members=[["0"], ["1"]])]


def test_chord_header_chain_gives_last() -> None:
    spec = compile_canvas(chord([chain(task("a"), task("b")), task("c")], task("d")))

    body = node(spec, "d")
    assert body.deps == ["1", "2"]
    assert body.input == listing(ref("1"), ref("2"))
    assert node(spec, "b").path == "chord.header[0] > chain[1]"


def test_chord_header_chord_gives_body() -> None:
    inner = chord([task("a")], task("b"))

    spec = compile_canvas(chord([inner, task("c")], task("d")))

    body = node(spec, "d")
    assert body.deps == ["1", "2"]
    assert body.input == listing(ref("1"), ref("2"))
    assert node(spec, "b").path == "chord.header[0] > chord.body"


def test_chord_header_group_gives_list() -> None:
    spec = compile_canvas(chord([group(task("a"), task("b")), task("c")], task("d")))

    assert node(spec, "d").input == listing(listing(ref("0"), ref("1")), ref("2"))


def test_chord_body_group_maps_list() -> None:
    spec = compile_canvas(chord([task("a")], group(task("b"), task("c"))))

    assert node(spec, "b").deps == ["0"]
    assert node(spec, "b").input == listing(ref("0"))
    assert node(spec, "c").input == listing(ref("0"))
    assert spec.output == listing(ref("1"), ref("2"))


def test_chord_equals_chain_of_group() -> None:
    header = [task("a"), chain(task("b"), task("c"))]
    body = chain(task("d"), task("e"))

    as_chord = compile_canvas(Chord(Group(header), body))
    as_chain = compile_canvas(Chain((Group(header), body)))

    assert without_paths(as_chord) == without_paths(as_chain)
    assert as_chord.output == as_chain.output
    assert as_chord.sinks == as_chain.sinks


def test_empty_header_chord_gets_empty_list() -> None:
    spec = compile_canvas(chain(task("a"), chord([], task("b"))))

    body = node(spec, "b")
    assert body.deps == ["0"]
    assert body.input == listing()


def test_compilation_is_deterministic() -> None:
    canvas = chord([task("a"), group(task("b"))], task("c").on_error(task("e")))

    assert compile_canvas(canvas) == compile_canvas(canvas.clone())


def test_spec_round_trips_through_json() -> None:
    canvas = chain(
        task("a", dt.datetime(2024, 5, 1, tzinfo=dt.UTC)),
        chord([task("b").set(retry_backoff=True), Group()], task("c")),
    ).on_error(task("e"))

    spec = compile_canvas(canvas, options={"countdown": 2, "retry_backoff": 1.5})

    assert GraphSpec.from_json(spec.to_json()) == spec


# -- join policies ----------------------------------------------------------------


def test_join_policy_on_body_entry() -> None:
    canvas = chord(
        [task("a"), task("b")], chain(task("c"), task("d")), join="all_settled"
    )

    spec = compile_canvas(canvas)

    assert node(spec, "c").join == "all_settled"
    assert node(spec, "d").join == "fail_fast"
    assert node(spec, "a").join == "fail_fast"
    assert node(spec, "b").join == "fail_fast"


def test_join_policy_on_body_group() -> None:
    canvas = chord([task("a")], group(task("b"), task("c")), join="all_settled")

    spec = compile_canvas(canvas)

    assert node(spec, "b").join == "all_settled"
    assert node(spec, "c").join == "all_settled"


def test_join_policy_on_inner_header() -> None:
    inner = chord([task("b")], task("c"))

    spec = compile_canvas(chord([task("a")], inner, join="all_settled"))

    assert node(spec, "b").join == "all_settled"
    assert node(spec, "c").join == "fail_fast"


def test_join_policy_default_fail_fast() -> None:
    spec = compile_canvas(chord([task("a")], task("b")))

    assert node(spec, "b").join == "fail_fast"


def test_join_policy_skips_body_links() -> None:
    body = task("b")
    body.link(task("l"))

    spec = compile_canvas(chord([task("a")], body, join="all_settled"))

    assert node(spec, "l").join == "fail_fast"


def test_empty_header_ignores_join() -> None:
    canvas = chain(task("a"), chord([], task("b"), join="all_settled"))

    spec = compile_canvas(canvas)

    assert node(spec, "b").join == "fail_fast"


# -- links and errbacks -----------------------------------------------------------


def test_link_follows_signature() -> None:
    guarded = task("a")
    guarded.link(task("l"))

    spec = compile_canvas(guarded)

    link = node(spec, "l")
    assert link.id == "1"
    assert link.deps == ["0"]
    assert link.input == ref("0")
    assert link.role == "link"
    assert link.side is True
    assert link.covers == []
    assert link.path == "link[0]"
    assert spec.output == ref("0")
    assert spec.sinks == ["0"]


def test_link_numbered_after_its_canvas() -> None:
    first = task("a")
    first.link(task("l"))

    spec = compile_canvas(chain(first, task("b")))

    assert [item.task for item in spec.nodes] == ["a", "l", "b"]
    assert node(spec, "b").deps == ["0"]
    assert node(spec, "b").input == ref("0")
    assert node(spec, "l").path == "chain[0] > link[0]"


def test_link_on_group_gets_list() -> None:
    guarded = group(task("a"), task("b"))
    guarded.link(task("l"))

    spec = compile_canvas(guarded)

    link = node(spec, "l")
    assert link.deps == ["0", "1"]
    assert link.input == listing(ref("0"), ref("1"))


def test_link_on_chain_follows_last() -> None:
    guarded = chain(task("a"), task("b"))
    guarded.link(task("l"))

    spec = compile_canvas(guarded)

    assert node(spec, "l").deps == ["1"]
    assert node(spec, "l").input == ref("1")


def test_link_chain_marks_entry_only() -> None:
    guarded = task("a")
    guarded.link(chain(task("l1"), task("l2")))

    spec = compile_canvas(guarded)

    assert node(spec, "l1").role == "link"
    assert node(spec, "l2").role == "task"
    assert node(spec, "l2").side is True
    assert node(spec, "l2").deps == [node(spec, "l1").id]


def test_several_links_in_order() -> None:
    guarded = task("a")
    guarded.link(task("l1"))
    guarded.link(task("l2"))

    spec = compile_canvas(guarded)

    assert [item.task for item in spec.nodes] == ["a", "l1", "l2"]
    assert node(spec, "l2").deps == ["0"]


def test_errback_covers_signature() -> None:
    spec = compile_canvas(task("a").on_error(task("e")))

    errback = node(spec, "e")
    assert errback.id == "1"
    assert errback.deps == []
    assert errback.input == CauseInput()
    assert errback.role == "errback"
    assert errback.side is True
    assert errback.covers == ["0"]
    assert errback.path == "link_error[0]"
    assert spec.sinks == ["0"]
    assert spec.errbacks_covering["0"] == ["1"]


def test_errback_covers_group_members() -> None:
    spec = compile_canvas(group(task("a"), task("b")).on_error(task("e")))

    assert node(spec, "e").covers == ["0", "1"]


def test_errback_covers_chord_body() -> None:
    spec = compile_canvas(chord([task("a")], task("b")).on_error(task("e")))

    assert node(spec, "e").covers == ["1"]


def test_errback_on_empty_group() -> None:
    canvas = Chain((task("a"), Group().on_error(task("e"))))

    spec = compile_canvas(canvas)

    assert node(spec, "e").covers == ["0"]


def test_errback_after_links() -> None:
    guarded = task("a").on_error(task("e"))
    guarded.link(task("l"))

    spec = compile_canvas(guarded)

    assert [item.task for item in spec.nodes] == ["a", "l", "e"]


def test_immutable_errback_gets_no_cause() -> None:
    spec = compile_canvas(task("a").on_error(task("e").si()))

    assert node(spec, "e").input == NoInput()


def test_errback_chain_gets_cause_first() -> None:
    spec = compile_canvas(task("a").on_error(chain(task("e1"), task("e2"))))

    first = node(spec, "e1")
    second = node(spec, "e2")
    assert first.input == CauseInput()
    assert first.covers == ["0"]
    assert second.input == ref(first.id)
    assert second.deps == [first.id]
    assert second.role == "task"
    assert second.covers == []
    assert second.side is True


def test_spliced_chain_keeps_errback_scope() -> None:
    canvas = chain(task("a"), task("b")).on_error(task("e")) | chain(
        task("c"), task("d")
    )

    spec = compile_canvas(canvas)

    assert [item.task for item in spec.nodes] == ["a", "b", "e", "c", "d"]
    assert node(spec, "e").covers == [node(spec, "b").id]
    assert spec.errbacks_covering[node(spec, "c").id] == []
    assert spec.errbacks_covering[node(spec, "d").id] == []
    assert node(spec, "c").deps == [node(spec, "b").id]
    assert spec.output == ref(node(spec, "d").id)


def test_piped_chord_keeps_link_scope() -> None:
    linked = chord([task("h")], task("body"))
    linked.link(task("cb"))

    spec = compile_canvas(linked | task("t"))

    body_id = node(spec, "body").id
    callback = node(spec, "cb")
    after = node(spec, "t")
    assert callback.deps == [body_id]
    assert callback.input == ref(body_id)
    assert after.deps == [body_id]
    assert after.input == ref(body_id)
    assert spec.output == ref(after.id)
    assert spec.sinks == [after.id]


def test_link_on_step_not_sink() -> None:
    first = task("a")
    first.link(task("l"))

    spec = compile_canvas(chain(first, task("b")))

    assert spec.sinks == ["2"]
    assert spec.dependents["0"] == ["1", "2"]


def test_errback_chain_after_empty_group() -> None:
    guarded = task("a").on_error(Chain((Group(), task("e"))))

    spec = compile_canvas(guarded)

    errback = node(spec, "e")
    assert errback.role == "errback"
    assert errback.covers == ["0"]
    assert errback.deps == []
    assert errback.input == listing()


def test_link_chain_after_empty_group() -> None:
    guarded = task("a")
    guarded.link(Chain((Group(), task("l"))))

    spec = compile_canvas(guarded)

    link = node(spec, "l")
    assert link.role == "link"
    assert link.deps == ["0"]
    assert link.input == listing()


# -- arguments and options given at submit ----------------------------------------


def test_submit_args_reach_first_step() -> None:
    spec = compile_canvas(chain(task("a", 1, k=0), task("b", 2)), [10], {"k": 5})

    first = node(spec, "a")
    assert first.args == [10, 1]
    assert first.kwargs == {"k": 5}
    assert first.input == NoInput()
    assert node(spec, "b").args == [2]
    assert node(spec, "b").kwargs == {}


def test_submit_args_reach_group_members() -> None:
    spec = compile_canvas(group(task("a"), chain(task("b"), task("c"))), [1])

    assert node(spec, "a").args == [1]
    assert node(spec, "b").args == [1]
    assert node(spec, "c").args == []


def test_submit_args_reach_header_only() -> None:
    spec = compile_canvas(chord([task("a", 1), task("b", 2)], task("c")), [10])

    assert node(spec, "a").args == [10, 1]
    assert node(spec, "b").args == [10, 2]
    assert node(spec, "c").args == []


def test_immutable_ignores_submit_args() -> None:
    spec = compile_canvas(group(task("a", 1, k=0).si(), task("b")), [10], {"k": 5})

    assert node(spec, "a").args == [1]
    assert node(spec, "a").kwargs == {"k": 0}
    assert node(spec, "b").args == [10]


def test_submit_args_skip_links() -> None:
    guarded = task("a").on_error(task("e"))
    guarded.link(task("l"))

    spec = compile_canvas(guarded, [10])

    assert node(spec, "l").args == []
    assert node(spec, "e").args == []


def test_submit_args_are_encoded() -> None:
    spec = compile_canvas(task("a"), [dt.time(12, 0)])

    assert node(spec, "a").args == [{"__stem__": "time", "v": "12:00:00"}]


def test_submit_delay_only_on_roots() -> None:
    canvas = chord([task("a"), chain(task("b"), task("c"))], task("d"))

    spec = compile_canvas(canvas, options={"countdown": 5})

    assert node(spec, "a").options.countdown == 5.0
    assert node(spec, "b").options.countdown == 5.0
    assert node(spec, "c").options.countdown is None
    assert node(spec, "d").options.countdown is None


def test_submit_eta_only_on_roots() -> None:
    when = dt.datetime(2030, 1, 1, 12, tzinfo=dt.timezone(dt.timedelta(hours=1)))

    spec = compile_canvas(chain(task("a"), task("b")), options={"eta": when})

    assert node(spec, "a").options.eta == "2030-01-01T11:00:00+00:00"
    assert node(spec, "b").options.eta is None


def test_submit_delay_skips_errbacks() -> None:
    spec = compile_canvas(task("a").on_error(task("e")), options={"countdown": 5})

    assert node(spec, "e").options.countdown is None


def test_submit_delay_after_empty_header() -> None:
    spec = compile_canvas(chord([], task("b")), options={"countdown": 5})

    assert node(spec, "b").deps == []
    assert node(spec, "b").options.countdown == 5.0


def test_submit_options_are_defaults() -> None:
    guarded = chain(task("a"), task("b").set(queue="own")).on_error(task("e"))
    guarded.link(task("l"))

    spec = compile_canvas(guarded, options={"queue": "sent", "priority": 4})

    assert node(spec, "a").options.queue == "sent"
    assert node(spec, "b").options.queue == "own"
    assert node(spec, "b").options.priority == 4
    assert node(spec, "l").options.queue == "sent"
    assert node(spec, "e").options.queue == "sent"


def test_own_delay_beats_submit_delay() -> None:
    canvas = group(task("a").set(countdown=1), task("b"))

    spec = compile_canvas(canvas, options={"countdown": 5})

    assert node(spec, "a").options.countdown == 1.0
    assert node(spec, "b").options.countdown == 5.0


# -- options set on composites ------------------------------------------------------


def test_chain_options_are_defaults() -> None:
    canvas = chain(task("a"), task("b").set(queue="own")).set(queue="outer", priority=2)

    spec = compile_canvas(canvas)

    assert node(spec, "a").options.queue == "outer"
    assert node(spec, "a").options.priority == 2
    assert node(spec, "b").options.queue == "own"
    assert node(spec, "b").options.priority == 2


def test_inner_composite_options_win() -> None:
    inner = group(task("a"), task("b")).set(queue="inner")

    spec = compile_canvas(chain(inner, task("c")).set(queue="outer"))

    assert node(spec, "a").options.queue == "inner"
    assert node(spec, "b").options.queue == "inner"
    assert node(spec, "c").options.queue == "outer"


def test_composite_options_beat_submit() -> None:
    spec = compile_canvas(group(task("a")).set(queue="set"), options={"queue": "sent"})

    assert node(spec, "a").options.queue == "set"


def test_chain_countdown_delays_first_step() -> None:
    spec = compile_canvas(chain(task("a"), task("b")).set(countdown=3))

    assert node(spec, "a").options.countdown == 3.0
    assert node(spec, "b").options.countdown is None


def test_group_countdown_delays_members() -> None:
    inner = group(task("b"), chain(task("c"), task("d"))).set(countdown=3)

    spec = compile_canvas(Chain((task("a"), inner)))

    assert node(spec, "a").options.countdown is None
    assert node(spec, "b").options.countdown == 3.0
    assert node(spec, "c").options.countdown == 3.0
    assert node(spec, "d").options.countdown is None


def test_chord_countdown_delays_header() -> None:
    spec = compile_canvas(chord([task("a"), task("b")], task("c"), countdown=3))

    assert node(spec, "a").options.countdown == 3.0
    assert node(spec, "b").options.countdown == 3.0
    assert node(spec, "c").options.countdown is None


def test_composite_delay_beats_submit() -> None:
    canvas = chain(task("a"), task("b")).set(countdown=1)

    spec = compile_canvas(canvas, options={"countdown": 5})

    assert node(spec, "a").options.countdown == 1.0


def test_root_after_empty_group_delayed() -> None:
    spec = compile_canvas(Chain((Group(), task("b"))), options={"countdown": 5})

    assert node(spec, "b").options.countdown == 5.0


# -- errors -----------------------------------------------------------------------


def test_set_argument_names_path() -> None:
    members = [task("a"), task("b"), task("c")]
    members.append(chain(task("d"), task("e", {1, 2})))

    with pytest.raises(NotSerializable) as caught:
        compile_canvas(group(members))

    assert str(caught.value) == (
        "group[3] > chain[1] > args[0]: a set is not JSON-serialisable; pass a list"
    )
    assert caught.value.path == "group[3] > chain[1] > args[0]"


def test_nested_value_names_path() -> None:
    with pytest.raises(NotSerializable) as caught:
        compile_canvas(chain(task("a"), task("b", [1, {"k": {2}}])))

    assert caught.value.path == "chain[1] > args[0][1]['k']"


def test_non_string_key_names_path() -> None:
    with pytest.raises(NotSerializable, match=r"^args\[0\]: the dict key 1 ") as caught:
        compile_canvas(task("a", {1: "x"}))

    assert "convert the key with str()" in str(caught.value)


def test_nan_kwarg_names_path() -> None:
    with pytest.raises(NotSerializable, match=r"^kwargs\['x'\]: the float nan "):
        compile_canvas(task("a", x=float("nan")))


def test_custom_object_names_path() -> None:
    class Point:
        pass

    with pytest.raises(NotSerializable) as caught:
        compile_canvas(chord([task("a"), task("b", Point())], task("c")))

    message = str(caught.value)
    assert message.startswith("chord.header[1] > args[0]: a ")
    assert "Point is not JSON-serialisable" in message
    assert "pass one of: str, int" in message


def test_chord_body_value_names_path() -> None:
    with pytest.raises(NotSerializable, match=r"^chord\.body > kwargs\['k'\]: "):
        compile_canvas(chord([task("a")], task("b", k=frozenset())))


def test_errback_value_names_path() -> None:
    with pytest.raises(NotSerializable, match=r"^link_error\[0\] > args\[0\]: "):
        compile_canvas(task("a").on_error(task("e", {1})))


def test_submit_value_names_root_path() -> None:
    with pytest.raises(NotSerializable, match=r"^group\[1\] > args\[0\]: a set "):
        compile_canvas(group(task("a").si(), task("b")), [{1}])


def test_bad_keyword_name_rejected() -> None:
    with pytest.raises(NotSerializable, match="'not valid' is not a valid Python"):
        compile_canvas(Signature("a", kwargs={"not valid": 1}))


def test_bad_option_value_names_path() -> None:
    broken = task("b")
    broken.options["priority"] = 99

    with pytest.raises(InvalidOption) as caught:
        compile_canvas(group(task("a"), broken))

    message = str(caught.value)
    assert message.startswith("group[1] > options['priority']: priority 99 is invalid")
    assert "pass an int from 0 (lowest) to 9 (highest)" in message


def test_unknown_option_suggests_name() -> None:
    broken = task("b")
    broken.options["prority"] = 1

    with pytest.raises(InvalidOption) as caught:
        compile_canvas(chain(task("a"), broken))

    assert (
        str(caught.value)
        == "chain[1]: unknown option 'prority'; did you mean 'priority'?"
    )


def test_unknown_submit_option_suggests() -> None:
    with pytest.raises(InvalidOption) as caught:
        compile_canvas(task("a"), options={"queu": "q"})

    assert str(caught.value) == (
        "apply_async(): unknown option 'queu'; did you mean 'queue'?"
    )


@pytest.mark.parametrize(
    ("name", "advice"),
    [
        ("rate_limit", "Stem has no rate limits"),
        ("expires", "Stem has no message expiry"),
        ("acks_late", "only after its task has ended"),
        ("serializer", "always JSON"),
    ],
)
def test_celery_option_explains_itself(name: str, advice: str) -> None:
    # rate_limit used to get "did you mean 'time_limit'?", an unrelated option.
    with pytest.raises(InvalidOption) as caught:
        compile_canvas(task("a"), options={name: 1})

    message = str(caught.value)
    assert message.startswith(f"apply_async(): {name!r} is a Celery option")
    assert advice in message
    assert "did you mean" not in message


def test_unlike_option_lists_known() -> None:
    with pytest.raises(InvalidOption, match="known options: queue, priority"):
        compile_canvas(task("a"), options={"zzz": 1})


def test_bad_submit_option_value() -> None:
    with pytest.raises(
        InvalidOption, match=r"^apply_async\(\) > options\['countdown'\]"
    ):
        compile_canvas(task("a"), options={"countdown": -1})


def test_empty_chain_raises() -> None:
    with pytest.raises(InvalidCanvas, match=r"^chain\(\): the chain is empty"):
        compile_canvas(Chain())


def test_nested_empty_chain_names_path() -> None:
    with pytest.raises(InvalidCanvas, match=r"^group\[1\]: the chain is empty"):
        compile_canvas(group(task("a"), Chain()))


def test_bodiless_chord_raises() -> None:
    with pytest.raises(InvalidCanvas, match=r"^chord: the chord has no body"):
        compile_canvas(chord([task("a")]))


def test_nested_bodiless_chord_names_path() -> None:
    with pytest.raises(InvalidCanvas, match=r"^chain\[1\]: the chord has no body"):
        compile_canvas(chain(task("a"), chord([task("b")])))


def test_non_canvas_rejected() -> None:
    with pytest.raises(InvalidCanvas, match="Cannot compile 'add'"):
        compile_canvas("add")  # type: ignore[arg-type]


def test_empty_all_settled_body_settles_header() -> None:
    canvas = chord([task("a"), task("b")], group(), join="all_settled")

    spec = compile_canvas(canvas)

    assert spec.sinks == []
    assert spec.settled == ["0", "1"]


def test_step_after_empty_settled_body() -> None:
    canvas = chain(chord([task("a")], group(), join="all_settled"), task("c"))

    spec = compile_canvas(canvas)

    assert spec.node("1").deps == ["0"]
    assert spec.node("1").settled == ["0"]
    assert spec.node("1").input == ListInput(items=[])
    assert spec.sinks == ["1"]


def test_sink_wins_over_settled() -> None:
    # The empty group in the header passes node 0 on, so the all_settled body
    # settles it, but the group's second member still needs 0 to succeed.
    header = [task("b"), group()]
    second = chord(header, group(), join="all_settled")
    canvas = chain(task("a"), group(second, group()))

    spec = compile_canvas(canvas)

    assert spec.sinks == ["0"]
    assert spec.settled == ["1"]


def test_link_body_lists_trigger() -> None:
    canvas = task("a")
    canvas.link(chord([task("b"), group()], task("c")))

    spec = compile_canvas(canvas)

    assert spec.node("1").triggers == ["0"]
    assert spec.node("2").deps == ["1", "0"]
    assert spec.node("2").triggers == ["0"]


def test_main_path_has_no_triggers() -> None:
    canvas = chain(task("a"), chord([task("b"), group()], task("c")))

    spec = compile_canvas(canvas)

    assert [item.triggers for item in spec.nodes] == [[], [], []]


def test_empty_fail_fast_body_keeps_sinks() -> None:
    canvas = chord([task("a")], group())

    spec = compile_canvas(canvas)

    assert spec.sinks == ["0"]
    assert spec.settled == []


def test_taskless_callback_with_callbacks_rejected() -> None:
    link = group()
    link.link(task("c"))
    canvas = task("a")
    canvas.link(link)

    expected = r"link\[0\]: group\(\)\.link\(c\.s\(\)\) has no task"
    with pytest.raises(InvalidCanvas, match=expected):
        compile_canvas(canvas)


def test_fill_options_sets_node_options() -> None:
    calls: list[tuple[str, NodeOptions]] = []

    def fill(name: str, options: NodeOptions) -> NodeOptions:
        calls.append((name, options))
        return options.model_copy(update={"queue": f"q-{name}"})

    canvas = chord([task("a", 1), task("a", 2).set(priority=3)], task("b"))
    spec = compile_canvas(canvas, options={"max_retries": 2}, fill_options=fill)
    assert [name for name, _ in calls] == ["a", "a", "b"]
    assert calls[0][1].max_retries == 2
    assert calls[1][1].priority == 3
    assert [item.options.queue for item in spec.nodes] == ["q-a", "q-a", "q-b"]
    assert spec.nodes[1].options.priority == 3
    assert spec.nodes[1].options.max_retries == 2


def test_nodes_share_fields_set_safely() -> None:
    spec = compile_canvas(chord([task("a", 1), task("a", 2)], task("b")))
    first, second, _ = spec.nodes
    assert first.model_fields_set is second.model_fields_set
    assert first.model_fields_set == set(NodeSpec.model_fields)
    copied = first.model_copy(update={"path": "moved"})
    assert copied.model_fields_set is not first.model_fields_set
    assert first.model_fields_set == set(NodeSpec.model_fields)
    assert GraphSpec.from_json(spec.to_json()) == spec


@pytest.mark.parametrize("size", [1, 8, 9, 40])
def test_spec_node_lookup(size: int) -> None:
    # Small specs are scanned and larger ones indexed, and both find every node.
    spec = compile_canvas(group(task(f"t{index}") for index in range(size)))

    for item in spec.nodes:
        assert spec.node(item.id) is item
    with pytest.raises(KeyError):
        spec.node("999")


def test_compiled_nodes_equal_validated_nodes() -> None:
    # The compiler builds nodes without pydantic's validation, so each must
    # equal the node that validating its own fields gives.
    body = task("body").set(queue="slow", countdown=2)
    body.link(task("linked"))
    body.link_error(task("on_error"))
    canvas = chain(
        task("first", 1, key="v"),
        chord([task("member", i) for i in range(3)], body),
        group(task("a"), task("b").set(ignore_result=True)),
    )

    spec = compile_canvas(canvas)

    for compiled in spec.nodes:
        validated = NodeSpec.model_validate(compiled.model_dump())
        assert compiled == validated, compiled.id
        assert compiled.model_fields_set == validated.model_fields_set, compiled.id
        assert compiled.input == validated.input, compiled.id
    assert GraphSpec.from_json(spec.to_json()) == spec
