"""The three systems under test: how to start their workers and clients."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import IO

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


@dataclass
class Settings:
    """Paths of the systems' programs, and each worker's concurrency."""

    stem_python: str = sys.executable
    celery_python: str = "/work/venvs/celery/bin/python"
    node: str = shutil.which("node") or "node"
    #: Stem's best of 4 to 128 threads in the no-op and 10,000-member chord
    #: scenarios (bench/results-20261205-concurrency/), as BullMQ runs at its
    #: best concurrency. A larger batch per fetch is what the threads buy.
    stem_concurrency: int = 64
    stem_pool: str = "threads"
    celery_concurrency: int = 2
    celery_pool: str = "prefork"
    bullmq_concurrency: int = 50


class Worker:
    """A worker process with its log in a temporary file."""

    def __init__(self, command: list[str], cwd: Path, env: dict[str, str]) -> None:
        self.log_path = Path(
            os.environ.get("TMPDIR", "/tmp"), f"stem-bench-worker-{os.getpid()}.log"
        )
        self._log: IO[str] = open(self.log_path, "w")  # noqa: SIM115
        self.process = subprocess.Popen(
            command,
            cwd=cwd,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> str:
        """Stop warm (SIGTERM), then at once after 20 s; return the log."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                # The worker's process group contains its pool children too.
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        text = self.log()
        self._log.close()
        self.log_path.unlink(missing_ok=True)
        return text


class System:
    """One system under test."""

    name = ""
    version = ""

    def __init__(self, settings: Settings, url: str) -> None:
        self.settings = settings
        self.url = url

    def worker_command(self) -> tuple[list[str], Path]:
        raise NotImplementedError

    def client_command(
        self, scenario: str, count: int, cap_s: float
    ) -> tuple[list[str], Path]:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        return {**os.environ, "BENCH_REDIS_URL": self.url, "PYTHONUNBUFFERED": "1"}

    def concurrency(self) -> str:
        raise NotImplementedError

    def start_worker(self) -> Worker:
        command, cwd = self.worker_command()
        return Worker(command, cwd, self.env())


class Stem(System):
    name = "stem"

    def __init__(self, settings: Settings, url: str) -> None:
        super().__init__(settings, url)
        # The Stem measured is the one that the Stem Python imports, which
        # is this checkout only when it is installed from here.
        found = subprocess.run(
            [settings.stem_python, "-c", "import stem; print(stem.__file__)"],
            capture_output=True,
            text=True,
            cwd="/",
            check=False,
        ).stdout.strip()
        if found.startswith(str(ROOT)):
            self.version = f"commit {_git_commit()}"
        else:
            self.version = f"installed at {found or 'an unknown path'}"

    def worker_command(self) -> tuple[list[str], Path]:
        stem_script = Path(self.settings.stem_python).with_name("stem")
        return [
            str(stem_script), "-l", "info", "worker",
            "-A", str(HERE / "stem_tasks.py"),
            "--url", self.url,
            "-c", str(self.settings.stem_concurrency),
            "--pool", self.settings.stem_pool,
        ], ROOT  # fmt: skip

    def client_command(
        self, scenario: str, count: int, cap_s: float
    ) -> tuple[list[str], Path]:
        return [
            self.settings.stem_python, str(HERE / "stem_client.py"), scenario,
            "--url", self.url, "--count", str(count), "--cap", str(cap_s),
        ], ROOT  # fmt: skip

    def concurrency(self) -> str:
        return (
            f"one `stem worker` process, pool {self.settings.stem_pool}, "
            f"concurrency {self.settings.stem_concurrency}"
        )


class Celery(System):
    name = "celery"

    def __init__(self, settings: Settings, url: str) -> None:
        super().__init__(settings, url)
        self.version = _run([settings.celery_python, "-m", "celery", "--version"])

    def worker_command(self) -> tuple[list[str], Path]:
        return [
            self.settings.celery_python, "-m", "celery", "-A", "celery_app",
            "worker", "-P", self.settings.celery_pool,
            "-c", str(self.settings.celery_concurrency),
            "--without-gossip", "--without-mingle", "--without-heartbeat",
            "-l", "warning",
        ], HERE  # fmt: skip

    def client_command(
        self, scenario: str, count: int, cap_s: float
    ) -> tuple[list[str], Path]:
        return [
            self.settings.celery_python, str(HERE / "celery_client.py"), scenario,
            "--url", self.url, "--count", str(count), "--cap", str(cap_s),
        ], HERE  # fmt: skip

    def concurrency(self) -> str:
        return (
            f"one `celery worker` with pool {self.settings.celery_pool}, "
            f"concurrency {self.settings.celery_concurrency}"
        )


class BullMQ(System):
    name = "bullmq"

    def __init__(self, settings: Settings, url: str) -> None:
        super().__init__(settings, url)
        package = HERE / "bullmq" / "node_modules" / "bullmq" / "package.json"
        if not package.is_file():
            raise SystemExit(
                "BullMQ is not installed; run `npm ci` in bench/bullmq and run "
                "the benchmark again, or leave it out with --systems stem,celery."
            )
        self.version = json.loads(package.read_text())["version"]

    def worker_command(self) -> tuple[list[str], Path]:
        return [
            self.settings.node, "bench.js", "worker", self.url,
            str(self.settings.bullmq_concurrency),
        ], HERE / "bullmq"  # fmt: skip

    def client_command(
        self, scenario: str, count: int, cap_s: float
    ) -> tuple[list[str], Path]:
        return [
            self.settings.node, "bench.js", scenario, self.url, str(count), str(cap_s),
        ], HERE / "bullmq"  # fmt: skip

    def concurrency(self) -> str:
        return (
            "one Node.js worker process, Worker concurrency "
            f"{self.settings.bullmq_concurrency}"
        )


SYSTEMS: dict[str, type[System]] = {"stem": Stem, "celery": Celery, "bullmq": BullMQ}


def _run(command: list[str]) -> str:
    try:
        return subprocess.run(
            command, capture_output=True, text=True, check=True, timeout=60
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError) as err:
        return f"unknown ({err})"


def _git_commit() -> str:
    commit = _run(["git", "-C", str(ROOT), "rev-parse", "--short=12", "HEAD"])
    # Changes to the benchmark or the docs do not change what is measured.
    dirty = _run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no",
         "--", ".", ":!bench", ":!docs"]
    )  # fmt: skip
    return commit + ("+uncommitted changes" if dirty else "")
