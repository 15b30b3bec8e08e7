"""Driver URLs that name no usable Redis: each gives one clear error."""

from __future__ import annotations

import pytest

from stem import App
from stem.drivers.redis import RedisDriver
from stem.drivers.redis.connection import parse_url
from stem.engine.errors import DriverError


@pytest.mark.parametrize("path", ["/abc", "/0x1", "/1.5", "/-1", "/²"])
def test_database_not_number_rejected(path: str) -> None:
    with pytest.raises(ValueError, match=r"database .* in the URL is invalid"):
        parse_url(f"redis://127.0.0.1:1{path}")


@pytest.mark.parametrize("path", ["", "/", "/0", "/15"])
def test_database_number_accepted(path: str) -> None:
    assert not parse_url(f"redis://127.0.0.1:1{path}").cluster


def test_unknown_url_option_rejected(redis_url: str) -> None:
    with pytest.raises(ValueError, match="option 'prefx'") as caught:
        RedisDriver(f"{redis_url}?prefx=x&password=hunter2")

    assert "App(url, visibility_timeout_s=60)" in str(caught.value)
    assert "hunter2" not in str(caught.value)


def test_url_prefix_reaches_prefixed_runs(redis_url: str) -> None:
    app = App(redis_url, prefix="urlprefix:")
    add = app.task(name="add")(lambda x, y: x + y)
    result = add.apply_async((1, 2), countdown=3600)

    by_url = RedisDriver(f"{redis_url}?prefix=urlprefix:")
    plain = RedisDriver(redis_url)
    try:
        assert by_url.snapshot(result.id).status == "running"
        assert by_url.delayed_count() == 1
        assert plain.delayed_count() == 0
    finally:
        by_url.close()
        plain.close()
        app.close()


def test_url_and_setting_prefixes_must_agree(redis_url: str) -> None:
    with pytest.raises(ValueError, match="'a:', 'b:'; give the prefix in one place"):
        RedisDriver(f"{redis_url}?prefix=a:", prefix="b:")

    same = RedisDriver(f"{redis_url}?prefix=a:", prefix="a:")
    same.close()


def test_cluster_scheme_on_single_node(redis_url: str) -> None:
    single = redis_url.removeprefix("redis://").rsplit("/", 1)[0]

    with pytest.raises(DriverError, match="Could not connect to a Redis Cluster"):
        RedisDriver(f"redis+cluster://{single}")
