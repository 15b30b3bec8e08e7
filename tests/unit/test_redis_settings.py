"""Redis driver settings that cannot work are rejected before it connects."""

from __future__ import annotations

import math
import re
from typing import Any

import pytest

from stem.drivers.redis import RedisDriver

#: Nothing listens on port 1, so a setting that passed the checks would fail
#: with a connection error instead of the expected ValueError.
UNREACHABLE = "redis://127.0.0.1:1/0"

INVALID = [
    ("visibility_timeout_s", -1),
    ("visibility_timeout_s", math.nan),
    ("visibility_timeout_s", math.inf),
    ("visibility_timeout_s", "5"),
    ("max_deliveries", 1.5),
    ("max_deliveries", True),
    ("max_deliveries", "3"),
    ("promote_batch", 0),
    ("promote_batch", -1),
    ("promote_batch", 1.5),
    ("poll_interval_s", -1),
    ("poll_interval_s", math.nan),
    ("fire_ttl_s", 0),
    ("fire_ttl_s", math.nan),
    ("stage_ttl_s", math.nan),
    ("reconcile_interval_s", math.nan),
    ("reconcile_after_s", math.inf),
]


@pytest.mark.parametrize(("name", "value"), INVALID)
def test_invalid_setting_rejected(name: str, value: Any) -> None:
    with pytest.raises(ValueError, match=f"^{name} is {re.escape(repr(value))}; pass"):
        RedisDriver(UNREACHABLE, **{name: value})


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("visibility_timeout_s", 0),
        ("visibility_timeout_s", None),
        ("poll_interval_s", 0),
    ],
)
def test_edge_setting_accepted(name: str, value: Any) -> None:
    # Accepted settings reach the connection, which fails on port 1.
    with pytest.raises(Exception, match="Could not connect"):
        RedisDriver(UNREACHABLE, **{name: value})
