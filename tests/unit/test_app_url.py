"""The broker URL an `App` takes: its argument, else STEM_URL, else memory://."""

from __future__ import annotations

import pytest

from stem import App


def test_app_reads_stem_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STEM_URL", "memory://from-env")
    app = App()
    assert app.url == "memory://from-env"
    assert App(url=None).url == "memory://from-env"


def test_app_argument_overrides_stem_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STEM_URL", "memory://from-env")
    assert App("memory://given").url == "memory://given"


def test_app_default_without_stem_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STEM_URL", raising=False)
    assert App().url == "memory://"
    monkeypatch.setenv("STEM_URL", "")
    assert App().url == "memory://"
