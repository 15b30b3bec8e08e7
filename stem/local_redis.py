"""Private Redis servers on loopback, for tests and benchmarks.

`LocalRedis` starts one ``redis-server`` on a free loopback port with
persistence off, in a temporary folder of its own, and stops it by its pid.
`LocalRedisCluster` starts several with cluster mode on and joins them into
a Redis Cluster of primaries with ``redis-cli --cluster create``. Both are
context managers. The pytest fixtures ``stem_redis_url`` and
``stem_redis_cluster_url`` (`stem.pytest_plugin`) start one per session.

Neither ever touches a server it did not start: each picks a port that
nothing listens on, and `stop` ends only its own process.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote

from stem.canvas.errors import StemError

#: Seconds to wait for a new redis-server to reply to PING.
START_TIMEOUT_S = 10.0
#: Seconds to wait for every node of a new Cluster to report cluster_state:ok.
CLUSTER_START_TIMEOUT_S = 30.0
#: Redis listens for the cluster bus on the client port plus this offset.
CLUSTER_BUS_OFFSET = 10000
#: Seconds `stop` waits for a terminated server to exit before killing it.
STOP_TIMEOUT_S = 10.0


class LocalRedisError(StemError):
    """A private Redis server or Cluster could not start."""


def free_loopback_port() -> int:
    """Return a loopback TCP port that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise LocalRedisError(
            f"{name} is not found on PATH; install Redis 7 or newer "
            "(for example `apt-get install redis-server`) and try again."
        )
    return path


class _StartStop:
    """A context manager that calls ``start`` on entry and ``stop`` on exit."""

    def start(self) -> str:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


class LocalRedis(_StartStop):
    """One redis-server of this process on a free loopback port.

    ``options`` are more ``redis-server`` arguments, such as
    ``["--slowlog-log-slower-than", "100"]``. With ``password`` the server
    requires it (``--requirepass``) and `url` carries it. On Linux, with
    ``stop_with_parent`` (the default) and util-linux's ``setpriv`` on PATH,
    the kernel sends the server SIGTERM when the thread that started it ends.
    So a process killed by SIGKILL or SIGTERM leaves no server behind. Start
    it from a thread that lives as long as the server is needed. The
    server keeps nothing on
    disk (``--save ''``, ``--appendonly no``), but a cluster node writes its
    cluster configuration into its folder.
    """

    def __init__(
        self,
        *,
        options: Sequence[str] = (),
        port: int | None = None,
        password: str | None = None,
        start_timeout_s: float = START_TIMEOUT_S,
        stop_with_parent: bool = True,
    ) -> None:
        self.port = port if port is not None else free_loopback_port()
        self.options = list(options)
        self.password = password
        self.start_timeout_s = start_timeout_s
        self.stop_with_parent = stop_with_parent
        credentials = f":{quote(password, safe='')}@" if password else ""
        self.url = f"redis://{credentials}127.0.0.1:{self.port}/0"
        self.workdir: str | None = None
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        """The server's process id; `start` must have run."""
        if self.process is None:
            raise LocalRedisError("This LocalRedis is not started; call start().")
        return self.process.pid

    @property
    def log_path(self) -> str:
        """The file that receives the server's log."""
        if self.workdir is None:
            raise LocalRedisError("This LocalRedis is not started; call start().")
        return os.path.join(self.workdir, "redis.log")

    def start(self) -> str:
        """Start the server, wait until it replies to PING and return its URL."""
        self.launch()
        self.wait_until_ready()
        return self.url

    def launch(self) -> None:
        """Start the server process without waiting for it."""
        binary = _binary("redis-server")
        if self.workdir is None:
            self.workdir = tempfile.mkdtemp(prefix=f"stem-redis-{self.port}-")
        command = [
            binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--dir", self.workdir,
            *(["--requirepass", self.password] if self.password else []),
            *self.options,
        ]  # fmt: skip
        setpriv = shutil.which("setpriv") if self.stop_with_parent else None
        if setpriv is not None and sys.platform.startswith("linux"):
            # setpriv sets the parent-death signal, then execs the server
            # under the same pid.
            command = [setpriv, "--pdeathsig", "TERM", "--", *command]
        with open(self.log_path, "ab") as log_file:
            self.process = subprocess.Popen(
                command, cwd=self.workdir, stdout=log_file, stderr=subprocess.STDOUT
            )

    def wait_until_ready(self) -> None:
        """Wait until the launched server replies to PING.

        Raises:
            LocalRedisError: the server exited, or did not reply within
                ``start_timeout_s``; the message contains its log.
        """
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        # redis-py retries a refused connection with backoff by default, which
        # would add seconds to each attempt while the server starts.
        client = redis.Redis(
            host="127.0.0.1",
            port=self.port,
            password=self.password,
            socket_timeout=5,
            retry=Retry(NoBackoff(), 0),
        )
        deadline = time.monotonic() + self.start_timeout_s
        try:
            while True:
                try:
                    client.ping()
                    return
                except redis.ConnectionError:
                    code = self.process.poll() if self.process else None
                    if code is not None:
                        problem = f"exited with code {code} before it replied to PING"
                    elif time.monotonic() > deadline:
                        problem = (
                            f"did not reply to PING within {self.start_timeout_s} s"
                        )
                    else:
                        time.sleep(0.05)
                        continue
                    raise LocalRedisError(
                        f"redis-server on port {self.port} {problem}. Its log "
                        f"({self.log_path}): {self._read_log()}"
                    ) from None
        finally:
            client.close()

    def stop(self, *, remove_files: bool = True) -> None:
        """Stop the server (terminate, then kill after a grace period)."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if remove_files and self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def restart(self) -> None:
        """Kill the server at once and start a new one on the same port.

        Use it when the server cannot be stopped cleanly, for example while
        a script that has written runs past ``lua-time-limit``. The new
        server starts empty.
        """
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None
        self.start()

    def _read_log(self) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as log:
                return log.read()
        except OSError as err:
            return f"(unreadable: {err})"


def _cluster_state(client: Any) -> str:
    """Return the ``cluster_state`` field of CLUSTER INFO, which redis-py parses."""
    info: dict[str, Any] = client.execute_command("CLUSTER INFO")
    state = info.get("cluster_state", b"")
    return state.decode() if isinstance(state, bytes) else str(state)


class LocalRedisCluster(_StartStop):
    """A Redis Cluster of ``primaries`` private nodes on loopback, no replicas.

    Each node is a `LocalRedis` with cluster mode on, on a port whose
    cluster bus port (the port plus 10,000) is free too. `url` is the
    ``redis+cluster://`` URL of the first node. With ``password`` every node
    requires it (``--requirepass``) and gives it to the others
    (``--masterauth``, which a replica added later would need), and `url`
    carries it.
    """

    def __init__(
        self,
        primaries: int = 3,
        *,
        password: str | None = None,
        start_timeout_s: float = CLUSTER_START_TIMEOUT_S,
    ) -> None:
        if primaries < 3:
            raise LocalRedisError(
                f"A Redis Cluster needs at least 3 primaries, not {primaries}; "
                "pass primaries=3 or more."
            )
        self.primaries = primaries
        self.password = password
        self.start_timeout_s = start_timeout_s
        self.nodes: list[LocalRedis] = []

    @property
    def url(self) -> str:
        """The ``redis+cluster://`` URL of the first node; `start` must have run."""
        if not self.nodes:
            raise LocalRedisError(
                "This LocalRedisCluster is not started; call start()."
            )
        credentials = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"redis+cluster://{credentials}127.0.0.1:{self.nodes[0].port}"

    @property
    def ports(self) -> list[int]:
        """The client ports of the nodes."""
        return [node.port for node in self.nodes]

    def start(self) -> str:
        """Start the nodes, join them into a Cluster and return its URL."""
        cli = _binary("redis-cli")
        try:
            used_ports: set[int] = set()
            for _ in range(self.primaries):
                port = self._free_node_port(used_ports)
                used_ports.update((port, port + CLUSTER_BUS_OFFSET))
                masterauth = ["--masterauth", self.password] if self.password else []
                node = LocalRedis(
                    port=port,
                    password=self.password,
                    options=[
                        "--cluster-enabled", "yes",
                        "--cluster-config-file", "nodes.conf",
                        "--cluster-node-timeout", "5000",
                        *masterauth,
                    ],
                )  # fmt: skip
                self.nodes.append(node)
                node.launch()
            for node in self.nodes:
                node.wait_until_ready()
            self._create(cli)
        except BaseException:
            self.stop()
            raise
        return self.url

    def stop(self) -> None:
        """Stop every node."""
        for node in self.nodes:
            node.stop()
        self.nodes = []

    @staticmethod
    def _free_node_port(used_ports: set[int]) -> int:
        for _ in range(200):
            port = free_loopback_port()
            bus = port + CLUSTER_BUS_OFFSET
            if port in used_ports or bus in used_ports or bus > 65535:
                continue
            if _port_is_free(bus):
                return port
        raise LocalRedisError(
            "Found no free loopback port whose cluster bus port (plus "
            f"{CLUSTER_BUS_OFFSET}) is free too; free some ports and try again."
        )

    def _create(self, cli: str) -> None:
        """Assign the slots over the nodes and wait for cluster_state:ok on each."""
        import redis

        # redis-cli reads the password from REDISCLI_AUTH, which keeps it
        # out of the process list that -a would put it in.
        environment = dict(os.environ)
        environment.pop("REDISCLI_AUTH", None)
        if self.password:
            environment["REDISCLI_AUTH"] = self.password
        create = subprocess.run(
            [
                cli,
                "--cluster",
                "create",
                *(f"127.0.0.1:{port}" for port in self.ports),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            capture_output=True,
            text=True,
            timeout=self.start_timeout_s,
            check=False,
            env=environment,
        )
        if create.returncode != 0:
            raise LocalRedisError(
                f"redis-cli --cluster create failed with code {create.returncode}: "
                f"{create.stdout} {create.stderr}"
            )
        deadline = time.monotonic() + self.start_timeout_s
        for port in self.ports:
            client = redis.Redis(
                host="127.0.0.1", port=port, password=self.password, socket_timeout=5
            )
            try:
                while _cluster_state(client) != "ok":
                    if time.monotonic() > deadline:
                        raise LocalRedisError(
                            f"Cluster node on port {port} did not reach "
                            f"cluster_state:ok within {self.start_timeout_s} s."
                        )
                    time.sleep(0.05)
            finally:
                client.close()
