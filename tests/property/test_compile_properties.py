"""Property tests of `compile_canvas` over random nested canvases.

The key property compares the compiled input templates with a small recursive
evaluator of the four value rules, written here independently of the compiler.
"""

from __future__ import annotations

import graphlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache, reduce
from operator import or_
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from stem.canvas import (
    Canvas,
    Chain,
    Chord,
    GraphSpec,
    Group,
    Signature,
    chain,
    chord,
    compile_canvas,
    group,
)
from stem.canvas.spec import (
    CauseInput,
    ListInput,
    NodeInput,
    NodeSpec,
    NoInput,
    Template,
    template_nodes,
)

MAX_DEPTH = 4

# -- random canvases ----------------------------------------------------------------


task_names = st.sampled_from("abcd")
task_args = st.lists(st.integers(0, 9), max_size=2)
task_kwargs = st.dictionaries(
    st.sampled_from(["k", "m"]), st.integers(0, 9), max_size=1
)


def make_signature(
    name: str, args: list[int], kwargs: dict[str, int], immutable: bool
) -> Signature:
    return Signature(name, args, kwargs, immutable=immutable)


def signatures() -> st.SearchStrategy[Signature]:
    return st.builds(make_signature, task_names, task_args, task_kwargs, st.booleans())


def chains(inner: st.SearchStrategy[Canvas]) -> st.SearchStrategy[Canvas]:
    """Chains built three ways: the class, `chain()`, and ``|``."""
    steps = st.lists(inner, min_size=1, max_size=3)
    return st.one_of(
        steps.map(Chain),
        steps.map(lambda items: chain(*items)),
        st.lists(inner, min_size=2, max_size=3).map(lambda items: reduce(or_, items)),
    )


def groups(inner: st.SearchStrategy[Canvas]) -> st.SearchStrategy[Canvas]:
    """Groups with zero to three members, so empty and one-member groups appear."""
    members = st.lists(inner, max_size=3)
    return members.map(Group) | members.map(lambda items: group(*items))


def chords(inner: st.SearchStrategy[Canvas]) -> st.SearchStrategy[Canvas]:
    joins = st.sampled_from(["fail_fast", "all_settled"])
    header = st.lists(inner, max_size=3)
    return st.builds(
        lambda members, body, join: chord(members, body, join=join),
        header,
        inner,
        joins,
    ) | st.builds(lambda members, body: Group(members) | body, header, inner)


def attach(
    canvas: Canvas,
    callbacks: list[Canvas],
    errbacks: list[Canvas],
    priority: int | None,
) -> Canvas:
    for callback in callbacks:
        canvas.link(callback)
    for errback in errbacks:
        canvas.link_error(errback)
    if priority is not None:
        # An option makes a composite scope its members, so `|` nests it.
        canvas.set(priority=priority)
    return canvas


def with_callbacks(
    base: st.SearchStrategy[Canvas], callbacks: st.SearchStrategy[Canvas]
) -> st.SearchStrategy[Canvas]:
    """Draw from ``base``, then attach links, errbacks and sometimes an option."""
    return st.builds(
        attach,
        base,
        st.lists(callbacks, max_size=1),
        st.lists(callbacks, max_size=1),
        st.none() | st.none() | st.none() | st.integers(0, 9),
    )


@cache
def canvases(depth: int = MAX_DEPTH) -> st.SearchStrategy[Canvas]:
    """Canvases nested at most ``depth`` levels, links and errbacks included."""
    if depth <= 1:
        return with_callbacks(signatures(), signatures())
    inner = canvases(depth - 1)
    # Signatures weigh triple, and only the outermost callbacks may be
    # composites, which keeps examples small enough to generate quickly.
    leaves = signatures()
    base = st.one_of(
        leaves, leaves, leaves, chains(inner), groups(inner), chords(inner)
    )
    callbacks = canvases(2 if depth == MAX_DEPTH else 1).filter(
        lambda callback: not has_taskless_callbacks(callback)
    )
    return with_callbacks(base, callbacks)


def has_task(canvas: Canvas) -> bool:
    if isinstance(canvas, Signature):
        return True
    return any(has_task(child) for child in canvas.children())


def has_taskless_callbacks(canvas: Canvas) -> bool:
    """Tell whether a canvas with no task carries callbacks, inside it or itself.

    The compiler rejects that shape inside a link or errback.
    """
    if (canvas.links or canvas.errbacks) and not has_task(canvas):
        return True
    nested = [*canvas.children(), *canvas.links, *canvas.errbacks]
    return any(has_taskless_callbacks(child) for child in nested)


submit_args = st.lists(st.integers(0, 9), max_size=2)
submit_kwargs = st.dictionaries(st.sampled_from(["k", "s"]), st.integers(10, 19))


def compile_clean(canvas: Canvas, *args: Any, **kwargs: Any) -> GraphSpec:
    """Compile a clone, so the model and evaluator read an untouched canvas."""
    return compile_canvas(canvas.clone(), *args, **kwargs)


# -- an independent evaluator of the value rules ----------------------------------

#: The value of "no value": distinct from None, which is a value.
NO_VALUE = object()
#: What an errback receives in place of the failed task's id.
CAUSE = "cause"


@dataclass(frozen=True)
class Submitted:
    """Arguments given at submit, which reach the roots the way a value would."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]


Call = tuple[str, tuple[Any, ...], tuple[tuple[str, Any], ...]]


def task_value(call: Call) -> Any:
    """Stand for a task's result: the call itself, so every input shows in it."""
    return call


@dataclass
class Evaluator:
    """Apply the value rules to a canvas directly, recording every task call."""

    calls: list[Call] = field(default_factory=list)

    def run(self, canvas: Canvas, value: Any) -> Any:
        if isinstance(canvas, Signature):
            result = self.call(canvas, value)
        elif isinstance(canvas, Chain):
            result = value
            for step in canvas.tasks:
                result = self.run(step, result)
        elif isinstance(canvas, Group):
            result = [self.run(member, value) for member in canvas.tasks]
        elif isinstance(canvas, Chord):
            assert canvas.body is not None
            result = self.run(canvas.body, self.run(canvas.header, value))
        else:
            raise AssertionError(f"unexpected canvas {canvas!r}")
        for callback in canvas.links:
            self.run(callback, result)
        for errback in canvas.errbacks:
            self.run(errback, CAUSE)
        return result

    def call(self, sig: Signature, value: Any) -> Any:
        args = list(sig.args)
        kwargs = dict(sig.kwargs)
        if sig.immutable or value is NO_VALUE:
            pass
        elif isinstance(value, Submitted):
            args = [*value.args, *args]
            kwargs = {**kwargs, **value.kwargs}
        else:
            args = [value, *args]
        call = (sig.task, tuple(args), tuple(sorted(kwargs.items())))
        self.calls.append(call)
        return task_value(call)


def fill(template: Template, values: dict[str, Any]) -> Any:
    """Build the value a template describes from the node values so far."""
    if isinstance(template, NoInput):
        return NO_VALUE
    if isinstance(template, NodeInput):
        return values[template.node]
    if isinstance(template, ListInput):
        return [fill(item, values) for item in template.items]
    assert isinstance(template, CauseInput)
    return CAUSE


def run_spec(spec: GraphSpec) -> tuple[list[Call], Any]:
    """Evaluate a spec's templates in topological order with `task_value`.

    Returns the calls in node id order and the value of the output template.
    """
    order = graphlib.TopologicalSorter(
        {node.id: [*node.deps, *template_nodes(node.input)] for node in spec.nodes}
    )
    values: dict[str, Any] = {}
    calls: dict[str, Call] = {}
    for node_id in order.static_order():
        node = spec.node(node_id)
        upstream = fill(node.input, values)
        received = list(node.args) if upstream is NO_VALUE else [upstream, *node.args]
        call = (node.task, tuple(received), tuple(sorted(node.kwargs.items())))
        calls[node_id] = call
        values[node_id] = task_value(call)
    return [calls[node.id] for node in spec.nodes], fill(spec.output, values)


# -- a structural model: which nodes each sub-canvas compiled to ----------------------


@dataclass
class Model:
    """Walk a canvas in declaration order, matching sub-canvases to node ids.

    A sub-canvas's own nodes are those of its steps, members, header and body,
    not those of the links and errbacks attached inside it.
    """

    spec: GraphSpec
    signatures: list[Signature] = field(default_factory=list)
    side: set[str] = field(default_factory=set)
    link_entries: set[str] = field(default_factory=set)
    errback_entries: set[str] = field(default_factory=set)
    settled_entries: set[str] = field(default_factory=set)
    #: For each pair of chain steps in order: the earlier step's sinks and the
    #: later step's entry nodes.
    step_pairs: list[tuple[set[str], set[str]]] = field(default_factory=list)

    def walk(self, canvas: Canvas, side: bool = False) -> list[str]:
        own = self.walk_own(canvas, side)
        for callback in canvas.links:
            self.link_entries |= self.entries(self.walk(callback, side=True))
        for errback in canvas.errbacks:
            self.errback_entries |= self.entries(self.walk(errback, side=True))
        return own

    def walk_own(self, canvas: Canvas, side: bool) -> list[str]:
        if isinstance(canvas, Signature):
            node_id = str(len(self.signatures))
            self.signatures.append(canvas)
            if side:
                self.side.add(node_id)
            return [node_id]
        if isinstance(canvas, Chain):
            parts = [self.walk(step, side) for step in canvas.tasks]
            self.pair_steps(parts)
            return [node_id for part in parts for node_id in part]
        if isinstance(canvas, Group):
            return [node_id for m in canvas.tasks for node_id in self.walk(m, side)]
        assert isinstance(canvas, Chord)
        assert canvas.body is not None
        header = self.walk(canvas.header, side)
        body = self.walk(canvas.body, side)
        if canvas.join == "all_settled" and header:
            self.settled_entries |= self.entries(body)
        return header + body

    def pair_steps(self, parts: list[list[str]]) -> None:
        earlier: list[str] = []
        for part in parts:
            if earlier and part:
                self.step_pairs.append((self.sinks(earlier), self.entries(part)))
            if part:
                earlier = part

    def entries(self, own: Iterable[str]) -> set[str]:
        """The nodes of ``own`` that wait for no other node of ``own``."""
        inside = set(own)
        return {n for n in inside if not inside.intersection(self.spec.node(n).deps)}

    def sinks(self, own: Iterable[str]) -> set[str]:
        """The nodes of ``own`` that no other node of ``own`` waits for."""
        inside = set(own)
        waited = {dep for n in inside for dep in self.spec.node(n).deps}
        return inside - waited


def model_of(canvas: Canvas, spec: GraphSpec) -> Model:
    model = Model(spec)
    model.walk(canvas)
    return model


def order(node_id: str) -> int:
    return int(node_id)


def referenced(node: NodeSpec) -> list[str]:
    return [*node.deps, *template_nodes(node.input), *node.covers]


# -- properties -----------------------------------------------------------------------


@given(canvases())
def test_compilation_is_deterministic(canvas: Canvas) -> None:
    first = compile_canvas(canvas.clone())
    second = compile_canvas(canvas.clone())

    assert first == second
    assert first.to_json() == second.to_json()


@given(canvases(), submit_args, submit_kwargs)
def test_spec_round_trips_json(canvas: Canvas, args: list[int], kwargs: Any) -> None:
    spec = compile_clean(canvas, args, kwargs, {"countdown": 1, "queue": "q"})

    assert GraphSpec.from_json(spec.to_json()) == spec


@given(canvases())
def test_one_node_per_signature(canvas: Canvas) -> None:
    spec = compile_clean(canvas)
    model = model_of(canvas, spec)

    assert len(spec.nodes) == len(model.signatures)
    for node, sig in zip(spec.nodes, model.signatures, strict=True):
        assert node.task == sig.task
        assert node.args == list(sig.args)
        assert node.kwargs == sig.kwargs
        assert node.immutable == sig.immutable


@given(canvases())
def test_ids_dense_in_order(canvas: Canvas) -> None:
    spec = compile_clean(canvas)

    assert [node.id for node in spec.nodes] == [str(i) for i in range(len(spec.nodes))]


@given(canvases())
def test_references_precede_their_node(canvas: Canvas) -> None:
    spec = compile_clean(canvas)
    known = {node.id for node in spec.nodes}

    for node in spec.nodes:
        for other in referenced(node):
            assert other in known
            assert order(other) < order(node.id)
    for sink in spec.sinks:
        assert sink in known
    for node_id in template_nodes(spec.output):
        assert node_id in known


@given(canvases())
def test_templates_read_only_deps(canvas: Canvas) -> None:
    spec = compile_clean(canvas)

    for node in spec.nodes:
        assert set(template_nodes(node.input)) <= set(node.deps)
        assert len(node.deps) == len(set(node.deps))


@given(canvases())
def test_output_reads_only_sinks(canvas: Canvas) -> None:
    spec = compile_clean(canvas)
    side = {node.id for node in spec.nodes if node.side}

    assert set(template_nodes(spec.output)) <= set(spec.sinks)
    assert not side.intersection(spec.sinks)


@given(canvases())
def test_chain_steps_wait_in_order(canvas: Canvas) -> None:
    spec = compile_clean(canvas)
    model = model_of(canvas, spec)

    for sinks, entries in model.step_pairs:
        for entry in entries:
            assert sinks <= set(spec.node(entry).deps)


@given(canvases(), submit_args, submit_kwargs)
def test_templates_follow_value_rules(
    canvas: Canvas, args: list[int], kwargs: dict[str, int]
) -> None:
    evaluator = Evaluator()
    expected_value = evaluator.run(canvas, Submitted(tuple(args), kwargs))

    calls, value = run_spec(compile_clean(canvas, args, kwargs))

    assert calls == evaluator.calls
    assert value == expected_value


@given(canvases())
def test_templates_without_submit_args(canvas: Canvas) -> None:
    evaluator = Evaluator()
    expected_value = evaluator.run(canvas, NO_VALUE)

    calls, value = run_spec(compile_clean(canvas))

    assert calls == evaluator.calls
    assert value == expected_value


@given(canvases())
def test_side_nodes_and_roles(canvas: Canvas) -> None:
    spec = compile_clean(canvas)
    model = model_of(canvas, spec)

    for node in spec.nodes:
        assert node.side == (node.id in model.side)
        assert (node.role == "link") == (node.id in model.link_entries)
        assert (node.role == "errback") == (node.id in model.errback_entries)
        if node.covers:
            assert node.role == "errback"


@given(canvases())
def test_join_only_on_settled_bodies(canvas: Canvas) -> None:
    spec = compile_clean(canvas)
    model = model_of(canvas, spec)

    for node in spec.nodes:
        assert (node.join == "all_settled") == (node.id in model.settled_entries)


@given(canvases())
def test_submit_delay_reaches_roots(canvas: Canvas) -> None:
    spec = compile_clean(canvas, options={"countdown": 7})

    for node in spec.nodes:
        is_root = not node.side and not node.deps
        assert (node.options.countdown == 7.0) == is_root


@given(canvases())
def test_submit_defaults_reach_all(canvas: Canvas) -> None:
    spec = compile_clean(canvas, options={"queue": "sent"})

    for node in spec.nodes:
        assert node.options.queue == "sent"


@given(canvases(3), canvases(3), canvases(3))
def test_pipe_associative_on_values(
    first: Canvas, second: Canvas, third: Canvas
) -> None:
    left = (first.clone() | second.clone()) | third.clone()
    right = first.clone() | (second.clone() | third.clone())

    left_calls, left_value = run_spec(compile_canvas(left))
    right_calls, right_value = run_spec(compile_canvas(right))

    assert left_calls == right_calls
    assert left_value == right_value
