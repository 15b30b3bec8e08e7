"""Settings of a run's lifecycle that every driver takes, with defaults and checks.

Pass them to the app, which hands them to its driver:
``App(url, retention_s=86400, max_value_bytes=1_000_000, events=False)``.
"""

from __future__ import annotations

import math
from typing import Any

#: Seconds a run is kept after it ends (Celery's ``result_expires``): 7 days.
DEFAULT_RETENTION_S = 7 * 24 * 3600.0
#: Largest value a task may return, in bytes of its JSON text: 2 MiB.
#: A value crosses to Redis as one script argument and is copied into the
#: reply of every claim that reads it, and Redis serves nothing else while
#: one script runs. Measured on a loaded 2-core machine (Redis 7.0, SLOWLOG),
#: the complete and claim scripts took a median of 3 and 7 ms with a 2 MiB
#: value, 18 and 29 ms with 4 MiB, and 150 and 170 ms with 16 MiB. So 2 MiB
#: keeps each call near a 20 ms stall, far from the 512 MB string limit. It
#: is also Temporal's default payload limit.
DEFAULT_MAX_VALUE_BYTES = 2 * 1024 * 1024
#: Lifecycle events kept per partition, about: the stream is trimmed with
#: ``MAXLEN ~``, which keeps at least this many.
DEFAULT_EVENTS_MAX_LEN = 10_000


def check_retention_s(value: Any) -> float | None:
    """Return a valid ``retention_s``: seconds above zero, or None to keep runs.

    Raises:
        ValueError: naming the value and what to pass instead.
    """
    if value is None:
        return None
    is_number = type(value) in (int, float) and math.isfinite(value)
    if not is_number or value <= 0:
        raise ValueError(
            f"retention_s {value!r} is invalid; pass a finite number of seconds "
            "above zero (the default is 604800, 7 days), or None to keep ended "
            "runs until they are deleted."
        )
    return float(value)


def check_max_value_bytes(value: Any) -> int | None:
    """Return a valid ``max_value_bytes``: an int of 1 or more, or None for no limit.

    Raises:
        ValueError: naming the value and what to pass instead.
    """
    if value is None:
        return None
    if type(value) is not int or value < 1:
        raise ValueError(
            f"max_value_bytes {value!r} is invalid; pass an int of 1 or more "
            f"(the default is {DEFAULT_MAX_VALUE_BYTES}, 2 MiB), or None for "
            "no limit."
        )
    return value


def check_events_max_len(value: Any) -> int:
    """Return a valid ``events_max_len``: an int of 1 or more.

    Raises:
        ValueError: naming the value and what to pass instead.
    """
    if type(value) is not int or value < 1:
        raise ValueError(
            f"events_max_len {value!r} is invalid; pass an int of 1 or more, or "
            "events=False to write no events."
        )
    return value


def check_events(value: Any) -> bool:
    """Return a valid ``events`` flag.

    Raises:
        ValueError: if it is not a bool.
    """
    if type(value) is not bool:
        raise ValueError(f"events {value!r} is invalid; pass True or False.")
    return value
