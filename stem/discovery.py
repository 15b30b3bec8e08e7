"""Finding a user's module, app and canvas factory from the command line.

A file path is imported under its module name (the file's stem), with its
folder put first on ``sys.path``. A dotted name is imported as it is. So
child processes and a separate worker started with the same ``-A`` value
register the same task names.
"""

from __future__ import annotations

import difflib
import importlib
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import click

from stem.engine.app import App


def import_target(target: str) -> ModuleType:
    """Import a module from a file path or a dotted module name."""
    if not target.strip():
        raise click.BadParameter(
            "The target is empty; pass a file such as flows.py or a module name."
        )
    path = Path(target)
    if target.endswith(".py") or path.is_file():
        if not path.is_file():
            raise click.BadParameter(f"File {target!r} is not found.")
        folder = str(path.resolve().parent)
        if folder not in sys.path:
            sys.path.insert(0, folder)
        name = path.stem
    else:
        name = target
        if "" not in sys.path and str(Path.cwd()) not in sys.path:
            sys.path.insert(0, str(Path.cwd()))
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as err:
        if err.name != name:
            raise
        raise click.BadParameter(
            f"Module {name!r} is not found; pass a file path such as "
            "examples/wordcount.py or a module importable from this folder."
        ) from err


def split_target(target: str) -> tuple[str, str | None]:
    """Split ``FILE_OR_MODULE[:ATTRIBUTE]``, keeping Windows drive letters whole."""
    head, sep, tail = target.rpartition(":")
    if sep and "/" not in tail and "\\" not in tail and len(head) > 1:
        if not tail.isidentifier():
            raise click.BadParameter(
                f"Target {target!r} has {tail!r} after ':', which is not a Python "
                "name; pass FILE_OR_MODULE or FILE_OR_MODULE:FACTORY."
            )
        return head, tail
    return target, None


def find_attribute(module: ModuleType, name: str) -> Any:
    """Return a module attribute, or fail listing the closest names."""
    if hasattr(module, name):
        return getattr(module, name)
    public = [item for item in dir(module) if not item.startswith("_")]
    close = difflib.get_close_matches(name, public, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise click.BadParameter(
        f"Module {module.__name__!r} has no attribute {name!r}.{hint}"
    )


def find_app(module: ModuleType, name: str | None = None) -> App:
    """Return the app named ``name``, or the module's only `App`."""
    if name is not None:
        found = find_attribute(module, name)
        if not isinstance(found, App):
            raise click.BadParameter(
                f"{module.__name__}:{name} is a {type(found).__name__}, not a stem.App."
            )
        return found
    apps = {key: value for key, value in vars(module).items() if isinstance(value, App)}
    if len(apps) == 1:
        return next(iter(apps.values()))
    if not apps:
        raise click.BadParameter(
            f"Module {module.__name__!r} defines no stem.App; create one with "
            "app = App() or name one with -A module:attribute."
        )
    raise click.BadParameter(
        f"Module {module.__name__!r} defines several apps ({', '.join(sorted(apps))}); "
        "choose one with -A module:attribute."
    )


def load_app(spec: str) -> App:
    """Load an app from ``-A``: ``module:attribute``, ``module`` or ``path.py``."""
    target, attribute = split_target(spec)
    return find_app(import_target(target), attribute)
