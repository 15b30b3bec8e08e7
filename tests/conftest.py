"""Shared pytest configuration for the whole test suite."""

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator

import pytest
from hypothesis import settings

# HYPOTHESIS_PROFILE selects the profile. "dev" (the default) keeps local runs
# quick, and .ci/run sets "ci". An unknown name fails the session at start.
settings.register_profile("dev", max_examples=25)
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
