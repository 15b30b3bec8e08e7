"""Stem: a workflow engine for Celery-style canvases."""

from pathlib import Path as _Path

# In a source checkout the layer folders (canvas/, engine/, drivers/) sit
# beside this folder. Adding the checkout to __path__ lets them import as
# stem.canvas and so on when the checkout shadows the installed package, as
# it does under python -m pytest. An installed wheel has no pyproject.toml
# beside it, so there this does nothing.
_checkout = _Path(__file__).resolve().parent.parent
if (_checkout / "pyproject.toml").is_file() and (_checkout / "canvas").is_dir():
    __path__.append(str(_checkout))

from stem.canvas import Canvas as Canvas
from stem.canvas import Chain as Chain
from stem.canvas import Chord as Chord
from stem.canvas import GraphSpec as GraphSpec
from stem.canvas import Group as Group
from stem.canvas import Signature as Signature
from stem.canvas import chain as chain
from stem.canvas import chord as chord
from stem.canvas import chunks as chunks
from stem.canvas import compile_canvas as compile_canvas
from stem.canvas import group as group
from stem.canvas import signature as signature
from stem.engine.app import App as App
from stem.engine.app import Task as Task
from stem.engine.records import is_error_record as is_error_record
from stem.engine.result import AsyncResult as AsyncResult
from stem.engine.result import ResultSet as ResultSet
from stem.engine.worker import Worker as Worker
