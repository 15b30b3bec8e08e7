"""Worker options that cannot work are rejected when the worker is made."""

from __future__ import annotations

import pytest

from stem import App


@pytest.mark.parametrize("queues", [[""], ["default", " "]])
def test_worker_blank_queue_rejected(queues: list[str]) -> None:
    app = App("memory://")

    with pytest.raises(ValueError, match="is invalid; pass queue names"):
        app.worker(queues=queues)
