"""The size limit on stored error messages, arguments and tracebacks."""

from __future__ import annotations

import json
import re

import pytest

from stem.engine.records import MAX_ERROR_TEXT_BYTES, ErrorInfo


def raised(exc: Exception) -> ErrorInfo:
    try:
        raise exc
    except Exception as caught:
        return ErrorInfo.from_exception(caught)


def utf8_size(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def test_huge_message_capped() -> None:
    message = "head" + "x" * 50_000_000 + "tail"

    error = raised(ValueError(message))

    assert utf8_size(error.message) <= MAX_ERROR_TEXT_BYTES
    assert error.message.startswith("headxxx")
    assert error.message.endswith("xxxtail")
    assert "bytes cut" in error.message
    assert utf8_size(error.traceback) <= MAX_ERROR_TEXT_BYTES
    assert error.traceback.startswith("Traceback (most recent call last):")
    assert error.traceback.rstrip().endswith("xxxtail")
    assert "bytes cut" in error.traceback


def test_cut_count_is_exact() -> None:
    message = "q" * (3 * MAX_ERROR_TEXT_BYTES)

    error = ErrorInfo("builtins", "ValueError", message)

    kept = error.message.count("q")
    found = re.search(r"\[\.\.\. ([\d,]+) bytes cut", error.message)
    assert found is not None
    assert kept + int(found.group(1).replace(",", "")) == len(message)


def test_single_string_argument_capped() -> None:
    error = raised(ValueError("y" * 1_000_000))

    assert error.args is not None
    [argument] = error.args
    assert argument == error.message
    assert len(json.dumps(error.args)) <= MAX_ERROR_TEXT_BYTES + 64


def test_other_huge_arguments_dropped() -> None:
    error = raised(KeyError("k", "z" * 1_000_000))

    assert error.args is None
    assert utf8_size(error.message) <= MAX_ERROR_TEXT_BYTES


@pytest.mark.parametrize("char", ["é", "€", "😀"])
def test_multibyte_text_cut_on_characters(char: str) -> None:
    error = ErrorInfo("builtins", "ValueError", char * MAX_ERROR_TEXT_BYTES)

    assert utf8_size(error.message) <= MAX_ERROR_TEXT_BYTES
    assert error.message.startswith(char * 10)
    assert error.message.endswith(char * 10)
    # A character cut in half is dropped, never replaced by U+FFFD.
    assert "\ufffd" not in error.message


def test_small_error_kept_whole() -> None:
    error = raised(ValueError("short", 3))

    assert error.message == "('short', 3)"
    assert error.args == ["short", 3]
    assert "bytes cut" not in error.traceback


def test_limit_applies_to_stored_form() -> None:
    stored = {"module": "m", "qualname": "E", "message": "m" * 10**6}

    error = ErrorInfo.from_dict(stored)

    assert utf8_size(error.message) <= MAX_ERROR_TEXT_BYTES
