"""Bad input at build and submit time: a clear Stem error, and nothing stored."""

from __future__ import annotations

import sys
from typing import Any

import pytest

from stem import App, chain, chord, group
from stem.canvas.compiler import compile_canvas
from stem.canvas.errors import InvalidCanvas, InvalidOption, NotSerializable
from stem.canvas.primitives import Chain, Signature
from stem.canvas.values import MAX_DEPTH, dumps, loads

app = App()


@app.task(name="add")
def add(x: int, y: int = 0) -> int:
    return x + y


@app.task(name="tsum")
def tsum(values: list[int]) -> int:
    return sum(values)


def nested_list(depth: int) -> list[Any]:
    """Return ``depth`` lists, each inside the next."""
    value: list[Any] = []
    for _ in range(depth - 1):
        value = [value]
    return value


def nested_dict(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth):
        value = {"a": value}
    return value


def assert_rejected_without_run(
    error: type[Exception], submit: Any, *fragments: str
) -> None:
    """Check that ``submit()`` raises ``error`` with ``fragments``, storing no run."""
    before = app.driver.runs()
    with pytest.raises(error) as caught:
        submit()
    for fragment in fragments:
        assert fragment in str(caught.value)
    assert app.driver.runs() == before


# -- values --------------------------------------------------------------------


def test_huge_int_arg_rejected() -> None:
    assert_rejected_without_run(
        NotSerializable,
        lambda: add.s(10**5000, 1).apply_async(),
        "args[0]",
        "digits",
    )


def test_int_at_digit_limit_round_trips() -> None:
    limit = sys.get_int_max_str_digits()
    value = 10 ** (limit - 1)
    assert loads(dumps(value)) == value


def test_deep_list_arg_rejected() -> None:
    assert_rejected_without_run(
        NotSerializable,
        lambda: add.s(nested_list(5000)).apply_async(),
        "args[0]",
        "nested",
    )


def test_deep_dict_kwarg_rejected() -> None:
    assert_rejected_without_run(
        NotSerializable,
        lambda: add.s(1, y=nested_dict(5000)).apply_async(),
        "kwargs['y']",
        "nested",
    )


def test_value_at_max_depth_round_trips() -> None:
    value = nested_list(MAX_DEPTH)
    assert loads(dumps(value)) == value


def test_value_past_max_depth_rejected() -> None:
    with pytest.raises(NotSerializable):
        dumps(nested_list(MAX_DEPTH + 1))


# -- options -------------------------------------------------------------------


def test_huge_int_countdown_rejected() -> None:
    with pytest.raises(InvalidOption, match="countdown"):
        add.s(1).set(countdown=10**400)


def test_huge_int_countdown_at_submit_rejected() -> None:
    assert_rejected_without_run(
        InvalidOption,
        lambda: add.s(1, 2).apply_async(countdown=10**400),
        "countdown",
    )


def test_eta_out_of_range_rejected() -> None:
    with pytest.raises(InvalidOption, match="eta"):
        add.s(1).set(eta="0001-01-01T00:00:00+14:00")


def test_option_name_not_string_rejected() -> None:
    assert_rejected_without_run(
        InvalidOption,
        lambda: app.submit(add.s(1, 2), options={1: 2}),
        "1",
    )


def test_run_id_not_string_rejected() -> None:
    for bad in ({}, [1], "", 5):
        assert_rejected_without_run(
            InvalidOption,
            lambda bad=bad: add.s(1, 2).apply_async(run_id=bad),
            "run_id",
        )


# -- canvas objects ------------------------------------------------------------


def test_chain_with_int_step_rejected() -> None:
    with pytest.raises(InvalidCanvas, match="chain step 1"):
        chain(add.s(1), 5)


def test_set_link_int_rejected() -> None:
    with pytest.raises(InvalidCanvas, match="link"):
        add.s(1).set(link=5)


def test_submit_link_error_string_rejected() -> None:
    assert_rejected_without_run(
        InvalidCanvas,
        lambda: add.s(1, 1).apply_async(link_error="report"),
        "'report'",
    )


def test_submit_link_int_rejected() -> None:
    assert_rejected_without_run(
        InvalidCanvas, lambda: add.s(1, 1).apply_async(link=5), "5"
    )


def test_group_nested_2000_deep_rejected() -> None:
    canvas: Any = add.s(1, 1)
    for _ in range(2000):
        canvas = group(canvas)
    assert_rejected_without_run(InvalidCanvas, lambda: canvas.apply_async(), "nested")


def test_chord_nested_2000_deep_rejected() -> None:
    canvas: Any = add.s(1, 1)
    for _ in range(2000):
        canvas = chord([canvas], tsum.s())
    assert_rejected_without_run(InvalidCanvas, lambda: canvas.apply_async(), "nested")


def test_chain_nested_2000_deep_compile_rejected() -> None:
    canvas: Any = add.s(1, 1)
    for _ in range(2000):
        canvas = Chain([canvas])
    with pytest.raises(InvalidCanvas, match="nested"):
        compile_canvas(canvas)


def test_link_nested_2000_deep_rejected() -> None:
    canvas = Signature("add", (1, 1))
    top = canvas
    for _ in range(2000):
        callback = Signature("add", (1,))
        canvas.link(callback)
        canvas = callback
    with pytest.raises(InvalidCanvas, match="nested"):
        compile_canvas(top)


def test_chain_of_5000_steps_compiles() -> None:
    spec = compile_canvas(chain([add.s(1)] * 5000), args=(0,))
    assert len(spec.nodes) == 5000
