"""Tests of how ``|``, the builder functions and signature methods shape a canvas.

These tests look at the canvas objects only; what the shapes compile to is in
``test_canvas_compile.py``.
"""

from __future__ import annotations

from functools import reduce
from operator import or_
from typing import Any

import pytest

from stem.canvas import (
    Canvas,
    Chain,
    Chord,
    Group,
    InvalidCanvas,
    InvalidOption,
    Signature,
    UnboundCanvas,
    chain,
    chord,
    chunks,
    group,
    signature,
    starmap,
    xmap,
)


def task(name: str, *args: Any, **kwargs: Any) -> Signature:
    return Signature(name, args, kwargs)


a, b, c, d, e = (task(name) for name in "abcde")


class RecordingApp:
    """A `Submitter` that records what it is asked to submit or call."""

    def __init__(self) -> None:
        self.submitted: list[tuple[Canvas, Any, Any, Any]] = []
        self.called: list[tuple[Signature, Any, Any]] = []

    def submit(self, canvas: Canvas, args: Any, kwargs: Any, options: Any) -> str:
        self.submitted.append((canvas, args, kwargs, options))
        return "handle"

    def call(self, signature: Signature, args: Any, kwargs: Any) -> str:
        self.called.append((signature, args, kwargs))
        return "value"


# -- signature | x --------------------------------------------------------------


def test_signature_pipe_signature_is_chain() -> None:
    result = a | b

    assert isinstance(result, Chain)
    assert result.tasks == (a, b)


def test_signature_pipe_chain_splices() -> None:
    result = a | chain(b, c)

    assert isinstance(result, Chain)
    assert result.tasks == (a, b, c)


def test_signature_pipe_scoped_chain_nests() -> None:
    guarded = chain(b, c).on_error(e)

    result = a | guarded

    assert isinstance(result, Chain)
    assert result.tasks == (a, guarded)


def test_signature_pipe_group_is_chain() -> None:
    members = group(b, c)

    result = a | members

    assert isinstance(result, Chain)
    assert result.tasks == (a, members)


def test_signature_pipe_chord_is_chain() -> None:
    inner = chord([b], c)

    result = a | inner

    assert isinstance(result, Chain)
    assert result.tasks == (a, inner)


def test_pipe_leaves_operands_unchanged() -> None:
    left = chain(a, b)
    right = chain(c, d)

    left | right

    assert left.tasks == (a, b)
    assert right.tasks == (c, d)


def test_pipe_rejects_non_canvas() -> None:
    with pytest.raises(TypeError):
        a | "b"  # type: ignore[operator]


def test_in_place_pipe_builds_chain() -> None:
    result: Canvas = task("a")
    result |= b

    assert result == Chain((task("a"), b))


# -- chain | x ------------------------------------------------------------------


def test_chain_pipe_chain_splices() -> None:
    result = chain(a, b) | chain(c, d)

    assert isinstance(result, Chain)
    assert result.tasks == (a, b, c, d)


def test_chain_pipe_signature_appends() -> None:
    result = chain(a, b) | c

    assert isinstance(result, Chain)
    assert result.tasks == (a, b, c)


def test_chain_pipe_group_appends() -> None:
    members = group(c, d)

    result = chain(a, b) | members

    assert isinstance(result, Chain)
    assert result.tasks == (a, b, members)


def test_chain_ending_group_makes_chord() -> None:
    members = group(b, c)

    result = chain(a, members) | d

    assert isinstance(result, Chain)
    assert result.tasks == (a, Chord(members, d))


def test_chain_ending_group_pipe_chain() -> None:
    members = group(b, c)

    result = chain(a, members) | chain(d, e)

    assert isinstance(result, Chain)
    assert result.tasks == (a, members, d, e)


def test_chain_ending_chord_extends_body() -> None:
    result = chain(a, chord([b], c)) | d

    assert isinstance(result, Chain)
    assert result.tasks == (a, Chord(group(b), Chain((c, d))))


def test_chain_ending_scoped_chord_appends() -> None:
    inner = chord([b], c)
    inner.link(e)

    result = chain(a, inner) | d

    assert isinstance(result, Chain)
    assert result.tasks == (a, inner, d)


def test_chain_with_errback_nests() -> None:
    guarded = chain(a, b).on_error(e)

    result = guarded | chain(c, d)

    assert isinstance(result, Chain)
    assert result.tasks == (guarded, c, d)
    assert guarded.errbacks == (e,)
    assert result.errbacks == ()


def test_chain_with_options_nests() -> None:
    queued = chain(a, b).set(queue="slow")

    result = queued | c

    assert isinstance(result, Chain)
    assert result.tasks == (queued, c)
    assert result.options == {}


def test_chain_with_link_nests() -> None:
    linked = chain(a, b)
    linked.link(e)

    result = linked | c

    assert isinstance(result, Chain)
    assert result.tasks == (linked, c)
    assert result.links == ()


def test_chain_pipe_scoped_chain_nests() -> None:
    guarded = chain(c, d).on_error(e)

    result = chain(a, b) | guarded

    assert isinstance(result, Chain)
    assert result.tasks == (a, b, guarded)


def test_empty_chain_pipe_signature() -> None:
    result = chain() | a

    assert isinstance(result, Chain)
    assert result.tasks == (a,)


def test_empty_chain_pipe_chain_flattens() -> None:
    result = chain() | chain(a, b)

    assert isinstance(result, Chain)
    assert result.tasks == (a, b)


# -- group | x and chord | x ----------------------------------------------------


def test_group_pipe_signature_is_chord() -> None:
    members = group(a, b)

    result = members | c

    assert isinstance(result, Chord)
    assert result.header is members
    assert result.body == c
    assert result.join == "fail_fast"


def test_group_pipe_group_is_chord() -> None:
    result = group(a, b) | group(c, d)

    assert isinstance(result, Chord)
    assert result.header == group(a, b)
    assert result.body == group(c, d)


def test_group_pipe_chain_is_chord() -> None:
    result = group(a, b) | chain(c, d)

    assert isinstance(result, Chord)
    assert result.body == Chain((c, d))


def test_group_with_errback_stays_header() -> None:
    members = group(a, b).on_error(e)

    result = members | c

    assert isinstance(result, Chord)
    assert result.header.errbacks == (e,)
    assert result.errbacks == ()


def test_empty_group_pipe_is_chord() -> None:
    result = group() | a

    assert isinstance(result, Chord)
    assert result.header == Group()
    assert result.body == a


def test_chord_pipe_signature_extends_body() -> None:
    result = chord([a, b], c) | d

    assert isinstance(result, Chord)
    assert result.header == group(a, b)
    assert result.body == Chain((c, d))


def test_chord_pipe_keeps_join_policy() -> None:
    result = chord([a], b, join="all_settled") | c

    assert isinstance(result, Chord)
    assert result.join == "all_settled"


def test_chord_pipe_group_extends_body() -> None:
    result = chord([a], b) | group(c, d)

    assert isinstance(result, Chord)
    assert result.body == Chain((b, group(c, d)))


def test_chord_pipe_chain_splices_body() -> None:
    result = chord([a], b) | chain(c, d)

    assert isinstance(result, Chord)
    assert result.body == Chain((b, c, d))


def test_chord_with_link_nests() -> None:
    linked = chord([a], b)
    linked.link(e)

    result = linked | c

    assert isinstance(result, Chain)
    assert result.tasks == (linked, c)
    assert linked.body == b


def test_chord_with_options_nests() -> None:
    queued = chord([a], b, queue="slow")

    result = queued | c

    assert isinstance(result, Chain)
    assert result.tasks == (queued, c)


def test_bodiless_chord_pipe_nests() -> None:
    header_only = chord([a, b])

    result = header_only | c

    assert isinstance(result, Chain)
    assert result.tasks == (header_only, c)


def test_chord_with_errback_body_nests() -> None:
    body = chain(b, c).on_error(e)

    result = chord([a], body) | d

    assert isinstance(result, Chord)
    assert result.body == Chain((body, d))


# -- chain() and the other builders ---------------------------------------------


def test_chain_group_then_task_is_chord() -> None:
    members = group(a, b)

    result = chain(members, c)

    assert isinstance(result, Chord)
    assert result.header == members
    assert result.body == c


def test_chain_chord_then_task_is_chord() -> None:
    result = chain(chord([a], b), c)

    assert isinstance(result, Chord)
    assert result.body == Chain((b, c))


@pytest.mark.parametrize(
    "steps",
    [
        pytest.param((a, b), id="signatures"),
        pytest.param((a, b, c, d), id="four-signatures"),
        pytest.param((group(a, b), c), id="group-first"),
        pytest.param((chord([a], b), c, d), id="chord-first"),
        pytest.param((a, group(b, c), d), id="group-middle"),
        pytest.param((chain(a, b), chain(c, d)), id="chains"),
        pytest.param((chain(a, b).on_error(e), c), id="scoped-chain"),
        pytest.param((group(a), group(b), group(c)), id="groups"),
        pytest.param((a, chord([b], c), d), id="chord-middle"),
    ],
)
def test_chain_equals_pipe_reduction(steps: tuple[Canvas, ...]) -> None:
    assert chain(*steps) == reduce(or_, steps)


def test_chain_accepts_one_iterable() -> None:
    assert chain([a, b, c]) == chain(a, b, c)


def test_chain_accepts_generator() -> None:
    assert chain(step for step in (a, b)) == Chain((a, b))


def test_chain_of_one_step() -> None:
    result = chain(a)

    assert isinstance(result, Chain)
    assert result.tasks == (a,)


def test_chain_without_steps_is_empty() -> None:
    result = chain()

    assert isinstance(result, Chain)
    assert result.tasks == ()


def test_nested_plain_chains_flatten() -> None:
    result = chain(chain(a, chain(b, c)), d)

    assert isinstance(result, Chain)
    assert result.tasks == (a, b, c, d)


def test_chain_rejects_non_canvas_step() -> None:
    with pytest.raises(InvalidCanvas, match="chain step 1"):
        Chain((a, "b"))  # type: ignore[arg-type]


def test_group_members_from_arguments() -> None:
    result = group(a, b)

    assert isinstance(result, Group)
    assert result.tasks == (a, b)
    assert len(result) == 2


def test_group_members_from_generator() -> None:
    result = group(task("add", i) for i in range(3))

    assert result.tasks == (task("add", 0), task("add", 1), task("add", 2))


def test_group_members_from_list() -> None:
    assert group([a, b]) == group(a, b)


def test_group_keeps_nested_group() -> None:
    inner = group(b, c)

    result = group(a, inner)

    assert result.tasks == (a, inner)


def test_group_of_one_chain() -> None:
    inner = chain(a, b)

    result = group(inner)

    assert result.tasks == (inner,)


def test_group_takes_options() -> None:
    result = group(a, queue="slow", priority=3)

    assert result.options == {"queue": "slow", "priority": 3}


def test_group_rejects_non_canvas_member() -> None:
    with pytest.raises(InvalidCanvas, match="group member 0"):
        group(["a"])


def test_chord_header_from_list() -> None:
    result = chord([a, b], c)

    assert result.header == group(a, b)
    assert result.body == c


def test_chord_header_from_generator() -> None:
    result = chord((task("add", i) for i in range(2)), c)

    assert result.header == group(task("add", 0), task("add", 1))


def test_chord_keeps_given_group() -> None:
    header = group(a, b)

    result = chord(header, c)

    assert result.header is header


def test_chord_without_body() -> None:
    result = chord([a])

    assert result.body is None
    assert result.children() == (group(a),)


def test_chord_takes_join_and_options() -> None:
    result = chord([a], b, join="all_settled", queue="slow")

    assert result.join == "all_settled"
    assert result.options == {"queue": "slow"}


def test_chord_rejects_unknown_join() -> None:
    with pytest.raises(InvalidOption, match="'any'"):
        chord([a], b, join="any")


def test_chord_rejects_non_canvas_body() -> None:
    with pytest.raises(InvalidCanvas, match="chord body"):
        chord([a], "b")  # type: ignore[arg-type]


def test_chunks_splits_into_starmaps() -> None:
    add = task("add", 100)

    result = chunks(add, [(1, 2), (3, 4), (5, 6)], 2)

    assert isinstance(result, Group)
    assert result.tasks == (
        starmap(add, [(1, 2), (3, 4)]),
        starmap(add, [(5, 6)]),
    )


def test_chunks_of_nothing_is_empty() -> None:
    assert chunks(task("add"), [], 3) == Group()


@pytest.mark.parametrize("size", [0, -1, 1.5, True])
def test_chunks_rejects_bad_size(size: Any) -> None:
    with pytest.raises(InvalidCanvas, match="Chunk size"):
        chunks(task("add"), [(1,)], size)


def test_xmap_is_one_signature() -> None:
    result = xmap(task("double", 1, scale=2), iter([3, 4]))

    assert result.task == "stem.map"
    assert result.args == ()
    assert result.kwargs == {
        "task": {"task": "double", "args": [1], "kwargs": {"scale": 2}},
        "it": [3, 4],
    }


def test_starmap_is_one_signature() -> None:
    result = starmap(task("add"), [(1, 2), [3, 4]])

    assert result.task == "stem.starmap"
    assert result.kwargs == {
        "task": {"task": "add", "args": [], "kwargs": {}},
        "it": [[1, 2], [3, 4]],
    }


def test_xmap_rejects_non_signature() -> None:
    with pytest.raises(InvalidCanvas, match="cannot be mapped"):
        xmap(chain(a, b), [1])  # type: ignore[arg-type]


# -- signature construction, clone and partial ----------------------------------


def test_signature_stores_its_parts() -> None:
    result = Signature("add", [1, 2], {"k": 3}, {"queue": "q"})

    assert result.task == "add"
    assert result.name == "add"
    assert result.args == (1, 2)
    assert result.kwargs == {"k": 3}
    assert result.options == {"queue": "q"}
    assert result.immutable is False


@pytest.mark.parametrize("name", ["", None, 3])
def test_signature_rejects_bad_name(name: Any) -> None:
    with pytest.raises(InvalidCanvas, match="Task name"):
        Signature(name)


def test_signature_checks_options() -> None:
    with pytest.raises(InvalidOption, match="did you mean 'queue'"):
        Signature("add", options={"queues": "q"})


@pytest.mark.parametrize("queue", ["q\udcff", "q\nz", "q\u202ez"])
def test_signature_rejects_hidden_queue_character(queue: str) -> None:
    with pytest.raises(InvalidOption, match="control, format or surrogate"):
        Signature("add", options={"queue": queue})


def test_signature_function_by_name() -> None:
    result = signature("add", (1,), {"k": 2}, queue="q", immutable=True)

    assert result == Signature("add", (1,), {"k": 2}, {"queue": "q"}, immutable=True)


def test_signature_function_clones_signature() -> None:
    original = task("add", 2)

    result = signature(original, (1,), queue="q")

    assert result == Signature("add", (1, 2), {}, {"queue": "q"})
    assert original == task("add", 2)


def test_clone_prepends_new_args() -> None:
    result = task("add", 2).clone((4,))

    assert result.args == (4, 2)


def test_clone_new_kwargs_win() -> None:
    result = task("add", x=1, y=2).clone(kwargs={"y": 3, "z": 4})

    assert result.kwargs == {"x": 1, "y": 3, "z": 4}


def test_clone_new_options_win() -> None:
    original = Signature("add", options={"queue": "a", "priority": 1})

    result = original.clone(queue="b")

    assert result.options == {"queue": "b", "priority": 1}


def test_clone_immutable_keeps_arguments() -> None:
    original = Signature("add", (2,), {"x": 1}, immutable=True)

    result = original.clone((4,), {"x": 9}, queue="q")

    assert result.args == (2,)
    assert result.kwargs == {"x": 1}
    assert result.options == {"queue": "q"}
    assert result.immutable is True


def test_clone_leaves_original_unchanged() -> None:
    original = Signature("add", (2,), {"x": 1}, {"queue": "a"})
    original.link(task("cb"))

    duplicate = original.clone((4,), {"x": 9}, queue="b")
    duplicate.link(task("other"))
    duplicate.options["priority"] = 5

    assert original.args == (2,)
    assert original.kwargs == {"x": 1}
    assert original.options == {"queue": "a"}
    assert original.links == (task("cb"),)


def test_clone_copies_links_deeply() -> None:
    original = task("add")
    callback = original.link(task("cb"))

    duplicate = original.clone()
    duplicate.links[0].set(queue="q")

    assert callback.options == {}
    assert duplicate.links == (Signature("cb", options={"queue": "q"}),)


def test_clone_takes_link_option() -> None:
    result = task("add").clone(link=task("cb"), link_error=[task("eb")])

    assert result.links == (task("cb"),)
    assert result.errbacks == (task("eb"),)


def test_partial_is_clone() -> None:
    assert task("add", 2).partial((1,)) == task("add", 1, 2)


def test_composite_clone_is_deep() -> None:
    original = chord([task("a")], chain(task("b"), task("c")))

    duplicate = original.clone()
    duplicate.header.tasks[0].set(queue="q")
    assert duplicate.body is not None
    duplicate.body.set(priority=1)

    assert original.header.tasks[0].options == {}
    assert original.body == chain(task("b"), task("c"))
    assert duplicate != original


def test_si_returns_immutable_copy() -> None:
    original = task("add", 1)

    result = original.si()

    assert result.immutable is True
    assert result.args == (1,)
    assert original.immutable is False


def test_set_immutable_returns_self() -> None:
    original = task("add")

    result = original.set_immutable(True)

    assert result is original
    assert original.immutable is True


# -- set, link, link_error and on_error -----------------------------------------


def test_set_returns_self_and_updates() -> None:
    original = Signature("add", options={"queue": "a"})

    result = original.set(queue="b", priority=2)

    assert result is original
    assert original.options == {"queue": "b", "priority": 2}


def test_set_normalises_option_values() -> None:
    result = task("add").set(countdown=3, eta="2024-05-01T12:00:00+02:00")

    assert result.options == {"countdown": 3.0, "eta": "2024-05-01T10:00:00+00:00"}


def test_set_rejects_bad_value() -> None:
    with pytest.raises(InvalidOption, match="priority 10 is invalid"):
        task("add").set(priority=10)


def test_set_takes_link_and_errback() -> None:
    result = task("add").set(link=[task("l1"), task("l2")], link_error=task("eb"))

    assert result.links == (task("l1"), task("l2"))
    assert result.errbacks == (task("eb"),)
    assert result.options == {}


def test_link_returns_callback() -> None:
    callback = task("cb")

    result = a.clone().link(callback)

    assert result is callback


def test_link_appends_in_order() -> None:
    guarded = chain(a, b)

    guarded.link(c)
    guarded.link(d)

    assert guarded.links == (c, d)


def test_link_error_returns_errback() -> None:
    errback = task("eb")

    result = a.clone().link_error(errback)

    assert result is errback


def test_on_error_returns_canvas() -> None:
    guarded = group(a, b)

    result = guarded.on_error(e)

    assert result is guarded
    assert guarded.errbacks == (e,)


def test_link_rejects_non_canvas() -> None:
    with pytest.raises(InvalidCanvas, match="link"):
        task("add").link("cb")  # type: ignore[arg-type]


def test_links_property_is_tuple() -> None:
    guarded = task("add")
    guarded.link(c)

    links = guarded.links

    assert isinstance(links, tuple)
    assert links == (c,)


# -- equality and repr ----------------------------------------------------------


def test_signatures_equal_by_value() -> None:
    assert task("add", 1, k=2) == task("add", 1, k=2)


@pytest.mark.parametrize(
    "other",
    [
        pytest.param(task("sub", 1, k=2), id="task"),
        pytest.param(task("add", 2, k=2), id="args"),
        pytest.param(task("add", 1, k=3), id="kwargs"),
        pytest.param(task("add", 1, k=2).set(queue="q"), id="options"),
        pytest.param(task("add", 1, k=2).si(), id="immutable"),
        pytest.param(task("add", 1, k=2).on_error(task("eb")), id="errback"),
    ],
)
def test_signatures_differ_by_part(other: Signature) -> None:
    assert task("add", 1, k=2) != other


def test_signature_differs_by_link() -> None:
    linked = task("add")
    linked.link(task("cb"))

    assert linked != task("add")


def test_composites_differ_by_type() -> None:
    assert Chain((a, b)) != Group((a, b))
    assert Group((a, b)) != Chain((a, b))


def test_chords_differ_by_join() -> None:
    assert chord([a], b) != chord([a], b, join="all_settled")


def test_chords_differ_by_body() -> None:
    assert chord([a], b) != chord([a], c)
    assert chord([a], b) != chord([a])


def test_signature_not_equal_other_type() -> None:
    assert task("add") != "add"
    assert task("add") != {"task": "add"}


def test_canvas_is_unhashable() -> None:
    for canvas in (a, chain(a, b), group(a), chord([a], b)):
        with pytest.raises(TypeError):
            hash(canvas)


def test_signature_repr_shows_call() -> None:
    assert repr(task("add", 1, "x", k=2)) == "add.s(1, 'x', k=2)"


def test_immutable_signature_repr() -> None:
    assert repr(task("add", 1).si()) == "add.si(1)"


def test_signature_repr_shows_extras() -> None:
    sig = task("add").set(queue="q")
    sig.link(task("cb"))
    sig.link_error(task("eb"))

    assert repr(sig) == "add.s().set(queue='q').link(cb.s()).on_error(eb.s())"


def test_composite_repr_shows_members() -> None:
    assert repr(chain(a, b)) == "chain(a.s() | b.s())"
    assert repr(group(a, b)) == "group(a.s(), b.s())"
    assert repr(chord([a], b)) == "chord(group(a.s()), b.s())"


def test_chord_repr_shows_join() -> None:
    result = chord([a], b, join="all_settled")

    assert repr(result) == "chord(group(a.s()), b.s(), join='all_settled')"


def test_to_dict_lists_fields() -> None:
    result = Signature("add", (1,), {"k": 2}, {"queue": "q"}).to_dict()

    assert result == {
        "task": "add",
        "args": [1],
        "kwargs": {"k": 2},
        "options": {"queue": "q"},
        "immutable": False,
    }


# -- apps, apply_async and inline calls -----------------------------------------


def test_unbound_apply_async_raises() -> None:
    with pytest.raises(UnboundCanvas, match="not bound to an app"):
        chain(task("a"), task("b")).apply_async()


def test_unbound_inline_call_raises() -> None:
    with pytest.raises(UnboundCanvas, match="cannot run inline"):
        task("add")(1)


def test_app_found_on_inner_signature() -> None:
    app = RecordingApp()
    inner = task("b").bind(app)

    canvas = chain(task("a"), group(inner))

    assert canvas.app is app


def test_apply_async_submits_to_app() -> None:
    app = RecordingApp()
    canvas = chain(task("a"), task("b")).bind(app)

    handle = canvas.apply_async([1], {"k": 2}, countdown=5)

    assert handle == "handle"
    assert app.submitted == [(canvas, (1,), {"k": 2}, {"countdown": 5})]


def test_delay_passes_arguments() -> None:
    app = RecordingApp()
    canvas = task("add").bind(app)

    canvas.delay(1, 2, k=3)

    assert app.submitted == [(canvas, (1, 2), {"k": 3}, {})]


def test_inline_call_merges_arguments() -> None:
    app = RecordingApp()
    sig = Signature("add", (2,), {"x": 1}).bind(app)

    result = sig(4, y=5)

    assert result == "value"
    assert app.called[0][1] == (4, 2)
    assert app.called[0][2] == {"x": 1, "y": 5}


def test_chord_call_submits_with_body() -> None:
    app = RecordingApp()
    header = chord([task("a").bind(app)], join="all_settled")

    header(task("b"))

    submitted = app.submitted[0][0]
    assert isinstance(submitted, Chord)
    assert submitted.body == task("b")
    assert submitted.join == "all_settled"
