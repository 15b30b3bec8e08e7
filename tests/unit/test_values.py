"""Tests of the value codec: strict JSON plus tagged scalars that round-trip exactly."""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from collections import OrderedDict, namedtuple
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stem.canvas import NotSerializable, UndecodableValue
from stem.canvas.values import TAG, decode, dumps, encode, loads

NEW_YORK = ZoneInfo("America/New_York")


def identical(left: Any, right: Any) -> bool:
    """Tell whether two decoded values have the same types and exact contents.

    Plain ``==`` is too weak here: it ignores ``fold`` and compares aware
    datetimes by instant, treats ``1.10`` and ``1.1`` as equal Decimals, and
    never finds a Decimal NaN equal to itself.
    """
    if type(left) is not type(right):
        return False
    if isinstance(left, list):
        return len(left) == len(right) and all(map(identical, left, right))
    if isinstance(left, dict):
        return left.keys() == right.keys() and all(
            identical(left[key], right[key]) for key in left
        )
    if isinstance(left, dt.datetime | dt.time):
        return (
            left.isoformat() == right.isoformat()
            and left.fold == right.fold
            and zone_of(left.tzinfo) == zone_of(right.tzinfo)
        )
    if isinstance(left, Decimal | float):
        return repr(left) == repr(right)
    return bool(left == right)


def zone_of(zone: dt.tzinfo | None) -> object:
    if isinstance(zone, ZoneInfo):
        return ("zone", zone.key)
    if zone is None:
        return None
    return ("offset", zone.utcoffset(None))


def round_trip(value: Any) -> Any:
    return loads(dumps(value))


# -- round trips ------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(None, id="none"),
        pytest.param(True, id="bool"),
        pytest.param(2**80, id="big-int"),
        pytest.param(-0.0, id="negative-zero"),
        pytest.param(1e-310, id="subnormal-float"),
        pytest.param("é\u2028\x00", id="unicode-text"),
        pytest.param([1, [2, [3, []]]], id="nested-lists"),
        pytest.param({"a": {"b": [None, {}]}}, id="nested-dicts"),
    ],
)
def test_plain_json_round_trips(value: Any) -> None:
    assert identical(round_trip(value), value)


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(dt.datetime(2024, 5, 1, 12, 0, 0, 250), id="naive"),
        pytest.param(dt.datetime(2024, 5, 1, 12, tzinfo=dt.UTC), id="utc"),
        pytest.param(
            dt.datetime(2024, 5, 1, 12, tzinfo=dt.timezone(dt.timedelta(hours=5.5))),
            id="fixed-offset",
        ),
        pytest.param(
            dt.datetime(
                2024, 5, 1, tzinfo=dt.timezone(-dt.timedelta(hours=3, seconds=7))
            ),
            id="offset-with-seconds",
        ),
        pytest.param(dt.datetime(2024, 7, 1, 9, tzinfo=NEW_YORK), id="zoneinfo"),
        pytest.param(dt.datetime(2024, 11, 3, 1, 30, fold=1), id="naive-fold"),
        pytest.param(dt.datetime.min, id="min"),
        pytest.param(dt.datetime.max, id="max"),
    ],
)
def test_datetime_round_trips(value: dt.datetime) -> None:
    result = round_trip(value)

    assert identical(result, value)


def test_zoneinfo_fold_round_trips() -> None:
    # 01:30 happens twice on this day in New York, and fold=1 picks the second, EST.
    first = dt.datetime(2024, 11, 3, 1, 30, tzinfo=NEW_YORK)
    second = first.replace(fold=1)

    first_back = round_trip(first)
    second_back = round_trip(second)

    assert second_back.fold == 1
    assert second_back.tzinfo is NEW_YORK
    assert second_back.utcoffset() == dt.timedelta(hours=-5)
    assert first_back.fold == 0
    assert first_back.utcoffset() == dt.timedelta(hours=-4)


def test_zoneinfo_keeps_zone_key() -> None:
    encoded = encode(dt.datetime(2024, 1, 1, tzinfo=NEW_YORK))

    assert encoded == {
        TAG: "datetime",
        "v": "2024-01-01T00:00:00-05:00",
        "tz": "America/New_York",
    }


def test_zoneinfo_arithmetic_after_decode() -> None:
    back = round_trip(dt.datetime(2024, 3, 9, 12, tzinfo=NEW_YORK))

    later = back + dt.timedelta(days=1)

    assert later.utcoffset() == dt.timedelta(hours=-4)


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(dt.date(2024, 2, 29), id="date"),
        pytest.param(dt.date.min, id="date-min"),
        pytest.param(dt.time(23, 59, 59, 999999), id="time"),
        pytest.param(dt.time(1, 30, fold=1), id="time-fold"),
        pytest.param(
            dt.time(8, tzinfo=dt.timezone(dt.timedelta(hours=-3))), id="time-tz"
        ),
        pytest.param(uuid.UUID("8c5f3f5e-0d2a-4c55-9a5e-3c4b1c2f3a10"), id="uuid"),
        pytest.param(b"", id="empty-bytes"),
        pytest.param(bytes(range(256)), id="all-bytes"),
    ],
)
def test_tagged_scalar_round_trips(value: Any) -> None:
    assert identical(round_trip(value), value)


@pytest.mark.parametrize(
    "text",
    [
        "1.10",
        "1E+3",
        "1e-30",
        "-0",
        "0E-7",
        "123456789012345678901234567890.5",
        "NaN",
        "-Infinity",
        "sNaN",
    ],
)
def test_decimal_round_trips_exactly(text: str) -> None:
    value = Decimal(text)

    result = round_trip(value)

    assert type(result) is Decimal
    assert str(result) == str(value)
    assert result.as_tuple() == value.as_tuple()


def test_decimal_keeps_trailing_zeros() -> None:
    assert encode(Decimal("1.10")) == {TAG: "decimal", "v": "1.10"}


def test_bytes_use_standard_base64() -> None:
    assert encode(b"\xfb\xff") == {TAG: "bytes", "v": "+/8="}


def test_tuples_become_lists() -> None:
    result = round_trip((1, (2, 3), [(4,)]))

    assert result == [1, [2, 3], [[4]]]
    assert type(result[1]) is list
    assert type(result[2][0]) is list


def test_nested_tagged_values_round_trip() -> None:
    value = {
        "when": [dt.date(2024, 1, 1), {"at": dt.time(9)}],
        "id": uuid.UUID(int=7),
        "blob": [b"\x00", Decimal("2.50")],
    }

    assert identical(round_trip(value), value)


def test_dict_with_tag_key_is_wrapped() -> None:
    value = {TAG: "date", "v": "2024-01-01"}

    encoded = encode(value)

    assert encoded == {TAG: "dict", "v": {TAG: "date", "v": "2024-01-01"}}
    assert decode(encoded) == value


def test_wrapped_dict_contents_decode() -> None:
    value = {TAG: {TAG: 1}, "d": dt.date(2024, 1, 1)}

    result = round_trip(value)

    assert identical(result, value)


def test_tag_key_inside_list_round_trips() -> None:
    value = [{TAG: "dict", "v": {}}]

    assert identical(round_trip(value), value)


def test_encode_leaves_input_unchanged() -> None:
    value = {TAG: [1, (2,)]}

    encode(value)

    assert value == {TAG: [1, (2,)]}


def test_shared_reference_is_not_cycle() -> None:
    shared = [1]

    assert round_trip([shared, shared]) == [[1], [1]]


def test_dumps_is_compact_unicode() -> None:
    assert dumps({"a": ["é", 1]}) == '{"a":["é",1]}'


def test_loads_accepts_bytes() -> None:
    assert loads(b'{"a":[1]}') == {"a": [1]}


@pytest.mark.parametrize(
    "text",
    [
        pytest.param('[{"__stem__":"uuid","v":"%s"}]', id="plain"),
        pytest.param('[{"\\u005f_stem__":"uuid","v":"%s"}]', id="escaped-key"),
        pytest.param('[{"__stem\\u005f_":"uuid","v":"%s"}]', id="escaped-middle"),
    ],
)
def test_loads_finds_tags_spelled_any_way(text: str) -> None:
    value = uuid.UUID(int=7)
    assert loads(text % value) == [value]


def test_loads_keeps_untagged_values() -> None:
    value = {"a": [1, {"b": "c\\u"}], "d": None, "e": "\n"}
    assert loads(dumps(value)) == value


# -- rejections -------------------------------------------------------------------


class Colour(enum.Enum):
    RED = 1


class Label(str):
    pass


Pair = namedtuple("Pair", "x y")


class OneHour(dt.tzinfo):
    def utcoffset(self, moment: dt.datetime | None) -> dt.timedelta:
        return dt.timedelta(hours=1)

    def dst(self, moment: dt.datetime | None) -> dt.timedelta:
        return dt.timedelta(0)

    def tzname(self, moment: dt.datetime | None) -> str:
        return "ONE"


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        pytest.param({1}, "a set is not JSON-serialisable; pass a list", id="set"),
        pytest.param(frozenset(), "a frozenset is not JSON", id="frozenset"),
        pytest.param(Colour.RED, "pass its .value instead", id="enum"),
        pytest.param(bytearray(b"x"), "pass bytes(value)", id="bytearray"),
        pytest.param(memoryview(b"x"), "pass bytes(value)", id="memoryview"),
        pytest.param(dt.timedelta(1), "pass value.total_seconds()", id="timedelta"),
        pytest.param(1j, "a builtins.complex is not JSON", id="complex"),
        pytest.param(object(), "pass one of: str, int", id="object"),
        pytest.param(Label("x"), "subclass of a JSON type", id="str-subclass"),
        pytest.param(OrderedDict(), "subclass of a JSON type", id="dict-subclass"),
        pytest.param(Pair(1, 2), "subclass of a JSON type", id="namedtuple"),
        pytest.param(float("nan"), "the float nan is not finite", id="nan"),
        pytest.param(float("-inf"), "the float -inf is not finite", id="infinity"),
        pytest.param(
            dt.datetime(2024, 1, 1, tzinfo=OneHour()),
            "use zoneinfo.ZoneInfo or datetime.timezone",
            id="custom-tzinfo",
        ),
        pytest.param(
            dt.time(1, tzinfo=NEW_YORK),
            "can carry only a fixed datetime.timezone offset",
            id="time-with-zone",
        ),
    ],
)
def test_rejection_names_path(value: Any, problem: str) -> None:
    with pytest.raises(NotSerializable) as caught:
        encode({"outer": [0, value]}, "args[0]")

    assert caught.value.path == "args[0]['outer'][1]"
    assert str(caught.value).startswith("args[0]['outer'][1]: ")
    assert problem in str(caught.value)


def test_rejection_is_type_error() -> None:
    with pytest.raises(TypeError):
        dumps({1})


def test_rejection_without_path() -> None:
    with pytest.raises(NotSerializable) as caught:
        encode({1})

    assert caught.value.path == ""
    assert str(caught.value) == "a set is not JSON-serialisable; pass a list"


def test_non_string_key_rejected() -> None:
    with pytest.raises(NotSerializable) as caught:
        encode([{"ok": 1, 2: "no"}], "kwargs['k']")

    assert caught.value.path == "kwargs['k'][0]"
    assert "the dict key 2" in str(caught.value)
    assert "convert the key with str()" in str(caught.value)


def test_string_subclass_key_rejected() -> None:
    with pytest.raises(NotSerializable, match="the dict key 'x' is a Label"):
        encode({Label("x"): 1})


def test_cyclic_list_rejected() -> None:
    looped: list[Any] = [1]
    looped.append(looped)

    with pytest.raises(NotSerializable, match="the list contains itself") as caught:
        encode(looped, "args[0]")

    assert caught.value.path == "args[0][1]"


def test_cyclic_dict_rejected() -> None:
    looped: dict[str, Any] = {}
    looped["self"] = {"again": looped}

    with pytest.raises(NotSerializable, match="the dict contains itself") as caught:
        encode(looped)

    assert caught.value.path == "['self']['again']"


def test_lone_surrogate_string_rejected() -> None:
    # os.fsdecode turns the byte 0xff of a file name into the surrogate U+DCFF.
    name = b"report-\xff.csv".decode("utf-8", "surrogateescape")

    with pytest.raises(NotSerializable) as caught:
        encode({"files": ["ok.csv", name]}, "args[0]")

    assert caught.value.path == "args[0]['files'][1]"
    assert "lone surrogate '\\udcff' at index 7" in str(caught.value)
    assert "surrogateescape" in str(caught.value)


def test_lone_surrogate_key_rejected() -> None:
    with pytest.raises(NotSerializable, match="lone surrogate") as caught:
        encode({"ok": {"\ud800": 1}}, "kwargs")

    assert caught.value.path == "kwargs['ok']['\\ud800']"


def test_surrogate_pair_text_round_trips() -> None:
    assert loads(dumps(["\U0001f642", {"\u00e9": "\u4e2d"}])) == [
        "\U0001f642",
        {"\u00e9": "\u4e2d"},
    ]


def test_dumps_rejects_like_encode() -> None:
    with pytest.raises(NotSerializable, match=r"^x\[0\]: a set"):
        dumps([{1}], "x")


# -- undecodable data -------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        pytest.param({TAG: "pickle", "v": "gASV"}, id="unknown-tag"),
        pytest.param({TAG: 3, "v": "x"}, id="number-tag"),
        pytest.param({TAG: "date"}, id="missing-payload"),
        pytest.param({TAG: "date", "v": 20240101}, id="number-payload"),
        pytest.param({TAG: "dict", "v": "x"}, id="dict-without-dict"),
        pytest.param({TAG: "date", "v": "2024-13-01"}, id="bad-date"),
        pytest.param({TAG: "datetime", "v": "yesterday"}, id="bad-datetime"),
        pytest.param({TAG: "time", "v": "25:00"}, id="bad-time"),
        pytest.param({TAG: "uuid", "v": "not-a-uuid"}, id="bad-uuid"),
        pytest.param({TAG: "bytes", "v": "a*b="}, id="bad-base64"),
        pytest.param({TAG: "decimal", "v": "1,5"}, id="bad-decimal"),
        pytest.param(
            {TAG: "datetime", "v": "2024-01-01T00:00:00", "tz": "Mars/Olympus"},
            id="unknown-zone",
        ),
        pytest.param(
            {TAG: "datetime", "v": "2024-01-01T00:00:00", "tz": "../etc/passwd"},
            id="zone-path",
        ),
    ],
)
def test_bad_tag_is_undecodable(data: dict[str, Any]) -> None:
    with pytest.raises(UndecodableValue):
        decode({"outer": [data]})


def test_unknown_tag_message_names_tag() -> None:
    with pytest.raises(UndecodableValue, match="Unknown value tag 'pickle'"):
        decode({TAG: "pickle", "v": "x"})


def test_undecodable_is_value_error() -> None:
    with pytest.raises(ValueError, match="does not parse"):
        decode({TAG: "uuid", "v": "x"})


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("{", id="truncated"),
        pytest.param("", id="empty"),
        pytest.param(b"\xff\xfe\x00", id="not-utf8"),
        pytest.param("NaN", id="nan"),
        pytest.param("[1, Infinity]", id="infinity"),
        pytest.param('{"a": -Infinity}', id="negative-infinity"),
    ],
)
def test_loads_rejects_non_json(text: str | bytes) -> None:
    with pytest.raises(UndecodableValue):
        loads(text)


# -- property ---------------------------------------------------------------------

offsets = st.timedeltas(
    min_value=dt.timedelta(hours=-23, minutes=-59),
    max_value=dt.timedelta(hours=23, minutes=59),
)
zones = st.none() | st.timezones() | offsets.map(dt.timezone)
datetimes = st.builds(
    lambda moment, zone, fold: moment.replace(tzinfo=zone, fold=fold),
    st.datetimes(),
    zones,
    st.sampled_from([0, 1]),
)
times = st.builds(
    lambda moment, zone, fold: moment.replace(tzinfo=zone, fold=fold),
    st.times(),
    st.none() | offsets.map(dt.timezone),
    st.sampled_from([0, 1]),
)
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
    | datetimes
    | st.dates()
    | times
    | st.uuids()
    | st.decimals()
    | st.binary()
)
keys = st.text() | st.sampled_from([TAG, "v", "tz", "fold"])
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(keys, inner, max_size=4)
        | st.lists(inner, max_size=3).map(tuple)
    ),
    max_leaves=12,
)


def as_lists(value: Any) -> Any:
    """Return ``value`` with every tuple turned into a list, as the codec does."""
    if isinstance(value, list | tuple):
        return [as_lists(item) for item in value]
    if isinstance(value, dict):
        return {key: as_lists(item) for key, item in value.items()}
    return value


@given(values)
def test_codec_round_trip_property(value: Any) -> None:
    assert identical(round_trip(value), as_lists(value))


def is_plain_json(data: Any) -> bool:
    if data is None or type(data) in (bool, int, float, str):
        return True
    if type(data) is list:
        return all(map(is_plain_json, data))
    if type(data) is dict:
        return all(
            type(key) is str and is_plain_json(item) for key, item in data.items()
        )
    return False


@given(values)
def test_encoded_form_is_plain_json(value: Any) -> None:
    encoded = encode(value)

    assert is_plain_json(encoded)
    assert identical(decode(encoded), as_lists(value))
