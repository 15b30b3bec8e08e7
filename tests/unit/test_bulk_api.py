"""The client-side pieces of bulk submit on memory://: option caching, ResultSet, gc.

The bulk calls themselves run on every driver in
tests/conformance/test_bulk_runs.py.
"""

from __future__ import annotations

import gc
import random
from collections.abc import Iterator
from typing import Any

import pytest

from stem import App, ResultSet
from stem.canvas.gcpause import paused_gc
from stem.canvas.spec import NodeOptions, same_layout
from stem.engine.app import new_run_id, ulid_text
from stem.errors import InvalidCanvas, InvalidOption, NotSerializable, NoWorkerRunning


@pytest.fixture
def app() -> Iterator[App]:
    memory_app = App("memory://")
    yield memory_app
    memory_app.close()


def _options(app: App, run_id: str) -> NodeOptions:
    return app.driver.snapshot(run_id).spec.nodes[0].options


def test_filled_options_follow_task_changes(app: App) -> None:
    @app.task(name="job", queue="first")
    def job() -> None:
        return None

    before = job.delay()
    job.options["queue"] = "second"
    after = job.delay()
    assert _options(app, before.id).queue == "first"
    assert _options(app, after.id).queue == "second"


def test_filled_options_follow_default_queue(app: App) -> None:
    @app.task(name="job")
    def job() -> None:
        return None

    before = job.delay()
    app.default_queue = "other"
    after = job.delay()
    assert _options(app, before.id).queue == "default"
    assert _options(app, after.id).queue == "other"


def test_filled_options_keep_value_types(app: App) -> None:
    @app.task(name="job", retry_backoff=True)
    def job() -> None:
        return None

    flag = job.delay()
    job.options["retry_backoff"] = 1.0
    seconds = job.delay()
    assert _options(app, flag.id).retry_backoff is True
    backoff = _options(app, seconds.id).retry_backoff
    assert type(backoff) is float
    assert backoff == 1.0


def test_filled_options_unhashable_default(app: App) -> None:
    @app.task(name="job")
    def job() -> None:
        return None

    # An option Stem does not store, with a value that cannot be hashed,
    # must not break the cache.
    job.options["note"] = ["not", "hashable"]
    result = job.delay()
    assert _options(app, result.id).queue == "default"


def test_result_set_rejects_mixed_apps(app: App) -> None:
    other = App("memory://")
    try:
        with pytest.raises(ValueError, match="different apps"):
            ResultSet([app.AsyncResult("a"), other.AsyncResult("b")])
    finally:
        other.close()


def test_result_set_rejects_run_ids(app: App) -> None:
    handle = app.AsyncResult("a")
    with pytest.raises(TypeError) as caught:
        ResultSet([handle, "b"])
    message = str(caught.value)
    assert message.startswith("ResultSet(): results[1] is 'b', a str,")
    assert "ResultSet([app.AsyncResult(run_id) for run_id in run_ids])" in message
    with pytest.raises(TypeError) as caught:
        ResultSet("ab")
    assert str(caught.value).startswith("ResultSet(): results is 'ab', a str,")
    with pytest.raises(TypeError, match="results is 5, an int,"):
        ResultSet(5)  # type: ignore[arg-type]
    with pytest.raises(TypeError) as caught:
        ResultSet("x" * 100_000)
    assert str(caught.value).startswith(f"ResultSet(): results is '{'x' * 76}..., ")
    assert len(str(caught.value)) < 400


def test_result_set_sequence_protocol(app: App) -> None:
    handles = [app.AsyncResult(run_id) for run_id in ("a", "b", "c")]
    results = ResultSet(handles)
    assert len(results) == 3
    assert list(results) == handles
    assert results[2] is handles[2]
    assert results.ids == ["a", "b", "c"]
    assert results.app is app
    assert repr(results) == "<ResultSet of 3 runs>"
    assert repr(ResultSet(handles[:1])) == "<ResultSet of 1 run>"


def test_result_set_of_one_without_worker(app: App) -> None:
    add = app.task(name="add_one")(lambda x, y: x + y)
    results = add.apply_many([(1, 1)])
    with pytest.raises(NoWorkerRunning) as raised:
        results.get(timeout=5)
    assert str(raised.value).startswith(f"Run {results.ids[0]} cannot finish:")

    both = add.apply_many([(1, 1), (2, 2)])
    with pytest.raises(NoWorkerRunning, match="and 1 other run of the set cannot"):
        both.get(timeout=5)


def test_empty_result_set_has_no_app() -> None:
    results = ResultSet([])
    assert results.app is None
    assert results.get() == []
    assert results.ready()


def _gc_enabled_after(setup: Any) -> bool:
    was = gc.isenabled()
    try:
        setup()
        with paused_gc():
            with paused_gc():
                assert not gc.isenabled()
            assert not gc.isenabled()
        return gc.isenabled()
    finally:
        if was:
            gc.enable()
        else:
            gc.disable()


def test_paused_gc_resumes_when_enabled() -> None:
    assert _gc_enabled_after(gc.enable)


def test_paused_gc_keeps_disabled_gc() -> None:
    assert not _gc_enabled_after(gc.disable)


def test_paused_gc_resumes_after_error() -> None:
    gc.enable()
    with pytest.raises(KeyError), paused_gc():
        raise KeyError("planned")
    assert gc.isenabled()


def test_apply_many_specs_match_compiled(app: App) -> None:
    @app.task(name="pair", queue="pairs")
    def pair(x: Any, y: Any = None) -> list[Any]:
        return [x, y]

    @app.task(name="after")
    def after(value: Any) -> Any:
        return value

    items: list[tuple[Any, ...]] = [(1,), (2.5, "b"), ([1, {"k": None}],), ()]
    options = {"priority": 4, "link": after.s()}
    bulk = pair.apply_many(items, **options)
    for result, args in zip(bulk, items, strict=True):
        one = pair.apply_async(args, **options)
        got = app.driver.snapshot(result.id).spec
        expected = app.driver.snapshot(one.id).spec
        assert got == expected
        assert got.node("0").args == list(args)


def test_with_root_args_drops_cached_nodes(app: App) -> None:
    @app.task(name="one")
    def one(x: int) -> int:
        return x

    spec = app._compile_run(one.s(1), (), None, None)[1]
    assert spec.node("0").args == [1]  # fills the by_id cache
    copy = spec.with_root_args([2])
    assert copy.node("0").args == [2]
    assert copy.nodes[0].args == [2]
    assert spec.node("0").args == [1]


def test_same_layout_only_for_copies(app: App) -> None:
    @app.task(name="one")
    def one(x: int) -> int:
        return x

    spec = app._compile_run(one.s(1), (), None, None)[1]
    twin = app._compile_run(one.s(1), (), None, None)[1]
    assert same_layout(spec, spec)
    assert same_layout(spec, spec.with_root_args([2]))
    assert same_layout(spec.with_root_args([3]), spec.with_root_args([4]))
    # Equal, but compiled apart: nothing shows they share a layout.
    assert twin == spec
    assert not same_layout(spec, twin)
    moved = spec.model_copy(update={"sinks": ["0"]})
    assert not same_layout(spec, moved)


def test_delay_spec_matches_compiled(app: App) -> None:
    @app.task(name="call")
    def call(*args: Any, **kwargs: Any) -> None:
        return None

    cases: list[tuple[tuple[Any, ...], dict[str, Any]]] = [
        ((), {}),
        ((1, "two"), {}),
        ((), {"key": [1, {"a": None}]}),
        ((2.5,), {"flag": True}),
    ]
    for args, kwargs in cases:
        fast = call.delay(*args, **kwargs)
        compiled = app.submit(call.signature(args, kwargs))
        got = app.driver.snapshot(fast.id).spec
        assert got == app.driver.snapshot(compiled.id).spec
        assert got.node("0").args == list(args)
        assert got.node("0").kwargs == kwargs


def test_delay_rejects_bad_arguments(app: App) -> None:
    @app.task(name="call")
    def call(*args: Any, **kwargs: Any) -> None:
        return None

    with pytest.raises(NotSerializable) as caught:
        call.delay(1, object())
    assert str(caught.value).startswith("args[1]: ")
    with pytest.raises(NotSerializable) as caught:
        call.delay(value={1, 2})
    assert str(caught.value).startswith("kwargs['value']: ")
    with pytest.raises(NotSerializable) as caught:
        call.delay(**{"not valid": 1})
    assert str(caught.value).startswith("kwargs: ")
    assert app.driver.list_runs().runs == []


def test_delay_follows_task_options(app: App) -> None:
    @app.task(name="call", queue="first")
    def call() -> None:
        return None

    assert _options(app, call.delay().id).queue == "first"
    call.options["queue"] = "second"
    assert _options(app, call.delay().id).queue == "second"
    app.default_queue = "fallback"
    del call.options["queue"]
    assert _options(app, call.delay().id).queue == "fallback"
    call.options["priority"] = [1]  # unhashable: compiled per call
    with pytest.raises(InvalidOption):
        call.delay()


def _ulid_digits(value: int) -> str:
    alphabet = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
    return "".join(alphabet[(value >> shift) & 31] for shift in range(125, -1, -5))


def test_ulid_text_matches_digits() -> None:
    values = [0, 1, 31, 32, (1 << 128) - 1, 1 << 127, 0x0123456789ABCDEF << 64]
    values += [random.getrandbits(128) for _ in range(1000)]
    for value in values:
        assert ulid_text(value) == _ulid_digits(value)
    assert len(new_run_id()) == 26


NOTHING_APPLIED = "Nothing of this apply_many() call was submitted."
NOTHING_SUBMITTED = "Nothing of this submit_many() call was submitted."


def test_bulk_shape_errors_say_nothing_submitted(app: App) -> None:
    add = app.task(name="add")(lambda x, y: x + y)
    apply_cases: list[tuple[type[Exception], Any, dict[str, Any]]] = [
        (InvalidCanvas, 5, {}),
        (InvalidCanvas, "ab", {}),
        (InvalidCanvas, {"x": 1}, {}),
        (InvalidCanvas, [(1, 1), 2], {}),
        (InvalidOption, [(1, 1)], {"run_id": "mine"}),
        (InvalidOption, [(1, 1)], {"run_ids": ["a", "b"]}),
        (InvalidOption, [(1, 1), (2, 2)], {"run_ids": ["a", "a"]}),
        (InvalidOption, [(1, 1), (2, 2)], {"run_ids": "ab"}),
        (InvalidOption, [(1, 1)], {"run_ids": 5}),
    ]
    for error_type, args_list, keywords in apply_cases:
        with pytest.raises(error_type) as caught:
            add.apply_many(args_list, **keywords)
        assert str(caught.value).startswith("apply_many(): "), caught.value
        assert str(caught.value).endswith(NOTHING_APPLIED), caught.value
    submit_cases: list[tuple[type[Exception], Any, dict[str, Any]]] = [
        (InvalidCanvas, 5, {}),
        (InvalidCanvas, add.s(1, 1), {}),
        (InvalidCanvas, "ab", {}),
        (InvalidOption, [add.s(1, 1)], {"run_id": "mine"}),
        (InvalidOption, [add.s(1, 1)], {"run_ids": ["a", "b"]}),
        (InvalidOption, [add.s(1, 1), add.s(2, 2)], {"run_ids": ["a", "a"]}),
        (InvalidOption, [add.s(1, 1), add.s(2, 2)], {"run_ids": "ab"}),
    ]
    for error_type, canvases, keywords in submit_cases:
        with pytest.raises(error_type) as caught:
            app.submit_many(canvases, **keywords)
        assert str(caught.value).startswith("submit_many(): "), caught.value
        assert str(caught.value).endswith(NOTHING_SUBMITTED), caught.value
    assert app.driver.list_runs().runs == []


def test_submit_many_single_canvas_hint(app: App) -> None:
    add = app.task(name="add")(lambda x, y: x + y)
    with pytest.raises(InvalidCanvas) as caught:
        app.submit_many(add.s(1, 1))
    assert "Pass a list of canvases, such as [canvas]" in str(caught.value)


def test_apply_many_dict_item_hint(app: App) -> None:
    add = app.task(name="add")(lambda x, y: x + y)
    with pytest.raises(InvalidCanvas) as caught:
        add.apply_many([(1, 1), {"x": 1, "y": 2}])
    message = str(caught.value)
    assert message.startswith("apply_many(): item 1 is {'x': 1, 'y': 2}, a mapping")
    assert "app.submit_many([task.s(**kwargs) for kwargs in args_list])" in message
    assert "({'x': 1, 'y': 2},)" not in message
    assert message.endswith(NOTHING_APPLIED)
    # The hint's own call works: it submits the keyword arguments.
    results = app.submit_many([add.s(**kwargs) for kwargs in [{"x": 1, "y": 2}]])
    with app.worker(concurrency=1):
        assert results.get(timeout=30) == [3]
