"""What ``import stem`` loads: a client that never draws a run or declares a
cron entry does not import the libraries only those need."""

from __future__ import annotations

import subprocess
import sys

import pytest

from stem.engine.errors import InvalidSchedule
from stem.engine.schedules import Cron


def modules_after(code: str) -> set[str]:
    """Return the top-level modules a fresh interpreter has loaded after ``code``."""
    script = f"{code}\nimport sys\nprint('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", script],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return {name.split(".")[0] for name in out.split()}


def test_import_skips_rich_and_croniter() -> None:
    loaded = modules_after("import stem")
    assert "stem" in loaded
    assert not {"rich", "croniter"} & loaded


def test_drawing_and_cron_load_them() -> None:
    loaded = modules_after(
        "from stem.engine.result import node_views\n"
        "from stem.engine.schedules import Cron\n"
        "node_views({})\n"
        "Cron('*/5 * * * *')"
    )
    assert {"rich", "croniter"} <= loaded


def test_cron_error_names_expression() -> None:
    with pytest.raises(InvalidSchedule, match=r"'61 \* \* \* \*' is invalid"):
        Cron("61 * * * *")
