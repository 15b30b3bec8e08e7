"""The root of Stem's exception tree and the errors of canvas definition.

The root lives in the lowest layer so that every other layer can subclass it
without importing upward. The whole tree, re-exported by ``stem.errors``::

    StemError
    ├── CanvasError                 the canvas is defined wrongly
    │   ├── NotSerializable         a value is not JSON-serialisable (TypeError)
    │   ├── InvalidOption           an option has a bad name or value (ValueError)
    │   ├── InvalidCanvas           a primitive is used in a way it cannot run
    │   └── UnboundCanvas           apply_async() on a canvas with no app
    ├── UndecodableValue            stored data is not a value Stem wrote (ValueError)
    └── StemInternalError           an invariant broke: a bug in Stem
"""

from __future__ import annotations


class StemError(Exception):
    """Base class of every error that Stem raises on purpose."""


class CanvasError(StemError):
    """Raised when a canvas is defined in a way that Stem cannot compile."""


class NotSerializable(CanvasError, TypeError):
    """Raised when an argument or option value is not JSON-serialisable.

    The message names the value's place in the canvas, for example
    ``group[3] > chain[1] > args[0]``, its type and what to pass instead.
    Nothing has been written to any store when this is raised.
    """

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        self.problem = problem
        # Both parts are the args, so the class can be rebuilt from stored args.
        super().__init__(path, problem)

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}" if self.path else self.problem


class InvalidOption(CanvasError, ValueError):
    """Raised when a signature option has an unknown name or a bad value."""


class InvalidCanvas(CanvasError, ValueError):
    """Raised when a primitive cannot run as built, such as an empty chain."""


class UnboundCanvas(CanvasError):
    """Raised by ``apply_async()`` on a canvas whose signatures carry no app.

    Build signatures with ``task.s()`` from an app's task, or submit the
    canvas through ``app.submit(canvas)``.
    """


class UndecodableValue(StemError, ValueError):
    """Raised when stored or received data does not decode as a Stem value.

    Seen when a message or a stored result was written by something other
    than Stem, or was damaged; the message names the part that failed.
    """


class StemInternalError(StemError):
    """Raised when one of Stem's own invariants breaks. This is a bug in Stem."""
