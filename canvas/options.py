"""Validation of signature options.

Options are checked where they are set (`Signature.set`) and again when a
canvas is compiled, where the error can name the option's place in the
canvas. Each checker returns the normalised value or raises `InvalidOption`.
"""

from __future__ import annotations

import datetime as dt
import difflib
import sys
import unicodedata
from collections.abc import Callable, Mapping
from typing import Any, Literal

from stem.canvas.errors import InvalidOption
from stem.canvas.text import HIDDEN_CATEGORIES

JoinPolicy = Literal["fail_fast", "all_settled"]
JOIN_POLICIES: tuple[JoinPolicy, ...] = ("fail_fast", "all_settled")


def _where(path: str, name: str) -> str:
    place = f"options[{name!r}]"
    return f"{path} > {place}" if path else place


def _queue(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidOption(
            f"{where}: queue {value!r} is invalid; pass a non-empty queue name "
            "such as 'default'."
        )
    # The same rule as for task names: a surrogate has no UTF-8 form for the
    # store, and control and format characters would reach terminals.
    hidden = [char for char in value if unicodedata.category(char) in HIDDEN_CATEGORIES]
    if hidden:
        raise InvalidOption(
            f"{where}: queue {value!r} contains the control, format or surrogate "
            f"character {hidden[0]!r}; use printable characters only."
        )
    return value


def _priority(value: Any, where: str) -> int:
    if type(value) is not int or not 0 <= value <= 9:
        raise InvalidOption(
            f"{where}: priority {value!r} is invalid; pass an int from 0 (lowest) "
            "to 9 (highest)."
        )
    return value


def _seconds(*, allow_zero: bool) -> Callable[[Any, str], float]:
    def check(value: Any, where: str) -> float:
        # An int too large for a float has no finite number of seconds.
        is_number = type(value) in (int, float) and abs(value) <= sys.float_info.max
        if not is_number or value < 0 or (value == 0 and not allow_zero):
            bound = "zero or more" if allow_zero else "more than zero"
            raise InvalidOption(
                f"{where}: {value!r} is invalid; pass a finite number of seconds, "
                f"{bound}."
            )
        return float(value)

    return check


def _eta(value: Any, where: str) -> str:
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value)
        except ValueError:
            raise InvalidOption(
                f"{where}: eta {value!r} is not an ISO 8601 date and time; pass a "
                "timezone-aware datetime."
            ) from None
    if not isinstance(value, dt.datetime) or value.utcoffset() is None:
        raise InvalidOption(
            f"{where}: eta {value!r} is invalid; pass a timezone-aware datetime, "
            "for example datetime.now(timezone.utc) + timedelta(minutes=5)."
        )
    try:
        return value.astimezone(dt.UTC).isoformat()
    except OverflowError:
        raise InvalidOption(
            f"{where}: eta {value.isoformat()} falls outside the years 1 to 9999 "
            "in UTC; pass a time within that range."
        ) from None


def _max_retries(value: Any, where: str) -> int | None:
    if value is not None and (type(value) is not int or value < 0):
        raise InvalidOption(
            f"{where}: max_retries {value!r} is invalid; pass an int of 0 or more, "
            "or None to retry without limit."
        )
    return value


def _retry_backoff(value: Any, where: str) -> bool | float:
    if type(value) is bool:
        return value
    return _seconds(allow_zero=False)(value, where)


def _flag(value: Any, where: str) -> bool:
    if type(value) is not bool:
        raise InvalidOption(f"{where}: {value!r} is invalid; pass True or False.")
    return value


def _join(value: Any, where: str) -> JoinPolicy:
    if value not in JOIN_POLICIES:
        raise InvalidOption(
            f"{where}: join policy {value!r} is unknown; pass one of "
            f"{', '.join(map(repr, JOIN_POLICIES))}."
        )
    return value  # type: ignore[no-any-return]


#: Checker of every option a signature accepts, by name.
CHECKERS: dict[str, Callable[[Any, str], Any]] = {
    "queue": _queue,
    "priority": _priority,
    "countdown": _seconds(allow_zero=True),
    "eta": _eta,
    "max_retries": _max_retries,
    "default_retry_delay": _seconds(allow_zero=True),
    "retry_backoff": _retry_backoff,
    "retry_backoff_max": _seconds(allow_zero=False),
    "retry_jitter": _flag,
    "time_limit": _seconds(allow_zero=False),
    "soft_time_limit": _seconds(allow_zero=False),
    "ignore_result": _flag,
}

#: Celery options that Stem does not accept, with what to do instead. A close
#: match would mislead here (rate_limit is not time_limit).
CELERY_ONLY_OPTIONS = {
    "rate_limit": "Stem has no rate limits. To cap how many of a task run at "
    "once, route it to its own queue and read that queue with one worker of "
    "fixed -c.",
    "expires": "Stem has no message expiry. Cancel runs that are no longer "
    "needed with AsyncResult.cancel() or stem runs cancel.",
    "acks_late": "Stem acknowledges a message only after its task has ended, "
    "as acks_late=True does, so leave it out.",
    "serializer": "Stem's values are always JSON, so leave it out.",
}

#: Options that delay the nodes they reach, as opposed to defaults.
DELAY_OPTIONS = ("countdown", "eta")


def check_options(options: Mapping[str, Any], path: str = "") -> dict[str, Any]:
    """Validate and normalise a mapping of signature options.

    ``eta`` becomes an ISO 8601 string in UTC; numbers of seconds become floats.

    Raises:
        InvalidOption: naming the first bad option, its place and the fix.
    """
    checked: dict[str, Any] = {}
    for name, value in options.items():
        checker = CHECKERS.get(name) if isinstance(name, str) else None
        if checker is None:
            raise InvalidOption(_unknown(name, path))
        checked[name] = checker(value, _where(path, name))
    return checked


def check_join(value: Any, path: str = "") -> JoinPolicy:
    """Validate a join policy name."""
    return _join(value, _where(path, "join"))


def _unknown(name: Any, path: str) -> str:
    prefix = f"{path}: " if path else ""
    if not isinstance(name, str):
        return f"{prefix}option name {name!r} is not a string; pass options by name."
    if name in CELERY_ONLY_OPTIONS:
        advice = CELERY_ONLY_OPTIONS[name]
        return (
            f"{prefix}{name!r} is a Celery option that Stem does not accept. {advice}"
        )
    close = difflib.get_close_matches(name, CHECKERS, n=1)
    hint = (
        f"did you mean {close[0]!r}?"
        if close
        else f"known options: {', '.join(CHECKERS)}."
    )
    return f"{prefix}unknown option {name!r}; {hint}"
