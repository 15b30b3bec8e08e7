"""Cutting spec texts around the first node's arguments: SpecText and SpecParser."""

from __future__ import annotations

from typing import Any

import pytest

from stem import App
from stem.canvas.spec import GraphSpec, SpecText
from stem.drivers.redis import layout
from stem.engine.records import NodeRecord

#: First-node arguments in the value codec's JSON form, with values that
#: look like the text around them.
ARGUMENTS: list[tuple[list[Any], dict[str, Any]]] = [
    ([], {}),
    ([1], {}),
    ([], {"a": 1}),
    ([{"x": [1, 2]}, 2.5, None, True], {"b": "c"}),
    (['a,"kwargs":{}', "\0stem:args"], {"\0stem:kwargs": None}),
    (["ünï", {"kwargs": {"options": 1}}], {"k": [[], {}]}),
]


@pytest.fixture
def spec() -> GraphSpec:
    app = App("memory://")

    @app.task(name="one")
    def one(*args: Any, **kwargs: Any) -> None:
        return None

    options = {"priority": 3, "link": one.s(7)}
    return app._compile_run(one.s(1), (), None, options)[1]


@pytest.mark.parametrize(("args", "kwargs"), ARGUMENTS)
def test_spec_text_round_trip(
    spec: GraphSpec, args: list[Any], kwargs: dict[str, Any]
) -> None:
    cut = SpecText(spec)
    copy = spec.with_root_args(args, kwargs)
    written = cut.write(copy)
    assert GraphSpec.from_json(written) == copy
    assert cut.read(written) == copy


@pytest.mark.parametrize(("args", "kwargs"), ARGUMENTS)
def test_spec_text_reads_to_json(
    spec: GraphSpec, args: list[Any], kwargs: dict[str, Any]
) -> None:
    copy = spec.with_root_args(args, kwargs)
    read = SpecText(spec).read(copy.to_json())
    if args or not kwargs:
        assert read == copy
    else:
        # to_json leaves out the empty args, a form the cut does not read.
        assert read is None


def test_spec_text_rejects_other_texts(spec: GraphSpec) -> None:
    cut = SpecText(spec)
    written = cut.write(spec.with_root_args([1], {"a": 2}))
    other = spec.model_copy(update={"sinks": []})
    assert cut.read(other.to_json()) is None
    assert cut.read(written[:-1]) is None
    assert cut.read(written + " ") is None
    assert cut.read(written.replace("[1]", '{"a":1}')) is None
    assert cut.read(written.replace("[1]", "[1")) is None
    assert cut.read(written.replace("[1]", "[NaN]")) is None
    assert cut.read(written.replace('{"a":2}', "[2]")) is None


def test_spec_text_shares_spec_without_arguments(spec: GraphSpec) -> None:
    cut = SpecText(spec)
    bare = spec.with_root_args([], {})
    written = cut.write(bare)

    first = cut.read(written)
    second = cut.read(bare.to_json())

    assert first == bare
    assert second is first
    assert cut.read(written) is first
    assert cut.read(cut.write(spec.with_root_args([1], {}))) is not first


def test_spec_parser_cuts_alike_texts(
    spec: GraphSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    parses: list[str] = []
    from_json = GraphSpec.from_json

    def counted(text: str | bytes) -> GraphSpec:
        parses.append(str(text))
        return from_json(text)

    monkeypatch.setattr(GraphSpec, "from_json", counted)
    parser = layout.SpecParser()
    copies = [spec.with_root_args([index], {}) for index in range(10)]
    for copy in copies:
        assert parser.parse(copy.to_json()) == copy
    # The first two texts are parsed whole; the others from their args.
    assert len(parses) == 2
    other = spec.model_copy(update={"sinks": []})
    assert parser.parse(other.to_json()) == other
    assert len(parses) == 3
    # Both layouts stay cut.
    assert parser.parse(copies[3].to_json()) == copies[3]
    assert len(parses) == 3
    other_copy = other.with_root_args([5], {})
    assert parser.parse(other_copy.to_json()) == other_copy
    assert len(parses) == 3


def _records(value: str | None) -> dict[str, NodeRecord]:
    return {
        "0": NodeRecord(state="succeeded", value=value),
        "1": NodeRecord(state="succeeded", value="7"),
    }


def test_snapshot_value_is_stored_text(spec: GraphSpec) -> None:
    run = {"status": "succeeded", "created_at": "1.0"}
    stored = '{"a":[1,2.5,"x"]}'
    snapshot = layout.snapshot_of("r", spec, run, _records(stored))
    assert snapshot.value == stored
    assert layout.snapshot_of("r", spec, run, _records(None)).value == "null"
    root = spec.nodes[0]
    ignored = root.options.model_copy(update={"ignore_result": True})
    hidden = spec.model_copy(
        update={
            "nodes": [root.model_copy(update={"options": ignored}), *spec.nodes[1:]]
        }
    )
    assert layout.snapshot_of("r", hidden, run, _records(stored)).value == "null"
