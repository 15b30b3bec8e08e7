"""Finding a driver for a URL through the ``stem.drivers`` entry-point group.

The engine never imports a driver: a driver package declares an entry point
named after its URL scheme (``memory``, ``redis``, ...) that points at a class
taking the URL, and third-party drivers plug in the same way.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any
from urllib.parse import urlsplit

from stem.engine.errors import DriverNotFound
from stem.engine.ports import Driver

GROUP = "stem.drivers"


def load_driver(url: str, **settings: Any) -> Driver:
    """Build the driver that serves ``url``.

    Raises:
        DriverNotFound: if no installed driver declares the URL's scheme.
    """
    scheme = urlsplit(url).scheme
    if not scheme:
        raise DriverNotFound(
            f"Broker URL {redact(url)!r} has no scheme; use memory://, "
            "redis://host:port/db or redis+cluster://host:port."
        )
    found = {entry.name: entry for entry in entry_points(group=GROUP)}
    entry = found.get(scheme)
    if entry is None:
        known = ", ".join(f"{name}://" for name in sorted(found)) or "none"
        raise DriverNotFound(
            f"No driver handles {scheme}:// (from {redact(url)!r}); installed "
            f"drivers: {known}."
        )
    factory = entry.load()
    driver: Driver = factory(url, **settings)
    return driver


def redact(url: str) -> str:
    """Return the URL with any password replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    netloc = f"{user}:***@{host}{port}"
    return parts._replace(netloc=netloc).geturl()
