"""The errors that wrap a failed script call name the run, and the node if any."""

from __future__ import annotations

import redis

from stem.drivers.redis.scripts import script_error


def test_submit_error_names_run_only() -> None:
    err = redis.ResponseError(
        "OOM command not allowed. script: ab12, on @user_script:445."
    )

    wrapped = script_error("submit", err, "r1", "")

    assert str(wrapped) == (
        "Script submit failed for run r1: OOM command not allowed. script: ab12, "
        "on @user_script:445"
    )


def test_report_error_names_run_and_node() -> None:
    wrapped = script_error("complete", redis.ConnectionError("gone"), "r1", "3")

    assert str(wrapped) == (
        "Redis failed while running script complete for run r1 node 3: gone"
    )
