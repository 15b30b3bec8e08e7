"""Shared pytest configuration for the whole test suite."""

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import settings

# HYPOTHESIS_PROFILE selects the profile. "dev" (the default) keeps local runs
# quick, and .ci/run sets "ci". An unknown name fails the session at start.
# No deadline in either profile: speed is measured in bench/, and a loaded
# machine must not fail a test that is only slow.
settings.register_profile("dev", max_examples=25, deadline=None)
settings.register_profile("ci", max_examples=500, deadline=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


# -- a private Redis server ----------------------------------------------------

#: Seconds to wait for a private redis-server to reply to PING.
REDIS_START_TIMEOUT_S = 10.0


def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """Start a private redis-server on a free loopback port and yield its URL.

    The server keeps nothing on disk and is stopped by its pid at the end of
    the session. Without a ``redis-server`` binary the fixture fails the test,
    because a suite that skips Redis quietly would pass without testing it.
    """
    import redis

    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail(
            "redis-server is not found on PATH; install Redis 7 to run the "
            "Redis tests. They never skip."
        )
    workdir = tempfile.mkdtemp(prefix="stem-redis-")
    port = _free_loopback_port()
    command = [
        binary,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--daemonize",
        "no",
        "--dir",
        workdir,
    ]
    log_path = os.path.join(workdir, "redis.log")
    with open(log_path, "wb") as log_file:
        server = subprocess.Popen(
            command, cwd=workdir, stdout=log_file, stderr=subprocess.STDOUT
        )
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    try:
        deadline = time.monotonic() + REDIS_START_TIMEOUT_S
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if server.poll() is not None or time.monotonic() > deadline:
                    with open(log_path, encoding="utf-8", errors="replace") as log:
                        detail = log.read()
                    pytest.fail(
                        f"redis-server on port {port} did not answer PING within "
                        f"{REDIS_START_TIMEOUT_S} s. Its log: {detail}"
                    )
                time.sleep(0.05)
        yield url
    finally:
        client.close()
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        shutil.rmtree(workdir, ignore_errors=True)


# -- a private Redis Cluster ---------------------------------------------------

#: Primaries of the test Cluster.
CLUSTER_PRIMARIES = 3
#: Seconds to wait for every node of the test Cluster to report cluster_state:ok.
CLUSTER_START_TIMEOUT_S = 30.0
#: Redis listens for the cluster bus on the client port plus this offset.
CLUSTER_BUS_OFFSET = 10000


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _free_cluster_port(taken: set[int]) -> int:
    """Return a free loopback port whose cluster bus port is free too."""
    for _ in range(200):
        port = _free_loopback_port()
        bus = port + CLUSTER_BUS_OFFSET
        if port in taken or bus in taken or bus > 65535:
            continue
        if _port_is_free(bus):
            return port
    pytest.fail("Found no free loopback port pair for a Redis Cluster node.")


def _cluster_state(client: Any) -> str:
    """Return the ``cluster_state`` field of CLUSTER INFO, which redis-py parses."""
    info: dict[str, Any] = client.execute_command("CLUSTER INFO")
    state = info.get("cluster_state", b"")
    return state.decode() if isinstance(state, bytes) else str(state)


def _read_log(path: str) -> str:
    with open(path, encoding="utf-8", errors="replace") as log:
        return log.read()


def _start_cluster_node(
    binary: str, port: int, workdir: str
) -> subprocess.Popen[bytes]:
    command = [
        binary,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--cluster-enabled",
        "yes",
        "--cluster-config-file",
        os.path.join(workdir, "nodes.conf"),
        "--cluster-node-timeout",
        "5000",
        "--save",
        "",
        "--appendonly",
        "no",
        "--daemonize",
        "no",
        "--dir",
        workdir,
    ]
    with open(os.path.join(workdir, "redis.log"), "wb") as log_file:
        return subprocess.Popen(
            command, cwd=workdir, stdout=log_file, stderr=subprocess.STDOUT
        )


def _wait_for_ping(
    client: Any, server: subprocess.Popen[bytes], port: int, workdir: str
) -> None:
    import redis

    deadline = time.monotonic() + REDIS_START_TIMEOUT_S
    while True:
        try:
            client.ping()
            return
        except redis.ConnectionError:
            if server.poll() is not None or time.monotonic() > deadline:
                detail = _read_log(os.path.join(workdir, "redis.log"))
                pytest.fail(
                    f"Cluster node on port {port} did not answer PING within "
                    f"{REDIS_START_TIMEOUT_S} s. Its log: {detail}"
                )
            time.sleep(0.05)


def _create_cluster(cli_binary: str, ports: list[int], clients: list[Any]) -> None:
    """Assign the slots over the nodes and wait until each reports cluster_state:ok."""
    create = subprocess.run(
        [
            cli_binary,
            "--cluster",
            "create",
            *(f"127.0.0.1:{port}" for port in ports),
            "--cluster-replicas",
            "0",
            "--cluster-yes",
        ],
        capture_output=True,
        text=True,
        timeout=CLUSTER_START_TIMEOUT_S,
        check=False,
    )
    if create.returncode != 0:
        pytest.fail(
            f"redis-cli --cluster create failed with code {create.returncode}: "
            f"{create.stdout} {create.stderr}"
        )
    deadline = time.monotonic() + CLUSTER_START_TIMEOUT_S
    for port, client in zip(ports, clients, strict=True):
        while _cluster_state(client) != "ok":
            if time.monotonic() > deadline:
                pytest.fail(
                    f"Cluster node on port {port} did not reach cluster_state:ok "
                    f"within {CLUSTER_START_TIMEOUT_S} s."
                )
            time.sleep(0.05)


@pytest.fixture(scope="session")
def redis_cluster_url() -> Iterator[str]:
    """Start a private 3-primary Redis Cluster on loopback and yield its URL.

    Each node gets its own temporary folder and keeps nothing on disk but its
    cluster configuration. The nodes are stopped by pid at the end of the
    session. Like `redis_url`, the fixture fails when it cannot start.
    """
    import redis

    server_binary = shutil.which("redis-server")
    cli_binary = shutil.which("redis-cli")
    if server_binary is None or cli_binary is None:
        pytest.fail(
            "redis-server or redis-cli is not found on PATH; install Redis 7 to "
            "run the Redis Cluster tests. They never skip."
        )
    servers: list[subprocess.Popen[bytes]] = []
    workdirs: list[str] = []
    clients: list[redis.Redis] = []
    ports: list[int] = []
    try:
        for _ in range(CLUSTER_PRIMARIES):
            port = _free_cluster_port(set(ports))
            ports.append(port)
            workdirs.append(tempfile.mkdtemp(prefix=f"stem-cluster-{port}-"))
            servers.append(_start_cluster_node(server_binary, port, workdirs[-1]))
            clients.append(redis.Redis(host="127.0.0.1", port=port))
        for port, server, client, workdir in zip(
            ports, servers, clients, workdirs, strict=True
        ):
            _wait_for_ping(client, server, port, workdir)
        _create_cluster(cli_binary, ports, clients)
        yield f"redis+cluster://127.0.0.1:{ports[0]}"
    finally:
        for client in clients:
            client.close()
        for server in servers:
            server.terminate()
        for server in servers:
            try:
                server.wait(10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        for workdir in workdirs:
            shutil.rmtree(workdir, ignore_errors=True)


# -- Redis configurations that the Redis tests run on ---------------------------


@dataclass(frozen=True)
class RedisTarget:
    """One Redis configuration: its URL and the driver settings it needs."""

    name: str
    url: str
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def cluster(self) -> bool:
        """True for a Redis Cluster."""
        return self.url.startswith("redis+cluster://")

    def client(self) -> Any:
        """Return a plain client of the target, replies decoded to str."""
        import redis
        from redis.cluster import RedisCluster

        if self.cluster:
            plain_url = "redis://" + self.url.removeprefix("redis+cluster://")
            return RedisCluster.from_url(plain_url, decode_responses=True)
        return redis.Redis.from_url(self.url, decode_responses=True)


#: Names of the Redis configurations, in the order tests run on them.
REDIS_TARGETS = ("redis", "redis-3p", "cluster")


def redis_target_for(name: str, request: pytest.FixtureRequest) -> RedisTarget:
    """Start (once per session) and return the Redis configuration ``name``.

    ``redis`` is a single node with one partition, ``redis-3p`` the same node
    with three partitions and ``cluster`` the 3-primary Redis Cluster with
    the default two partitions per primary.
    """
    if name == "cluster":
        return RedisTarget(name, request.getfixturevalue("redis_cluster_url"))
    url: str = request.getfixturevalue("redis_url")
    if name == "redis-3p":
        return RedisTarget(name, url, {"partitions": 3})
    return RedisTarget(name, url)


@pytest.fixture
def redis_targets(request: pytest.FixtureRequest) -> Callable[[str], RedisTarget]:
    """Return `redis_target_for` bound to the test, for fixtures in other folders."""
    return lambda name: redis_target_for(name, request)


@pytest.fixture(params=REDIS_TARGETS)
def redis_target(request: pytest.FixtureRequest) -> RedisTarget:
    """Each Redis configuration in turn: one partition, three, and the Cluster."""
    return redis_target_for(request.param, request)
