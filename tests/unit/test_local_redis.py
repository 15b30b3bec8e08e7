"""Private Redis servers on loopback (stem.local_redis)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest
import redis
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.retry import Retry

from stem.local_redis import LocalRedis, LocalRedisCluster, LocalRedisError

#: redis-py retries refused and refused-auth connections with backoff by default.
NO_RETRY = Retry(NoBackoff(), 0)


def test_server_answers_and_stops_by_pid() -> None:
    server = LocalRedis()
    url = server.start()
    pid, workdir = server.pid, server.workdir
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        assert workdir is not None
        assert os.path.isdir(workdir)
        assert client.ping()
        assert client.config_get("save") == {"save": ""}
        assert client.config_get("appendonly") == {"appendonly": "no"}
        assert client.info("server")["process_id"] == pid
    finally:
        client.close()
        server.stop()
    assert not os.path.exists(workdir)
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(url, retry=NO_RETRY).ping()


def test_password_is_required_and_in_the_url() -> None:
    with LocalRedis(password="p@ss:word/1") as server:
        assert server.url.startswith("redis://:p%40ss%3Aword%2F1@127.0.0.1:")
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=server.port, retry=NO_RETRY).ping()
        client = redis.Redis.from_url(server.url)
        assert client.ping()
        client.close()


def test_cluster_password_on_every_node() -> None:
    password = "p@ss:word/1"
    with LocalRedisCluster(password=password) as cluster:
        assert cluster.url.startswith("redis+cluster://:p%40ss%3Aword%2F1@127.0.0.1:")
        for port in cluster.ports:
            with pytest.raises(redis.AuthenticationError):
                redis.Redis(port=port, retry=NO_RETRY).ping()
            node = redis.Redis(port=port, password=password, decode_responses=True)
            assert node.config_get("masterauth") == {"masterauth": password}
            node.close()
        # The URL alone lets a cluster client reach every node, because the
        # keys below hash to slots on every primary.
        plain_url = "redis://" + cluster.url.removeprefix("redis+cluster://")
        client = RedisCluster.from_url(plain_url, decode_responses=True)
        try:
            keys = [f"key-{index}" for index in range(20)]
            owners = {client.get_node_from_key(key).port for key in keys}
            assert owners == set(cluster.ports)
            for key in keys:
                client.set(key, key)
            assert [client.get(key) for key in keys] == keys
        finally:
            client.close()


def test_restart_empties_server_same_port() -> None:
    with LocalRedis() as server:
        client = redis.Redis.from_url(server.url)
        client.set("kept", "no")
        first_pid = server.pid
        client.close()
        server.restart()
        assert server.pid != first_pid
        client = redis.Redis.from_url(server.url)
        assert client.get("kept") is None
        client.close()


def test_bad_option_fails_with_log() -> None:
    server = LocalRedis(options=["--no-such-option", "1"])
    try:
        with pytest.raises(LocalRedisError) as raised:
            server.start()
    finally:
        server.stop()
    message = str(raised.value)
    assert "exited with code 1 before it replied to PING" in message
    assert "no-such-option" in message


def test_missing_binary_names_it_and_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "")
    with pytest.raises(
        LocalRedisError, match="redis-server is not found on PATH; install"
    ):
        LocalRedis().start()


def test_cluster_needs_three_primaries() -> None:
    with pytest.raises(LocalRedisError, match="at least 3 primaries, not 2"):
        LocalRedisCluster(2)


def test_unstarted_objects_say_so() -> None:
    with pytest.raises(LocalRedisError, match=r"call start\(\)"):
        _ = LocalRedis().pid
    with pytest.raises(LocalRedisError, match=r"call start\(\)"):
        _ = LocalRedisCluster().url


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or shutil.which("setpriv") is None,
    reason="the parent-death signal needs Linux and util-linux's setpriv",
)
def test_server_stops_when_its_process_is_killed() -> None:
    script = (
        "import time\n"
        "from stem.local_redis import LocalRedis\n"
        "server = LocalRedis()\n"
        "server.start()\n"
        "print(server.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    owner = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True
    )
    assert owner.stdout is not None
    server_pid = int(owner.stdout.readline())
    os.kill(server_pid, 0)  # the server runs

    owner.kill()
    owner.wait()
    owner.stdout.close()

    deadline = time.monotonic() + 10
    while _alive(server_pid):
        assert time.monotonic() < deadline, f"redis-server {server_pid} still runs"
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A server that exited but is not yet reaped by init counts as gone.
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        return stat.read().split(") ", 1)[1][0] != "Z"
