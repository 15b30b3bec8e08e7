"""Finding a driver for a URL through the ``stem.drivers`` entry-point group.

The engine never imports a driver: a driver package declares an entry point
named after its URL scheme (``memory``, ``redis``, ...) that points at a class
taking the URL, and third-party drivers plug in the same way.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

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
    """Return the URL with any password replaced by ``***``.

    A password is in the user part (``redis://:pw@host``) or in the query
    (``redis://host?password=pw``), which redis-py also reads.
    """
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        userinfo, _, host = netloc.rpartition("@")
        netloc = f"{userinfo.partition(':')[0]}:***@{host}"
    query = parts.query
    pairs = parse_qsl(query, keep_blank_values=True)
    if any(name == "password" for name, _ in pairs):
        hidden = [(name, "***" if name == "password" else v) for name, v in pairs]
        query = urlencode(hidden, safe="*")
    if (netloc, query) == (parts.netloc, parts.query):
        return url
    return parts._replace(netloc=netloc, query=query).geturl()
