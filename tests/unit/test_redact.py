"""`redact` hides every password a broker URL can carry."""

from __future__ import annotations

import pytest

from stem.engine.drivers import redact


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:pw@127.0.0.1:7000/0", "redis://:***@127.0.0.1:7000/0"),
        ("redis://user:pw@127.0.0.1:7000/0", "redis://user:***@127.0.0.1:7000/0"),
        ("redis://:pw@[::1]:7000/0", "redis://:***@[::1]:7000/0"),
        (
            "redis://127.0.0.1:7000/0?password=pw",
            "redis://127.0.0.1:7000/0?password=***",
        ),
        (
            "redis://127.0.0.1:7000/0?username=user&password=pw&partitions=3",
            "redis://127.0.0.1:7000/0?username=user&password=***&partitions=3",
        ),
        (
            "redis://127.0.0.1:7000/0?partitions=3",
            "redis://127.0.0.1:7000/0?partitions=3",
        ),
        ("memory://", "memory://"),
    ],
)
def test_redact_hides_password(url: str, shown: str) -> None:
    assert redact(url) == shown
