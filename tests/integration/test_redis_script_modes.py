"""How the Redis driver runs its scripts: a Functions library, or EVALSHA.

On Redis 7.0 or later the scripts run as the functions of one library
(FCALL). A server that reports an older version gets EVALSHA. These run
real canvases through a worker in each mode, on each Redis configuration.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
import redis

from stem import App, chain, group
from stem.drivers.redis import RedisDriver, scripts
from stem.drivers.redis.library import LIBRARY_PREFIX
from stem.local_redis import LocalRedis

from .script_helpers import flush_scripts, has_library, primaries

TIMEOUT_S = 10.0


def _script_calls(client: Any) -> dict[str, int]:
    """Return the FCALL and EVALSHA counts, summed over the primaries."""
    counts = {"fcall": 0, "evalsha": 0}
    for node in primaries(client):
        stats: dict[str, Any] = node.info("commandstats")
        for name in counts:
            counts[name] += int(stats.get(f"cmdstat_{name}", {}).get("calls", 0))
    return counts


def _run_canvases(redis_target: Any) -> RedisDriver:
    """Run a chain and a group through a worker; return the app's driver."""
    app = App(
        redis_target.url,
        prefix=f"test-{uuid.uuid4().hex[:12]}:",
        **redis_target.settings,
    )
    add = app.task(name="add")(lambda x, y: x + y)
    try:
        with app.worker(concurrency=2):
            assert app.submit(chain(add.s(1, 2), add.s(3))).get(TIMEOUT_S) == 6
            members = group(add.s(i, i) for i in range(4))
            assert app.submit(members).get(TIMEOUT_S) == [0, 2, 4, 6]
    finally:
        app.close()
    driver = app.driver
    assert isinstance(driver, RedisDriver)
    return driver


def test_old_server_uses_evalsha(
    redis_target: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(scripts, "server_version", lambda client: (6, 2, 0))
    client = redis_target.client()
    try:
        for node in primaries(client):
            flush_scripts(node)
        before = _script_calls(client)

        driver = _run_canvases(redis_target)

        calls = _script_calls(client)
        assert driver._scripts.use_functions is False
        assert calls["fcall"] == before["fcall"]
        assert calls["evalsha"] > before["evalsha"]
        for node in primaries(client):
            assert not has_library(node), node
    finally:
        client.close()


def test_new_server_uses_functions(redis_target: Any, redis_script_mode: str) -> None:
    if redis_script_mode == "evalsha":
        pytest.skip("--redis-scripts=evalsha reports every server as 6.2")
    client = redis_target.client()
    try:
        before = _script_calls(client)

        driver = _run_canvases(redis_target)

        calls = _script_calls(client)
        assert scripts.server_version(client) >= (7, 0)
        assert driver._scripts.use_functions is True
        assert calls["evalsha"] == before["evalsha"]
        assert calls["fcall"] > before["fcall"]
        for node in primaries(client):
            assert has_library(node), node
    finally:
        client.close()


def test_read_only_function_runs_on_replica(
    redis_url: str, redis_script_mode: str
) -> None:
    # read_ended and read_value have the no-writes flag, so a read-only
    # replica runs them, as it runs the scripts with EVALSHA. A function
    # that writes is rejected.
    if redis_script_mode == "evalsha":
        pytest.skip("--redis-scripts=evalsha loads no library")
    driver = RedisDriver(redis_url, prefix=f"test-{uuid.uuid4().hex[:12]}:")
    library = driver._scripts.library
    port = redis_url.rsplit(":", 1)[1].split("/")[0]
    replica_server = LocalRedis(options=["--replicaof", "127.0.0.1", port])
    replica_server.start()
    replica = redis.Redis.from_url(replica_server.url, decode_responses=True)
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while replica.info("replication")["master_link_status"] != "up":
            assert time.monotonic() < deadline, "The replica never synced."
            time.sleep(0.05)
        listed = replica.execute_command(
            "FUNCTION LIST", "LIBRARYNAME", f"{LIBRARY_PREFIX}*"
        )
        keys = ["{p}:run:x", "{p}:run:x:nodes", "{p}:run:x:values", "{p}:run:x:errors"]

        reply = replica.fcall(library.function_name("read_ended"), 4, *keys, "status")
        value_reply = replica.fcall(
            library.function_name("read_value"), 2, keys[0], keys[2], "0", "status"
        )
        with pytest.raises(redis.ResponseError, match="read only replica"):
            replica.fcall(library.function_name("release_lock"), 1, "{p}:lock", "t")

        assert [entry[1] for entry in listed] == [library.name]
        assert reply == [[None]]
        assert value_reply == [[None]]
    finally:
        replica.close()
        replica_server.stop()
        driver.close()


def test_deleting_functions_run_above_maxmemory(redis_script_mode: str) -> None:
    # EVALSHA rejects only a write command that can grow memory, so the
    # scripts that only delete have allow-oom and still run; others do not.
    if redis_script_mode == "evalsha":
        pytest.skip("--redis-scripts=evalsha loads no library")
    server = LocalRedis()
    server.start()
    client = redis.Redis.from_url(server.url, decode_responses=True)
    driver = RedisDriver(server.url, prefix=f"test-{uuid.uuid4().hex[:12]}:")
    library = driver._scripts.library
    try:
        client.config_set("maxmemory", 1)

        released = client.fcall(library.function_name("release_lock"), 1, "lock", "t")
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            client.fcall(library.function_name("promote"), 1, "{p}:delayed", "10")

        assert released == 0
    finally:
        driver.close()
        client.close()
        server.stop()


def test_user_without_functions_uses_evalsha(
    redis_script_mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    # An ACL user that may not run the FUNCTION commands gets EVALSHA.
    if redis_script_mode == "evalsha":
        pytest.skip("--redis-scripts=evalsha never sends a FUNCTION command")
    server = LocalRedis()
    server.start()
    admin = redis.Redis.from_url(server.url, decode_responses=True)
    admin.acl_setuser(
        "limited",
        enabled=True,
        passwords=["+secret"],
        keys=["*"],
        channels=["*"],
        commands=["+@all", "-function"],
    )
    url = server.url.replace("redis://", "redis://limited:secret@")
    app = App(url, prefix=f"test-{uuid.uuid4().hex[:12]}:")
    add = app.task(name="add")(lambda x, y: x + y)
    try:
        with app.worker(concurrency=1):
            result = app.submit(chain(add.s(1, 2), add.s(3))).get(TIMEOUT_S)
        driver = app.driver
        assert isinstance(driver, RedisDriver)

        assert result == 6
        assert driver._scripts.use_functions is False
        assert "runs its scripts with EVALSHA" in caplog.text
        assert not has_library(admin)
    finally:
        app.close()
        admin.close()
        server.stop()
