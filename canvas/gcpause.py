"""Pausing Python's cyclic garbage collector while large specs are built.

Compiling, serialising or parsing a spec of 100,000 nodes allocates millions
of objects that all stay alive, so the collector's generation-2 passes, each
of which walks every tracked object, run again and again and find nothing.
On CPython 3.11 that was about 60% of the time of compiling and parsing a
100,000-member chord (bench/profile/chord.py). Reference counting still frees
everything as usual while the collector is paused; only cycles wait for it.
"""

from __future__ import annotations

import gc
import threading
from types import TracebackType

_lock = threading.Lock()
_depth = 0
_paused_by_us = False


class _PausedGc:
    """The context manager that `paused_gc` returns; it keeps no state itself.

    A class rather than a generator with ``contextmanager``, because the
    submit of a one-node run enters it about 16 times. An empty block costs
    0.9 us here against 2.1 us with ``contextmanager`` (CPython 3.11).
    """

    __slots__ = ()

    def __enter__(self) -> None:
        global _depth, _paused_by_us
        with _lock:
            if _depth == 0:
                _paused_by_us = gc.isenabled()
                gc.disable()
            _depth += 1

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        global _depth, _paused_by_us
        with _lock:
            _depth -= 1
            if _depth == 0 and _paused_by_us:
                _paused_by_us = False
                gc.enable()


_PAUSED_GC = _PausedGc()


def paused_gc() -> _PausedGc:
    """Pause the cyclic collector for the block, across threads and nesting.

    The collector resumes when the last block open in any thread ends, and
    only if it was enabled when the first one started.
    """
    return _PAUSED_GC
