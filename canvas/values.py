"""The value codec: strict JSON plus tagged scalars that round-trip exactly.

Every argument, keyword argument and task result that Stem stores passes
through this module. Plain JSON values (objects with string keys, lists,
strings, ints, finite floats, booleans, null) are kept as they are, and tuples
become lists. Six more types are written as a tagged object and come back as
the same type with the same value::

    {"__stem__": "datetime", "v": "2024-05-01T12:00:00+02:00"}
    {"__stem__": "date", "v": "2024-05-01"}
    {"__stem__": "time", "v": "12:00:00.250000"}
    {"__stem__": "uuid", "v": "8c5f..."}
    {"__stem__": "decimal", "v": "1.10"}
    {"__stem__": "bytes", "v": "AAEC"}            (standard base64)

A user dict that itself has a ``"__stem__"`` key is wrapped as
``{"__stem__": "dict", "v": {...}}`` so that it can never be read as a tag.
Anything else is rejected with a `NotSerializable` error that names where the
value sits, its type and what to pass instead.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import enum
import json
import math
import sys
import uuid
from decimal import Decimal, InvalidOperation
from typing import Any, NoReturn
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from stem.canvas.errors import NotSerializable, UndecodableValue

TAG = "__stem__"

#: Deepest nesting of lists and dicts that a value may have. Decoding recurses
#: once per level, in worker threads and in ``get()``, so a value much deeper
#: than this could exceed Python's default recursion limit of 1000 there.
MAX_DEPTH = 100

#: JSON-safe form of a value: what `encode` returns and `decode` accepts.
JsonValue = Any

_ACCEPTED = (
    "str, int, float, bool, None, list, tuple, dict with string keys, "
    "datetime, date, time, UUID, Decimal or bytes"
)


def encode(value: object, path: str = "") -> JsonValue:
    """Convert a value to its JSON-safe form, tagging the extra scalar types.

    Args:
        value: the value to convert.
        path: where the value sits, used in error messages
            (``chain[1] > args[0]``).

    Raises:
        NotSerializable: if the value, or anything inside it, is not one of
            the accepted types; the message extends ``path`` down to the
            offending part.
    """
    return _encode(value, path, set())


def decode(data: JsonValue) -> Any:
    """Rebuild a value from the form that `encode` produced.

    Raises:
        UndecodableValue: if a tagged object has an unknown tag or a payload
            that its type cannot parse.
    """
    if isinstance(data, list):
        return [decode(item) for item in data]
    if isinstance(data, dict):
        if TAG in data:
            return _decode_tagged(data)
        return {key: decode(item) for key, item in data.items()}
    return data


#: The encoder of `dumps`. json.dumps builds a new encoder for every call
#: with arguments other than its defaults: 3.2 us per dumps(None) against
#: 1.5 us with this one (CPython 3.11). An encoder keeps no state between calls.
_JSON_ENCODER = json.JSONEncoder(
    separators=(",", ":"), ensure_ascii=False, allow_nan=False
)


def dumps(value: object, path: str = "") -> str:
    """Encode a value and serialise it to a compact JSON string."""
    if value is None:
        # Most tasks return None. This skips the encoder's 0.7 us (CPython 3.11).
        return "null"
    return _JSON_ENCODER.encode(encode(value, path))


def loads(text: str | bytes) -> Any:
    """Parse a JSON string written by `dumps` and rebuild the value.

    Raises:
        UndecodableValue: if the text is not JSON or contains a bad tag.
    """
    try:
        if type(text) is str:
            data = _JSON_DECODER.decode(text)
        else:
            # json.loads detects the encoding of bytes: UTF-8, -16 or -32.
            data = json.loads(text, parse_constant=_reject_constant)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UndecodableValue(f"Stored value is not valid JSON: {err}.") from err
    if type(text) is str and TAG not in text and "\\u" not in text:
        # No tag can be inside, even spelled with escapes, so decoding would
        # only copy the lists and dicts. That copy took 1.7 to 3.2 times the
        # parse's time for dicts and lists (CPython 3.11).
        return data
    return decode(data)


def _reject_constant(name: str) -> NoReturn:
    # Python's json module reads NaN and Infinity by default, but strict JSON
    # has neither, and `dumps` never writes them.
    raise UndecodableValue(f"Stored value contains {name}, which is not valid JSON.")


#: The decoder of `loads` for text. json.loads builds a new decoder for
#: every call with a ``parse_constant``. A decoder keeps no state between calls.
_JSON_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def _encode(value: object, path: str, active: set[int]) -> JsonValue:
    kind = type(value)
    if kind is str:
        return _encode_text(value, path)  # type: ignore[arg-type]
    if value is None or kind is bool:
        return value
    if kind is int:
        return _encode_int(value, path)  # type: ignore[arg-type]
    if kind is float:
        if not math.isfinite(value):  # type: ignore[arg-type]
            raise NotSerializable(
                path,
                f"the float {value!r} is not finite, and JSON has no NaN or "
                "Infinity; pass None or a string instead",
            )
        return value
    if kind is list or kind is tuple:
        return _encode_items(value, path, active)  # type: ignore[arg-type]
    if kind is dict:
        return _encode_dict(value, path, active)  # type: ignore[arg-type]
    return _encode_scalar(value, path)


def _encode_text(value: str, path: str) -> str:
    # A lone surrogate (os.listdir and os.fsdecode give one for each byte of
    # a file name that is not UTF-8) has no UTF-8 form, so the store could
    # not write the text.
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as err:
            raise NotSerializable(
                path,
                f"the string {value[:80]!r} contains the lone surrogate "
                f"{value[err.start]!r} at index {err.start}, which has no UTF-8 "
                "form; pass bytes, or a string repaired with "
                "text.encode('utf-8', 'surrogateescape').decode('utf-8', 'replace')",
            ) from None
    return value


def _encode_int(value: int, path: str) -> JsonValue:
    # JSON text of an int is its decimal digits, and Python raises ValueError
    # when it converts an int of more than sys.get_int_max_str_digits() digits
    # (0 means no limit) to or from text. An int of b bits has at most
    # 0.302 * b + 1 digits, so only ints of more than 3 * limit bits can hit it.
    limit = sys.get_int_max_str_digits()
    if limit and value.bit_length() > 3 * limit:
        try:
            str(value)
        except ValueError:
            raise NotSerializable(
                path,
                f"the int has more than {limit} digits, the most that Python "
                "converts to JSON text; pass it as a string",
            ) from None
    return value


def _enter(container: object, kind: str, path: str, active: set[int]) -> int:
    """Mark a list or dict as open, rejecting a cycle or too deep a nesting."""
    marker = id(container)
    if marker in active:
        raise NotSerializable(
            path, f"the {kind} contains itself; pass an acyclic value"
        )
    if len(active) >= MAX_DEPTH:
        raise NotSerializable(
            path,
            f"the value is nested more than {MAX_DEPTH} lists or dicts deep; "
            "flatten it or pass it as a string",
        )
    active.add(marker)
    return marker


def _encode_items(
    items: list[Any] | tuple[Any, ...], path: str, active: set[int]
) -> JsonValue:
    marker = _enter(items, "list", path, active)
    try:
        return [_encode(item, f"{path}[{i}]", active) for i, item in enumerate(items)]
    finally:
        active.discard(marker)


def _encode_dict(mapping: dict[Any, Any], path: str, active: set[int]) -> JsonValue:
    marker = _enter(mapping, "dict", path, active)
    try:
        encoded: dict[str, JsonValue] = {}
        for key, item in mapping.items():
            if type(key) is not str:
                raise NotSerializable(
                    path,
                    f"the dict key {key!r} is a {type(key).__name__}, and JSON "
                    "objects take only string keys; convert the key with str()",
                )
            _encode_text(key, f"{path}[{key!r}]")
            encoded[key] = _encode(item, f"{path}[{key!r}]", active)
    finally:
        active.discard(marker)
    if TAG in encoded:
        return {TAG: "dict", "v": encoded}
    return encoded


def _encode_scalar(value: object, path: str) -> JsonValue:
    if isinstance(value, dt.datetime) and type(value) is dt.datetime:
        return _encode_datetime(value, path)
    if type(value) is dt.date:
        return {TAG: "date", "v": value.isoformat()}
    if type(value) is dt.time:
        return _encode_time(value, path)
    if type(value) is uuid.UUID:
        return {TAG: "uuid", "v": str(value)}
    if type(value) is Decimal:
        return {TAG: "decimal", "v": str(value)}
    if type(value) is bytes:
        return {TAG: "bytes", "v": base64.b64encode(value).decode("ascii")}
    raise NotSerializable(path, _rejection(value))


def _encode_datetime(value: dt.datetime, path: str) -> JsonValue:
    tag: dict[str, JsonValue] = {TAG: "datetime", "v": value.isoformat()}
    zone = value.tzinfo
    if isinstance(zone, ZoneInfo):
        # The offset alone would come back as a fixed offset, not the zone.
        tag["tz"] = zone.key
    elif zone is not None and not isinstance(zone, dt.timezone):
        raise NotSerializable(
            path,
            f"the datetime {value!r} has a {type(zone).__name__} time zone that "
            "cannot be stored exactly; use zoneinfo.ZoneInfo or datetime.timezone",
        )
    if isinstance(zone, dt.timezone):
        _store_odd_offset(value, tag)
    if value.fold:
        tag["fold"] = 1
    return tag


def _encode_time(value: dt.time, path: str) -> JsonValue:
    if value.tzinfo is not None and not isinstance(value.tzinfo, dt.timezone):
        raise NotSerializable(
            path,
            f"the time {value!r} has a {type(value.tzinfo).__name__} time zone; "
            "a time of day can carry only a fixed datetime.timezone offset",
        )
    tag: dict[str, JsonValue] = {TAG: "time", "v": value.isoformat()}
    _store_odd_offset(value, tag)
    if value.fold:
        tag["fold"] = 1
    return tag


def _store_odd_offset(value: dt.datetime | dt.time, tag: dict[str, JsonValue]) -> None:
    """Store a fixed offset that is not whole minutes beside a naive ISO text.

    ISO 8601 text of such an offset does not parse back to the same offset.
    """
    offset = value.utcoffset()
    if offset is None or not offset % dt.timedelta(minutes=1):
        return
    tag["v"] = value.replace(tzinfo=None).isoformat()
    tag["offset_us"] = offset // dt.timedelta(microseconds=1)


def _rejection(value: object) -> str:
    kind = type(value)
    name = f"{kind.__module__}.{kind.__qualname__}"
    if isinstance(value, set | frozenset):
        return f"a {kind.__name__} is not JSON-serialisable; pass a list"
    if isinstance(value, enum.Enum):
        return (
            f"the enum member {value!r} is not JSON-serialisable; "
            "pass its .value instead"
        )
    if isinstance(value, bytearray | memoryview):
        return f"a {kind.__name__} is not JSON-serialisable; pass bytes(value)"
    if isinstance(value, dt.timedelta):
        return "a timedelta is not JSON-serialisable; pass value.total_seconds()"
    if isinstance(value, str | int | float | dict | list | tuple | bytes):
        return (
            f"a {name} is a subclass of a JSON type and would not come back as "
            f"the same type; convert it to the plain type first"
        )
    return f"a {name} is not JSON-serialisable; pass one of: {_ACCEPTED}"


def _decode_tagged(data: dict[str, Any]) -> Any:
    tag = data[TAG]
    payload = data.get("v")
    try:
        if tag == "dict" and isinstance(payload, dict):
            return {key: decode(item) for key, item in payload.items()}
        if not isinstance(payload, str):
            raise UndecodableValue(
                f"Tagged value {tag!r} has no string payload: {data!r}."
            )
        return _decode_scalar(tag, payload, data)
    except (ValueError, binascii.Error, ZoneInfoNotFoundError, InvalidOperation) as err:
        if isinstance(err, UndecodableValue):
            raise
        raise UndecodableValue(f"Tagged value {data!r} does not parse: {err}.") from err


def _decode_scalar(tag: str, payload: str, data: dict[str, Any]) -> Any:
    value = _decode_plain(tag, payload, data)
    offset_us = data.get("offset_us")
    if type(offset_us) is int and tag in ("datetime", "time"):
        zone = dt.timezone(dt.timedelta(microseconds=offset_us))
        value = value.replace(tzinfo=zone)
    return value


def _decode_plain(tag: str, payload: str, data: dict[str, Any]) -> Any:
    fold = 1 if data.get("fold") == 1 else 0
    if tag == "datetime":
        value = dt.datetime.fromisoformat(payload)
        zone = data.get("tz")
        if isinstance(zone, str):
            value = value.replace(tzinfo=ZoneInfo(zone))
        return value.replace(fold=fold)
    if tag == "date":
        return dt.date.fromisoformat(payload)
    if tag == "time":
        return dt.time.fromisoformat(payload).replace(fold=fold)
    if tag == "uuid":
        return uuid.UUID(payload)
    if tag == "decimal":
        return Decimal(payload)
    if tag == "bytes":
        return base64.b64decode(payload.encode("ascii"), validate=True)
    raise UndecodableValue(f"Unknown value tag {tag!r} in {data!r}.")
