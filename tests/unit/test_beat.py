"""Beat on memory://, driven by a fake clock: fire times, missed fires, errors."""

from __future__ import annotations

import logging
import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stem import App
from stem.canvas.primitives import Signature, chain
from stem.drivers.memory import MemoryDriver
from stem.engine.beat import Beat, fire_run_id
from stem.engine.errors import DriverError, InvalidSchedule
from stem.engine.schedules import Cron, Interval, entry_from_mapping, utc_stamp


class FakeClock:
    """A wall clock that moves only when a test moves it."""

    def __init__(self, now_s: float) -> None:
        self.now_s = now_s

    def __call__(self) -> float:
        return self.now_s

    def sleep(self, seconds: float) -> None:
        self.now_s += seconds


def at(text: str) -> float:
    """Return the POSIX time of an ISO 8601 UTC time such as 2026-03-29T01:00."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def fire_times(schedule: Cron | Interval, start_s: float, end_s: float) -> list[str]:
    """List a schedule's fire times in ``(start_s, end_s]`` as UTC stamps."""
    times = []
    current = schedule.next_after(start_s)
    while current <= end_s:
        times.append(utc_stamp(current))
        current = schedule.next_after(current)
    return times


def memory_driver(app: App) -> MemoryDriver:
    driver = app.driver
    assert isinstance(driver, MemoryDriver)
    return driver


@pytest.fixture
def app() -> Any:
    instance = App()
    yield instance
    instance.close()


# -- schedules ----------------------------------------------------------------


def test_interval_fires_on_epoch_multiples() -> None:
    every = Interval(15.0)

    assert every.next_after(100.0) == 105.0
    assert every.next_after(105.0) == 120.0
    assert every.latest_at_or_before(105.0) == 105.0
    assert every.latest_at_or_before(119.9) == 105.0


@given(
    seconds=st.floats(min_value=0.001, max_value=1e5),
    time_s=st.floats(min_value=0, max_value=4e9),
)
def test_interval_times_bracket_any_time(seconds: float, time_s: float) -> None:
    every = Interval(seconds)

    latest = every.latest_at_or_before(time_s)
    following = every.next_after(time_s)

    assert latest <= time_s < following
    assert every.next_after(latest) == following
    assert every.latest_at_or_before(latest) == latest


def test_cron_next_is_strictly_after() -> None:
    hourly = Cron("0 * * * *")

    assert hourly.next_after(at("2026-01-01T05:00:00")) == at("2026-01-01T06:00:00")
    assert hourly.next_after(at("2026-01-01T05:30:00")) == at("2026-01-01T06:00:00")


def test_cron_latest_includes_exact_time() -> None:
    hourly = Cron("0 * * * *")

    assert hourly.latest_at_or_before(at("2026-01-01T05:00:00")) == at(
        "2026-01-01T05:00:00"
    )
    assert hourly.latest_at_or_before(at("2026-01-01T05:59:59")) == at(
        "2026-01-01T05:00:00"
    )


@pytest.mark.parametrize(
    "expression",
    [
        # Seconds first, as Quartz and BullMQ read it: croniter reads the
        # first field as the minute and would fire every second.
        "*/10 * * * * *",
        # Seconds last, croniter's own six-field form.
        "* * * * * */10",
        # Seven fields: croniter reads seconds and then a year.
        "0 0 12 * * * 2030",
    ],
)
def test_cron_needs_five_fields(expression: str) -> None:
    with pytest.raises(InvalidSchedule) as caught:
        Cron(expression)

    message = str(caught.value)
    assert repr(expression) in message
    assert f"has {len(expression.split())} fields" in message
    assert "minute hour day-of-month month day-of-week" in message
    assert "timedelta(seconds=10)" in message


def test_cron_field_count_names_entry(app: App) -> None:
    with pytest.raises(InvalidSchedule, match=r"'every 10 s'.*has 6 fields"):
        app.periodic("*/10 * * * * *", Signature("add", (1, 2)), name="every 10 s")
    with pytest.raises(InvalidSchedule, match=r"'ticks'.*has 6 fields"):
        App(
            "memory://",
            beat_schedule={"ticks": {"task": "add", "schedule": "* * * * * *"}},
        )


@pytest.mark.parametrize("expression", ["@hourly", "  0  7 * * mon ", "0 0 L * *"])
def test_cron_aliases_and_spacing_accepted(expression: str) -> None:
    Cron(expression)


def test_cron_in_timezone_follows_local_time() -> None:
    nine_am = Cron("0 9 * * *", "America/New_York")

    winter = fire_times(nine_am, at("2026-01-14T00:00"), at("2026-01-15T00:00"))
    summer = fire_times(nine_am, at("2026-07-14T00:00"), at("2026-07-15T00:00"))

    assert winter == ["2026-01-14T14:00:00Z"]
    assert summer == ["2026-07-14T13:00:00Z"]


def test_dst_gap_fires_once_after_gap() -> None:
    # Europe/London skips 01:00 to 02:00 local on 29 March 2026 (01:00 UTC).
    daily = Cron("30 1 * * *", "Europe/London")

    times = fire_times(daily, at("2026-03-28T00:00"), at("2026-03-31T00:00"))

    assert times == [
        "2026-03-28T01:30:00Z",  # 01:30 GMT
        "2026-03-29T01:00:00Z",  # 01:30 does not exist; 02:00 BST instead
        "2026-03-30T00:30:00Z",  # 01:30 BST
    ]


def test_dst_overlap_fixed_time_fires_once() -> None:
    # Europe/London repeats 01:00 to 02:00 local on 25 October 2026.
    daily = Cron("30 1 * * *", "Europe/London")

    times = fire_times(daily, at("2026-10-24T00:00"), at("2026-10-27T00:00"))

    assert times == [
        "2026-10-24T00:30:00Z",  # 01:30 BST
        "2026-10-25T00:30:00Z",  # the first 01:30, in BST
        "2026-10-26T01:30:00Z",  # 01:30 GMT
    ]


def test_dst_overlap_wildcard_hour_fires_each_hour() -> None:
    hourly = Cron("0 * * * *", "Europe/London")

    times = fire_times(hourly, at("2026-10-24T23:00"), at("2026-10-25T02:00"))

    # One fire per real hour: 01:00 local comes twice, an hour apart.
    assert times == [
        "2026-10-25T00:00:00Z",
        "2026-10-25T01:00:00Z",
        "2026-10-25T02:00:00Z",
    ]


def test_dst_overlap_latest_skips_repeat() -> None:
    daily = Cron("30 1 * * *", "Europe/London")

    # 01:45 GMT, after the repeated 01:30 GMT that does not fire.
    latest = daily.latest_at_or_before(at("2026-10-25T01:45"))

    assert utc_stamp(latest) == "2026-10-25T00:30:00Z"


# -- declaration errors -------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "fragment"),
    [
        ("61 * * * *", "is invalid"),
        ("* * *", "is invalid"),
        ("every day", "is invalid"),
        ("", "is invalid"),
        ("0 0 30 2 *", "never fires"),
    ],
)
def test_bad_cron_expression_named(app: App, expression: str, fragment: str) -> None:
    with pytest.raises(InvalidSchedule) as caught:
        app.periodic(expression, Signature("reports.daily"), name="daily report")

    message = str(caught.value)
    assert "'daily report'" in message
    assert repr(expression) in message
    assert fragment in message
    assert app.beat_entries == {}


@pytest.mark.parametrize("seconds", [0, -1.0, math.nan, math.inf, True])
def test_bad_interval_rejected(app: App, seconds: Any) -> None:
    with pytest.raises(InvalidSchedule, match="number of seconds"):
        app.periodic(seconds, Signature("reports.ping"))


def test_bad_timezone_rejected(app: App) -> None:
    with pytest.raises(InvalidSchedule, match="'Mars/Olympus' is not found"):
        app.periodic("0 9 * * *", Signature("reports.ping"), timezone="Mars/Olympus")


def test_timezone_with_interval_rejected(app: App) -> None:
    with pytest.raises(InvalidSchedule, match="applies only to cron"):
        app.periodic(60, Signature("reports.ping"), timezone="UTC")


def test_bad_schedule_type_rejected(app: App) -> None:
    with pytest.raises(InvalidSchedule, match="is a list"):
        app.periodic([1, 2], Signature("reports.ping"))


def test_duplicate_entry_name_rejected(app: App) -> None:
    app.periodic(60, Signature("reports.ping"))

    with pytest.raises(InvalidSchedule, match="declared twice"):
        app.periodic(30, Signature("reports.ping"))


def test_chain_needs_a_name(app: App) -> None:
    steps = chain(Signature("reports.fetch"), Signature("reports.store"))

    with pytest.raises(InvalidSchedule, match="needs a name"):
        app.periodic(60, steps)
    entry = app.periodic(60, steps, name="fetch and store")

    assert entry.name == "fetch and store"


def test_unserialisable_argument_rejected(app: App) -> None:
    with pytest.raises(InvalidSchedule, match="Schedule entry 'bad'"):
        app.periodic(60, Signature("reports.ping", [object()]), name="bad")


def test_unknown_option_rejected(app: App) -> None:
    with pytest.raises(InvalidSchedule, match="quue"):
        app.periodic(60, Signature("reports.ping"), quue="cpu")


def test_run_id_option_rejected(app: App) -> None:
    with pytest.raises(InvalidSchedule, match="run_id is set by beat"):
        app.periodic(60, Signature("reports.ping"), run_id="mine")


def test_celery_mapping_builds_entries() -> None:
    app = App(
        beat_schedule={
            "add every 30 s": {
                "task": "tasks.add",
                "schedule": 30.0,
                "args": (16, 16),
            },
            "weekly": {
                "task": "tasks.report",
                "schedule": "0 7 * * mon",
                "kwargs": {"kind": "weekly"},
                "options": {"queue": "reports"},
                "timezone": "Europe/Paris",
            },
            "hourly": {"task": Signature("tasks.tidy"), "schedule": timedelta(hours=1)},
        }
    )

    adding = app.beat_entries["add every 30 s"]
    weekly = app.beat_entries["weekly"]
    assert adding.schedule == Interval(30.0)
    assert isinstance(adding.canvas, Signature)
    assert adding.canvas.args == (16, 16)
    assert weekly.schedule == Cron("0 7 * * mon", "Europe/Paris")
    assert weekly.options == {"queue": "reports"}
    assert app.beat_entries["hourly"].schedule == Interval(3600.0)


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({"schedule": 30}, "missing 'task'"),
        ({"task": "tasks.add"}, "missing 'schedule'"),
        ({"task": "tasks.add", "schedule": 30, "relative": True}, "unknown keys"),
        ({"task": "tasks.add", "schedule": 30, "args": "16"}, "args '16'"),
        ({"task": "tasks.add", "schedule": 30, "kwargs": [1]}, "kwargs [1]"),
        ({"task": 42, "schedule": 30}, "not a canvas"),
        ({"task": Signature("tasks.add"), "schedule": 30, "args": [1]}, "args"),
        (["tasks.add"], "pass a mapping"),
    ],
)
def test_bad_mapping_entry_named(fields: Any, fragment: str) -> None:
    with pytest.raises(InvalidSchedule) as caught:
        entry_from_mapping("nightly", fields)

    assert "'nightly'" in str(caught.value)
    assert fragment in str(caught.value)


def test_periodic_decorates_a_task(app: App) -> None:
    @app.periodic("*/5 * * * *")
    @app.task(name="reports.tidy")
    def tidy() -> str:
        return "tidied"

    entry = app.beat_entries["reports.tidy"]
    assert tidy() == "tidied"
    assert isinstance(entry.canvas, Signature)
    assert entry.canvas.task == "reports.tidy"
    assert entry.schedule == Cron("*/5 * * * *")


def test_periodic_rejects_plain_function(app: App) -> None:
    def tidy() -> None:
        return None

    with pytest.raises(InvalidSchedule, match="put it above"):
        app.periodic(60)(tidy)


# -- the beat loop ------------------------------------------------------------


def test_interval_fires_each_time_once(app: App) -> None:
    app.periodic(10, Signature("reports.ping"), name="ping")
    clock = FakeClock(1_000_003.0)
    beat = Beat(app, clock=clock, sleep=clock.sleep)

    for step_s in range(0, 36, 2):
        clock.now_s = 1_000_003.0 + step_s
        beat.tick()

    expected = [fire_run_id("ping", t) for t in (1_000_010.0, 1_000_020.0, 1_000_030.0)]
    assert sorted(memory_driver(app).runs()) == expected
    assert beat.fired == 3


def test_run_id_names_entry_and_time() -> None:
    assert fire_run_id("ping", at("2026-01-01T00:00:10")) == (
        "beat:ping:2026-01-01T00:00:10Z"
    )
    assert fire_run_id("ping", 0.25) == "beat:ping:1970-01-01T00:00:00.250000Z"


def test_first_start_waits_for_next_time(app: App) -> None:
    app.periodic("0 * * * *", Signature("reports.ping"), name="hourly")
    clock = FakeClock(at("2026-01-01T05:30"))
    beat = Beat(app, clock=clock, sleep=clock.sleep)

    delay_s = beat.tick()

    assert memory_driver(app).runs() == []
    assert delay_s == 30 * 60
    clock.now_s = at("2026-01-01T06:00")
    beat.tick()
    assert memory_driver(app).runs() == ["beat:hourly:2026-01-01T06:00:00Z"]


def test_restart_fires_only_latest_missed(
    app: App, caplog: pytest.LogCaptureFixture
) -> None:
    app.periodic("0 * * * *", Signature("reports.ping"), name="hourly")
    clock = FakeClock(at("2026-01-01T05:00"))
    first = Beat(app, clock=clock, sleep=clock.sleep)
    first.tick()
    clock.now_s = at("2026-01-01T06:00")
    first.tick()

    # The first beat stops; another starts five and a half hours later.
    clock.now_s = at("2026-01-01T11:30")
    second = Beat(app, clock=clock, sleep=clock.sleep)
    with caplog.at_level(logging.WARNING, logger="stem.engine.beat"):
        second.tick()
        second.tick()

    assert sorted(memory_driver(app).runs()) == [
        "beat:hourly:2026-01-01T06:00:00Z",
        "beat:hourly:2026-01-01T11:00:00Z",
    ]
    assert second.fired == 1
    assert caplog.messages == [
        "Entry hourly missed its fire times from 2026-01-01T07:00:00Z on; firing "
        "only the latest, 2026-01-01T11:00:00Z, and skipping the others."
    ]


def test_restart_without_missed_time_fires_nothing(app: App) -> None:
    app.periodic(60, Signature("reports.ping"), name="minutely")
    clock = FakeClock(120.0)
    first = Beat(app, clock=clock, sleep=clock.sleep)
    first.tick()
    clock.now_s = 180.0
    first.tick()

    clock.now_s = 200.0
    again = Beat(app, clock=clock, sleep=clock.sleep)
    delay_s = again.tick()

    assert memory_driver(app).runs() == [fire_run_id("minutely", 180.0)]
    assert delay_s == 40.0


def test_starting_deadline_skips_late_fire(
    app: App, caplog: pytest.LogCaptureFixture
) -> None:
    app.periodic("0 * * * *", Signature("reports.ping"), name="hourly")
    clock = FakeClock(at("2026-01-01T05:00"))
    first = Beat(app, clock=clock, sleep=clock.sleep)
    first.tick()
    clock.now_s = at("2026-01-01T06:00")
    first.tick()

    clock.now_s = at("2026-01-01T08:20")
    late = Beat(app, clock=clock, sleep=clock.sleep, starting_deadline_s=600)
    with caplog.at_level(logging.WARNING, logger="stem.engine.beat"):
        late.tick()
    clock.now_s = at("2026-01-01T09:05")
    late.tick()

    assert sorted(memory_driver(app).runs()) == [
        "beat:hourly:2026-01-01T06:00:00Z",
        "beat:hourly:2026-01-01T09:00:00Z",
    ]
    assert late.too_late == 1
    assert "past the starting deadline of 600.0 s" in caplog.text


def test_failed_submit_is_retried_same_id(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    app.periodic(10, Signature("reports.ping"), name="ping")
    driver = memory_driver(app)
    clock = FakeClock(5.0)
    beat = Beat(app, clock=clock, sleep=clock.sleep)
    beat.tick()
    real_submit = driver.submit
    calls: list[str] = []

    def flaky_submit(run_id: str, spec: Any) -> bool:
        calls.append(run_id)
        if len(calls) == 1:
            raise DriverError("connection refused")
        return real_submit(run_id, spec)

    monkeypatch.setattr(driver, "submit", flaky_submit)
    clock.now_s = 10.0
    beat.tick()
    assert driver.runs() == []
    clock.now_s = 11.0
    beat.tick()

    assert calls == [fire_run_id("ping", 10.0), fire_run_id("ping", 10.0)]
    assert driver.runs() == [fire_run_id("ping", 10.0)]
    assert beat.fired == 1


def test_failed_claim_is_retried(app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    app.periodic(10, Signature("reports.ping"), name="ping")
    driver = memory_driver(app)
    clock = FakeClock(5.0)
    beat = Beat(app, clock=clock, sleep=clock.sleep)
    beat.tick()
    real_claim = driver.claim_fire
    failing = [True]

    def flaky_claim(entry: str, fire_time_s: float) -> bool:
        if failing[0]:
            raise DriverError("connection refused")
        return real_claim(entry, fire_time_s)

    monkeypatch.setattr(driver, "claim_fire", flaky_claim)
    clock.now_s = 10.0
    beat.tick()
    failing[0] = False
    clock.now_s = 12.0
    beat.tick()

    assert driver.runs() == [fire_run_id("ping", 10.0)]


def test_two_beats_one_run_per_time(app: App) -> None:
    app.periodic(5, Signature("reports.ping"), name="ping")
    clock = FakeClock(1.0)
    beats = [Beat(app, clock=clock, sleep=clock.sleep) for _ in range(2)]

    for now_s in range(1, 31):
        clock.now_s = float(now_s)
        for beat in beats:
            beat.tick()

    expected = sorted(fire_run_id("ping", float(t)) for t in range(5, 31, 5))
    assert sorted(memory_driver(app).runs()) == expected
    assert sum(beat.fired for beat in beats) == len(expected)
    assert sum(beat.claimed_elsewhere for beat in beats) == len(expected)


def test_run_loop_sleeps_until_next_fire(app: App) -> None:
    app.periodic(3, Signature("reports.ping"), name="ping")
    clock = FakeClock(100.5)
    sleeps: list[float] = []
    beat = Beat(app, clock=clock, max_sleep_s=60.0)

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        clock.sleep(seconds)
        if clock.now_s >= 110:
            beat.stop()

    beat.sleep = sleep
    beat.run()

    assert sleeps == pytest.approx([1.5, 3.0, 3.0, 3.0])
    assert sorted(memory_driver(app).runs()) == [
        fire_run_id("ping", t) for t in (102.0, 105.0, 108.0)
    ]


def test_beat_thread_stops_on_request(app: App) -> None:
    app.periodic(3600, Signature("reports.ping"), name="hourly")
    beat = app.beat(max_sleep_s=0.01)

    with beat:
        thread = beat._thread
        assert thread is not None
        assert thread.is_alive()

    assert not thread.is_alive()


def test_run_loop_caps_sleep(app: App) -> None:
    app.periodic("0 0 * * *", Signature("reports.ping"), name="daily")
    clock = FakeClock(at("2026-01-01T12:00"))
    sleeps: list[float] = []
    beat = Beat(app, clock=clock, max_sleep_s=2.5)

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        clock.sleep(seconds)
        if len(sleeps) == 3:
            beat.stop()

    beat.sleep = sleep
    beat.run()

    assert sleeps == [2.5, 2.5, 2.5]


def test_run_logs_start_and_stop(app: App, caplog: pytest.LogCaptureFixture) -> None:
    app.periodic(1, Signature("reports.ping"), name="ping")
    clock = FakeClock(10.5)
    beat = Beat(app, clock=clock)

    def sleep(seconds: float) -> None:
        clock.sleep(seconds)
        if clock.now_s > 12:
            beat.stop()

    beat.sleep = sleep
    with caplog.at_level(logging.INFO, logger="stem.engine.beat"):
        beat.run()

    assert caplog.messages[0] == (
        "Beat started on <App stem memory://> with entries: ping."
    )
    assert caplog.messages[1].startswith("Fired ping for 1970-01-01T00:00:11Z")
    assert caplog.messages[1].endswith("run beat:ping:1970-01-01T00:00:11Z.")
    assert caplog.messages[-1] == (
        "Beat stopped: 2 runs submitted, 0 fire times claimed by other beats, "
        "0 skipped past the starting deadline."
    )
