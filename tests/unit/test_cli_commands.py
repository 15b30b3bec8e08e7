"""The operator commands in process, with click's CliRunner: usage and errors."""

from __future__ import annotations

import io
import textwrap
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from rich.console import Console

from stem import App
from stem.canvas.primitives import Signature
from stem.cli import _finish, main
from stem.commands import common
from stem.commands.common import EXIT_USAGE, parse_age

SHARED_COMMANDS = [
    ["runs", "ls"],
    ["runs", "show", "RUN"],
    ["runs", "cancel", "RUN"],
    ["graph", "show", "RUN"],
    ["queues", "ls"],
    ["queues", "purge", "default", "-f"],
    ["dlq", "ls"],
    ["dlq", "show", "1-0"],
    ["dlq", "replay", "1-0"],
    ["dlq", "purge", "--all", "-f"],
    ["inspect"],
]


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.delenv("STEM_URL", raising=False)
    return CliRunner()


@pytest.mark.parametrize("command", SHARED_COMMANDS, ids=" ".join)
def test_memory_url_rejected(runner: CliRunner, command: list[str]) -> None:
    result = runner.invoke(main, [*command, "--url", "memory://"])

    assert result.exit_code == EXIT_USAGE, result.output
    assert "needs a shared store" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    "command", [["beat"], ["submit", "flows:nightly"]], ids=" ".join
)
def test_missing_app_is_usage_error(runner: CliRunner, command: list[str]) -> None:
    # Nothing listens on port 1, so only the -A check can give exit 2 first.
    result = runner.invoke(main, [*command, "--url", "redis://127.0.0.1:1/0"])

    assert result.exit_code == EXIT_USAGE, result.output
    assert "Missing option '-A' / '--app'" in result.output


@pytest.mark.parametrize("command", SHARED_COMMANDS, ids=" ".join)
def test_missing_url_is_usage_error(runner: CliRunner, command: list[str]) -> None:
    result = runner.invoke(main, command)

    assert result.exit_code == EXIT_USAGE, result.output
    assert "No broker URL is given" in result.output


def test_stem_url_variable_used(runner: CliRunner) -> None:
    result = runner.invoke(main, ["runs", "ls"], env={"STEM_URL": "memory://"})

    assert result.exit_code == EXIT_USAGE
    assert "memory://" in result.output


def test_url_flag_beats_variable(runner: CliRunner) -> None:
    result = runner.invoke(
        main,
        ["runs", "ls", "--url", "memory://flag"],
        env={"STEM_URL": "redis://127.0.0.1:1/0"},
    )

    assert result.exit_code == EXIT_USAGE
    assert "memory://flag" in result.output


def test_app_url_used_last(runner: CliRunner, tmp_path: Path) -> None:
    (tmp_path / "appmod.py").write_text(
        "from stem import App\napp = App('memory://app')\n"
    )
    app_path = str(tmp_path / "appmod.py")

    own = runner.invoke(main, ["runs", "ls", "-A", app_path])
    overridden = runner.invoke(
        main, ["runs", "ls", "-A", app_path], env={"STEM_URL": "memory://env"}
    )

    assert "memory://app" in own.output
    assert "memory://env" in overridden.output


def test_app_miss_lists_close_names(runner: CliRunner, tmp_path: Path) -> None:
    (tmp_path / "named.py").write_text("from stem import App\nmy_app = App()\n")

    result = runner.invoke(main, ["runs", "ls", "-A", f"{tmp_path / 'named.py'}:my_ap"])

    assert result.exit_code == EXIT_USAGE
    assert "Did you mean my_app?" in result.output


def test_submit_needs_factory(runner: CliRunner, tmp_path: Path) -> None:
    (tmp_path / "subflows.py").write_text(
        textwrap.dedent(
            """
            from stem import App
            app = App("redis://127.0.0.1:1/0")
            """
        )
    )
    path = str(tmp_path / "subflows.py")

    result = runner.invoke(main, ["submit", "-A", path, path])

    assert result.exit_code == EXIT_USAGE
    assert "names no factory" in result.output


def test_submit_deep_argument_rejected(runner: CliRunner, tmp_path: Path) -> None:
    path = tmp_path / "deep_flows.py"
    path.write_text(UNREACHABLE_FLOWS + "\n\ndef flow(x):\n    return one.s()\n")
    deep = "[" * 5000 + "]" * 5000

    result = runner.invoke(main, ["submit", "-A", str(path), f"{path}:flow", deep])

    assert result.exit_code == EXIT_USAGE, result.output
    assert "nested too deep" in result.output
    assert "Traceback" not in result.output


def test_unreachable_broker_is_one_sentence(runner: CliRunner) -> None:
    url = "redis://user:hunter2@127.0.0.1:1/0"

    result = runner.invoke(main, ["runs", "ls", "--url", url])

    assert result.exit_code == common.EXIT_UNAVAILABLE, result.output
    # The driver connects when it is made, to load its scripts.
    assert result.output.startswith("Error: Could not connect to Redis at")
    assert "check that a Redis server listens" in result.output
    assert "127.0.0.1:1" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert "hunter2" not in result.output


UNREACHABLE_FLOWS = """
from stem import App

app = App("redis://user:hunter2@127.0.0.1:1/0")


@app.task(name="one")
def one():
    return 1


def pipeline():
    return one.s()
"""


@pytest.mark.parametrize(
    "command",
    [["worker", "-A", "{path}"], ["run", "{path}", "--no-worker"]],
    ids=lambda command: command[0],
)
def test_unreachable_broker_stops_command(
    runner: CliRunner, tmp_path: Path, command: list[str]
) -> None:
    path = tmp_path / "unreachable_flows.py"
    path.write_text(UNREACHABLE_FLOWS)

    args = [part.format(path=path) for part in command]
    result = runner.invoke(main, args)

    assert result.exit_code == common.EXIT_UNAVAILABLE, result.output
    assert result.output.startswith("Error: Could not connect to Redis at")
    assert len(result.output.strip().splitlines()) == 1
    assert "hunter2" not in result.output


@pytest.mark.parametrize("queues", [",", "default,", " "])
def test_worker_blank_queue_rejected(
    runner: CliRunner, tmp_path: Path, queues: str
) -> None:
    path = tmp_path / "queue_flows.py"
    path.write_text(UNREACHABLE_FLOWS)

    # The flows' broker is unreachable, so a command that got past the -Q
    # check would exit 6 instead.
    for command in (["worker", "-A", str(path)], ["run", str(path), "--worker"]):
        result = runner.invoke(main, [*command, "-Q", queues])

        assert result.exit_code == EXIT_USAGE, result.output
        assert "Invalid value for -Q" in result.output
        assert "names a blank queue" in result.output
        assert "Traceback" not in result.output


def test_traceback_flag_shows_traceback(runner: CliRunner) -> None:
    result = runner.invoke(
        main, ["--traceback", "runs", "ls", "--url", "redis://127.0.0.1:1/0"]
    )

    assert result.exit_code == 1
    assert result.exc_info is not None
    assert type(result.exception).__name__ == "DriverError"


def test_exit_codes_documented() -> None:
    doc = common.__doc__ or ""
    names = [name for name in vars(common) if name.startswith("EXIT_")]

    assert len(names) == 9
    for name in names:
        assert name in doc
        assert f"{getattr(common, name)} " in doc


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90.0), ("90s", 90.0), ("15m", 900.0), ("2h", 7200.0), ("1.5d", 129600.0)],
)
def test_parse_age(text: str, seconds: float) -> None:
    assert parse_age(text) == seconds


@pytest.mark.parametrize("text", ["", "h", "-1m", "3 years"])
def test_parse_age_rejects(text: str) -> None:
    with pytest.raises(click.BadParameter, match="is invalid"):
        parse_age(text)


def test_unknown_scheme_is_usage_error(runner: CliRunner) -> None:
    result = runner.invoke(main, ["runs", "ls", "--url", "nosuch://host/0"])

    assert result.exit_code == EXIT_USAGE, result.output
    assert "No driver handles nosuch://" in result.output


def test_help_lists_exit_codes(runner: CliRunner) -> None:
    result = runner.invoke(main, ["--help"])
    text = " ".join(result.output.split())

    for name in (name for name in vars(common) if name.startswith("EXIT_")):
        assert f"{getattr(common, name)} " in text, name
    assert "stem graph show $RUN --watch" in text


PURGE_COMMANDS = [["dlq", "purge", "--all"], ["queues", "purge", "default"]]


@pytest.mark.parametrize("command", PURGE_COMMANDS, ids=" ".join)
def test_purge_without_tty_rejected(runner: CliRunner, command: list[str]) -> None:
    # Nothing listens on port 1: a purge that went ahead would exit 6.
    result = runner.invoke(main, [*command, "--url", "redis://127.0.0.1:1/0"])

    assert result.exit_code == EXIT_USAGE, result.output
    assert "Aborted!" not in result.output
    assert "pass --yes" in result.output
    assert "[y/N]" not in result.output
    assert len(result.output.strip().splitlines()) == 1


@pytest.mark.parametrize("command", PURGE_COMMANDS, ids=" ".join)
def test_purge_on_tty_asks_first(
    runner: CliRunner, command: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(common, "stdin_is_terminal", lambda: True)

    result = runner.invoke(
        main, [*command, "--url", "redis://127.0.0.1:1/0"], input="n\n"
    )

    assert "[y/N]" in result.output
    assert result.exit_code == 1, result.output


@pytest.mark.parametrize("flag", ["--yes", "-y", "--force", "-f"])
def test_purge_yes_skips_question(runner: CliRunner, flag: str) -> None:
    result = runner.invoke(
        main, ["dlq", "purge", "--all", flag, "--url", "redis://127.0.0.1:1/0"]
    )

    # It went on to the broker, which is not there.
    assert result.exit_code == common.EXIT_UNAVAILABLE, result.output
    assert "[y/N]" not in result.output


def test_missing_stdin_is_no_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", None)

    assert common.stdin_is_terminal() is False


def test_app_before_command_explained(runner: CliRunner) -> None:
    # Celery takes -A before the subcommand (celery -A proj worker), Stem after.
    result = runner.invoke(main, ["-A", "proj.tasks", "worker", "-c", "2"])

    assert result.exit_code == EXIT_USAGE
    assert "-A comes after the command" in result.output
    assert "stem worker -A proj.tasks -c 2" in result.output


def test_app_before_subcommand_moved(runner: CliRunner) -> None:
    result = runner.invoke(main, ["-l", "info", "-A", "proj", "runs", "ls"])

    assert result.exit_code == EXIT_USAGE
    assert "Run: stem -l info runs ls -A proj" in result.output


#: A task module path longer than 80 columns, as deep project paths are.
_LONG_PATH = "/srv/" + "deep_project_folder/" * 4 + "flows.py"


@pytest.mark.parametrize("print_traceback", [True, False])
def test_finish_traceback_when_requested(print_traceback: bool) -> None:
    # With a worker in another process, stem run prints the failed node's
    # traceback itself. At 80 columns each frame's path must stay on one line.
    namespace: dict[str, object] = {}
    source = "def boom(x):\n    raise ValueError('boom on purpose')\n"
    exec(compile(source, _LONG_PATH, "exec"), namespace)
    app = App("memory://")
    app.task(name="boom")(namespace["boom"])
    with app.worker(concurrency=1):
        result = app.submit(Signature("boom", (1,)))
        result.get(10, propagate=False)
    output = io.StringIO()
    console = Console(file=output, width=80)

    code = _finish(result, result.snapshot(), console, print_traceback=print_traceback)

    assert code == 1
    frame = f'File "{_LONG_PATH}", line 2, in boom'
    assert (frame in output.getvalue()) is print_traceback
    assert "failed: ValueError: boom on purpose" in output.getvalue()
