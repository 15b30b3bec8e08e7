"""Schedules for beat: cron expressions and fixed intervals, and the entries
that pair a schedule with a canvas.

Fire times are POSIX timestamps in seconds. Every beat process computes the
same fire times from the same entry, which is what lets several beats share
one store and claim each fire time once.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from stem.canvas.compiler import compile_canvas
from stem.canvas.errors import CanvasError
from stem.canvas.options import check_options
from stem.canvas.primitives import Canvas, Signature
from stem.engine.errors import InvalidSchedule

if TYPE_CHECKING:
    from croniter import croniter

#: Years croniter searches for the next match before it gives up. Bounds the
#: CPU time a user's expression can take; a leap day (29 February) needs 8.
MAX_YEARS_BETWEEN_FIRES = 50

#: Keys a ``beat_schedule`` entry may have: Celery's, plus ``timezone``.
ENTRY_KEYS = ("task", "schedule", "args", "kwargs", "options", "timezone")


class Cron:
    """A cron expression evaluated in a timezone, with croniter.

    Five fields (minute hour day-of-month month day-of-week), as in
    crontab(5) and Celery's ``crontab``, or croniter's aliases such as
    ``@hourly``. Six or seven fields are rejected because croniter (checked
    with 7.0) reads a sixth field as seconds last and a seventh as the year.
    Quartz and cron-parser, the parser of BullMQ, put seconds first, so
    ``*/10 * * * * *`` would fire every second instead of every 10 seconds.
    Sub-minute schedules are intervals.

    Daylight saving time: a local time that the clocks skip fires at the first
    time after the gap. When the clocks go back, an expression with a fixed
    minute and hour (such as ``30 1 * * *``) fires once, at the first of the
    two equal local times. One with ``*`` in its minute or hour field fires
    through both hours. Vixie cron's manual states the same rule.

    Raises:
        InvalidSchedule: if the expression or the timezone is invalid, or the
            expression never matches within `MAX_YEARS_BETWEEN_FIRES` years.
    """

    __slots__ = ("_fixed_time", "expression", "timezone")

    def __init__(self, expression: str, timezone: str | tzinfo = "UTC") -> None:
        self.timezone = resolve_timezone(timezone)
        if not isinstance(expression, str):
            raise InvalidSchedule(
                f"Cron expression {expression!r} is a {type(expression).__name__}; "
                "pass a string such as '*/15 * * * *'."
            )
        self.expression = expression
        _check_field_count(expression)
        # croniter is imported here, not at the top, so that a client or a
        # worker that never declares a cron entry does not pay its import.
        from croniter import CroniterBadDateError, CroniterError

        try:
            fields = self._iterate(time.time()).expressions
        except (CroniterError, ValueError, KeyError) as err:
            raise InvalidSchedule(
                f"Cron expression {expression!r} is invalid ({err}); pass five "
                "fields, minute hour day-of-month month day-of-week, such as "
                "'*/15 * * * *'."
            ) from err
        self._fixed_time = not any(str(part).startswith("*") for part in fields[:2])
        try:
            self.next_after(time.time())
        except CroniterBadDateError as err:
            raise InvalidSchedule(
                f"Cron expression {expression!r} never fires within "
                f"{MAX_YEARS_BETWEEN_FIRES} years (such as 30 February); check "
                "the day-of-month and month fields."
            ) from err

    def __repr__(self) -> str:
        return f"Cron({self.expression!r}, {str(self.timezone)!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Cron):
            return NotImplemented
        return (self.expression, str(self.timezone)) == (
            other.expression,
            str(other.timezone),
        )

    def __hash__(self) -> int:
        return hash((self.expression, str(self.timezone)))

    def next_after(self, time_s: float) -> float:
        """Return the first fire time strictly after ``time_s``."""
        it = self._iterate(time_s)
        while True:
            fire = it.get_next(datetime)
            if not self._is_repeat(fire):
                return float(fire.timestamp())

    def latest_at_or_before(self, time_s: float) -> float:
        """Return the last fire time at or before ``time_s``."""
        it = self._iterate(time_s)
        previous = it.get_prev(datetime)
        while self._is_repeat(previous):
            previous = it.get_prev(datetime)
        candidate = self.next_after(previous.timestamp())
        return candidate if candidate <= time_s else float(previous.timestamp())

    def _iterate(self, time_s: float) -> croniter:
        from croniter import croniter

        start = datetime.fromtimestamp(time_s, self.timezone)
        return croniter(
            self.expression,
            start,
            max_years_between_matches=MAX_YEARS_BETWEEN_FIRES,
        )

    def _is_repeat(self, fire: datetime) -> bool:
        """Tell whether a fixed-time fire is the second of two equal local times."""
        if not self._fixed_time:
            return False
        local = datetime.fromtimestamp(fire.timestamp(), self.timezone)
        return local.fold == 1 and (
            local.replace(fold=0).utcoffset() != local.utcoffset()
        )


def _check_field_count(expression: str) -> None:
    count = len(expression.split())
    if expression.strip().startswith("@") or count == 5:
        return
    seconds = ""
    if count > 5:
        seconds = (
            " For a schedule in seconds, pass an interval instead, such as 10.0 "
            "or timedelta(seconds=10)."
        )
    raise InvalidSchedule(
        f"Cron expression {expression!r} is invalid: it has {count} fields, but "
        "Stem takes five, minute hour day-of-month month day-of-week, such as "
        f"'*/15 * * * *'.{seconds}"
    )


@dataclass(frozen=True)
class Interval:
    """A fixed interval in seconds.

    Fire times are the multiples of the interval since the Unix epoch, so
    every beat computes the same times without sharing a start time. Celery
    counts its intervals from the last run instead.
    """

    seconds: float

    def __post_init__(self) -> None:
        valid = (
            isinstance(self.seconds, int | float)
            and not isinstance(self.seconds, bool)
            and math.isfinite(self.seconds)
            and self.seconds > 0
        )
        if not valid:
            raise InvalidSchedule(
                f"Interval {self.seconds!r} is invalid; pass a positive, finite "
                "number of seconds, or a timedelta."
            )

    def next_after(self, time_s: float) -> float:
        """Return the first fire time strictly after ``time_s``."""
        return (self._count_at_or_before(time_s) + 1) * self.seconds

    def latest_at_or_before(self, time_s: float) -> float:
        """Return the last fire time at or before ``time_s``."""
        return self._count_at_or_before(time_s) * self.seconds

    def _count_at_or_before(self, time_s: float) -> int:
        """Return the number of the last fire time at or before ``time_s``.

        Fire times are always ``count * seconds``. The division can round
        across a fire time, so the count is corrected by one either way.
        """
        count = math.floor(time_s / self.seconds)
        if (count + 1) * self.seconds <= time_s:
            return count + 1
        if count * self.seconds > time_s:
            return count - 1
        return count


Schedule = Cron | Interval


@dataclass(frozen=True)
class Entry:
    """One schedule entry: a canvas submitted as a new run at each fire time.

    Args:
        name: the entry's name, unique in its app. It goes into claim keys
            and run ids, so renaming an entry resets its fire history.
        canvas: the signature or canvas each fire submits.
        schedule: when it fires.
        options: submit options (``queue``, ``priority``, ``countdown``...),
            defaults for every node that sets none.
    """

    name: str
    canvas: Canvas
    schedule: Schedule
    options: dict[str, Any] = field(default_factory=dict)


def resolve_timezone(timezone: str | tzinfo) -> tzinfo:
    """Return a tzinfo for an IANA name such as ``Europe/London``, or a tzinfo."""
    if isinstance(timezone, tzinfo):
        return timezone
    if not isinstance(timezone, str) or not timezone:
        raise InvalidSchedule(
            f"Timezone {timezone!r} is invalid; pass an IANA name such as "
            "'Europe/London' or 'UTC', or a tzinfo."
        )
    try:
        return ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError) as err:
        raise InvalidSchedule(
            f"Timezone {timezone!r} is not found; pass an IANA name such as "
            "'Europe/London' or 'UTC'."
        ) from err


def to_schedule(value: Any, timezone: str | tzinfo | None = None) -> Schedule:
    """Turn a cron string, a number of seconds or a timedelta into a schedule."""
    if isinstance(value, Cron):
        if timezone is not None:
            raise InvalidSchedule(
                f"{value!r} already has a timezone; drop the separate timezone "
                f"{timezone!r}."
            )
        return value
    if isinstance(value, str):
        return Cron(value, "UTC" if timezone is None else timezone)
    if timezone is not None:
        raise InvalidSchedule(
            f"Timezone {timezone!r} applies only to cron expressions, and the "
            f"schedule {value!r} is an interval; drop the timezone."
        )
    if isinstance(value, Interval):
        return value
    if isinstance(value, timedelta):
        return Interval(value.total_seconds())
    if isinstance(value, int | float) and not isinstance(value, bool):
        return Interval(float(value))
    raise InvalidSchedule(
        f"Schedule {value!r} is a {type(value).__name__}; pass a cron expression "
        "string, a number of seconds, a timedelta, Cron(...) or Interval(...)."
    )


def make_entry(
    name: Any,
    schedule: Any,
    canvas: Any,
    *,
    timezone: str | tzinfo | None = None,
    options: Mapping[str, Any] | None = None,
) -> Entry:
    """Validate one declaration and return its entry.

    Raises:
        InvalidSchedule: naming the entry, the bad value and the fix. Canvas
            errors (an unserialisable argument, a bad option) are turned into
            this error too, so the entry's name is in the message.
    """
    if not isinstance(name, str) or not name.strip():
        raise InvalidSchedule(
            f"Schedule entry name {name!r} is invalid; pass a non-empty string."
        )
    where = f"Schedule entry {name!r}"
    if not isinstance(canvas, Canvas):
        raise InvalidSchedule(
            f"{where}: {canvas!r} is a {type(canvas).__name__}, not a canvas; "
            "pass a signature such as add.s(2, 2), a chain, group or chord."
        )
    if options and "run_id" in options:
        raise InvalidSchedule(
            f"{where}: option run_id is set by beat for each fire time; drop it."
        )
    try:
        checked_schedule = to_schedule(schedule, timezone)
        checked_options = check_options(options or {}, "options")
        # Compiling once now reports unserialisable arguments at declaration.
        compile_canvas(canvas, (), None, checked_options)
    except InvalidSchedule as err:
        raise InvalidSchedule(f"{where}: {err}") from err
    except CanvasError as err:
        raise InvalidSchedule(f"{where}: {err}") from err
    return Entry(name, canvas, checked_schedule, checked_options)


def entry_from_mapping(name: Any, fields: Any) -> Entry:
    """Build an entry from a Celery-style ``beat_schedule`` item.

    ``task`` is a registered task name (called with ``args`` and ``kwargs``)
    or a canvas; ``schedule`` is a cron string, seconds or a timedelta.
    """
    if not isinstance(fields, Mapping):
        raise InvalidSchedule(
            f"Schedule entry {name!r} is a {type(fields).__name__}; pass a mapping "
            "with 'task' and 'schedule', as in Celery's beat_schedule."
        )
    unknown = sorted(str(key) for key in fields if key not in ENTRY_KEYS)
    if unknown:
        raise InvalidSchedule(
            f"Schedule entry {name!r} has unknown keys {', '.join(unknown)}; "
            f"known keys: {', '.join(ENTRY_KEYS)}."
        )
    for key in ("task", "schedule"):
        if key not in fields:
            raise InvalidSchedule(f"Schedule entry {name!r} is missing {key!r}.")
    task = fields["task"]
    args = fields.get("args", ())
    kwargs = fields.get("kwargs", {})
    if isinstance(task, Canvas):
        if args or kwargs:
            raise InvalidSchedule(
                f"Schedule entry {name!r} gives args or kwargs with a canvas; put "
                "the arguments in the canvas's signatures instead."
            )
        canvas: Any = task
    elif isinstance(task, str) and task:
        canvas = _signature(name, task, args, kwargs)
    else:
        canvas = task  # make_entry rejects it with a message naming the entry
    return make_entry(
        name,
        fields["schedule"],
        canvas,
        timezone=fields.get("timezone"),
        options=fields.get("options"),
    )


def _signature(name: Any, task: str, args: Any, kwargs: Any) -> Signature:
    if isinstance(args, str | bytes) or not isinstance(args, list | tuple):
        raise InvalidSchedule(
            f"Schedule entry {name!r}: args {args!r} is invalid; pass a list or "
            "a tuple."
        )
    if not isinstance(kwargs, Mapping):
        raise InvalidSchedule(
            f"Schedule entry {name!r}: kwargs {kwargs!r} is invalid; pass a dict."
        )
    return Signature(task, args, kwargs)


def utc_stamp(time_s: float) -> str:
    """Format a fire time as ISO 8601 in UTC, with microseconds only if needed."""
    moment = datetime.fromtimestamp(time_s, UTC)
    spec = "microseconds" if moment.microsecond else "seconds"
    return moment.isoformat(timespec=spec).replace("+00:00", "Z")
